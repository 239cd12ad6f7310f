"""What every text generator of the runtime shares: the ``Generation`` result, stream
deltas, the per-row decode state, one decode loop and the public generate / stream API.

A model (``LanguageModel``, ``Seq2SeqModel``) supplies only what differs: how its prompts
are checked (``check_ids``) and its graphs run (``_run``: the first logits, then one step
per token, handed to ``_decode``). Batching, per-prompt ``SamplingParams``, penalties,
logprobs, stop strings and incremental detokenization are then the same for both, so a
server or a benchmark drives either through one interface.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
from tokenizers import Tokenizer

from edgezoo.errors import InputError
from edgezoo.runtime.sampling import (
    Sampler,
    SamplingParams,
    StopChecker,
    TokenLogprob,
    logprob_entries,
)
from edgezoo.runtime.streaming import TextStreamer


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
    """One piece of a batched stream (``stream_batch``)."""

    row: int  # which prompt of the batch
    text: str  # new text: never a split UTF-8 character, never past a stop string
    finish_reason: str | None  # set on the row's last delta
    generation: Generation | None  # the row's whole result, on its last delta


@dataclass
class Timing:
    """One ``_run``'s clock, shared by its rows (a batch steps together)."""

    first_token_s: float = 0.0
    decode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)


@dataclass
class Row:
    prompt_len: int
    streamer: TextStreamer
    timing: Timing
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    logprobs: list[TokenLogprob] | None = None


# The next logits [batch, vocab] for the tokens just chosen ([batch, 1]; finished rows get
# the pad id), given the step's index.
StepFn = Callable[[np.ndarray, int], np.ndarray]
# Runs the prompt (prefill / encoder + first decoder step): its logits and the StepFn.
StartFn = Callable[[], tuple[np.ndarray, StepFn]]


