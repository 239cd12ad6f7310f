"""runtime.sampling: greedy, seeded sampling, top-k / top-p masks, penalty, stop strings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgezoo.errors import ConfigError, EdgeZooError
from edgezoo.runtime.sampling import (
    Sampler,
    SamplingParams,
    StopChecker,
    apply_repetition_penalty,
    top_k_mask,
    top_p_mask,
)

ROOT = Path(__file__).resolve().parents[1]


def _random_logits(batch: int = 8, vocab: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, vocab)).astype(np.float32)


def _frequencies(params: SamplingParams, probs: list[float], n: int = 20_000) -> np.ndarray:
    """Sample ``n`` times from one distribution (as one batch of n identical rows)."""
    logits = np.tile(np.log(np.asarray(probs, dtype=np.float32)), (n, 1))
    tokens = Sampler(params)(logits)
    return np.bincount(tokens, minlength=len(probs)) / n


# --- greedy -------------------------------------------------------------------------------


def test_greedy_is_argmax():
    logits = _random_logits()
    tokens = Sampler(SamplingParams())(logits)
    assert tokens.dtype == np.int64 and tokens.shape == (8,)
    np.testing.assert_array_equal(tokens, logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1e-310, 1e-12, 9.9e-6])
def test_a_vanishing_temperature_is_greedy_not_nan(temperature):
    logits = _random_logits()
    tokens = Sampler(SamplingParams(temperature=temperature, seed=0))(logits)
    np.testing.assert_array_equal(tokens, logits.argmax(-1))
    assert not SamplingParams(temperature=1e-4).greedy  # just above the cut: still sampling


def test_greedy_ties_pick_lowest_index():
    logits = np.array([[0.0, 2.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    np.testing.assert_array_equal(Sampler(SamplingParams())(logits), [1, 0])


def test_greedy_accepts_float16():
    logits = _random_logits().astype(np.float16)
    np.testing.assert_array_equal(Sampler(SamplingParams())(logits), logits.argmax(-1))


# --- seeded sampling ----------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = np.zeros((64, 1000), dtype=np.float32)  # flat: every draw is informative

    def run(seed: int) -> np.ndarray:
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
        return np.stack([sampler(logits) for _ in range(3)])

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # the generator advances between steps


def test_top_k_1_equals_greedy():
    logits = _random_logits(batch=16)
    tokens = Sampler(SamplingParams(temperature=1.5, top_k=1, seed=3))(logits)
    np.testing.assert_array_equal(tokens, logits.argmax(-1))


def test_tiny_top_p_equals_greedy():
    logits = _random_logits(batch=16)
    tokens = Sampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=3))(logits)
    np.testing.assert_array_equal(tokens, logits.argmax(-1))


# --- distributions after masking ------------------------------------------------------------

PROBS = [0.4, 0.25, 0.15, 0.1, 0.06, 0.04]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # no masking: the distribution itself
        (SamplingParams(temperature=1.0, seed=0), PROBS),
        # top_k=3 keeps 0.4, 0.25, 0.15 -> renormalised by 0.8
        (SamplingParams(temperature=1.0, top_k=3, seed=1), [0.5, 0.3125, 0.1875, 0, 0, 0]),
        # top_p=0.75: 0.4 + 0.25 = 0.65 < 0.75, + 0.15 = 0.8 >= 0.75 -> keep three
        (SamplingParams(temperature=1.0, top_p=0.75, seed=2), [0.5, 0.3125, 0.1875, 0, 0, 0]),
        # top_k=4 -> [0.4, 0.25, 0.15, 0.1] / 0.9 = [.444, .278, .167, .111];
        # then top_p=0.7: .444 + .278 = .722 >= 0.7 -> keep two -> [0.4, 0.25] / 0.65
        (
            SamplingParams(temperature=1.0, top_k=4, top_p=0.7, seed=3),
            [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0],
        ),
        # temperature 2: p ** (1/2), renormalised
        (
            SamplingParams(temperature=2.0, seed=4),
            list(np.sqrt(PROBS) / np.sqrt(PROBS).sum()),
        ),
    ],
    ids=["plain", "top_k", "top_p", "top_k+top_p", "temperature"],
)
def test_sampled_frequencies_match_distribution(params, expected):
    freq = _frequencies(params, PROBS)
    expected = np.asarray(expected)
    # 20k draws: one standard error is <= 0.0035, so 0.015 is > 4 sigma.
    np.testing.assert_allclose(freq, expected, atol=0.015)
    assert np.all(freq[expected == 0] == 0), "a masked token was sampled"


def test_top_k_sampling_keeps_ties_at_the_kth_value():
    # HF keeps every token tied with the k-th best: here all four survive top_k=2.
    probs = [0.4, 0.2, 0.2, 0.2]
    freq = _frequencies(SamplingParams(temperature=1.0, top_k=2, seed=5), probs)
    np.testing.assert_allclose(freq, probs, atol=0.015)


def test_top_k_mask_keeps_ties_like_hf():
    scores = np.array([[1.0, 3.0, 2.0, 2.0, 0.0]])
    kept = np.isfinite(top_k_mask(scores, 2))
    np.testing.assert_array_equal(kept, [[False, True, True, True, False]])


def test_top_p_mask_always_keeps_the_top_token():
    scores = np.log(np.array([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3]]))
    kept = np.isfinite(top_p_mask(scores, 0.01))
    np.testing.assert_array_equal(kept, [[True, False, False], [False, True, False]])


# --- repetition penalty ---------------------------------------------------------------------


def test_repetition_penalty_hand_example():
    logits = np.array([[2.0, -1.0, 0.5, -3.0, 0.0]], dtype=np.float32)
    seen = np.array([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    np.testing.assert_array_equal(out, [[1.0, -2.0, 0.5, -3.0, 0.0]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(logits[0, :2], [2.0, -1.0])  # input untouched by default


def test_repetition_penalty_in_place():
    logits = np.array([[4.0, -4.0], [4.0, -4.0]], dtype=np.float32)
    seen = np.array([[True, True], [False, False]])
    out = apply_repetition_penalty(logits, seen, 4.0, out=logits)
    assert out is logits
    np.testing.assert_array_equal(logits, [[1.0, -16.0], [4.0, -4.0]])


def test_repetition_penalty_changes_greedy_choice():
    logits = np.array([[3.0, 2.0, -1.0]], dtype=np.float32)
    seen = np.array([[True, False, False]])
    assert Sampler(SamplingParams(repetition_penalty=2.0))(logits, seen)[0] == 1
    assert Sampler(SamplingParams(repetition_penalty=1.2))(logits, seen)[0] == 0
    assert Sampler(SamplingParams())(logits, seen)[0] == 0  # penalty 1 = off


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, r"temperature=-0\.1.*>= 0"),
        ({"temperature": float("nan")}, r"temperature=nan"),
        ({"top_k": -1}, r"top_k=-1.*>= 0"),
        ({"top_p": 0.0}, r"top_p=0\.0.*0 < top_p <= 1"),
        ({"top_p": 1.5}, r"top_p=1\.5.*0 < top_p <= 1"),
        (
            {"repetition_penalty": 0.0},
            r"repetition_penalty=0\.0.*0\.001 <= repetition_penalty <= 1000",
        ),
        ({"max_new_tokens": 0}, r"max_new_tokens=0.*>= 1"),
        ({"stop": ("ok", "")}, r"stop=.*non-empty"),
    ],
)
def test_validate_names_bad_value_and_range(kwargs, match):
    params = SamplingParams(**kwargs)
    with pytest.raises(ConfigError, match=match) as info:
        params.validate()
    assert isinstance(info.value, EdgeZooError) and isinstance(info.value, ValueError)
    with pytest.raises(ConfigError):
        Sampler(params)  # the sampler refuses it too


def test_validate_accepts_defaults_and_edges():
    assert SamplingParams().validate() == SamplingParams()
    SamplingParams(temperature=0.7, top_k=50, top_p=1.0, repetition_penalty=0.9).validate()


def test_params_are_frozen():
    with pytest.raises(AttributeError):
        SamplingParams().temperature = 1.0  # type: ignore[misc]


# --- stop strings ---------------------------------------------------------------------------


def test_stop_truncates_before_earliest_stop_string():
    stops = StopChecker(["###", "END"])
    assert stops.truncate("answer: 42 END then ### more") == ("answer: 42 ", True)
    assert stops.truncate("answer: 42 ### END") == ("answer: 42 ", True)
    assert stops.truncate("no stop here") == ("no stop here", False)
    assert stops.truncate("END") == ("", True)


def test_stop_find_from_start():
    stops = StopChecker(["ab"])
    assert stops.find("xxabyyab") == 2
    assert stops.find("xxabyyab", start=3) == 6
    assert stops.find("xxabyyab", start=7) == -1


def test_holdback_is_longest_suffix_that_may_start_a_stop_string():
    stops = StopChecker(["</s>", "###"])
    assert stops.holdback("hello <") == 1
    assert stops.holdback("hello </") == 2
    assert stops.holdback("hello </s") == 3
    assert stops.holdback("hello #") == 1
    assert stops.holdback("hello ##") == 2
    assert stops.holdback("hello") == 0
    assert stops.holdback("hello </s>") == 0  # a full match is find()'s job, not held back
    assert stops.holdback("") == 0
    assert StopChecker(["aab"]).holdback("xaa") == 2
    assert StopChecker(["aab"]).holdback("xa") == 1
    assert StopChecker([]).holdback("anything") == 0


def test_no_stop_strings_never_stop():
    assert StopChecker(()).truncate("a b c") == ("a b c", False)


# --- edge constraint ------------------------------------------------------------------------


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "import edgezoo.runtime.sampling, edgezoo.runtime.streaming\n"
        "del sys.modules['torch']\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_truncate_since_only_scans_the_new_tail_but_finds_stops_across_it():
    stops = StopChecker(["</a>", "xyz"])
    text = "hello </"
    assert stops.truncate(text + "a> more", since=len(text)) == ("hello ", True)
    assert stops.truncate("abc xy" + "z!", since=6) == ("abc ", True)
    # a stop wholly inside text checked before is not searched again (it would have been cut)
    assert stops.truncate("xyz and more", since=12) == ("xyz and more", False)
    assert stops.truncate("xyz and more") == ("", True)


# --- OpenAI penalties and logprobs ---------------------------------------------------------


def test_openai_penalties_follow_openais_formula():
    from edgezoo.runtime.sampling import apply_openai_penalties

    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], np.float32)
    counts = np.array([[0, 2, 1], [3, 0, 0]], np.int32)
    out = apply_openai_penalties(logits, counts, presence=0.5, frequency=0.25)
    expected = logits - 0.25 * counts - 0.5 * (counts > 0)
    np.testing.assert_allclose(out, expected)
    np.testing.assert_array_equal(logits[0], [1.0, 2.0, 3.0])  # the input is untouched


def test_frequency_penalty_changes_the_greedy_pick_once_a_token_repeats():
    logits = np.array([[3.0, 2.5, 0.0]], np.float32)
    sampler = Sampler(SamplingParams(frequency_penalty=1.0))
    assert sampler(logits, counts=np.array([[0, 0, 0]]))[0] == 0
    assert sampler(logits, counts=np.array([[1, 0, 0]]))[0] == 1  # 3 - 1 < 2.5


def test_token_logprobs_equal_a_log_softmax_and_sort_the_top_tokens():
    from edgezoo.runtime.sampling import logprob_entries, token_logprobs

    logits = _random_logits(batch=3, vocab=40)
    chosen = np.array([5, 0, 39])
    lp, top_ids, top_lps = token_logprobs(logits, chosen, 4)
    x = logits.astype(np.float64)
    ref = x - np.log(np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp, ref[np.arange(3), chosen], atol=1e-12)
    np.testing.assert_array_equal(top_ids, np.argsort(-ref, axis=-1)[:, :4])
    np.testing.assert_allclose(top_lps, np.sort(ref, axis=-1)[:, ::-1][:, :4], atol=1e-12)
    assert token_logprobs(logits, chosen, 0)[1].shape == (3, 0)
    entry = logprob_entries(logits, chosen, 2)[1]
    assert entry.token_id == 0 and len(entry.top) == 2 and entry.top[0][0] == top_ids[1, 0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("presence_penalty", 2.5), ("frequency_penalty", -3), ("logprobs", 21), ("logprobs", -1)],
)
def test_openai_fields_out_of_range_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value}).validate()


@pytest.mark.parametrize("vocab", [100, 4096, 32000])
@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_top_p_among_candidates_keeps_exactly_the_full_sorts_nucleus(vocab, scale):
    """The fast path (partial selection of the best tokens) must keep the same tokens as
    sorting the whole vocabulary, sharp and flat distributions alike (a flat one falls
    back to the full sort)."""
    from edgezoo.runtime.sampling import _top_p_sorted

    rng = np.random.default_rng(vocab + int(scale * 10))
    for p in (0.1, 0.5, 0.9, 0.99):
        scores = rng.normal(size=(4, vocab)) * scale
        fast, full = top_p_mask(scores, p), _top_p_sorted(scores, p)
        assert np.array_equal(np.isfinite(fast), np.isfinite(full))
        assert np.array_equal(fast[np.isfinite(fast)], full[np.isfinite(full)])
