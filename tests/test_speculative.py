"""Speculative decoding: greedy text is token-for-token the target's own, whatever the
proposer and the number of guesses; sampling keeps the target's distribution."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import lively_model_dir

from edgezoo import runtime
from edgezoo.errors import ConfigError
from edgezoo.runtime.sampling import SamplingParams as SP
from edgezoo.runtime.session import has_pool, keeps_spinning, spins
from edgezoo.runtime.speculative import (
    DraftLength,
    DraftModel,
    GuessCounts,
    PromptLookup,
    SpeculativeLM,
    accept_or_replace,
    speculative_generate,
)

PROMPTS = ["def main(args):\n    return", "x = 1\nx = 1\nx = 1\n", "import os"]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory, tokenizer):
    return lively_model_dir(tmp_path_factory.mktemp("spec-target"), tokenizer, seed=0)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory, tokenizer):
    small = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64}
    small |= {"num_attention_heads": 2, "num_key_value_heads": 1}
    return lively_model_dir(tmp_path_factory.mktemp("spec-draft"), tokenizer, seed=1, **small)


@pytest.fixture(scope="module")
def target(target_dir):
    return runtime.load(target_dir, backend="ort-cpu", variant="gqa", takes_turns=True)


@pytest.fixture(scope="module")
def draft(draft_dir):
    return runtime.load(draft_dir, backend="ort-cpu", variant="gqa", takes_turns=True)


@pytest.mark.parametrize("k", [1, 3, 8, "adaptive"])
@pytest.mark.parametrize("proposer", ["self", "draft", "lookup"])
def test_greedy_text_is_the_targets_own(target, draft, proposer, k):
    params = SP(temperature=0, max_new_tokens=50, ignore_eos=True)
    for prompt in PROMPTS:
        ids = target.encode([prompt])[0]
        want = target.generate_ids([ids], params)[0]
        make = {
            "self": lambda: DraftModel(target, target, lookup=False, min_confidence=0),
            "draft": lambda: DraftModel(draft, target),
            "lookup": PromptLookup,
        }[proposer]
        length = GuessCounts(2, 12) if k == "adaptive" else GuessCounts(k, k)
        got, stats = speculative_generate(target, ids, params, make(), length)
        assert got.token_ids == want.token_ids and got.text == want.text
        assert got.finish_reason == "length"
        if proposer == "self":  # a draft that is the target is always right
            assert stats.acceptance == 1.0
            if k == "adaptive":  # 1 from the prompt, then 3 + 5 + 7 + 9 + 11 + 13, then 1
                assert stats.target_calls == 7 and length.schedules["draft"].k == 12
            else:
                assert stats.target_calls <= -(-50 // (k + 1)) + 1


@pytest.fixture(scope="module")
def int8_target(target_dir, tmp_path_factory):
    """The target's per-row dynamic int8 graph (what ``quantize --to int8`` writes as
    ``gqa-int8-dynamic``), recorded in a copy of its dir."""
    from edgezoo import manifest
    from edgezoo.onnx_files import file_facts
    from edgezoo.quantize import graphs
    from edgezoo.quantize.pipeline import decode_rows

    path = tmp_path_factory.mktemp("spec-int8") / "target"
    shutil.copytree(target_dir, path)
    entry = manifest.read(path)["variants"]["gqa"]
    dst = path / "onnx" / "model.gqa-int8-dynamic.onnx"
    details = graphs.int8_dynamic(path / "onnx" / entry["file"], dst, with_head=True, per_row=True)
    quantized = {"file": dst.name, "precision": "int8", "quantization": details}
    manifest.add_variant(
        path, "gqa-int8-dynamic", {**entry, **quantized, **decode_rows(details), **file_facts(dst)}
    )
    return runtime.load(path, backend="ort-cpu", variant="gqa-int8-dynamic")


@pytest.mark.parametrize("k", [1, 3, 8, "adaptive"])
def test_per_row_int8_greedy_text_is_the_targets_own(int8_target, k):
    """Int8 activations round: a ~1e-6 difference between the attention kernel's one-row and
    several-row paths can flip a quantization step and then a token. Per-row scales and
    two-row decode steps keep every logit the plain loop's, so the text is too — up to the
    context's end."""
    assert int8_target.decode_rows == 2
    assert int8_target.variant == "gqa-int8-dynamic"
    for params in (
        SP(temperature=0, max_new_tokens=50, ignore_eos=True),
        SP(temperature=0, max_new_tokens=500),  # runs into the context: length
    ):
        for prompt in PROMPTS:
            ids = int8_target.encode([prompt])[0]
            want = int8_target.generate_ids([ids], params)[0]
            for proposer in (PromptLookup(), DraftModel(int8_target, int8_target)):
                length = GuessCounts(2, 12) if k == "adaptive" else GuessCounts(k, k)
                got, _ = speculative_generate(int8_target, ids, params, proposer, length)
                assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason)


