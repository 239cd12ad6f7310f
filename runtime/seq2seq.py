"""``Seq2SeqModel``: generation with an exported encoder–decoder, on ONNX Runtime alone.

The source is encoded once. The first decoder step (``decoder_model.onnx``) also returns
each layer's cross-attention K/V, which every later step (``decoder_with_past_model.onnx``)
reads back unchanged while its self-attention K/V grow by one token. The file layout and
tensor names are Optimum's ``ORTModelForSeq2SeqLM``'s, so its exports run here too.

The API is the language model's (``TextGenerator``): batched ``generate``, per-prompt
``SamplingParams``, ``stream`` / ``stream_batch`` with stop strings, ``Generation``
results — the prompt is the source, the text the target. So the server and the benchmarks
drive it as they drive a ``LanguageModel``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgezoo import io_names
from edgezoo.errors import CheckpointError, InputError
from edgezoo.runtime import backends
from edgezoo.runtime.s2s_binding import BoundDecoder
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.session import make_session
from edgezoo.runtime.text_generation import Generation, Row, StepFn, TextGenerator

__all__ = ["GRAPH_FILES", "Generation", "Seq2SeqModel"]

GRAPH_FILES = {
    "encoder": io_names.ENCODER_FILE,
    "decoder": io_names.DECODER_FILE,
    "decoder_with_past": io_names.DECODER_WITH_PAST_FILE,
}


class Seq2SeqModel(TextGenerator):
    """``generate(source)`` -> ``Generation`` (a list for a list of sources).

    A batch decodes together: sources right-padded (the encoder mask hides the padding),
    each row stopping at its ``</s>``, a stop string or ``max_new_tokens``. ``context`` is
    the longest source (``n_positions``, the longest trained on); the target has its own
    positions (relative, like T5's), so a long source never shortens the target's budget."""

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
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.start_id = int(config.get("decoder_start_token_id", self.pad_id))
        self.context = int(config.get("n_positions") or 512)
        # The embedding's rows (a padded vocabulary may have more than the tokenizer's),
        # counted once: tokenizers rebuilds its vocabulary map on every call.
        self.vocab_size = int(config.get("vocab_size") or tokenizer.get_vocab_size())
        self.device = backends.device_type(backend)  # where the K/V stay between steps

    @property
    def max_prompt_len(self) -> int:
        """The longest source accepted, in tokens: all of ``context`` (the target has its own)."""
        return self.context

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
        # The encoder and the first decoder step run once per request, then the
        # with-past decoder runs every step: if their threads busy-waited after their one
        # run they would take the cores the steps need (measured: 1.6x slower generation
        # at nano on 2 cores). Only the session that runs back to back spins.
        sessions = {
            role: make_session(Path(p), backend, threads, spin=role == "decoder_with_past")
            for role, p in files.items()
        }
        return cls(sessions, tokenizer, config, backend, **info)

    def check_ids(self, prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Plain int lists, each non-empty, in the vocabulary and at most ``context`` long."""
        if len(prompt_ids) == 0:
            raise InputError("no source given: pass a string or a non-empty list.")
        vocab = self.vocab_size
        encoded = []
        for row in prompt_ids:
            ids = [int(i) for i in row]
            if not ids:
                raise InputError("empty source: give some text to translate / summarise.")
            if len(ids) > self.context:
                raise InputError(
                    f"source is {len(ids)} tokens but this model takes at most {self.context} "
                    f"(n_positions, the longest it was trained on): shorten or split the source."
                )
            if min(ids) < 0 or max(ids) >= vocab:
                raise InputError(f"token ids must be in [0, {vocab}) for this model's vocabulary.")
            encoded.append(ids)
        return encoded

    def _run(
        self, encoded: list[list[int]], params: SamplingParams, live_text: bool = False
    ) -> Iterator[list[Row]]:
        """The three graphs under ``_decode``: encode the right-padded sources, run the
        first decoder step (it also returns the cross-attention K/V), then one token per
        row per step with the growing self-attention cache (``BoundDecoder``: the K/V stay
        ``OrtValue``s from one run to the next)."""
        ids, mask = _right_padded(encoded)

        def start() -> tuple[np.ndarray, StepFn]:
            steps = BoundDecoder(self.encoder, self.decoder, self.decoder_with_past, self.device)
            first = steps.start(ids, mask, self.start_id)
            return first, lambda next_ids, n: steps.step(next_ids)

        # HF's repetition penalty counts the decoder's inputs: its start token, not the source.
        yield from self._decode(
            encoded,
            params,
            params.max_new_tokens,
            start,
            live_text=live_text,
            seen_ids=[[self.start_id]] * len(encoded),
            prompt_context=False,
        )


def _right_padded(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask
