"""``LanguageModel``: text generation and scoring over an exported decoder graph.

The prompt is processed once (prefill) and each new token reuses the KV cache — the
prompt is never recomputed. Prompts of different lengths in one batch are right-padded:
each row's true length drives its positions, its mask and where its next token goes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgezoo.chat_config import ChatConfig
from edgezoo.errors import InputError
from edgezoo.runtime.kv_cache import ConcatCache, HostConcatCache, SharedBufferCache
from edgezoo.runtime.sampling import (
    Sampler,
    SamplingParams,
    StopChecker,
    TokenLogprob,
    logprob_entries,
)
from edgezoo.runtime.streaming import TextStreamer

MAX_ENGINE_SLOTS = 16  # KV rows ``generate_each`` allocates at most (each one context long)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" (a stop string) or "length"
    prompt_tokens: int
    time_to_first_token_s: float = 0.0
    decode_s: float = 0.0
    # Each decode step (sampling + graph) of the call: a batch steps together, so a row
    # that finished early still lists the steps its batch ran after it.
    step_s: list[float] = field(default_factory=list)
    # One entry per token of ``token_ids`` when ``SamplingParams.logprobs`` is set, else None.
    logprobs: list[TokenLogprob] | None = None


class StreamDelta(NamedTuple):
    """One piece of a batched stream (``LanguageModel.stream_batch``)."""

    row: int  # which prompt of the batch
    text: str  # new text: never a split UTF-8 character, never past a stop string
    finish_reason: str | None  # set on the row's last delta
    generation: Generation | None  # the row's whole result, on its last delta


@dataclass
class _Timing:
    """One ``_run``'s clock, shared by its rows (a batch steps together)."""

    first_token_s: float = 0.0
    decode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)


@dataclass
class _Row:
    prompt_len: int
    streamer: TextStreamer
    timing: _Timing
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    logprobs: list[TokenLogprob] | None = None