def test_per_row_int8_logits_do_not_depend_on_the_call(int8_target):
    """A token's logits are the same bits whether it runs alone or among guesses: the
    property greedy identity rests on. In a batch of requests (one token per row: ORT's GQA
    kernel takes several per call only for one row) they stay within rounding."""
    from edgezoo.runtime.slot_cache import SlotCache

    rng = np.random.default_rng(0)
    prompt, other, follow = (
        rng.integers(5, 200, 20),
        rng.integers(5, 200, 31),
        rng.integers(5, 200, 12),
    )
    alone = SlotCache(int8_target.session, 1, int8_target.context, decode_rows=2)
    alone.prefill(0, prompt, 0)
    single = np.stack([alone.extend(0, follow[i : i + 1], 20 + i)[0] for i in range(12)])
    decoded = SlotCache(int8_target.session, 1, int8_target.context, decode_rows=2)
    decoded.prefill(0, prompt, 0)
    steps = [decoded.decode(follow[i : i + 1], np.array([20 + i]))[0] for i in range(12)]
    chunked = SlotCache(int8_target.session, 1, int8_target.context, decode_rows=2)
    chunked.prefill(0, prompt, 0)
    guessed = np.concatenate([chunked.extend(0, follow[i : i + 4], 20 + i) for i in (0, 4, 8)])
    assert np.array_equal(single, guessed) and np.array_equal(single, np.stack(steps))
    batched = SlotCache(int8_target.session, 2, int8_target.context, decode_rows=2)
    batched.prefill(0, prompt, 0)
    batched.prefill(1, other, 0)
    rows = [
        batched.decode(np.array([t, 9]), np.array([20 + i, 31 + i])) for i, t in enumerate(follow)
    ]
    together = np.stack([r[0] for r in rows])
    np.testing.assert_allclose(together, single, atol=0.05 * np.abs(single).max())
    # the plain loop's batches and the serving engine decode per-row graphs too: a row's
    # text is the prompt's own, up to a near-tie that rounding may flip (seen on an AVX2
    # host: a batch row's int8 activations round differently from the prompt's alone)
    params = SP(temperature=0, max_new_tokens=30, ignore_eos=True)
    ids = [int8_target.encode([p])[0] for p in PROMPTS[:2]]
    want = [int8_target.generate_ids([i], params)[0].token_ids for i in ids]
    batched = int8_target.generate_ids(ids, params)
    for prompt, alone, got in zip(ids, want, batched, strict=True):
        _same_up_to_a_near_tie(int8_target, prompt, alone, got.token_ids)
    short = SP(temperature=0, max_new_tokens=10, ignore_eos=True)  # leaves the other alone
    engine = int8_target.generate_each(ids, [params, short])
    for prompt, alone, got in zip(ids, [want[0], want[1][:10]], engine, strict=True):
        _same_up_to_a_near_tie(int8_target, prompt, alone, got.token_ids)


NEAR_TIE = 0.25  # logits this close may swap when int8 rounding moves them (0.01-0.1 seen)


def _same_up_to_a_near_tie(lm, prompt: list[int], alone: list[int], got: list[int]) -> None:
    """``got`` is ``alone``, or equal to it up to a token where ``alone``'s two best
    logits were within ``NEAR_TIE`` and ``got`` took the other one."""
    from edgezoo.runtime.slot_cache import SlotCache

    assert len(got) == len(alone)
    if got == alone:
        return
    i = next(j for j, (a, b) in enumerate(zip(alone, got, strict=True)) if a != b)
    cache = SlotCache(lm.session, 1, lm.context, lm.decode_rows)
    logits = cache.extend(0, np.array(prompt + alone[:i]), 0)[-1]
    first, second = np.argsort(logits)[::-1][:2]
    assert {alone[i], got[i]} == {int(first), int(second)}, (i, alone[i], got[i])
    assert logits[first] - logits[second] < NEAR_TIE