class TextGenerator(ABC):
    """Generate with ``generate`` / ``stream``; subclasses implement ``check_ids`` and ``_run``."""

    # One greedy prompt without stop strings runs ``_decode_greedy_row``, the loop with
    # nothing else in it (False: everything runs the general loop — tests compare the two).
    lean_loop: bool = True

    tokenizer: Tokenizer
    eos_id: int | None
    pad_id: int
    context: int
    last: Generation  # the last ``stream`` / ``stream_events`` call's whole result

    # ------------------------------------------------------------------ public API ------

    def generate(
        self,
        prompt: str | Sequence[str],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        **overrides: Any,
    ) -> Generation | list[Generation]:
        """Continue one prompt (returns a ``Generation``) or a batch (returns a list).

        A batch with one ``SamplingParams`` decodes together. A list of ``SamplingParams``
        (one per prompt) runs each prompt with its own settings and budget, as it would
        alone."""
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
        if len(params) != len(prompt_ids):
            raise InputError(
                f"{len(params)} SamplingParams for {len(prompt_ids)} prompts: give one per prompt."
            )
        each = [self._params(p, dict(overrides)) for p in params]
        return self._generate_each(self.check_ids(prompt_ids), each)

    def _generate_each(
        self, encoded: list[list[int]], params: list[SamplingParams]
    ) -> list[Generation]:
        """Checked prompts, one ``SamplingParams`` each: one at a time, as each runs alone."""
        return [self.generate_ids([ids], p)[0] for ids, p in zip(encoded, params, strict=True)]

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

    @property
    def max_prompt_len(self) -> int:
        """The longest prompt ``check_ids`` accepts, in tokens: a decoder-only prompt
        leaves room in the context for at least one new token."""
        return self.context - 1

    @cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (the longest vocabulary entry, in
        bytes for byte-level BPE): a text of n characters is at least n / this many tokens,
        so a server can refuse an over-long prompt before tokenizing it."""
        return max(len(token) for token in self.tokenizer.get_vocab())

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, checked by ``check_ids``."""
        if not prompts:
            raise InputError("no prompt given.")
        if any(not isinstance(p, str) or not p for p in prompts):
            raise InputError("empty prompt: give some text to continue.")
        return self.check_ids([self.tokenizer.encode(p).ids for p in prompts])

    # ------------------------------------------------------------------ subclasses ------

    @abstractmethod
    def check_ids(self, prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Plain int lists, each a prompt this model accepts; ``InputError`` otherwise."""

    @abstractmethod
    def _run(
        self, encoded: list[list[int]], params: SamplingParams, live_text: bool = False
    ) -> Iterator[list[Row]]:
        """Yield the rows after every step (``_decode`` with this model's graphs)."""

    # ------------------------------------------------------------------ the loop --------

    def _params(self, params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
        params = params or SamplingParams()
        if overrides:
            if "stop" in overrides and isinstance(overrides["stop"], str):
                overrides["stop"] = (overrides["stop"],)
            params = SamplingParams(**{**params.__dict__, **overrides})
        return params.validate()

    def _decode(
        self,
        encoded: list[list[int]],
        params: SamplingParams,
        max_new: int,
        start: StartFn,
        *,
        live_text: bool = False,
        seen_ids: Sequence[Sequence[int]] | None = None,
        prompt_context: bool = True,
    ) -> Iterator[list[Row]]:
        """The decode loop: ``start()`` once, then sample, advance the rows and ``step``
        until every row has finished or ``max_new`` tokens. Yields the rows after every
        step; the caller reads ``row.text`` / ``row.finish``.

        ``seen_ids``: per row, the tokens the repetition penalty counts before any is
        generated (a decoder-only LM's prompt; default ``encoded``). ``prompt_context``:
        whether the prompt is the left context the first tokens detokenize after (a
        continuation) or not (a seq2seq target, which starts on its own)."""
        batch = len(encoded)
        timing = Timing()
        rows = [
            Row(
                len(e), TextStreamer(self.tokenizer, prompt_ids=e if prompt_context else ()), timing
            )
            for e in encoded
        ]
        if params.logprobs is not None:
            for row in rows:
                row.logprobs = []
        sampler, stops = Sampler(params), StopChecker(params.stop)
        live = live_text or bool(stops.stop)  # detokenize every step only when someone reads it
        t0 = time.perf_counter()
        last, step_fn = start()
        timing.first_token_s = time.perf_counter() - t0
        if self.lean_loop and batch == 1 and not live and params.greedy and params.logits_only:
            self._decode_greedy_row(rows[0], last, step_fn, max_new, params.ignore_eos, t0)
            yield rows
            return
        seen = None
        if params.repetition_penalty != 1.0:
            seen = np.zeros((batch, last.shape[-1]), bool)
            for b, e in enumerate(encoded if seen_ids is None else seen_ids):
                seen[b, list(e)] = True
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
            last = step_fn(next_ids, step)
            now = time.perf_counter()  # one clock read per step for both records
            timing.step_s.append(now - t_step)
            timing.decode_s = now - t0 - timing.first_token_s
        timing.decode_s = time.perf_counter() - t0 - timing.first_token_s

    def _decode_greedy_row(
        self,
        row: Row,
        last: np.ndarray,
        step_fn: StepFn,
        max_new: int,
        ignore_eos: bool,
        t0: float,
    ) -> None:
        """``_decode`` for one greedy row whose text nobody reads before the end — the
        common single-prompt call. Same tokens, text and timing as the general loop, without
        its per-step batch bookkeeping (penalty hooks, padding finished rows, stop and
        streaming checks), which measured 17–41 µs a step beyond a bare ORT loop at
        ``nano`` (a 0.2–0.4 ms step); this loop 0–10 µs."""
        clock, timing, ids = time.perf_counter, row.timing, row.ids
        eos = None if ignore_eos else self.eos_id
        next_ids = np.zeros((1, 1), np.int64)
        for step in range(max_new):
            t_step = clock()
            token = int(last.argmax())  # [1, vocab]: the first max wins, as np.argmax per row
            if token == eos:
                row.finish = "eos"
                break
            ids.append(token)
            if step + 1 == max_new:
                row.finish = "length"
                break
            next_ids[0, 0] = token
            last = step_fn(next_ids, step)
            now = clock()
            timing.step_s.append(now - t_step)
        row.text = row.streamer.push_all(ids)
        timing.decode_s = clock() - t0 - timing.first_token_s

    def _advance(
        self,
        rows: list[Row],
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
                    row.text = row.streamer.push_all(row.ids)
                row.text += row.streamer.flush()
                if stops.stop:
                    row.text, found = stops.truncate(row.text)
                    row.finish = "stop" if found else row.finish

    def _result(self, row: Row) -> Generation:
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
