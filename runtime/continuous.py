"""The server's side of the continuous-batching engine: the same interface as the static
``Batcher`` (submit / cancel / start / stop, ``task`` and ``closed`` for /health), with
each prompt of a request running as its own engine row.

The engine loop runs in one worker thread; its deltas reach the request's event loop with
``call_soon_threadsafe``. A streaming request gets a ``StreamEvent`` per delta and ``None``
when all its prompts have finished; a whole-answer request gets its ``Generation``s at once.
"""

import asyncio
import contextlib
import dataclasses
import threading
from typing import Any

from edgezoo.runtime.batcher import Job, StreamEvent
from edgezoo.runtime.engine import DEFAULT_PREFILL_CHUNK, Engine
from edgezoo.runtime.engine_rows import EngineRequest, RowDelta
from edgezoo.runtime.protocol import RETRY_AFTER_S, overloaded
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.server_metrics import Metrics


class ContinuousBatcher:
    def __init__(
        self,
        model: Any,
        metrics: Metrics,
        *,
        slots: int,
        max_queue: int,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        self.metrics, self.max_queue = metrics, max_queue
        self.engine = Engine(
            model, slots, prefill_chunk=prefill_chunk, on_step=metrics.batch_size.observe
        )
        self.closed = False
        self.task: asyncio.Task | None = None
        self.running: list[Job] = []  # jobs submitted and not yet answered
        self._stop = threading.Event()

    # -- called by requests --

    def submit(self, job: Job) -> None:
        if self.closed:
            raise overloaded("server is shutting down; retry shortly.")
        waiting = self.engine.waiting_requests()
        if waiting + len(job.inputs) > self.max_queue:
            raise overloaded(
                f"server is busy ({waiting} prompts queued); retry after {RETRY_AFTER_S} s."
            )
        loop = asyncio.get_running_loop()
        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        self.running.append(job)
        answer = _Answer(self, job, loop)
        for index, ids in enumerate(job.inputs):
            request = EngineRequest(
                ids, row_params(job.params, index), answer.on_delta_from(index), job.cancelled
            )
            self.engine.submit(request)
        self._queue_changed()

    def cancel(self, job: Job) -> None:
        """The request gave up: its rows stop at the next step and free their slots."""
        job.cancelled.set()
        self._forget(job)
        self.engine.wake()

    # -- lifecycle --

    def start(self) -> None:
        self.task = asyncio.create_task(asyncio.to_thread(self.engine.serve_forever, self._stop))

    async def stop(self, timeout_s: float) -> None:
        """Refuse new work, let running rows finish (up to ``timeout_s``), stop the loop."""
        self.closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.engine.idle and loop.time() < deadline and not self._dead():
            await asyncio.sleep(0.02)
        for job in list(self.running):
            _fail(job, overloaded("server shut down before this request finished."))
            job.cancelled.set()
        self._stop.set()
        self.engine.wake()
        if self.task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.task

    def _dead(self) -> bool:
        return self.task is not None and self.task.done()

    def _forget(self, job: Job) -> None:
        with contextlib.suppress(ValueError):
            self.running.remove(job)

    def _queue_changed(self) -> None:
        self.metrics.queue_depth.set(self.engine.waiting_requests())


def row_params(params: SamplingParams, index: int) -> SamplingParams:
    """Row ``index``'s settings. Each row samples from its own generator, so a seeded
    request's rows get seeds ``seed, seed + 1, …``: ``n`` copies of a prompt differ, and
    the request repeats exactly (row 0 is what the prompt alone gives with that seed)."""
    if params.seed is None or index == 0:
        return params
    return dataclasses.replace(params, seed=params.seed + index)


class _Answer:
    """Gathers one job's rows: events for a stream, results for a whole answer."""

    def __init__(self, batcher: ContinuousBatcher, job: Job, loop: asyncio.AbstractEventLoop):
        self.batcher, self.job, self.loop = batcher, job, loop
        self.results: list[Any] = [None] * len(job.inputs)
        self.unfinished = len(job.inputs)

    def on_delta_from(self, index: int):
        def on_delta(delta: RowDelta | Exception) -> None:  # the engine's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                self.loop.call_soon_threadsafe(self._take, index, delta)

        return on_delta

    def _take(self, index: int, delta: RowDelta | Exception) -> None:  # the event loop
        job = self.job
        if job.cancelled.is_set():
            return
        if isinstance(delta, Exception):
            _fail(job, delta)
            self.batcher._forget(job)
            return
        tokens = len(delta.generation.token_ids) if delta.generation else 0
        if job.stream:
            job.events.put_nowait(StreamEvent(index, delta.text, delta.finish_reason, tokens))
        if delta.finish_reason is None:
            return
        self.batcher.metrics.generated_tokens.inc(tokens)
        self.batcher._queue_changed()
        self.results[index] = delta.generation
        self.unfinished -= 1
        if self.unfinished == 0:
            self.batcher._forget(job)
            if job.stream:
                job.events.put_nowait(None)
            elif not job.future.done():
                job.future.set_result(self.results)


def _fail(job: Job, error: Exception) -> None:
    if job.cancelled.is_set():
        return
    if job.stream:
        job.events.put_nowait(error)
    elif not job.future.done():
        job.future.set_exception(error)