def test_corpus_lookup_keeps_greedy_text_and_adds_accepted_guesses(target, tmp_path):
    """A corpus of what the model writes (REST's premise: the text it was trained on) gives
    guesses where the text has nothing to copy yet: more of them accepted, same tokens."""
    from edgezoo.runtime.corpus_lookup import CorpusLookup, load_index

    params = SP(temperature=0, max_new_tokens=40, ignore_eos=True)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, prompt in enumerate(PROMPTS):
        (folder / f"{i}.txt").write_text(prompt + target.generate(prompt, params).text)
    index = load_index(folder, target.tokenizer, tmp_path / "cache")
    gained = 0
    for prompt in PROMPTS:
        ids = target.encode([prompt])[0]
        want = target.generate_ids([ids], params)[0]
        plain, plain_stats = speculative_generate(target, ids, params, PromptLookup())
        got, stats = speculative_generate(target, ids, params, CorpusLookup(index))
        assert got.token_ids == want.token_ids == plain.token_ids and got.text == want.text
        gained += stats.accepted - plain_stats.accepted
    assert gained > 0


def test_prompt_lookup_proposes_what_follows_the_latest_earlier_match():
    """The n-gram index gives what a scan of the whole text gives, as the text grows; the
    copy runs on past the text's end the way an LZ77 match does (a loop keeps looping)."""

    def scan(seq, k, ngram):
        for n in range(min(ngram, len(seq) - 1), 0, -1):
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start : start + n] == seq[-n:]:
                    text = list(seq)
                    for j in range(k):  # one token at a time: a copy may read its own output
                        text.append(text[start + n + j])
                    return text[len(seq) :]
        return []

    rng = np.random.default_rng(0)
    for trial in range(200):
        lookup, seq = PromptLookup(ngram=int(rng.integers(1, 5))), []
        alphabet = int(rng.choice([2, 4, 16]))
        for _ in range(40):
            seq.extend(rng.integers(0, alphabet, int(rng.choice([1, 1, 3]))).tolist())
            k = int(rng.integers(1, 7))
            guesses, dists = lookup.propose(seq, k, SP(), None)
            assert guesses == scan(seq, k, lookup.ngram), (trial, seq)
            assert dists == [None] * len(guesses)
    lookup = PromptLookup()
    assert lookup.propose([5, 6, 7, 9, 5, 6], 3, SP(), None)[0] == [7, 9, 5]
    assert lookup.propose([1, 2, 3], 3, SP(), None)[0] == []  # another sequence: a new index
    assert PromptLookup().propose([1, 2, 1, 2], 5, SP(), None)[0] == [1, 2, 1, 2, 1]
    assert PromptLookup().propose([4, 4], 3, SP(), None)[0] == [4, 4, 4]


def test_a_draft_model_copies_a_repeat_instead_of_drafting(target, draft):
    """After a match of its last 2+ tokens earlier in the text the proposer copies what
    followed (free); after a shorter one the draft model guesses (and its cache catches up)."""
    greedy = SP(temperature=0)
    proposer = DraftModel(draft, target, min_confidence=0)
    guesses, dists = proposer.propose([5, 6, 7, 8, 5, 6], 3, greedy, None)
    assert (guesses, dists, proposer.length) == ([7, 8, 5], [None] * 3, 0)  # not run
    seq = [5, 6, 7, 8, 9, 5]  # "5" came earlier, "9 5" did not
    guesses, dists = proposer.propose(seq, 3, greedy, None)
    alone = DraftModel(draft, target, lookup=False, min_confidence=0).propose(seq, 3, greedy, None)
    assert (guesses, dists) == alone and proposer.length == len(seq) + 2


def test_the_target_drafts_with_its_own_variant(target_dir):
    """draft=its own dir with draft_variant: self-drafting (e.g. the int4 graph guessing for
    the fp32 one; here the same graph, loaded a second time); greedy text stays the
    target's."""
    spec = runtime.load(
        target_dir, backend="ort-cpu", variant="gqa", draft=target_dir, draft_variant="gqa"
    )
    assert spec.draft.variant == "gqa" and spec.draft is not spec.target
    greedy = SP(temperature=0, max_new_tokens=30, ignore_eos=True)
    for prompt in PROMPTS:
        assert (
            spec.generate(prompt, greedy).token_ids
            == spec.target.generate(prompt, greedy).token_ids
        )
    assert spec.last_stats.proposed > 0


