"""``LanguageModel``: text generation and scoring over an exported decoder graph.

The prompt is processed once (prefill) and each new token reuses the KV cache — the
prompt is never recomputed. Prompts of different lengths in one batch are right-padded:
each row's true length drives its positions, its mask and where its next token goes.
The generate / stream API and the decode loop are ``TextGenerator``'s (shared with the
encoder–decoder ``Seq2SeqModel``); this class runs the decoder graph under them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgezoo.chat_config import ChatConfig
from edgezoo.errors import InputError
from edgezoo.runtime.kv_cache import ConcatCache, HostConcatCache, SharedBufferCache
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.text_generation import Generation, Row, StepFn, StreamDelta, TextGenerator

__all__ = ["MAX_ENGINE_SLOTS", "Generation", "LanguageModel", "StreamDelta"]

MAX_ENGINE_SLOTS = 16  # KV rows ``generate_each`` allocates at most (each one context long)


class LanguageModel(TextGenerator):
    """Generate with ``generate`` / ``stream``; measure with ``score`` (perplexity).

    A batch with one ``SamplingParams`` decodes together: every row gets at most
    ``context − longest prompt`` new tokens. Per-prompt ``SamplingParams`` (a list, one
    per prompt) run on the continuous-batching engine where the graph allows it (gqa on
    the CPU), else one prompt at a time."""

    # The dir's chat template (``tokenizer_config.json``), set by ``runtime.load``; None
    # when it has none (the server then refuses chat requests, saying how to add one).
    chat_config: ChatConfig | None = None

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        config: dict[str, Any],
        *,
        graph: str,
        device: str = "cpu",
        backend: str = "ort-cpu",
        variant: str = "fp32",
        reason: str = "",
        decode_rows: int = 1,
    ) -> None:
        self.session, self.tokenizer, self.config = session, tokenizer, config
        # Rows a one-token step runs (2: the token and a filler; see ``kv_cache``): from the
        # variant's manifest entry.
        self.decode_rows = decode_rows
        self.graph, self.device, self.backend, self.variant, self.reason = (
            graph,
            device,
            backend,
            variant,
            reason,
        )
        self.context = int(
            config.get("max_position_embeddings") or config.get("n_positions") or 2048
        )
        eos = tokenizer.token_to_id("</s>")
        self.eos_id = eos if eos is not None else config.get("eos_token_id")
        self.pad_id = tokenizer.token_to_id("<pad>") or 0
        # Counted once: the tokenizers library rebuilds its vocabulary map on every call
        # (~1 ms here), which is a request's whole time to first token on a small model.
        self.vocab_size = tokenizer.get_vocab_size()

    def _generate_each(
        self, encoded: list[list[int]], params: list[SamplingParams]
    ) -> list[Generation]:
        from edgezoo.runtime.engine import Engine, supports_engine  # it imports this module

        if supports_engine(self):
            return Engine(self, slots=min(len(encoded), MAX_ENGINE_SLOTS)).generate(encoded, params)
        return super()._generate_each(encoded, params)

    def score(self, text: str) -> dict[str, float]:
        """Mean next-token loss and perplexity of ``text`` (windows of the context length)."""
        if not isinstance(text, str):
            raise InputError(
                f"score takes one text (a str), got {type(text).__name__}: call it once per text."
            )
        ids = self.tokenizer.encode(text).ids
        if self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return self.score_ids(ids)

    def score_ids(self, ids: Sequence[int], window: int | None = None) -> dict[str, float]:
        """Loss and perplexity of a token sequence, in windows of ``window`` (default: context)."""
        if len(ids) < 2:
            raise InputError("text too short to score: it needs at least one token after <s>.")
        size = min(window or self.context, self.context)
        total, count = 0.0, 0
        for start in range(0, len(ids) - 1, size - 1):
            window = np.array([ids[start : start + size]], np.int64)
            if window.shape[1] < 2:
                break
            logits = self._prefill_logits(window)
            logits = logits[0, :-1].astype(np.float64)
            targets = window[0, 1:]
            logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            total += float((logz - logits[np.arange(len(targets)), targets]).sum())
            count += len(targets)
        loss = total / count
        return {"tokens": count, "loss": loss, "perplexity": float(np.exp(min(loss, 50)))}

    def check_ids(self, prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Plain int lists, each non-empty, in the vocabulary and shorter than the context."""
        if len(prompt_ids) == 0:
            raise InputError("no prompt given.")
        vocab = self.vocab_size
        encoded = []
        for row in prompt_ids:
            ids = [int(i) for i in row]
            if not ids:
                raise InputError("empty prompt: give at least one token id.")
            if len(ids) >= self.context:
                raise InputError(
                    f"prompt is {len(ids)} tokens but this model's context is {self.context}: shorten the prompt "
                    f"to under {self.context} tokens (leaving room for the reply) or use a longer-context model."
                )
            if min(ids) < 0 or max(ids) >= vocab:
                raise InputError(f"token ids must be in [0, {vocab}) for this model's vocabulary.")
            encoded.append(ids)
        return encoded

    def _run(
        self, encoded: list[list[int]], params: SamplingParams, live_text: bool = False
    ) -> Iterator[list[Row]]:
        """The decoder graph under ``_decode``: prefill the right-padded prompts, then one
        token per row per step through the KV cache."""
        batch, longest = len(encoded), max(len(e) for e in encoded)
        max_new = min(params.max_new_tokens, self.context - longest)
        lengths = np.array([len(e) for e in encoded], np.int64)
        ids = np.full((batch, longest), self.pad_id, np.int64)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
        prompt_mask = (np.arange(longest)[None, :] < lengths[:, None]).astype(np.int64)

        def start() -> tuple[np.ndarray, StepFn]:
            if self.graph == "gqa":
                cache = SharedBufferCache(
                    self.session, batch, longest + max_new, self.device, self.decode_rows
                )
                ones = np.ones((1, longest + max_new), np.int64)

                def step(next_ids: np.ndarray, n: int) -> np.ndarray:
                    if batch == 1:  # the mask only carries lengths: a view of a ones row will do
                        mask = ones[:, : longest + n + 1]
                    else:
                        mask = (
                            np.arange(longest + n + 1)[None, :] < (lengths + n + 1)[:, None]
                        ).astype(np.int64)
                    return cache.step(next_ids, mask)[:, 0]

                return cache.last_logits(ids, prompt_mask), step
            cache = self._concat_cache(batch)
            positions = np.broadcast_to(np.arange(longest, dtype=np.int64), (batch, longest)).copy()
            full_mask = np.concatenate([prompt_mask, np.ones((batch, max_new), np.int64)], axis=1)

            def step(next_ids: np.ndarray, n: int) -> np.ndarray:
                mask = np.ascontiguousarray(full_mask[:, : longest + n + 1])
                return cache.step(next_ids, mask, (lengths + n)[:, None])[:, 0]

            logits = cache.step(ids, prompt_mask, positions)
            return logits[np.arange(batch), lengths - 1], step

        yield from self._decode(encoded, params, max_new, start, live_text=live_text)

    def _prefill_logits(self, ids: np.ndarray) -> np.ndarray:
        mask = np.ones_like(ids)
        if self.graph == "gqa":
            return SharedBufferCache(self.session, ids.shape[0], ids.shape[1], self.device).step(
                ids, mask
            )
        positions = np.arange(ids.shape[1], dtype=np.int64)[None].repeat(ids.shape[0], 0)
        return self._concat_cache(ids.shape[0]).step(ids, mask, positions)

    def _concat_cache(self, batch: int) -> ConcatCache | HostConcatCache:
        if hasattr(self.session, "io_binding"):
            return ConcatCache(self.session, batch, self.device)
        return HostConcatCache(self.session, batch)  # a session without I/O binding (TensorRT)
