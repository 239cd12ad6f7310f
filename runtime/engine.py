"""Continuous (iteration-level) batching: a fixed number of slots over one KV buffer, and
a loop that, every iteration, prefills one chunk of a new prompt and decodes one token for
every running row.

A request joins the running batch as soon as a slot is free and its prompt is in the
cache — it never waits for another request's whole answer; each row samples with its own
settings and stops on its own budget, stop strings or EOS; a finished or cancelled row
frees its slot at once. Long prompts go in ``prefill_chunk``-token pieces, so the running
streams lose at most one chunk's time per iteration. Like llama.cpp's server slots and
vLLM's scheduler, on the CPU, over the GroupQueryAttention graph.

The server runs ``serve_forever`` in a thread; ``generate`` runs the same loop in the
caller's thread for the Python API (per-prompt settings).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgezoo.errors import ConfigError
from edgezoo.runtime.engine_rows import EngineRequest, Row, RowDelta
from edgezoo.runtime.language_model import Generation
from edgezoo.runtime.sampling import Sampler, SamplingParams
from edgezoo.runtime.slot_cache import SlotCache

DEFAULT_PREFILL_CHUNK = 128


def supports_engine(model: Any) -> bool:
    """The engine needs a GroupQueryAttention graph on the CPU (per-row lengths in one
    buffer); other graphs and devices use static batching."""
    if getattr(model, "speculative", False):  # drafts decode one request at a time
        return False
    return getattr(model, "graph", None) == "gqa" and getattr(model, "device", None) == "cpu"


class Engine:
    def __init__(
        self,
        lm: Any,
        slots: int,
        *,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        if not supports_engine(lm):
            raise ConfigError(
                f"continuous batching needs the gqa graph on the CPU; this model runs the "
                f"{lm.graph!r} graph on {lm.device!r}: export with the default (fast) settings "
                "and load it with backend='ort-cpu', or use static batching."
            )
        if slots < 1 or prefill_chunk < 1:
            raise ConfigError(f"slots={slots}, prefill_chunk={prefill_chunk}: both must be >= 1.")
        self.lm, self.slots, self.prefill_chunk = lm, slots, prefill_chunk
        self.cache = SlotCache(lm.session, slots, lm.context, lm.decode_rows)
        self.on_step = on_step  # called with the decode batch size, for metrics
        self.rows: list[Row] = []  # rows[i] is cache row i; a prefilling row is always last
        self.waiting: deque[EngineRequest] = deque()
        self._shared: dict[SamplingParams, Sampler] = {}  # one generator per shared setting
        self.wakeup = threading.Condition()

    # ------------------------------------------------------------------ requests --------

    def submit(self, request: EngineRequest) -> None:
        """Queue a request (any thread); it starts as soon as a slot is free."""
        self.lm.check_ids([request.prompt_ids])
        request.params.validate()
        with self.wakeup:
            self.waiting.append(request)
            self.wakeup.notify()

    @property
    def idle(self) -> bool:
        return not self.rows and not self.waiting

    def waiting_requests(self) -> int:
        return len(self.waiting)

    # ------------------------------------------------------------------ the loop --------

    def serve_forever(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set, sleeping while there is nothing to do."""
        while not stop.is_set():
            if not self.step():
                with self.wakeup:
                    if not self.waiting and not stop.is_set():
                        self.wakeup.wait(0.05)

    def wake(self) -> None:
        with self.wakeup:
            self.wakeup.notify()

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> list[Generation]:
        """Every prompt with its own settings, through the engine, in this thread."""
        results: list[Generation | None] = [None] * len(prompt_ids)
        errors: list[Exception] = []

        def collect(index: int) -> Callable[[RowDelta | Exception], None]:
            def on_delta(delta: RowDelta | Exception) -> None:
                if isinstance(delta, Exception):
                    errors.append(delta)
                elif delta.generation is not None:
                    results[index] = delta.generation

            return on_delta

        for i, (ids, p) in enumerate(zip(prompt_ids, params, strict=True)):
            self.submit(EngineRequest(list(ids), p, collect(i)))
        while not self.idle:
            self.step()
        if errors:
            raise errors[0]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # every row ends with a result or an error: this would be a bug
            raise RuntimeError(f"the engine finished without results for rows {missing}")
        return [r for r in results if r is not None]

    def step(self) -> bool:
        """One iteration: drop cancelled rows, admit, prefill one chunk, decode one token
        for every running row. Returns whether there was anything to do."""
        self._drop_cancelled()
        self._admit()
        if not self.rows:
            return False
        try:
            if self.rows[-1].prefilling:
                self._prefill_chunk()
            self._decode()
        except Exception as e:  # the model failed: every running row ends with the error
            for row in self.rows:
                row.request.on_delta(e)
            self.rows.clear()
        return True

    def _admit(self) -> None:
        """Start the next waiting request in a free slot (one prefill at a time)."""
        if len(self.rows) >= self.slots or (self.rows and self.rows[-1].prefilling):
            return
        with self.wakeup:
            request = self.waiting.popleft() if self.waiting else None
        if request is not None:
            lm = self.lm
            row = Row(
                request, lm.tokenizer, context=lm.context, vocab=self.cache.vocab, eos_id=lm.eos_id
            )
            self.rows.append(row)

    def _prefill_chunk(self) -> None:
        index, row = len(self.rows) - 1, self.rows[-1]
        chunk = row.prompt[row.prefilled : row.prefilled + self.prefill_chunk]
        logits = self.cache.prefill(index, chunk, row.prefilled)
        row.prefilled += len(chunk)
        if not row.prefilling:  # the whole prompt is in: its first token
            row.length = len(row.prompt)
            self._deliver(index, row.accept(row.sample(logits)))

    def _decode(self) -> None:
        running = len(self.rows) - (1 if self.rows and self.rows[-1].prefilling else 0)
        if running == 0:
            return
        rows = self.rows[:running]
        t0 = time.perf_counter()
        tokens = np.array([r.next_token for r in rows], np.int64)
        lengths = np.array([r.length for r in rows], np.int64)
        logits = self.cache.decode(tokens, lengths)
        if self.on_step is not None:
            self.on_step(running)
        finished = []
        for row, token in zip(rows, self._sample(rows, logits), strict=True):
            row.length += 1
            delta = row.accept(token)
            row.step_s.append(time.perf_counter() - t0)
            if delta is not None:
                row.request.on_delta(delta)
                if delta.finish_reason:
                    finished.append(row)
        for row in finished:
            self._free(self.rows.index(row))

    def _sample(self, rows: list[Row], logits: np.ndarray) -> list[int]:
        """Each row's next token. Rows whose draw depends only on the logits and shared
        settings (no seed, penalties or logprobs: most traffic) are sampled together, one
        numpy call per group; the others with their own sampler and state."""
        picks: list[int] = [0] * len(rows)
        groups: dict[SamplingParams, list[int]] = {}
        for i, row in enumerate(rows):
            if row.shares_sampler:
                groups.setdefault(row.sampling_key, []).append(i)
            else:
                picks[i] = row.sample(logits[i])
        for key, members in groups.items():
            sampler = self._shared.get(key)
            if sampler is None:
                sampler = self._shared[key] = Sampler(key)
            for i, token in zip(members, sampler.pick(logits[members]).tolist(), strict=True):
                picks[i] = token
        return picks

    def _deliver(self, index: int, delta: RowDelta | None) -> None:
        row = self.rows[index]
        if delta is not None:
            row.request.on_delta(delta)
            if delta.finish_reason:
                self._free(index)

    def _drop_cancelled(self) -> None:
        with self.wakeup:
            if any(r.cancelled.is_set() for r in self.waiting):
                self.waiting = deque(r for r in self.waiting if not r.cancelled.is_set())
        for row in [r for r in self.rows if r.request.cancelled.is_set()]:
            self._free(self.rows.index(row))

    def _free(self, index: int) -> None:
        """Release row ``index``, keeping rows packed (at most two row copies): the last
        running row takes its place, and a prefilling row moves down behind it."""
        rows, cache = self.rows, self.cache
        last = len(rows) - 1
        if index == last:
            rows.pop()
            return
        prefilling = rows[last] if rows[last].prefilling else None
        end = last - 1 if prefilling is not None else last  # the last running row
        if index != end:
            cache.move(end, index, rows[end].length)
            rows[index] = rows[end]
        if prefilling is not None:
            cache.move(last, end, prefilling.prefilled)
            rows[end] = prefilling
        rows.pop()