def test_the_draft_length_grows_on_full_acceptance_and_shrinks_on_a_miss():
    length = DraftLength(4, 9)
    seen = []
    for proposed, accepted in [(4, 4), (6, 6), (8, 8), (9, 9), (9, 3), (8, 0), (0, 0), (7, 7)]:
        length.update(proposed, accepted)
        seen.append(length.k)
    # +2 capped at 9, -1 on a miss, unchanged when nothing was proposed (no lookup match)
    assert seen == [6, 8, 9, 9, 8, 7, 7, 9]
    for _ in range(20):
        length.update(length.k, 0)
    assert length.k == 1
    assert DraftLength(4).most == 12  # 3 x the start by default
    fixed = DraftLength(3, 3)
    for proposed, accepted in [(3, 0), (3, 3), (2, 1)]:
        fixed.update(proposed, accepted)
        assert fixed.k == 3
    with pytest.raises(ConfigError, match="draft_tokens"):
        DraftLength(5, 4)
    with pytest.raises(ConfigError, match="draft_tokens"):
        DraftLength(0)


def test_each_source_of_guesses_keeps_its_own_count():
    """A run of copies kept whole grows the copies' count, not the draft model's; every
    count stops at the room the request has left."""
    counts = GuessCounts(2, 12)
    for _ in range(4):
        assert counts.k("copy") in (2, 4, 6, 8)
        counts.update(counts.k("copy"), counts.k("copy"))
    assert counts.k("copy") == 10 and counts.k("draft") == 2
    counts.update(2, 0)  # the draft's miss: its count only
    assert counts.k("draft") == 1 and counts.k("copy") == 10
    counts.room = 3
    assert counts.k("copy") == 3 and counts.k("draft") == 1
    counts.room = 0
    assert counts.k("copy") == 0
    assert GuessCounts.of(0).k("copy") == 0 and GuessCounts.of(5).k("draft") == 5


def test_a_draft_stops_guessing_after_a_token_it_doubts(target, draft):
    """With ``min_confidence`` above any probability the draft proposes one token, at 0
    all it may; in between, it stops right after its first unsure token."""
    from edgezoo.runtime.slot_cache import SlotCache
    from edgezoo.runtime.speculative import top_probability

    greedy, seq = SP(temperature=0), [5, 6, 7, 8, 9, 10]
    every, _ = DraftModel(draft, target, lookup=False, min_confidence=0).propose(
        seq, 6, greedy, None
    )
    assert len(every) == 6
    one, _ = DraftModel(draft, target, lookup=False, min_confidence=1.01).propose(
        seq, 6, greedy, None
    )
    assert one == every[:1]
    cache = SlotCache(draft.session, 1, draft.context, draft.decode_rows)
    logits, sure = cache.prefill(0, np.array(seq), 0), []  # the draft's confidence per guess
    for i, token in enumerate(every):
        sure.append(top_probability(logits))
        logits = cache.decode(np.array([token]), np.array([len(seq) + i]))[0]
    threshold = float(np.median(sure))
    cut, _ = DraftModel(draft, target, lookup=False, min_confidence=threshold).propose(
        seq, 6, greedy, None
    )
    first_unsure = next(i for i, p in enumerate(sure) if p < threshold)
    assert cut == every[: first_unsure + 1]
    assert np.isclose(top_probability(np.array([0.0, 0.0])), 0.5)


