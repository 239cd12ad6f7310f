"""One request's row in the continuous-batching engine: its own sampler (settings and seeded
random stream), stop strings, token budget, streamed text and timing.

A row advances one token at a time whatever the rest of the batch does, so each request
gets the answer it would get alone (same tokens for the same seed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from edgezoo.runtime.language_model import Generation
from edgezoo.runtime.sampling import (
    Sampler,
    SamplingParams,
    StopChecker,
    TokenLogprob,
    logprob_entries,
)
from edgezoo.runtime.streaming import TextStreamer


class RowDelta(NamedTuple):
    """New text for one request; the last one carries the finish reason and the result."""

    text: str
    finish_reason: str | None
    generation: Generation | None


@dataclass(eq=False)
class EngineRequest:
    """One prompt to continue. ``on_delta`` is called from the engine's thread with each
    ``RowDelta`` (or the exception that ended the row); ``cancelled`` stops it at the next
    step and frees its slot."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[RowDelta | Exception], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


class Row:
    def __init__(
        self, request: EngineRequest, tokenizer, *, context: int, vocab: int, eos_id: int | None
    ) -> None:
        params = request.params
        self.request, self.params, self.eos_id = request, params, eos_id
        self.prompt = request.prompt_ids
        self.sampler = Sampler(params)
        self.stops = StopChecker(params.stop)
        self.streamer = TextStreamer(tokenizer, prompt_ids=self.prompt)
        self.budget = min(params.max_new_tokens, context - len(self.prompt))
        self.prefilled = 0  # prompt tokens already in the cache
        self.length = 0  # tokens in the cache once prefilled
        self.ids: list[int] = []
        self.text, self.emitted = "", 0
        self.next_token = 0  # the token the next decode step feeds
        self.first_token_at = 0.0
        self.step_s: list[float] = []
        self.seen = None
        if params.repetition_penalty != 1.0:
            self.seen = np.zeros((1, vocab), bool)
            self.seen[0, self.prompt] = True
        self.counts = None  # generated tokens, for presence / frequency penalties
        if params.presence_penalty or params.frequency_penalty:
            self.counts = np.zeros((1, vocab), np.int32)
        self.logprobs: list[TokenLogprob] | None = None if params.logprobs is None else []
        self.pending_logprob: TokenLogprob | None = None

    @property
    def shares_sampler(self) -> bool:
        """Whether this row's draw needs nothing of its own (no seed, penalties or
        logprobs), so the engine may sample it with other rows of the same settings."""
        p = self.params
        return (
            p.seed is None and self.seen is None and self.counts is None and self.logprobs is None
        )

    @property
    def sampling_key(self) -> SamplingParams:
        """The settings a shared draw depends on."""
        p = self.params
        return SamplingParams(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.prompt)

    def sample(self, logits: np.ndarray) -> int:
        """This row's next token from its logits ``[vocab]``, with its own settings (and
        its log-probabilities recorded when the request asked for them)."""
        scores = self.sampler.penalise(logits[None, :], self.seen, self.counts)
        token = int(self.sampler.pick(scores)[0])
        if self.logprobs is not None:
            self.pending_logprob = logprob_entries(scores, np.array([token]), self.params.logprobs)[
                0
            ]
        if self.seen is not None:
            self.seen[0, token] = True
        if self.counts is not None:
            self.counts[0, token] += 1
        return token

    def accept(self, token: int) -> RowDelta | None:
        """Take a sampled token; return what the client gets now (None: nothing yet).

        The same rules as ``LanguageModel``'s loop: EOS ends the row without being kept, a
        stop string cuts the text before it, the budget ends it at ``length``."""
        if not self.first_token_at:
            self.first_token_at = time.perf_counter()
        finish = None
        if token == self.eos_id and not self.params.ignore_eos:
            finish = "eos"
        else:
            self.ids.append(token)
            if self.logprobs is not None and self.pending_logprob is not None:
                self.logprobs.append(self.pending_logprob)
            self.next_token = token
            checked = len(self.text)
            self.text += self.streamer.push(token)
            if self.stops.stop:
                self.text, found = self.stops.truncate(self.text, since=checked)
                finish = "stop" if found else None
            if finish is None and len(self.ids) >= self.budget:
                finish = "length"
        if finish in ("eos", "length"):
            self.text += self.streamer.flush()
        held = 0 if finish else self.stops.holdback(self.text)
        safe = len(self.text) - held
        delta = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        if finish:
            return RowDelta(delta, finish, self.result(finish))
        return RowDelta(delta, None, None) if delta else None

    def result(self, finish: str) -> Generation:
        now = time.perf_counter()
        return Generation(
            text=self.text,
            token_ids=list(self.ids),
            finish_reason=finish,
            prompt_tokens=len(self.prompt),
            time_to_first_token_s=self.first_token_at - self.request.submitted,
            decode_s=now - self.first_token_at,
            step_s=self.step_s,
            logprobs=None if self.logprobs is None else list(self.logprobs),
        )