class LanguageModel:
    """Generate with ``generate`` / ``stream``; measure with ``score`` (perplexity)."""

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
    ) -> None:
        self.session, self.tokenizer, self.config = session, tokenizer, config
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

    # ------------------------------------------------------------------ public API ------

    def generate(
        self,
        prompt: str | Sequence[str],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        **overrides: Any,
    ) -> Generation | list[Generation]:
        """Continue one prompt (returns a ``Generation``) or a batch (returns a list).

        A batch with one ``SamplingParams`` decodes together: every row gets at most
        ``context − longest prompt`` new tokens. A list of ``SamplingParams`` (one per
        prompt) runs each prompt with its own settings and budget, as it would alone — on
        the continuous-batching engine where the graph allows it (gqa on the CPU)."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if isinstance(params, (list, tuple)):
            results = self.generate_each(self.encode(prompts), params, **overrides)
        else:
            results = self.generate_ids(self.encode(prompts), params, **overrides)
        return results[0] if single else results

    def generate_each(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        **overrides: Any,
    ) -> list[Generation]:
        """Each prompt (token ids) with its own ``SamplingParams``."""
        from edgezoo.runtime.engine import Engine, supports_engine  # it imports this module

        if len(params) != len(prompt_ids):
            raise InputError(
                f"{len(params)} SamplingParams for {len(prompt_ids)} prompts: give one per prompt."
            )
        each = [self._params(p, dict(overrides)) for p in params]
        encoded = self.check_ids(prompt_ids)
        if supports_engine(self):
            return Engine(self, slots=min(len(encoded), MAX_ENGINE_SLOTS)).generate(encoded, each)
        return [self.generate_ids([ids], p)[0] for ids, p in zip(encoded, each, strict=True)]

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        **overrides: Any,
    ) -> list[Generation]:
        """``generate`` for prompts that are already token ids (one list per row).

        For callers that own tokenization: benchmarks feeding exact prompt lengths,
        validation replaying PyTorch's tokens, servers that tokenized off the event loop."""
        encoded = self.check_ids(prompt_ids)
        *_, rows = self._run(encoded, self._params(params, overrides))  # run to the end
        return [self._result(r) for r in rows]

    def stream(
        self, prompt: str, params: SamplingParams | None = None, **overrides: Any
    ) -> Iterator[str]:
        """Yield text deltas as they are generated (never a split UTF-8 character, never
        text past a stop string). ``self.last`` holds the full ``Generation`` afterwards."""
        for delta, _ in self.stream_events(prompt, params, **overrides):
            if delta:
                yield delta

    def stream_events(
        self, prompt: str, params: SamplingParams | None = None, **overrides: Any
    ) -> Iterator[tuple[str, str | None]]:
        """(delta, finish_reason or None) pairs; the last pair carries the finish reason."""
        for delta in self.stream_batch([prompt], params, **overrides):
            if delta.text:
                yield delta.text, None
            if delta.finish_reason:
                self.last = delta.generation
                yield "", delta.finish_reason

    def stream_batch(
        self, prompts: Sequence[str], params: SamplingParams | None = None, **overrides: Any
    ) -> Iterator[StreamDelta]:
        """Stream several prompts decoded together as one batch (a server's concurrent
        streams): deltas of every row as they come, each row's last one with its finish
        reason and full ``Generation``. Rows that finish early stop producing deltas."""
        if isinstance(prompts, str):
            prompts = [prompts]  # one prompt, not one per character
        yield from self.stream_batch_ids(self.encode(list(prompts)), params, **overrides)

    def stream_batch_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        **overrides: Any,
    ) -> Iterator[StreamDelta]:
        """``stream_batch`` for prompts that are already token ids (one list per row)."""
        encoded = self.check_ids(prompt_ids)
        params = self._params(params, overrides)
        stops = StopChecker(params.stop)
        emitted = [0] * len(encoded)
        finished = [False] * len(encoded)
        for rows in self._run(encoded, params, live_text=True):
            for i, row in enumerate(rows):
                if finished[i]:
                    continue
                safe = len(row.text) - (0 if row.finish else stops.holdback(row.text))
                delta = row.text[emitted[i] : safe] if safe > emitted[i] else ""
                emitted[i] = max(emitted[i], safe)
                if row.finish:
                    finished[i] = True
                    yield StreamDelta(i, delta, row.finish, self._result(row))
                elif delta:
                    yield StreamDelta(i, delta, None, None)

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

    # ------------------------------------------------------------------ the loop --------

    def _params(self, params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
        params = params or SamplingParams()
        if overrides:
            if "stop" in overrides and isinstance(overrides["stop"], str):
                overrides["stop"] = (overrides["stop"],)
            params = SamplingParams(**{**params.__dict__, **overrides})
        return params.validate()

    @cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (the longest vocabulary entry, in
        bytes for byte-level BPE): a text of n characters is at least n / this many tokens,
        so a server can refuse an over-long prompt before tokenizing it."""
        return max(len(token) for token in self.tokenizer.get_vocab())

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, checked to fit the context."""
        if not prompts:
            raise InputError("no prompt given.")
        if any(not isinstance(p, str) or not p for p in prompts):
            raise InputError("empty prompt: give some text to continue.")
        return self.check_ids([self.tokenizer.encode(p).ids for p in prompts])

    def check_ids(self, prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Plain int lists, each non-empty, in the vocabulary and shorter than the context."""
        if len(prompt_ids) == 0:
            raise InputError("no prompt given.")
        vocab = self.tokenizer.get_vocab_size()
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
    ) -> Iterator[list[_Row]]:
        """Yield the rows after every step; the caller reads ``row.text``/``row.finish``."""
        batch, longest = len(encoded), max(len(e) for e in encoded)
        max_new = min(params.max_new_tokens, self.context - longest)
        lengths = np.array([len(e) for e in encoded], np.int64)
        timing = _Timing()
        rows = [_Row(len(e), TextStreamer(self.tokenizer, prompt_ids=e), timing) for e in encoded]
        if params.logprobs is not None:
            for row in rows:
                row.logprobs = []
        sampler, stops = Sampler(params), StopChecker(params.stop)
        live = live_text or bool(stops.stop)  # detokenize every step only when someone reads it
        seen = None
        if params.repetition_penalty != 1.0:
            seen = np.zeros((batch, self.session.get_outputs()[0].shape[-1]), bool)
            for b, e in enumerate(encoded):
                seen[b, e] = True

        ids = np.full((batch, longest), self.pad_id, np.int64)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
        prompt_mask = (np.arange(longest)[None, :] < lengths[:, None]).astype(np.int64)
        t0 = time.perf_counter()
        if self.graph == "gqa":
            cache = SharedBufferCache(self.session, batch, longest + max_new, self.device)
            ones = np.ones((1, longest + max_new), np.int64)
            logits = cache.step(ids, prompt_mask)
        else:
            cache = self._concat_cache(batch)
            positions = np.broadcast_to(np.arange(longest, dtype=np.int64), (batch, longest)).copy()
            logits = cache.step(ids, prompt_mask, positions)
            full_mask = np.concatenate([prompt_mask, np.ones((batch, max_new), np.int64)], axis=1)
        last = logits[np.arange(batch), lengths - 1]
        timing.first_token_s = time.perf_counter() - t0
        counts = None  # generated-token counts, for presence / frequency penalties
        if params.presence_penalty or params.frequency_penalty:
            counts = np.zeros((batch, last.shape[-1]), np.int32)
        for step in range(max_new):
            t_step = time.perf_counter()
            scores = sampler.penalise(last, seen, counts)
            tokens = sampler.pick(scores)
            entries = None
            if params.logprobs is not None:
                entries = logprob_entries(scores, tokens, params.logprobs)
            if seen is not None:
                seen[np.arange(batch), tokens] = True
            if counts is not None:
                counts[np.arange(batch), tokens] += 1
            self._advance(
                rows, tokens, stops, step + 1 == max_new, live, params.ignore_eos, entries
            )
            yield rows
            if all(r.finish for r in rows):
                break
            next_ids = np.where([r.finish is None for r in rows], tokens, self.pad_id).astype(
                np.int64
            )[:, None]
            if self.graph == "gqa":
                if batch == 1:  # the mask only carries lengths: a view of a ones row will do
                    mask = ones[:, : longest + step + 1]
                else:
                    mask = (
                        np.arange(longest + step + 1)[None, :] < (lengths + step + 1)[:, None]
                    ).astype(np.int64)
                last = cache.step(next_ids, mask)[:, 0]
            else:
                mask = np.ascontiguousarray(full_mask[:, : longest + step + 1])
                last = cache.step(next_ids, mask, (lengths + step)[:, None])[:, 0]
            now = time.perf_counter()  # one clock read per step for both records
            timing.step_s.append(now - t_step)
            timing.decode_s = now - t0 - timing.first_token_s
        timing.decode_s = time.perf_counter() - t0 - timing.first_token_s

    def _advance(
        self,
        rows: list[_Row],
        tokens: np.ndarray,
        stops: StopChecker,
        out_of_budget: bool,
        live: bool,
        ignore_eos: bool,
        entries: list[TokenLogprob] | None = None,
    ) -> None:
        for i, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if row.finish:
                continue
            if token == self.eos_id and not ignore_eos:
                row.finish = "eos"
            else:
                row.ids.append(token)
                if entries is not None and row.logprobs is not None:
                    row.logprobs.append(entries[i])
                if live:
                    checked = len(row.text)
                    row.text += row.streamer.push(token)
                    if stops.stop:
                        row.text, found = stops.truncate(row.text, since=checked)
                        if found:
                            row.finish = "stop"
                            continue
                if out_of_budget:
                    row.finish = "length"
            if row.finish:
                if not live:  # decode once, at the end: same text as streaming would give
                    row.text = "".join(row.streamer.push(t) for t in row.ids)
                row.text += row.streamer.flush()
                if stops.stop:
                    row.text, found = stops.truncate(row.text)
                    row.finish = "stop" if found else row.finish

    def _result(self, row: _Row) -> Generation:
        return Generation(
            row.text,
            row.ids,
            row.finish or "length",
            row.prompt_len,
            row.timing.first_token_s,
            row.timing.decode_s,
            list(row.timing.step_s),
            None if row.logprobs is None else list(row.logprobs),
        )

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
