"""``Seq2SeqModel``: generation with an exported encoder–decoder, on ONNX Runtime alone.

The source is encoded once. The first decoder step (``decoder_model.onnx``) also returns
each layer's cross-attention K/V, which every later step (``decoder_with_past_model.onnx``)
reads back unchanged while its self-attention K/V grow by one token. The file layout and
tensor names are Optimum's ``ORTModelForSeq2SeqLM``'s, so its exports run here too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgezoo import io_names
from edgezoo.errors import CheckpointError, InputError
from edgezoo.runtime.language_model import Generation
from edgezoo.runtime.sampling import Sampler, SamplingParams, StopChecker
from edgezoo.runtime.session import make_session

GRAPH_FILES = {
    "encoder": io_names.ENCODER_FILE,
    "decoder": io_names.DECODER_FILE,
    "decoder_with_past": io_names.DECODER_WITH_PAST_FILE,
}


class Seq2SeqModel:
    """``generate(source)`` -> ``Generation`` (a list for a list of sources).

    A batch decodes together: sources right-padded (the encoder mask hides the padding),
    each row stopping at its ``</s>`` or ``max_new_tokens``."""

    family = "s2s"

    def __init__(
        self,
        sessions: dict[str, ort.InferenceSession],
        tokenizer: Tokenizer,
        config: dict[str, Any],
        backend: str = "ort-cpu",
        variant: str = "fp32",
        reason: str = "",
    ) -> None:
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]
        self.decoder_with_past = sessions["decoder_with_past"]
        self.tokenizer, self.config = tokenizer, config
        self.backend, self.variant, self.reason = backend, variant, reason
        self.eos_id = int(config.get("eos_token_id", 2))
        self.start_id = int(config.get("decoder_start_token_id", 0))
        self.max_source = int(config.get("n_positions") or 512)
        past = [i.name for i in self.decoder_with_past.get_inputs() if io_names.is_past(i.name)]
        self.past_names = past  # per layer: decoder key, value, encoder key, value

    @classmethod
    def from_files(
        cls,
        files: dict[str, Path],
        tokenizer: Tokenizer,
        config: dict[str, Any],
        backend: str = "ort-cpu",
        threads: int = 0,
        **info: Any,
    ) -> Seq2SeqModel:
        """Open the three graphs (``files``: role -> path, roles as ``GRAPH_FILES``)."""
        missing = [str(p) for p in files.values() if not Path(p).is_file()]
        if missing:
            raise CheckpointError(
                f"{', '.join(missing)} missing: a seq2seq export has three graphs; re-run `edgezoo export`."
            )
        sessions = {role: make_session(Path(p), backend, threads) for role, p in files.items()}
        return cls(sessions, tokenizer, config, backend, **info)

    def generate(
        self,
        source: str | Sequence[str],
        params: SamplingParams | None = None,
        **overrides: Any,
    ) -> Generation | list[Generation]:
        """Generate the target for one source text or a batch of them."""
        single = isinstance(source, str)
        texts = [source] if single else list(source)
        if not texts:
            raise InputError("generate() got no sources; pass a string or a non-empty list.")
        ids = [enc.ids[: self.max_source] for enc in self.tokenizer.encode_batch(texts)]
        results = self.generate_ids(ids, params, **overrides)
        return results[0] if single else results

    def generate_ids(
        self,
        source_ids: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        **overrides: Any,
    ) -> list[Generation]:
        """The decode loop over token ids (what ``generate`` and export validation call)."""
        p = SamplingParams(**{**vars(params or SamplingParams()), **overrides}).validate()
        if not source_ids or any(len(s) == 0 for s in source_ids):
            raise InputError("every source needs at least one token.")
        t0 = time.perf_counter()
        ids, mask = _right_padded(source_ids)
        (hidden,) = self.encoder.run(None, {io_names.INPUT_IDS: ids, io_names.ATTENTION_MASK: mask})
        batch = len(source_ids)
        step = np.full((batch, 1), self.start_id, dtype=np.int64)
        out = self.decoder.run(
            None,
            {
                io_names.ENCODER_ATTENTION_MASK: mask,
                io_names.INPUT_IDS: step,
                io_names.ENCODER_HIDDEN_STATES: hidden,
            },
        )
        logits, cache = out[0], dict(zip(self.past_names, out[1:], strict=True))
        sampler, tokens, done = Sampler(p), [[] for _ in range(batch)], np.zeros(batch, bool)
        counts = np.zeros((batch, logits.shape[-1]), dtype=np.int64)  # generated, for penalties
        first_s, step_s = time.perf_counter() - t0, []
        for n in range(p.max_new_tokens):
            t = time.perf_counter()
            picked = sampler(logits[:, -1], counts > 0, counts)
            for r in np.flatnonzero(~done):
                if picked[r] == self.eos_id and not p.ignore_eos:
                    done[r] = True
                else:
                    tokens[r].append(int(picked[r]))
                    counts[r, picked[r]] += 1
            if done.all() or n == p.max_new_tokens - 1:
                step_s.append(time.perf_counter() - t)
                break
            feed = {io_names.ENCODER_ATTENTION_MASK: mask, io_names.INPUT_IDS: picked[:, None]}
            out = self.decoder_with_past.run(None, {**feed, **cache})
            logits = out[0]
            self_names = [n for n in self.past_names if ".decoder." in n]
            cache.update(zip(self_names, out[1:], strict=True))
            step_s.append(time.perf_counter() - t)
        return [
            self._result(row, done[i], len(source_ids[i]), first_s, step_s, p)
            for i, row in enumerate(tokens)
        ]

    def _result(self, row, eos, prompt_len, first_s, step_s, p) -> Generation:
        text = self.tokenizer.decode(row)
        finish = "eos" if eos else "length"
        if p.stop:
            text, found = StopChecker(p.stop).truncate(text)
            finish = "stop" if found else finish
        return Generation(text, row, finish, prompt_len, first_s, sum(step_s), list(step_s))


def _right_padded(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask
