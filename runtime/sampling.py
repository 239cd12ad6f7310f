"""Next-token selection from logits, in numpy.

The same steps and order as Hugging Face ``generate`` (repetition penalty, then temperature,
top-k, top-p), so a seed-free comparison against transformers agrees token for token in
greedy mode and in distribution when sampling. Everything works on a whole batch
``[batch, vocab]`` at once: the decode loop calls this once per step, so it must be cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from edgezoo.errors import ConfigError

GREEDY_BELOW = 1e-5  # temperatures under this are greedy (see SamplingParams.greedy)
MIN_PENALTY, MAX_PENALTY = 1e-3, 1e3  # repetition penalties that keep logits finite
MAX_OPENAI_PENALTY = 2.0  # presence / frequency penalties: OpenAI's range is [-2, 2]
MAX_LOGPROBS = 20  # alternatives per token a caller may ask for (OpenAI chat's limit)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature`` 0 (or under 1e-5) means greedy (top-k / top-p unused)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep going past </s>: every run has max_new_tokens (benchmarks)
    # OpenAI's penalties on tokens already *generated* (not the prompt): a logit drops by
    # presence_penalty once a token has appeared and by frequency_penalty per appearance.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Record each generated token's log-probability and this many top alternatives
    # (0 = the chosen token only); None records nothing. See ``token_logprobs``.
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        # Below this, dividing logits by the temperature overflows to inf/NaN scores: a
        # temperature that small means "take the most likely token" anyway.
        return self.temperature < GREEDY_BELOW

    @property
    def logits_only(self) -> bool:
        """No penalties and no logprobs: each token depends on its own step's logits alone.
        Speculative decoding and the lean greedy loop need that (penalties need every
        intermediate distribution, logprobs every token's)."""
        return (
            self.repetition_penalty == 1.0
            and not self.presence_penalty
            and not self.frequency_penalty
            and self.logprobs is None
        )

    def validate(self) -> SamplingParams:
        """Raise ``ConfigError`` naming the bad value and its valid range; return self."""
        # `not (x >= 0)` rather than `x < 0` so that NaN is rejected too.
        if not self.temperature >= 0:
            raise ConfigError(
                f"temperature={self.temperature!r} is invalid; use temperature >= 0 (0 = greedy)."
            )
        if not self.top_k >= 0:
            raise ConfigError(f"top_k={self.top_k!r} is invalid; use top_k >= 0 (0 = off).")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p!r} is invalid; use 0 < top_p <= 1 (1 = off).")
        if not MIN_PENALTY <= self.repetition_penalty <= MAX_PENALTY:
            # Beyond these, penalised float32 logits overflow to inf and sampling gets NaNs.
            raise ConfigError(
                f"repetition_penalty={self.repetition_penalty!r} is invalid; use "
                f"{MIN_PENALTY:g} <= repetition_penalty <= {MAX_PENALTY:g} (1 = off)."
            )
        if not self.max_new_tokens >= 1:
            raise ConfigError(
                f"max_new_tokens={self.max_new_tokens!r} is invalid; use max_new_tokens >= 1."
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -MAX_OPENAI_PENALTY <= value <= MAX_OPENAI_PENALTY:
                raise ConfigError(f"{name}={value!r} is invalid; use -2 <= {name} <= 2 (0 = off).")
        if self.logprobs is not None and not (
            isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise ConfigError(
                f"logprobs={self.logprobs!r} is invalid; use an integer from 0 to "
                f"{MAX_LOGPROBS} (alternatives per token) or None."
            )
        if not isinstance(self.ignore_eos, bool):
            raise ConfigError(f"ignore_eos={self.ignore_eos!r} is invalid; use True or False.")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(
                f"stop={self.stop!r} is invalid; use a tuple of non-empty strings, e.g. ('\\n\\n',)."
            )
        return self


def apply_repetition_penalty(
    logits: np.ndarray, seen: np.ndarray, penalty: float, *, out: np.ndarray | None = None
) -> np.ndarray:
    """CTRL / HF rule on tokens already seen: positive logits / penalty, negative * penalty.

    Dividing a negative logit would *raise* its probability, hence the two cases. Pass
    ``out=logits`` to work in place (no copy of the ``[batch, vocab]`` array per step).
    """
    if logits.shape != seen.shape:
        raise ValueError(f"logits {logits.shape} and seen {seen.shape} must have the same shape")
    if out is None:
        out = logits.copy()
    elif out is not logits:
        np.copyto(out, logits)
    if penalty == 1.0:
        return out
    penalised = np.where(logits < 0, logits * penalty, logits / penalty)
    np.copyto(out, penalised, where=seen, casting="same_kind")
    return out


def apply_openai_penalties(
    logits: np.ndarray, counts: np.ndarray, presence: float, frequency: float
) -> np.ndarray:
    """OpenAI's rule: ``logit - frequency * count - presence * (count > 0)``, per row.

    ``counts [batch, vocab]`` holds how often each row has *generated* each token (the
    prompt does not count, as in OpenAI and vLLM). Negative penalties encourage repeats.
    Returns a new float32 (or wider) array; ``logits`` is left as it was.
    """
    if logits.shape != counts.shape:
        raise ValueError(
            f"logits {logits.shape} and counts {counts.shape} must have the same shape"
        )
    dtype = np.result_type(logits.dtype, np.float32)
    out = logits.astype(dtype, copy=True)
    if frequency:
        out -= dtype.type(frequency) * counts
    if presence:
        out -= dtype.type(presence) * (counts > 0)
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row log-softmax in float64 (log-probabilities of tiny models' flat rows stay exact)."""
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_logprobs(
    logits: np.ndarray, chosen: np.ndarray, top_n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-probabilities of the ``chosen`` tokens and of each row's ``top_n`` best tokens.

    ``logits [batch, vocab]`` should be the scores the sampler chose from *after* penalties
    (repetition, presence, frequency) and *before* temperature / top-k / top-p: that is the
    model's own distribution as the request shaped it, which is what OpenAI reports.
    Returns ``(chosen_lp [batch], top_ids [batch, top_n], top_lps [batch, top_n])``, the
    top tokens best first (ties: lower id first). float64 log-probabilities.
    """
    lp = log_softmax(logits)
    rows = np.arange(lp.shape[0])
    chosen_lp = lp[rows, np.asarray(chosen, np.int64)]
    if top_n <= 0:
        empty = np.zeros((lp.shape[0], 0))
        return chosen_lp, empty.astype(np.int64), empty
    top_n = min(top_n, lp.shape[-1])
    part = np.argpartition(-lp, top_n - 1, axis=-1)[:, :top_n]
    part_lp = np.take_along_axis(lp, part, axis=-1)
    order = np.lexsort((part, -part_lp), axis=-1)  # by logprob, then id
    top_ids = np.take_along_axis(part, order, axis=-1)
    return chosen_lp, top_ids, np.take_along_axis(part_lp, order, axis=-1)


class TokenLogprob(NamedTuple):
    """One generated token's log-probability and its best alternatives (best first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob) pairs, ``logprobs`` of them


def logprob_entries(logits: np.ndarray, chosen: np.ndarray, top_n: int) -> list[TokenLogprob]:
    """``token_logprobs`` as one ``TokenLogprob`` per row: what a decode loop records."""
    chosen_lp, top_ids, top_lps = token_logprobs(logits, chosen, top_n)
    return [
        TokenLogprob(int(t), float(lp), tuple(zip(ids.tolist(), lps.tolist(), strict=True)))
        for t, lp, ids, lps in zip(
            np.asarray(chosen).tolist(), chosen_lp, top_ids, top_lps, strict=True
        )
    ]


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Set all but the ``k`` largest scores per row to -inf (ties at the k-th value are kept, as HF)."""
    vocab = scores.shape[-1]
    if k <= 0 or k >= vocab:
        return scores
    kth = np.partition(scores, vocab - k, axis=-1)[..., vocab - k, None]  # O(vocab), no sort
    return np.where(scores < kth, -np.inf, scores)


def top_k_candidates(logits: np.ndarray, k: int) -> np.ndarray | None:
    """Token ids ``[batch, k]`` (ascending) of each row's ``k`` best logits, or None.

    Lets top-p, softmax and the draw run on ``k`` columns instead of the whole vocabulary.
    None when a tie at the k-th value means HF would keep more than ``k`` (use the mask).
    """
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return None
    ids = np.argpartition(logits, vocab - k, axis=-1)[:, vocab - k :]
    kth = np.take_along_axis(logits, ids, axis=-1).min(axis=-1, keepdims=True)
    if ((logits >= kth).sum(axis=-1) > k).any():
        return None
    return np.sort(ids, axis=-1)  # vocabulary order: same draw as the full-vocab path


NUCLEUS_CANDIDATES = 64  # top-p first looks for the nucleus among this many best tokens


def top_p_mask(scores: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: keep the smallest set of tokens whose probability sums to >= ``p``.

    HF's ``TopPLogitsWarper`` rule (drop tokens whose ascending cumulative mass is <= 1 - p,
    always keep the most likely one). The nucleus is first sought among the
    ``NUCLEUS_CANDIDATES`` best tokens — partial selection, then a sort of those only — and
    the whole vocabulary is sorted only for rows whose candidates hold less than ``p``: a
    full sort per decode step was the costliest part of sampling a batch.
    """
    if p >= 1.0:
        return scores
    if scores.shape[-1] > NUCLEUS_CANDIDATES:
        fast = _top_p_among_candidates(scores, p, NUCLEUS_CANDIDATES)
        if fast is not None:
            return fast
    return _top_p_sorted(scores, p)


def _top_p_among_candidates(scores: np.ndarray, p: float, m: int) -> np.ndarray | None:
    """``top_p_mask`` when every row's ``m`` best tokens carry at least ``p`` of the mass
    (then every other token lies in the dropped tail); None otherwise."""
    ids = np.argpartition(scores, -m, axis=-1)[..., -m:]
    cand = np.take_along_axis(scores, ids, axis=-1)
    order = np.argsort(cand, axis=-1)  # ascending, as HF's cumulative sum runs
    ids, cand = np.take_along_axis(ids, order, axis=-1), np.take_along_axis(cand, order, axis=-1)
    top = cand[..., -1:]
    log_total = np.log(np.exp(scores - top).sum(axis=-1, keepdims=True))
    probs = np.exp(cand - top - log_total)
    mass = probs.sum(axis=-1, keepdims=True)
    if (mass < p).any():
        return None
    cumulative = (1.0 - mass) + np.cumsum(probs, axis=-1)  # the tail's mass comes first
    keep = cumulative > 1 - p
    keep[..., -1] = True  # the top token always stays
    out = np.full_like(scores, -np.inf)
    np.put_along_axis(out, ids, np.where(keep, cand, -np.inf), axis=-1)
    return out


def _top_p_sorted(scores: np.ndarray, p: float) -> np.ndarray:
    """``top_p_mask`` over the whole vocabulary, written exactly as HF's warper (ascending
    sort), so boundary cases agree up to the order of exactly tied scores."""
    order = np.argsort(scores, axis=-1)  # ascending; O(vocab log vocab)
    sorted_scores = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(sorted_scores), axis=-1)
    drop_sorted = cumulative <= 1 - p
    drop_sorted[..., -1] = False  # the top token always stays
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, scores)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row softmax; subtracting the max keeps exp() finite, -inf entries get probability 0."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class Sampler:
    """Picks one token per row. Owns its random generator, so a seed makes a run repeatable."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params.validate()

    @cached_property
    def rng(self) -> np.random.Generator:
        """Made on the first draw: greedy decoding never imports ``numpy.random``, which
        (with the hashlib / OpenSSL it pulls in) is ~7 MB of a runtime process' memory."""
        return np.random.default_rng(self.params.seed)

    def __call__(
        self,
        logits: np.ndarray,
        seen: np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> np.ndarray:
        """``logits [batch, vocab]`` (any float dtype), ``seen [batch, vocab]`` bool (prompt
        and output, for the repetition penalty), ``counts [batch, vocab]`` (generated tokens,
        for presence / frequency penalties) -> int64 ``[batch]``."""
        return self.pick(self.penalise(logits, seen, counts))

    def penalise(
        self,
        logits: np.ndarray,
        seen: np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> np.ndarray:
        """The logits after the request's penalties: what ``pick`` draws from and what
        ``token_logprobs`` should read (a caller recording logprobs calls both)."""
        logits = np.asarray(logits)
        if logits.ndim != 2:
            raise ValueError(f"logits must be [batch, vocab], got shape {logits.shape}")
        p = self.params
        if seen is not None and p.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, seen, p.repetition_penalty)
        if counts is not None and (p.presence_penalty or p.frequency_penalty):
            logits = apply_openai_penalties(logits, counts, p.presence_penalty, p.frequency_penalty)
        return logits

    def pick(self, logits: np.ndarray) -> np.ndarray:
        """One token per row of already-penalised ``logits``: greedy or temperature / top-k /
        top-p sampling."""
        p = self.params
        if p.greedy:
            return np.argmax(logits, axis=-1).astype(np.int64)  # first max wins, like torch
        # Temperature does not change the order, so top-k can pick candidates on raw logits.
        ids = top_k_candidates(logits, p.top_k)
        if ids is not None:
            logits = np.take_along_axis(logits, ids, axis=-1)
        scores = logits.astype(np.float64) / p.temperature
        if ids is None:
            scores = top_k_mask(scores, p.top_k)
        scores = top_p_mask(scores, p.top_p)
        picks = self._draw(softmax(scores))
        return picks if ids is None else np.take_along_axis(ids, picks[:, None], axis=-1)[:, 0]

    def _draw(self, probs: np.ndarray) -> np.ndarray:
        """Inverse-CDF sampling, one uniform per row, vectorised over the batch."""
        cdf = np.cumsum(probs, axis=-1)
        # (1 - u) is in (0, 1], so the threshold is > 0 and a zero-probability token
        # (a flat step of the CDF) can never be the first index reaching it.
        threshold = (1.0 - self.rng.random((probs.shape[0], 1))) * cdf[:, -1:]
        return (cdf < threshold).sum(axis=-1).astype(np.int64)


class StopChecker:
    """Finds stop strings in decoded text, and says how much text streaming must hold back.

    Held-back text is the longest tail that could still grow into a stop string: emitting it
    early would show the user part of "</answer>" before we know to cut it.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        if isinstance(stop, str):
            stop = (stop,)
        self.stop = tuple(s for s in stop if s)
        self.max_len = max((len(s) for s in self.stop), default=0)

    def find(self, text: str, start: int = 0) -> int:
        """Index of the earliest stop string at or after ``start``, or -1.

        A loop that already checked ``old_text`` can pass ``start=len(old_text) - max_len + 1``
        to scan only the new tail.
        """
        start = max(start, 0)
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits, default=-1)

    def truncate(self, text: str, since: int = 0) -> tuple[str, bool]:
        """``(text before the first stop string, True)``, or ``(text, False)`` if none occurs.

        ``since``: the length of the text the last call already checked; only a stop string
        ending after it can be new, so a decode loop scans each step's tail, not all text."""
        i = self.find(text, since - self.max_len + 1 if since else 0)
        return (text, False) if i < 0 else (text[:i], True)

    def holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