def test_a_draft_with_a_corpus_tries_the_corpus_before_the_model(target, draft):
    """Nothing to copy: the corpus' continuation is proposed and the draft model does not
    run; nothing in the corpus either: the draft model guesses. Greedy text is unchanged."""
    from edgezoo.runtime.corpus_lookup import CorpusIndex

    vocab = target.tokenizer.get_vocab_size()
    index = CorpusIndex.build([[10, 11, 12, 13, 14]] * 3, vocab_size=vocab)
    greedy = SP(temperature=0)
    proposer = DraftModel(draft, target, corpus=index)
    guesses, _ = proposer.propose([1, 2, 10, 11], 4, greedy, None)
    assert guesses == [12, 13, 14] and proposer.length == 0  # the draft did not run
    guesses, _ = proposer.propose([1, 2, 3, 4], 4, greedy, None)
    assert guesses and proposer.length == 4
    params = SP(temperature=0, max_new_tokens=40, ignore_eos=True)
    for prompt in PROMPTS:
        ids = target.encode([prompt])[0]
        want = target.generate_ids([ids], params)[0]
        got, _ = speculative_generate(target, ids, params, DraftModel(draft, target, corpus=index))
        assert got.token_ids == want.token_ids


def test_stop_strings_eos_and_the_context_end_as_for_the_target(target, draft):
    ids = target.encode([PROMPTS[0]])[0]
    plain = target.generate_ids([ids], SP(temperature=0, max_new_tokens=30, ignore_eos=True))[0]
    stop = plain.text[10:13]
    for params in (
        SP(temperature=0, max_new_tokens=30, stop=(stop,)),
        SP(temperature=0, max_new_tokens=500),  # runs into the context: length
    ):
        want = target.generate_ids([ids], params)[0]
        got, _ = speculative_generate(target, ids, params, DraftModel(draft, target))
        assert (got.text, got.token_ids, got.finish_reason) == (
            want.text,
            want.token_ids,
            want.finish_reason,
        )


