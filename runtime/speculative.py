"""Speculative decoding: a cheap proposer guesses ``k`` tokens, the target model checks them
all in one multi-token call over its in-place cache, and every guess it agrees with is a
token gained for the price of one step.

Proposers: a small draft model with the same tokenizer (the zoo's size ladder gives one for
every target; the target's own int4 graph is one too), or prompt lookup (copy what followed
the last n-gram earlier in the text — no second model; strong on code, on answers that
quote their prompt, and on loops). A draft model's turn is skipped when a repeat can be
copied.

Greedy output is token-for-token the target's own greedy output. Sampling uses the
accept/reject rule of Leviathan et al. (2023): a proposal ``x`` with draft probability
``q(x)`` is kept with probability ``min(1, p(x)/q(x))``, otherwise the token is drawn from
``max(0, p − q)`` renormalised, so every token is distributed as the target alone would
draw it (a seeded run repeats, but draws differ from the plain loop's). Rolling back
rejected guesses is a length change on the GroupQueryAttention cache (rows past a row's
length are ignored and overwritten), never a copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgezoo.errors import ConfigError
from edgezoo.runtime.corpus_lookup import CORPUS_GUESSES, CorpusIndex, CorpusLookup
from edgezoo.runtime.engine import supports_engine
from edgezoo.runtime.engine_rows import EngineRequest, Row, RowDelta
from edgezoo.runtime.language_model import Generation, StreamDelta
from edgezoo.runtime.sampling import SamplingParams, softmax, top_k_mask, top_p_mask
from edgezoo.runtime.session import has_pool, keeps_spinning
from edgezoo.runtime.slot_cache import SlotCache

DEFAULT_DRAFT_TOKENS = 4  # guesses per target call at the start
MAX_DRAFT_TOKENS_FACTOR = 3  # by default the count may grow to 3 × its start


class DraftLength:
    """How many guesses the next target call checks: 2 more after a call that kept every
    guess, 1 fewer after one that rejected some (Hugging Face's assisted-generation
    schedule), between 1 and ``most`` — or always ``start`` when ``most`` equals it.

    A run of copied code earns long guesses that cost the target little more than one
    token; a stretch of misses costs at most one guess. On a trained ``small`` model's
    held-out prompts, prompt lookup from 4 growing to 12 decoded 3–15 % faster than a
    fixed 4 (``benchmarks/results/speculative_small.md``)."""

    def __init__(self, start: int = DEFAULT_DRAFT_TOKENS, most: int | None = None) -> None:
        most = MAX_DRAFT_TOKENS_FACTOR * start if most is None else most
        if not 1 <= start <= most:
            raise ConfigError(
                f"draft_tokens={start}, max_draft_tokens={most}: give 1 <= draft_tokens <= "
                "max_draft_tokens (equal: a fixed count)."
            )
        self.k, self.most = start, most
        self.fixed = start == most

    def update(self, proposed: int, accepted: int) -> None:
        """After a call that checked ``proposed`` guesses and kept ``accepted`` of them."""
        if proposed and not self.fixed:
            grow = accepted == proposed
            self.k = min(self.most, self.k + 2) if grow else max(1, self.k - 1)


class GuessCounts:
    """How many guesses the next target call checks: a ``DraftLength`` per source of
    guesses ("copy": the text's own repeats, "corpus", "draft": a draft model), each
    adapting to how often its own guesses hold, and never more than ``room`` (what the
    request's budget and the context leave).

    With one schedule for all, a run of copied code (kept whole, so growing to 12) handed
    its length to the draft model's next turn: up to 12 draft steps, each a draft-model
    call, on guesses that hold far less often than copies."""

    def __init__(self, start: int = DEFAULT_DRAFT_TOKENS, most: int | None = None) -> None:
        template = DraftLength(start, most)  # refuses a bad pair now
        self.start, self.most, self.fixed = template.k, template.most, template.fixed
        self.room = self.most
        self.schedules: dict[str, DraftLength] = {}
        self.source: str | None = None  # the source asked last: whose guesses are checked

    @classmethod
    def of(cls, k: int | GuessCounts) -> GuessCounts:
        """``k`` itself, or a fixed count of ``k`` for an int (0: no guesses)."""
        if isinstance(k, GuessCounts):
            return k
        counts = cls(max(k, 1), max(k, 1))
        counts.room = k
        return counts

    def k(self, source: str) -> int:
        """How many guesses ``source`` may propose for the next call."""
        self.source = source
        schedule = self.schedules.setdefault(source, DraftLength(self.start, self.most))
        return max(0, min(self.room, schedule.k))

    def update(self, proposed: int, accepted: int) -> None:
        """After a call that checked ``proposed`` guesses of the source asked last."""
        if self.source is not None:
            self.schedules[self.source].update(proposed, accepted)
        self.source = None


def distribution(params: SamplingParams, logits: np.ndarray) -> np.ndarray:
    """The probabilities ``params`` draws the next token from (float64 ``[vocab]``)."""
    scores = np.asarray(logits, np.float64)[None, :] / params.temperature
    scores = top_p_mask(top_k_mask(scores, params.top_k), params.top_p)
    return softmax(scores)[0]


def accept_or_replace(
    p: np.ndarray, q: np.ndarray | None, token: int, rng: np.random.Generator
) -> int | None:
    """None when the proposed ``token`` is kept, else the token drawn in its place.

    ``q`` is the proposer's distribution (None: a deterministic proposal, q = 1 at token)."""
    q_token = 1.0 if q is None else q[token]
    if q_token > 0 and rng.random() < min(1.0, p[token] / q_token):
        return None
    residual = p.copy()
    if q is None:
        residual[token] = 0.0
    else:
        residual = np.maximum(p - q, 0.0)
    total = residual.sum()
    if total <= 0:  # p == q: nothing to correct towards
        residual, total = p, p.sum()
    return int(rng.choice(len(p), p=residual / total))


def overlapping_copy(seq: list[int], source: int, k: int) -> list[int]:
    """``k`` tokens copied from ``seq[source:]`` onwards, the way an LZ77 match copies: when
    the copy reaches the end of the text it goes on from its own first tokens, so a text
    that repeats a short stretch is predicted to keep repeating it.

    Without it, the latest match of a loop ``abcabc`` lies one period back and offers only
    the rest of that period: on the demo model's held-out prompts, calls after a long match
    proposed 2.8 tokens on average and kept 2.7 of them (the target agreed; the lookup ran
    out of text)."""
    found = seq[source : source + k]
    distance = len(seq) - source  # >= 1: a match always has a token after it
    while len(found) < k:
        found.append(found[len(found) - distance])
    return found


class PromptLookup:
    """Proposes the tokens that followed the latest earlier occurrence of the text's last
    ``ngram`` tokens (trying shorter n-grams down to 1), copied on past the text's end as
    an LZ77 match is (``overlapping_copy``).

    One instance follows one growing sequence and indexes each of its n-grams once, as the
    text grows: a proposal is a dictionary lookup, not a scan of the whole text (which cost
    up to ~150 µs a call at a few hundred tokens, several per cent of a quantized step)."""

    def __init__(self, ngram: int = 3) -> None:
        self.ngram = ngram
        self._seq: list[int] | None = None  # the sequence indexed (the caller's list)
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> latest start with a successor
        self._indexed = 0  # n-grams ending before this position are in the index

    def propose(
        self, seq: list[int], k: int | GuessCounts, params: SamplingParams, rng
    ) -> tuple[list, list]:
        found = self.copy(seq, GuessCounts.of(k).k("copy"))
        return found, [None] * len(found)

    def copy(self, seq: list[int], k: int, shortest: int = 1) -> list[int]:
        """``k`` tokens copied after the latest earlier match of ``seq``'s last n-gram (n
        from ``ngram`` down to ``shortest``); [] when there is none."""
        self._index(seq)
        for n in range(min(self.ngram, len(seq) - 1), shortest - 1, -1):
            start = self._latest.get(tuple(seq[-n:]))
            if start is not None:
                return overlapping_copy(seq, start + n, k)
        return []

    def _index(self, seq: list[int]) -> None:
        """Add the n-grams that now have a token after them (they end before ``len - 1``)."""
        if seq is not self._seq or len(seq) - 1 < self._indexed:  # another sequence
            self._seq, self._latest, self._indexed = seq, {}, 0
        for stop in range(self._indexed + 1, len(seq)):
            for n in range(1, min(self.ngram, stop) + 1):
                self._latest[tuple(seq[stop - n : stop])] = stop - n
        self._indexed = max(self._indexed, len(seq) - 1)

    def accept(self, seq_len: int) -> None:
        """The index follows the sequence itself: nothing to roll back."""


def top_probability(logits: np.ndarray) -> float:
    """The softmax's largest value: how sure a greedy draft is of its pick."""
    shifted = np.exp(logits - logits.max())
    return float(1.0 / shifted.sum())


def check_draft(draft: Any, target: Any) -> None:
    """A draft must run like the target (gqa on ort-cpu) and share its vocabulary. A draft
    with a thread pool must take turns with the target: neither's threads should go on
    spinning after its runs (a warning says how to load them). A one-thread draft has no
    pool: it runs on the calling thread, beside whatever the target's pool does."""
    if not supports_engine(draft):
        raise ConfigError("the draft model must run its gqa graph on ort-cpu, as the target.")
    pairs = (("draft", draft), ("target", target))
    spinning = [n for n, m in pairs if keeps_spinning(m.session)]
    if spinning and has_pool(draft.session):
        warnings.warn(
            f"the {' and '.join(spinning)} model's threads go on spinning after its runs and "
            "take the cores the other model runs on next (speculative decoding 1.4x slower on "
            "2 cores): load both with runtime.load(..., takes_turns=True), load the draft "
            "with threads=1, or pass draft=DIR to runtime.load.",
            stacklevel=3,
        )
    if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise ConfigError(
            "the draft model's tokenizer differs from the target's: speculative decoding "
            "needs the same vocabulary (train the draft with the target's tokenizer)."
        )


DRAFT_LOOKUP_NGRAM = 2  # a draft model's proposer copies instead after a match this long
MIN_CONFIDENCE = 0.4  # a draft model stops guessing after a token it gives less than this


class DraftModel:
    """A smaller model with the same tokenizer, decoding over its own one-row cache (one
    per request; ``SpeculativeLM`` checks the pair with ``check_draft`` once, at load —
    comparing the two vocabularies costs ~4 ms, which per request would be most of a
    small model's time to first token).

    When the text's last ``DRAFT_LOOKUP_NGRAM``+ tokens occurred earlier in it, what followed
    them there is proposed instead (``PromptLookup``): free, where the draft costs a step
    per guess, and on repeated stretches right more often. On a trained ``small`` target
    with an int4 ``nano`` draft: 1.63x the target alone drafting every call, 2.15x copying
    first (a single-token match copied first: less). ``lookup=False``: the draft every call.
    ``corpus``: when there is nothing to copy, what followed the text's last tokens in a
    corpus is tried before the draft model (``CorpusIndex``).

    The draft stops guessing after a token it gave less than ``min_confidence`` (greedy:
    its top probability; sampling: that of the token drawn): the target rarely keeps what
    follows a guess the draft itself doubted, and every guess costs a draft step."""

    def __init__(
        self,
        draft: Any,
        target: Any,
        lookup: bool = True,
        corpus: CorpusIndex | None = None,
        min_confidence: float = MIN_CONFIDENCE,
    ) -> None:
        self.lm = draft
        self.cache = SlotCache(draft.session, 1, draft.context, draft.decode_rows)
        self.length = 0  # tokens of the sequence in the draft's cache
        self.lookup = PromptLookup() if lookup else None
        self.corpus, self.min_confidence = corpus, min_confidence

    def propose(
        self, seq: list[int], k: int | GuessCounts, params: SamplingParams, rng
    ) -> tuple[list, list]:
        counts = GuessCounts.of(k)
        # A copy needs no room in the draft's cache (only the target's, which k allows for);
        # the draft's cache catches up at its next call.
        if self.lookup is not None:
            copied = self.lookup.copy(seq, counts.k("copy"), DRAFT_LOOKUP_NGRAM)
            if copied:
                return copied, [None] * len(copied)
        if self.corpus is not None:
            found = self.corpus.continuation(seq, min(counts.k("corpus"), CORPUS_GUESSES))
            if found:
                return found, [None] * len(found)
        k = min(counts.k("draft"), self.lm.context - len(seq))
        if k <= 0:
            return [], []
        logits = self.cache.prefill(0, np.array(seq[self.length :]), self.length)
        self.length = len(seq)
        tokens, dists = [], []
        for i in range(k):
            if params.greedy:
                token, q = int(np.argmax(logits)), None
                sure = self.min_confidence <= 0 or top_probability(logits) >= self.min_confidence
            else:
                q = distribution(params, logits)
                token = int(rng.choice(len(q), p=q))
                sure = q[token] >= self.min_confidence
            tokens.append(token)
            dists.append(q)
            if not sure:
                break
            if i + 1 < k:
                logits = self.cache.decode(np.array([token]), np.array([self.length]))[0]
                self.length += 1
        return tokens, dists

    def accept(self, seq_len: int) -> None:
        """The sequence now has ``seq_len`` tokens: forget cached guesses past its prefix."""
        self.length = min(self.length, seq_len - 1)


@dataclass
class SpeculativeStats:
    proposed: int = 0
    accepted: int = 0
    target_calls: int = 0
    # per source of guesses ("copy", "corpus", "draft"): [calls, proposed, accepted]
    by_source: dict[str, list[int]] = field(default_factory=dict)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def speculative_deltas(
    target: Any,
    prompt_ids: list[int],
    params: SamplingParams,
    proposer: PromptLookup | CorpusLookup | DraftModel,
    length: GuessCounts | None = None,
    stats: SpeculativeStats | None = None,
) -> Iterator[RowDelta]:
    """Continue one prompt on ``target`` with ``proposer``'s guesses, as many per target
    call as ``length`` says for their source (adapting as it goes); yields text as it is
    accepted (the last delta has the ``Generation``)."""
    if not params.logits_only:
        raise ConfigError(
            "speculative decoding applies no repetition/presence/frequency penalties and "
            "records no logprobs; leave them out or load the model without a draft."
        )
    stats = stats if stats is not None else SpeculativeStats()
    length = length or GuessCounts()
    # Greedy draws nothing: no generator, and no ``numpy.random`` import (~7 MB resident).
    rng = None if params.greedy else np.random.default_rng(params.seed)
    request = EngineRequest(list(prompt_ids), params, lambda delta: None)
    row = Row(request, target.tokenizer, context=target.context, vocab=0, eos_id=target.eos_id)
    cache = SlotCache(target.session, 1, target.context, target.decode_rows)
    seq = list(prompt_ids)
    logits = cache.prefill(0, np.array(seq), 0)  # the target's view after the prompt
    delta = _take(row, _pick(params, logits, rng), seq)
    while True:
        if delta is not None:
            yield delta
            if delta.finish_reason:
                return
        length.room = max(0, min(row.budget - len(row.ids), target.context - len(seq) - 1))
        guesses, dists = proposer.propose(seq, length, params, rng)
        chunk = np.array([seq[-1], *guesses])
        checked = cache.extend(0, chunk, len(seq) - 1)  # p after seq[-1] and each guess
        stats.target_calls += 1
        stats.proposed += len(guesses)
        # Greedy: the target's choice after every position, in one arg-max over the call.
        best = checked.argmax(axis=1).tolist() if params.greedy else None
        delta, kept = None, 0
        for i, guess in enumerate(guesses):
            if best is not None:
                replacement = None if best[i] == guess else best[i]
            else:
                replacement = accept_or_replace(
                    distribution(params, checked[i]), dists[i], guess, rng
                )
            token = guess if replacement is None else replacement
            kept += replacement is None
            delta = _joined(delta, _take(row, token, seq))
            if replacement is not None or (delta is not None and delta.finish_reason):
                break
        else:  # every guess kept: the target's next token comes free
            token = best[len(guesses)] if best is not None else _pick(params, checked[-1], rng)
            delta = _joined(delta, _take(row, token, seq))
        stats.accepted += kept
        if guesses and length.source is not None:
            tally = stats.by_source.setdefault(length.source, [0, 0, 0])
            tally[0] += 1
            tally[1] += len(guesses)
            tally[2] += kept
        length.update(len(guesses), kept)
        proposer.accept(len(seq))


def speculative_generate(
    target: Any,
    prompt_ids: list[int],
    params: SamplingParams,
    proposer: PromptLookup | CorpusLookup | DraftModel,
    length: GuessCounts | None = None,
) -> tuple[Generation, SpeculativeStats]:
    """``speculative_deltas`` run to the end: the ``Generation`` and the acceptance."""
    stats = SpeculativeStats()
    for delta in speculative_deltas(target, prompt_ids, params, proposer, length, stats):
        if delta.generation is not None:
            return delta.generation, stats
    raise RuntimeError("speculative decoding ended without a result")  # unreachable


def _joined(a: RowDelta | None, b: RowDelta | None) -> RowDelta | None:
    """Two deltas of one step as one (text appended; the later finish and result)."""
    if a is None or b is None:
        return a or b
    return RowDelta(a.text + b.text, b.finish_reason, b.generation)


def _pick(params: SamplingParams, logits: np.ndarray, rng) -> int:
    if params.greedy:
        return int(np.argmax(logits))
    p = distribution(params, logits)
    return int(rng.choice(len(p), p=p))


def _take(row: Row, token: int, seq: list[int]) -> RowDelta | None:
    """Give ``row`` one token; returns what the client gets now."""
    delta = row.accept(token)
    if delta is None or not delta.finish_reason:
        seq.append(token)
    return delta


class SpeculativeLM:
    """A ``LanguageModel`` whose ``generate`` / ``stream`` run speculatively (one prompt at
    a time; batches run prompt by prompt). Requests with penalties or logprobs run on the
    target's plain loop. Everything else is the target's: ``lm.target``.

    A server runs it on static batching: a batch's prompts decode one after another, each
    with fewer target calls — lower latency for few clients, less throughput than
    continuous batching for many."""

    speculative = True  # servers read this: no continuous batching over a draft

    def __init__(
        self,
        target: Any,
        draft: Any | None = None,
        *,
        k: int = DEFAULT_DRAFT_TOKENS,
        max_k: int | None = None,
        corpus: CorpusIndex | None = None,
    ):
        """``k`` guesses per target call to start with, adapting up to ``max_k`` (default
        3 × ``k``; ``max_k=k`` keeps it fixed) — see ``DraftLength``. ``corpus`` (prompt
        lookup, or before a draft model's turn): where guesses come from when the text has
        nothing to copy."""
        if not supports_engine(target):
            raise ConfigError(
                "speculative decoding needs the target's gqa graph on ort-cpu (its cache rolls "
                "back by a length change): export with the default settings and load it with "
                "backend='ort-cpu'."
            )
        GuessCounts(k, max_k)  # refuses a bad pair now, not mid-request
        if draft is not None:
            check_draft(draft, target)
        self.target, self.draft, self.k, self.max_k = target, draft, k, max_k
        self.corpus = corpus
        self.last_stats = SpeculativeStats()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    @property
    def proposer_name(self) -> str:
        corpus = "" if self.corpus is None else " + corpus"
        if self.draft is not None:
            return f"draft model {self.draft.variant} + prompt lookup{corpus}"
        return f"prompt{corpus} lookup"

    def length(self) -> GuessCounts:
        """Fresh guess-count schedules (one set per request)."""
        return GuessCounts(self.k, self.max_k)

    def _proposer(self) -> PromptLookup | CorpusLookup | DraftModel:
        if self.draft is not None:
            return DraftModel(self.draft, self.target, corpus=self.corpus)
        return PromptLookup() if self.corpus is None else CorpusLookup(self.corpus)

    def deltas(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[RowDelta]:
        self.last_stats = SpeculativeStats()
        return speculative_deltas(
            self.target, prompt_ids, params, self._proposer(), self.length(), self.last_stats
        )

    def generate_ids(
        self, prompt_ids: list[list[int]], params: SamplingParams | None = None, **overrides: Any
    ) -> list[Generation]:
        params = self.target._params(params, overrides)
        encoded = self.target.check_ids(prompt_ids)
        if not params.logits_only:
            return self.target.generate_ids(encoded, params)
        results = []
        for ids in encoded:
            *_, last = self.deltas(ids, params)
            results.append(last.generation)
        return results

    def stream_batch_ids(
        self, prompt_ids: list[list[int]], params: SamplingParams | None = None, **overrides: Any
    ) -> Iterator[StreamDelta]:
        """The static batcher's streaming call: each prompt speculatively, in turn."""
        params = self.target._params(params, overrides)
        encoded = self.target.check_ids(prompt_ids)
        if not params.logits_only:
            yield from self.target.stream_batch_ids(encoded, params)
            return
        for row, ids in enumerate(encoded):
            for delta in self.deltas(ids, params):
                yield StreamDelta(row, delta.text, delta.finish_reason, delta.generation)

    def generate(
        self, prompt: str | list[str], params: SamplingParams | None = None, **overrides: Any
    ) -> Generation | list[Generation]:
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        results = self.generate_ids(self.target.encode(prompts), params, **overrides)
        return results[0] if single else results

    def stream(
        self, prompt: str, params: SamplingParams | None = None, **overrides: Any
    ) -> Iterator[str]:
        """Text as the target accepts it; ``self.last`` holds the ``Generation`` after."""
        for text, _ in self.stream_events(prompt, params, **overrides):
            if text:
                yield text

    def stream_events(
        self, prompt: str, params: SamplingParams | None = None, **overrides: Any
    ) -> Iterator[tuple[str, str | None]]:
        params = self.target._params(params, overrides)
        if not params.logits_only:
            yield from self.target.stream_events(prompt, params)
            self.last = self.target.last
            return
        for delta in self.deltas(self.target.encode([prompt])[0], params):
            if delta.text:
                yield delta.text, None
            if delta.finish_reason:
                self.last = delta.generation
                yield "", delta.finish_reason
