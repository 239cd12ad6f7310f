"""Dynamic batching: a bounded queue of requests and the one worker that owns the model.

Requests that would get the same answer together (same sampling params, no seed) share one
model call, run in a thread so the event loop stays free; the model is never called from
two threads at once. Streams batch the same way (with other streams): their rows decode
together and each request receives its own rows' deltas as they come.
"""

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgezoo.runtime.protocol import RETRY_AFTER_S, overloaded, timed_out
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.server_metrics import Metrics


@dataclass(frozen=True)
class StreamEvent:
    index: int  # which prompt of the request
    text: str
    finish_reason: str | None  # set on the prompt's last event
    completion_tokens: int = 0  # set on the prompt's last event


@dataclass(eq=False)
class Job:
    """One request's work: its texts, how to sample (None for a classifier), where results go.

    A streaming job has ``events``, fed from the worker thread; ``cancelled`` is how the
    request tells that thread it has gone (client left, timeout): it gets nothing more, and
    its batch stops once every job in it has gone.
    """

    inputs: list[Any]  # an LM's prompts as token ids (tokenized off the loop); texts to classify
    params: SamplingParams | None = None
    prompt_tokens: int = 0
    stream: bool = False
    longest_prompt: int = 0  # tokens: a batch's rows share one budget, set by its longest
    future: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batchable(self) -> bool:
        """A seed fixes one random stream per model call, so a seeded job runs alone."""
        return self.params is None or self.params.seed is None

    def fits_with(self, other: "Job") -> bool:
        """Share a model call only when it gives each job the answer it would get alone
        (streams batch with streams, whole answers with whole answers)."""
        return (
            self.batchable
            and other.batchable
            and self.stream == other.stream
            and self.params == other.params
        )