def test_the_accept_reject_rule_keeps_the_target_distribution():
    """Draw the proposal from q, apply the rule: the output must be distributed as p."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6))
    q = rng.dirichlet(np.ones(6) * 0.5)
    n, counts = 40_000, np.zeros(6)
    for _ in range(n):
        guess = int(rng.choice(6, p=q))
        replaced = accept_or_replace(p, q, guess, rng)
        counts[guess if replaced is None else replaced] += 1
    expected = p * n
    chi2 = (((counts - expected) ** 2) / expected).sum()
    assert chi2 < 20.5  # 5 degrees of freedom: p < 0.001 of failing by chance
    lookup = np.zeros(6)  # a deterministic guess (prompt lookup): q is a point mass
    for _ in range(n // 4):
        replaced = accept_or_replace(p, None, 2, rng)
        lookup[2 if replaced is None else replaced] += 1
    assert np.allclose(lookup / lookup.sum(), p, atol=0.02)


def test_seeded_sampling_repeats_and_stays_in_the_vocabulary(target, draft):
    spec = SpeculativeLM(target, draft, k=3)
    params = SP(temperature=0.9, top_p=0.95, seed=11, max_new_tokens=25)
    first, second = spec.generate(PROMPTS[0], params), spec.generate(PROMPTS[0], params)
    assert first.token_ids == second.token_ids and len(first.token_ids) > 0


def test_requests_it_cannot_speed_up_run_on_the_plain_loop(target):
    spec = SpeculativeLM(target, None)
    params = SP(temperature=0, max_new_tokens=20, repetition_penalty=1.5, logprobs=2)
    got = spec.generate(PROMPTS[1], params)
    assert got.token_ids == target.generate(PROMPTS[1], params).token_ids
    assert got.logprobs is not None


def test_load_with_a_draft_and_the_errors(target_dir, draft_dir, tmp_path, tokenizer):
    spec = runtime.load(target_dir, backend="ort-cpu", draft=draft_dir, draft_tokens=3)
    assert isinstance(spec, SpeculativeLM) and spec.k == 3
    greedy = SP(temperature=0, max_new_tokens=20, ignore_eos=True)
    assert (
        spec.generate(PROMPTS[0], greedy).token_ids
        == spec.target.generate(PROMPTS[0], greedy).token_ids
    )
    streamed = "".join(spec.stream(PROMPTS[0], greedy))
    assert streamed == spec.last.text
    odd = tmp_path / "odd"
    shutil.copytree(draft_dir, odd)
    other = tokenizer.__class__.from_file(str(odd / "tokenizer.json"))
    other.add_tokens(["<extra-token>"])
    other.save(str(odd / "tokenizer.json"))
    with pytest.raises(ConfigError, match="tokenizer differs"):
        runtime.load(target_dir, backend="ort-cpu", draft=odd)
    # A small draft runs on one thread, with no pool to take the cores the target's pool
    # spins on: the target keeps its plain loop's spinning pool.
    assert not has_pool(spec.draft.session) and keeps_spinning(spec.target.session)
    # A draft with a pool takes turns with the target: their threads spin during a run and
    # stop after it (an idle pool spinning on takes the cores the other runs on).
    pooled = runtime.load(target_dir, backend="ort-cpu", draft=draft_dir, draft_threads=2)
    for model in (pooled.target, pooled.draft):
        assert has_pool(model.session)
        assert spins(model.session) and not keeps_spinning(model.session)
    with pytest.raises(ConfigError, match="draft_threads=-1"):
        runtime.load(target_dir, backend="ort-cpu", draft=draft_dir, draft_threads=-1)
    # Pools left spinning, passed by hand, get a warning that says how to load them.
    with pytest.warns(UserWarning, match="draft model's threads go on spinning"):
        SpeculativeLM(pooled.target, runtime.load(draft_dir, backend="ort-cpu"))
    turns = runtime.load(draft_dir, backend="ort-cpu", takes_turns=True)
    with pytest.warns(UserWarning, match=r"target model's .*takes_turns=True"):
        SpeculativeLM(spec.target, turns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpeculativeLM(pooled.target, turns)
        SpeculativeLM(spec.target, runtime.load(draft_dir, backend="ort-cpu", threads=1))
    with pytest.raises(ConfigError, match="give draft=DIR"):
        runtime.load(target_dir, backend="ort-cpu", draft_variant="gqa")
    fixed = runtime.load(target_dir, backend="ort-cpu", draft=draft_dir, max_draft_tokens=4)
    assert (
        fixed.generate(PROMPTS[0], greedy).token_ids
        == spec.target.generate(PROMPTS[0], greedy).token_ids
    )
    with pytest.raises(ConfigError, match="1 <= draft_tokens <= max_draft_tokens"):
        runtime.load(target_dir, backend="ort-cpu", draft=draft_dir, max_draft_tokens=2)


def test_generate_cli_with_prompt_lookup_reports_acceptance(target_dir):
    cmd = [sys.executable, "-m", "edgezoo.cli", "generate", str(target_dir), PROMPTS[1]]
    cmd += ["--backend", "ort-cpu", "--prompt-lookup", "--max-new-tokens", "12"]
    done = subprocess.run(
        [*cmd, "--max-draft-tokens", "8"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "prompt lookup:" in done.stderr and "guesses accepted" in done.stderr
    bad = subprocess.run(
        [*cmd, "--max-draft-tokens", "3"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0 and "max_draft_tokens" in bad.stderr


def test_generate_cli_with_a_lookup_corpus(target_dir, draft_dir, tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text(PROMPTS[0] + "\n" + PROMPTS[2] + "\n")
    cmd = [sys.executable, "-m", "edgezoo.cli", "generate", str(target_dir), PROMPTS[2]]
    cmd += ["--backend", "ort-cpu", "--max-new-tokens", "12", "--lookup-corpus", str(corpus)]
    env = {**os.environ, "EDGEZOO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "prompt + corpus lookup:" in done.stderr
    with_draft = subprocess.run(
        [*cmd, "--draft", str(draft_dir)], capture_output=True, text=True, timeout=120, env=env
    )
    assert with_draft.returncode == 0, with_draft.stderr
    assert "+ prompt lookup + corpus:" in with_draft.stderr
    missing = subprocess.run(
        [*cmd[:-1], str(tmp_path / "nowhere")], capture_output=True, text=True, env=env
    )
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_server_with_a_draft_answers_the_targets_greedy_text(target_dir, draft_dir):
    """`serve --draft`: the static batcher runs each prompt speculatively, streamed or not,
    and the text is the target's own; continuous batching over a draft is refused."""
    import json

    from fastapi.testclient import TestClient

    from edgezoo.runtime.server import create_app
    from edgezoo.runtime.speculative import SpeculativeStats

    spec = runtime.load(target_dir, backend="ort-cpu", draft=draft_dir, draft_tokens=3)
    with pytest.raises(ConfigError, match="one request at a time"):
        create_app(spec, model_name="t", batching="continuous")
    app = create_app(spec, model_name="t")
    assert not app.state.context.continuous
    greedy = SP(temperature=0, max_new_tokens=16)
    want = [spec.target.generate(p, greedy).text for p in PROMPTS[:2]]
    body = {"model": "t", "prompt": PROMPTS[:2], "max_tokens": 16, "temperature": 0}
    with TestClient(app, base_url="http://localhost") as client:
        spec.last_stats = SpeculativeStats()
        done = client.post("/v1/completions", json=body)
        assert done.status_code == 200, done.text
        assert [c["text"] for c in done.json()["choices"]] == want
        assert spec.last_stats.proposed > 0  # the draft guessed: it ran speculatively
        spec.last_stats = SpeculativeStats()
        streamed = client.post(
            "/v1/completions", json={**body, "prompt": PROMPTS[0], "stream": True}
        )
        chunks = [
            json.loads(line[len("data: ") :])
            for line in streamed.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
        assert "".join(c["choices"][0]["text"] for c in chunks) == want[0]
        assert spec.last_stats.proposed > 0


def test_benchmark_puts_each_method_beside_a_peer_on_the_same_weights(
    target_dir, draft_dir, tmp_path, monkeypatch
):
    """``benchmarks.speculative --peer``: the peer decodes the same prompts on the target's
    weights in its own process; its rate, token check and every method's ratio are recorded.
    (The ``edgezoo`` peer stands in for GenAI: the same runtime, so its tokens must match.)"""
    import json

    from benchmarks import speculative as bench

    monkeypatch.setattr(bench, "heldout_prompts", lambda n, chars=400: PROMPTS[:n])
    out = tmp_path / "spec"
    bench.main(
        [
            *("--target", str(target_dir), "--draft", str(draft_dir), "--variants", "gqa"),
            *("--prompts", "2", "--max-new-tokens", "8", "--rounds", "1", "--k", "2", "--ablate"),
            *("--peer", "edgezoo", "--work", str(tmp_path / "work"), "--out", str(out)),
        ]
    )
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    peer = row["peer"]
    assert peer["name"] == "edgezoo" and peer["tokens_per_s"] > 0, peer["note"]
    assert peer["greedy_tokens_equal"] is True
    assert set(peer["vs_peer"]) == set(row["tokens_per_s"]) == set(row["identical_greedy_text"])
    for method, rate in row["tokens_per_s"].items():
        assert peer["vs_peer"][method] == pytest.approx(rate / peer["tokens_per_s"])
        assert row["identical_greedy_text"][method] is True
    assert any(m.endswith("one count, no confidence stop") for m in row["tokens_per_s"])
    table = out.with_suffix(".md").read_text()
    assert "| gqa | edgezoo (same weights) |" in table
    # a tiny draft runs on one thread beside the target's pool, as runtime.load runs it
    assert set(row["draft_threads"].values()) == {1}
    assert "a one-thread draft runs beside the target's own pool" in table
    for method, totals in row["guess_sources"].items():  # every guess has a source
        for key in ("proposed", "accepted"):
            by_source = [v for k, v in totals.items() if k.endswith(f" {key}")]
            assert sum(by_source) == totals[key] > 0 or key == "accepted"
        assert f"| {method} | copy |" in table or f"| {method} | draft |" in table


def test_serve_with_prompt_lookup_says_how_many_guesses(target_dir, monkeypatch, capsys):
    import uvicorn

    from edgezoo.runtime.server import serve

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    serve(target_dir, backend="ort-cpu", draft="prompt-lookup", draft_tokens=3)
    assert "speculative (prompt lookup, 3 → 9 guesses per call)" in capsys.readouterr().out
    serve(target_dir, backend="ort-cpu", draft="prompt-lookup", draft_tokens=3, max_draft_tokens=3)
    assert "speculative (prompt lookup, 3 guesses per call)" in capsys.readouterr().out


def test_call_cost_benchmark_times_each_length_against_one_token(target_dir, tmp_path):
    import json

    from benchmarks import call_cost

    out = tmp_path / "cost"
    args = ["--model", str(target_dir), "--variants", "gqa", "--lengths", "1,4"]
    call_cost.main([*args, "--rounds", "2", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["seconds"]["gqa"]) == {"1", "4"}
    assert all(s > 0 for s in result["seconds"]["gqa"].values())
    assert "| gqa |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        call_cost.main(["--model", str(target_dir), "--lengths", "2,4", "--out", str(out)])