class Batcher:
    """Owns the model: a bounded queue of jobs and the single worker that runs them."""

    def __init__(
        self, model: Any, metrics: Metrics, *, max_batch: int, max_queue: int, batch_wait_s: float
    ) -> None:
        self.model, self.metrics = model, metrics
        self.max_batch, self.max_queue, self.batch_wait_s = max_batch, max_queue, batch_wait_s
        self.is_lm = hasattr(model, "generate_ids")
        # A decoder-only batch shares context − its longest prompt new tokens; an
        # encoder–decoder's target has its own positions, so no source shortens it.
        shared = getattr(model, "family", "lm") != "s2s"
        self.context: int | None = getattr(model, "context", None) if shared else None
        self.pending: deque[Job] = deque()
        self.running: list[Job] = []
        self.arrived = asyncio.Event()
        self.closed = False
        self.task: asyncio.Task | None = None

    # -- called by requests --

    def submit(self, job: Job) -> None:
        if self.closed:
            raise overloaded("server is shutting down; retry shortly.")
        if self.queued_rows + len(job.inputs) > self.max_queue:
            raise overloaded(
                f"server is busy ({self.queued_rows} prompts queued); retry after {RETRY_AFTER_S} s."
            )
        self.pending.append(job)
        self._queue_changed()

    @property
    def queued_rows(self) -> int:
        """Prompts waiting: the queue is bounded in rows (each at most one context of
        tokens), so a request with many prompts takes as much of it as it will cost."""
        return sum(len(job.inputs) for job in self.pending)

    def cancel(self, job: Job) -> None:
        """Forget a job whose request gave up: drop it if queued, stop it if streaming."""
        job.cancelled.set()
        with contextlib.suppress(ValueError):
            self.pending.remove(job)
            self._queue_changed()

    # -- lifecycle --

    def start(self) -> None:
        self.task = asyncio.create_task(self._work())

    async def stop(self, timeout_s: float) -> None:
        """Refuse new jobs, finish the queued and running ones (up to ``timeout_s``), stop."""
        self.closed = True
        self.arrived.set()
        if self.task is None:
            return
        if not self.task.done():  # a worker that died has nothing left to finish
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
                return
            except asyncio.TimeoutError:
                self.task.cancel()  # a model call already running finishes in its thread
        for job in [*self.running, *self.pending]:
            _fail(job, overloaded("server shut down before this request finished."))
            job.cancelled.set()  # a stream batch still decoding in its thread stops
        self.pending.clear()

    # -- the worker --

    async def _work(self) -> None:
        while (job := await self._next()) is not None:
            self.running = await self._gather(job)
            if job.stream:
                await asyncio.to_thread(self._pump, self.running, asyncio.get_running_loop())
            else:
                await self._run(self.running)
            self.running = []

    async def _next(self) -> Job | None:
        """The oldest queued job; None once closed and drained."""
        while not self.pending:
            if self.closed:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        job = self.pending.popleft()
        self._queue_changed()
        return job

    async def _gather(self, first: Job) -> list[Job]:
        """``first`` plus compatible jobs, up to ``max_batch`` rows, waiting ``batch_wait_s``
        at most: a few ms of latency buys a batch whose rows cost little more than one."""
        batch, rows, longest = [first], len(first.inputs), first.longest_prompt
        if not first.batchable:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while rows < self.max_batch:
            for job in list(self.pending):
                if (
                    job.fits_with(first)
                    and rows + len(job.inputs) <= self.max_batch
                    and self._budget_kept(longest, job)
                ):
                    self.pending.remove(job)
                    batch.append(job)
                    rows += len(job.inputs)
                    longest = max(longest, job.longest_prompt)
            self._queue_changed()
            remaining = deadline - loop.time()
            if rows >= self.max_batch or remaining <= 0 or self.closed:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    def _budget_kept(self, longest: int, job: Job) -> bool:
        """Would joining cost anyone tokens? A batch decodes at most context − its longest
        prompt tokens, so a long prompt may only join when no row then runs out early."""
        if self.context is None or job.params is None:
            return True
        return max(longest, job.longest_prompt) + job.params.max_new_tokens <= self.context

    async def _run(self, batch: list[Job]) -> None:
        """One model call (in a thread) for the whole batch; each job gets its own rows."""
        inputs = [text for job in batch for text in job.inputs]
        try:
            outputs = await asyncio.to_thread(self._call_model, inputs, batch[0].params)
        except Exception as e:  # reaches each request as its own error (400 or 500)
            for job in batch:
                _fail(job, e)
            return
        self.metrics.prompt_tokens.inc(sum(job.prompt_tokens for job in batch))
        start = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(outputs[start : start + len(job.inputs)])
            start += len(job.inputs)

    def _call_model(self, inputs: list[Any], params: SamplingParams | None) -> list[Any]:
        """Runs in the worker thread. A request with more texts than ``max_batch`` is split."""
        outputs: list[Any] = []
        for start in range(0, len(inputs), self.max_batch):
            chunk = inputs[start : start + self.max_batch]
            self.metrics.batch_size.observe(len(chunk))
            if self.is_lm:
                generations = self.model.generate_ids(chunk, params)
                self.metrics.generated_tokens.inc(sum(len(g.token_ids) for g in generations))
                outputs.extend(generations)
            else:
                outputs.extend(self.model.predict_proba(chunk))
        return outputs

    def _pump(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        """Runs in the worker thread: stream the batch's prompts decoded together, handing
        each job its rows' events on the request's loop.

        A job gets ``None`` (its end) as soon as its own rows have finished, an exception
        on error. ``cancelled`` is checked after every event: a job whose client left gets
        nothing more, and once every job has left the batch stops (at most one more token).
        """

        def put(job: Job, item: StreamEvent | Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(job.events.put_nowait, item)

        rows = [(job, index) for job in batch for index in range(len(job.inputs))]
        prompts = [ids for job in batch for ids in job.inputs]
        unfinished = {id(job): len(job.inputs) for job in batch}
        self.metrics.prompt_tokens.inc(sum(job.prompt_tokens for job in batch))
        try:
            for start in range(0, len(prompts), self.max_batch):
                chunk = prompts[start : start + self.max_batch]
                self.metrics.batch_size.observe(len(chunk))
                deltas = self.model.stream_batch_ids(chunk, batch[0].params)
                with contextlib.closing(deltas):
                    for delta in deltas:
                        if all(job.cancelled.is_set() for job in batch):
                            return
                        job, index = rows[start + delta.row]
                        if job.cancelled.is_set():
                            continue
                        tokens = len(delta.generation.token_ids) if delta.generation else 0
                        self.metrics.generated_tokens.inc(tokens)
                        put(job, StreamEvent(index, delta.text, delta.finish_reason, tokens))
                        if delta.finish_reason:
                            unfinished[id(job)] -= 1
                            if unfinished[id(job)] == 0:
                                put(job, None)
        except Exception as e:
            for job in batch:
                if unfinished[id(job)]:
                    put(job, e)
        finally:
            for job in batch:
                if unfinished[id(job)]:
                    put(job, None)

    def _queue_changed(self) -> None:
        self.arrived.set()
        self.metrics.queue_depth.set(self.queued_rows)


def _fail(job: Job, error: Exception) -> None:
    if job.cancelled.is_set():
        return  # its request has gone: an unread exception would only be logged as a leak
    if job.stream:
        job.events.put_nowait(error)
    elif not job.future.done():
        job.future.set_exception(error)


@contextlib.contextmanager
def cancelled_unless_answered(batcher: Batcher, job: Job, timeout_s: float) -> Iterator[None]:
    """Around a request's wait for its job: if the wait ends in anything but an answer the
    job is cancelled — a timeout becomes a 504, a cancelled request (client gone, shutdown)
    goes on as it was."""
    try:
        yield
    except asyncio.TimeoutError:
        batcher.cancel(job)
        raise timed_out(timeout_s) from None
    except BaseException:
        batcher.cancel(job)
        raise


async def wait_result(batcher: Batcher, job: Job, timeout_s: float) -> list[Any]:
    with cancelled_unless_answered(batcher, job, timeout_s):
        return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)


async def next_event(job: Job, deadline: float) -> StreamEvent | Exception | None:
    """The job's next stream event, or ``asyncio.TimeoutError`` past the request's deadline."""
    remaining = deadline - asyncio.get_running_loop().time()
    return await asyncio.wait_for(job.events.get(), max(remaining, 0))
