"""Runtime: parity with PyTorch, batching, streaming, stops, guards, variant selection."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import make_model_dir, tiny_bert, tiny_llama

from edgezoo import runtime
from edgezoo.errors import CheckpointError, ConfigError, InputError
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime import backends
from edgezoo.runtime.model_files import select_variant
from edgezoo.zoo.config import LlamaConfig
from edgezoo.zoo.generate import generate_ids

LM = vars(tiny_llama(max_position_embeddings=96)).copy()
LM.pop("preset")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("rt-lm")
    model = make_model_dir(path, LlamaConfig(**LM), tokenizer)
    to_onnx(path, greedy_steps=16)
    return path, model


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("rt-cls")
    cfg = tiny_bert(max_position_embeddings=96, id2label={0: "a", 1: "b", 2: "c"})
    model = make_model_dir(path, cfg, tokenizer)
    to_onnx(path)
    return path, model


PROMPTS = ["def main(args):\n    return", "import os", 'class Config(object):\n    """Hold']


@pytest.mark.parametrize("graph", ["portable", "ort-optimized", "gqa"])
def test_greedy_generation_equals_pytorch(lm_dir, tokenizer, graph):
    path, model = lm_dir
    lm = runtime.load(path, backend="ort-cpu", graph=graph)
    assert lm.graph == graph
    for prompt in PROMPTS:
        expected = generate_ids(model, tokenizer.encode(prompt).ids, 40)
        got = lm.generate(prompt, max_new_tokens=40)
        assert got.token_ids == expected
        assert got.finish_reason == "length" and got.prompt_tokens == len(
            tokenizer.encode(prompt).ids
        )


@pytest.mark.parametrize("graph", ["portable", "gqa"])
def test_batched_prompts_of_different_lengths_match_single_runs(lm_dir, graph):
    lm = runtime.load(lm_dir[0], backend="ort-cpu", graph=graph)
    batch = lm.generate(PROMPTS, max_new_tokens=24)
    assert [b.token_ids for b in batch] == [
        lm.generate(p, max_new_tokens=24).token_ids for p in PROMPTS
    ]


def test_a_prompt_run_computes_logits_from_the_shortest_rows_last_token_on(lm_dir):
    """Right-padded prompts of 6 and 4 tokens: the graph computes logits for positions 3..5
    only, each row's last token's are the full run's, and decode steps get theirs after."""
    from edgezoo.runtime.kv_cache import SharedBufferCache

    lm = runtime.load(lm_dir[0], backend="ort-cpu", graph="gqa")
    ids = np.array([[5, 17, 42, 7, 99, 3], [8, 9, 10, 11, 0, 0]], np.int64)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2], np.int64)
    full = SharedBufferCache(lm.session, 2, 16, "cpu").step(ids, mask)
    assert full.shape[:2] == (2, 6)
    cache = SharedBufferCache(lm.session, 2, 16, "cpu")
    assert cache.trims
    computed = []
    step = cache.step
    cache.step = lambda *args: computed.append(step(*args)) or computed[-1]
    last = cache.last_logits(ids, mask)
    assert computed[0].shape[:2] == (2, 3)
    np.testing.assert_allclose(last, full[[0, 1], [5, 3]], rtol=0, atol=1e-5)
    next_mask = np.array([[1] * 7, [1] * 5 + [0] * 2], np.int64)
    decoded = cache.step(np.array([[4], [4]]), next_mask)
    assert decoded.shape[:2] == (2, 1) and cache.logits_from[0] == 0


def test_graphs_without_logits_from_still_generate_the_same(lm_dir, monkeypatch):
    """GQA graphs exported before ``logits_from`` return every position's logits: the
    runtime takes each row's last from them (same tokens, batched or not)."""
    from edgezoo.runtime import kv_cache

    lm = runtime.load(lm_dir[0], backend="ort-cpu", graph="gqa")
    trimmed = [g.token_ids for g in lm.generate(PROMPTS, max_new_tokens=16)]
    monkeypatch.setattr(kv_cache, "trims_logits", lambda sess: False)
    assert not kv_cache.SharedBufferCache(lm.session, 1, 8, "cpu").trims
    assert [g.token_ids for g in lm.generate(PROMPTS, max_new_tokens=16)] == trimmed


def test_generation_reports_its_timing(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    # ignore_eos: a fixed length, one decode step per token after the first
    first, second = lm.generate(PROMPTS[:2], max_new_tokens=12, ignore_eos=True)
    assert len(first.token_ids) == 12 and len(first.step_s) == 11
    assert all(s > 0 for s in first.step_s) and first.time_to_first_token_s > 0
    assert first.step_s == second.step_s  # a batch steps together
    assert first.decode_s >= sum(first.step_s)


@pytest.mark.parametrize("graph", ["portable", "gqa"])
def test_the_lean_greedy_loop_gives_what_the_general_loop_gives(lm_dir, graph, monkeypatch):
    """One greedy prompt runs ``_decode_greedy_row``: same tokens, text, finish reason and
    number of timed steps as the general loop, at the end of text, at the token budget and
    at the end of the context."""
    lm = runtime.load(lm_dir[0], backend="ort-cpu", graph=graph)
    prompt = lm.encode(["def f("])
    lm.eos_id = lm.generate_ids(prompt, max_new_tokens=8, ignore_eos=True)[0].token_ids[5]
    cases = [
        {"max_new_tokens": 40},  # ends at the new end-of-text token
        {"max_new_tokens": 12, "ignore_eos": True},  # the budget
        {"max_new_tokens": 500, "ignore_eos": True},  # the context
    ]
    runs = {}
    for lean in (True, False):
        monkeypatch.setattr(type(lm), "lean_loop", lean)
        runs[lean] = [lm.generate_ids(prompt, **case)[0] for case in cases]
    for fast, general in zip(runs[True], runs[False], strict=True):
        assert fast.token_ids == general.token_ids and fast.text == general.text
        assert fast.finish_reason == general.finish_reason
        assert len(fast.step_s) == len(general.step_s)
        assert fast.decode_s >= sum(fast.step_s)
    assert [g.finish_reason for g in runs[True]] == ["eos", "length", "length"]
    assert len(runs[True][1].step_s) == 11 and min(runs[True][1].step_s) > 0
    assert len(runs[True][2].token_ids) == lm.context - len(prompt[0])


def test_generate_ids_takes_token_ids_and_matches_text_prompts(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    ids = lm.encode(PROMPTS[:2])
    from_ids = lm.generate_ids(ids, max_new_tokens=16)
    from_text = lm.generate(PROMPTS[:2], max_new_tokens=16)
    assert [g.token_ids for g in from_ids] == [g.token_ids for g in from_text]
    assert [g.prompt_tokens for g in from_ids] == [len(i) for i in ids]
    vocab = lm.tokenizer.get_vocab_size()
    for bad, says in (
        ([[]], "empty"),
        ([[1, vocab]], "vocabulary"),
        ([[1] * lm.context], "context"),
    ):
        with pytest.raises(InputError, match=says):
            lm.generate_ids(bad)


def test_ignore_eos_runs_past_the_end_of_text(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    prompt = lm.encode(["def f("])
    reference = lm.generate_ids(prompt, max_new_tokens=8, ignore_eos=True)[0].token_ids
    lm.eos_id = reference[3]  # make the 4th greedy token the end of text
    stopped = lm.generate_ids(prompt, max_new_tokens=40)[0]
    forced = lm.generate_ids(prompt, max_new_tokens=40, ignore_eos=True)[0]
    assert stopped.finish_reason == "eos" and len(stopped.token_ids) <= 3
    assert forced.finish_reason == "length" and len(forced.token_ids) == 40
    assert forced.token_ids[:8] == reference
    with pytest.raises(ConfigError, match="ignore_eos"):
        lm.generate("x", ignore_eos="yes")


def test_streaming_yields_the_same_text_in_pieces(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    pieces = list(lm.stream(PROMPTS[0], max_new_tokens=40))
    assert len(pieces) > 3
    assert "".join(pieces) == lm.generate(PROMPTS[0], max_new_tokens=40).text == lm.last.text
    assert "\ufffd" not in "".join(pieces)


def test_stop_strings_cut_the_text_and_the_stream(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    full = lm.generate(PROMPTS[0], max_new_tokens=40).text
    stop = full[10:13]
    assert stop and full.find(stop) >= 0
    cut = lm.generate(PROMPTS[0], max_new_tokens=40, stop=stop)
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    assert "".join(lm.stream(PROMPTS[0], max_new_tokens=40, stop=[stop])) == cut.text


def test_sampling_is_seeded(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    a = lm.generate(PROMPTS[1], max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    b = lm.generate(PROMPTS[1], max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    c = lm.generate(PROMPTS[1], max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=8)
    assert a.token_ids == b.token_ids != c.token_ids
    penalised = lm.generate(PROMPTS[1], max_new_tokens=30, repetition_penalty=1.5)
    plain = lm.generate(PROMPTS[1], max_new_tokens=30)
    assert len(set(penalised.token_ids)) >= len(set(plain.token_ids))


def test_guards_give_clear_errors(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    with pytest.raises(InputError, match="empty prompt"):
        lm.generate("")
    with pytest.raises(InputError, match="context is 96"):
        lm.generate("word " * 200)
    near = lm.generate("x " * 40, max_new_tokens=500)  # clipped to the context
    assert near.prompt_tokens + len(near.token_ids) <= 96
    with pytest.raises(ConfigError, match="temperature"):
        lm.generate("x", temperature=-1)


def test_score_matches_pytorch_perplexity(lm_dir, tokenizer):
    path, model = lm_dir
    text = "def add(a, b):\n    return a + b\n"
    ids = [*tokenizer.encode(text).ids, 2]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item()
    for graph in ("portable", "gqa"):
        got = runtime.load(path, backend="ort-cpu", graph=graph).score(text)
        assert abs(got["loss"] - loss) < 1e-4 and got["tokens"] == len(ids) - 1


def test_classifier_matches_pytorch(cls_dir):
    path, model = cls_dir
    clf = runtime.load(path, backend="ort-cpu")
    texts = ["import os", "def f(x):\n    return x * 2\n" * 3, "class A: pass"]
    probs = clf.predict_proba(texts)
    tok = clf.tokenizer
    with torch.no_grad():
        for row, text in zip(probs, texts, strict=True):
            expected = torch.softmax(model(torch.tensor([tok.encode(text).ids])), -1)[0].numpy()
            assert np.abs(row - expected).max() < 1e-5
    labels = clf.classify(texts)
    assert [r["label"] for r in labels] == [["a", "b", "c"][i] for i in probs.argmax(-1)]
    with pytest.raises(InputError):
        clf.classify("   ")


def test_variant_selection():
    variants = {
        "fp32": {
            "graph": "portable",
            "precision": "fp32",
            "backends": ["ort-cpu", "ort-cuda", "ort-trt", "tensorrt"],
        },
        "gqa": {"graph": "gqa", "precision": "fp32", "backends": ["ort-cpu", "ort-cuda"]},
        "gqa-int4": {
            "graph": "gqa",
            "precision": "int4",
            "backends": ["ort-cpu", "ort-cuda"],
            "recommended": {"ort-cpu": {"speedup": 3.1, "quality_change": "+1.2% ppl"}},
        },
    }
    assert select_variant(variants, "ort-cpu", "fp32")[0] == "gqa"
    assert select_variant(variants, "ort-cpu", "fp32", graph="portable")[0] == "fp32"
    assert select_variant(variants, "ort-trt", "fp32")[0] == "fp32"
    assert select_variant(variants, "ort-cpu", "auto")[0] == "gqa-int4"
    assert select_variant(variants, "ort-cuda", "auto")[0] == "gqa"  # nothing recommended there
    with pytest.raises(ConfigError, match="no int4 variant that runs on ort-trt"):
        select_variant(variants, "ort-trt", "int4")
    # two int8 GQA forms: the one the gate timed clearly faster for the use, else the first
    int8 = {"graph": "gqa", "precision": "int8", "backends": ["ort-cpu", "ort-cuda"]}
    variants |= {"gqa-int8": dict(int8), "gqa-int8-dynamic": dict(int8)}
    assert select_variant(variants, "ort-cpu", "int8")[0] == "gqa-int8"
    for name, request_ms, check_ms in (("gqa-int8", 100.0, 9.0), ("gqa-int8-dynamic", 101.0, 3.0)):
        variants[name]["rival_timing"] = {
            "ort-cpu": {"request_ms": request_ms, "check_ms": check_ms}
        }
    variants["gqa-int8"]["preferred"] = {"ort-cpu": ["requests"]}
    variants["gqa-int8-dynamic"]["preferred"] = {"ort-cpu": ["multi-token calls"]}
    # a manifest from before batched decode was timed: that use falls back to the first
    assert select_variant(variants, "ort-cpu", "int8", use="batched decode")[0] == "gqa-int8"
    variants["gqa-int8"]["rival_timing"]["ort-cpu"]["batch_step_ms"] = 7.8
    variants["gqa-int8-dynamic"]["rival_timing"]["ort-cpu"]["batch_step_ms"] = 6.7
    variants["gqa-int8-dynamic"]["preferred"]["ort-cpu"].append("batched decode")
    name, _, why = select_variant(variants, "ort-cpu", "int8", use="batched decode")
    assert name == "gqa-int8-dynamic" and "gqa-int8 7.8 ms, gqa-int8-dynamic 6.7 ms" in why
    name, _, why = select_variant(variants, "ort-cpu", "int8")
    assert name == "gqa-int8" and "gqa-int8 100.0 ms, gqa-int8-dynamic 101.0 ms" in why
    name, _, why = select_variant(variants, "ort-cpu", "int8", use="multi-token calls")
    assert name == "gqa-int8-dynamic" and "gqa-int8 9.0 ms, gqa-int8-dynamic 3.0 ms" in why
    assert select_variant(variants, "ort-cuda", "int8")[0] == "gqa-int8"  # timed on the CPU only
    with pytest.raises(ConfigError, match="unknown variant"):
        select_variant(variants, "ort-cpu", "int3")


def test_backend_resolution_and_gpu_options():
    assert backends.resolve_backend("auto", ["CPUExecutionProvider"])[0] == "ort-cpu"
    assert (
        backends.resolve_backend("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0]
        == "ort-cuda"
    )
    with pytest.raises(ConfigError, match="valid backends"):
        backends.resolve_backend("cuda-fast", ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="edgezoo\\[gpu\\]"):
        backends.resolve_backend("ort-trt", ["CPUExecutionProvider"])
    inputs = [
        {"name": "input_ids", "shape": ["batch", "sequence_length"]},
        {"name": "attention_mask", "shape": ["batch", "total_sequence_length"]},
        {"name": "past_key_values.0.key", "shape": ["batch", 4, "past_sequence_length", 64]},
    ]
    prof = backends.decoder_profile(inputs, context=1024, max_batch=4)
    opts = backends.providers_for("ort-trt", model_sha256="ab" * 32, profile=prof, fp16=True)[0][1]
    assert (
        opts["trt_profile_min_shapes"]
        == "input_ids:1x1,attention_mask:1x1,past_key_values.0.key:1x4x0x64"
    )
    assert (
        opts["trt_profile_max_shapes"]
        == "input_ids:4x1024,attention_mask:4x1024,past_key_values.0.key:4x4x1023x64"
    )
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    assert opts["trt_engine_cache_path"].endswith(
        f"{'ab' * 8}-trt{backends.tensorrt_version() or 'unknown'}"
    )
    assert backends.providers_for("ort-cuda")[0][0] == "CUDAExecutionProvider"


def test_auto_takes_the_cpu_when_the_cuda_provider_does_not_start(lm_dir, monkeypatch):
    """onnxruntime-gpu on a machine whose CUDA libraries or GPU are missing: ORT lists the
    provider but cannot start it. Named, that is an error; ``auto`` takes the CPU."""
    monkeypatch.setattr(
        backends, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    lm = runtime.load(lm_dir[0], backend="auto")
    assert lm.backend == "ort-cpu" and "CUDAExecutionProvider could not start" in lm.reason
    assert lm.session.get_providers() == ["CPUExecutionProvider"]
    assert len(lm.generate("import os", max_new_tokens=4, ignore_eos=True).token_ids) == 4
    with pytest.raises(ConfigError, match=r"could not start CUDAExecutionProvider.*ort-cpu"):
        runtime.load(lm_dir[0], backend="ort-cuda")


def test_a_gpu_backend_that_fell_back_to_the_cpu_is_an_error():
    """ORT runs on the CPU, with only a log line, when CUDA's libraries fail to load."""
    backends.check_provider_taken("ort-cpu", ["CPUExecutionProvider"])
    backends.check_provider_taken("ort-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backends.check_provider_taken("ort-trt", ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ConfigError, match=r"could not start CUDAExecutionProvider.*ort-cpu"):
        backends.check_provider_taken("ort-cuda", ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match=r"TensorrtExecutionProvider.*TensorRT"):
        backends.check_provider_taken("ort-trt", ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_corrupt_onnx_file_gets_a_clear_error(tmp_path, lm_dir):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(lm_dir[0], copy)
    graph = copy / "onnx" / "model.gqa.onnx"
    graph.write_bytes(graph.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        runtime.load(copy, backend="ort-cpu")
    with pytest.raises(CheckpointError, match="edgezoo export"):
        runtime.load(tmp_path, backend="ort-cpu")


def test_runtime_runs_without_torch(lm_dir):
    """The edge install has numpy + onnxruntime + tokenizers only: torch must never load."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from edgezoo import runtime
        lm = runtime.load({str(lm_dir[0])!r}, backend="ort-cpu")
        print(len(lm.generate("def f():", max_new_tokens=5).token_ids))
        assert not [m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None]
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"


def test_greedy_decoding_loads_no_module_it_does_not_use(lm_dir):
    """Every imported library stays resident: a greedy generation must not pull in
    numpy.random (~7 MB with the OpenSSL hashlib loads), tempfile/shutil (writers only) or
    onnx. Sampling still gets its generator."""
    code = textwrap.dedent(f"""
        import sys
        from edgezoo import runtime
        lm = runtime.load({str(lm_dir[0])!r}, backend="ort-cpu")
        lm.generate("def f():", max_new_tokens=5)
        lm.generate(["def f():", "import"], max_new_tokens=5)
        unused = ("numpy.random", "hashlib", "tempfile", "shutil", "onnx")
        print(sorted(m for m in unused if m in sys.modules))
        lm.generate("def f():", max_new_tokens=5, temperature=0.8, seed=1)
        print("numpy.random" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


class _NoBindingSession:
    """An ORT session seen through the narrow interface the native TensorRT session has."""

    def __init__(self, sess):
        self._sess = sess

    def get_inputs(self):
        return self._sess.get_inputs()

    def get_outputs(self):
        return self._sess.get_outputs()

    def run(self, names, feeds):
        return self._sess.run(names, feeds)


@pytest.mark.parametrize(("lengths", "decode_rows"), [((9,), 1), ((9,), 2), ((5, 9, 7), 1)])
def test_a_steady_full_length_mask_gives_the_growing_masks_logits(lm_dir, lengths, decode_rows):
    """The CPU decode loop binds one full-length mask (zeros past each row's length) once,
    instead of a new, longer mask every token: the same logits bit for bit, also for
    right-padded batches and for two-row (filler) steps."""
    from edgezoo.runtime.kv_cache import SharedBufferCache

    session = runtime.load(lm_dir[0], backend="ort-cpu", graph="gqa").session
    rng = np.random.default_rng(0)
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(5, 500, n)
        mask[row, :n] = 1
    runs = {}
    for steady in (False, True):
        cache = SharedBufferCache(session, len(lengths), 60, "cpu", decode_rows, steady)
        step_mask = mask.copy()
        logits = [cache.last_logits(ids, step_mask)]
        for _ in range(40):
            tokens = logits[-1].reshape(len(lengths), -1, logits[-1].shape[-1])[:, 0].argmax(-1)
            step_mask = np.concatenate([step_mask, np.ones((len(lengths), 1), np.int64)], 1)
            logits.append(cache.step(tokens[:, None], step_mask)[:, 0].copy())
        runs[steady] = logits
    assert all(np.array_equal(a, b) for a, b in zip(runs[False], runs[True], strict=True))


def test_host_cache_loop_used_by_tensorrt_gives_the_same_tokens(lm_dir):
    from edgezoo.runtime.language_model import LanguageModel

    ref = runtime.load(lm_dir[0], backend="ort-cpu", graph="portable")
    host = LanguageModel(
        _NoBindingSession(ref.session), ref.tokenizer, ref.config, graph="portable"
    )
    expected = [g.token_ids for g in ref.generate(PROMPTS, max_new_tokens=16)]
    assert [g.token_ids for g in host.generate(PROMPTS, max_new_tokens=16)] == expected


def test_tensorrt_engine_cache_key_and_profile():
    from edgezoo.runtime.tensorrt_engine import engine_path, profile_triplets

    path = engine_path("cd" * 32, fp16=True, max_batch=4)
    assert path.name == "engine-fp16-b4.plan" and path.parent.name.startswith("cd" * 8 + "-trt")
    inputs = [
        {"name": "input_ids", "shape": ["batch", "sequence_length"]},
        {"name": "past_key_values.0.key", "shape": ["batch", 2, "past_sequence_length", 16]},
    ]
    triplets = profile_triplets(backends.decoder_profile(inputs, context=96, max_batch=4))
    assert triplets["past_key_values.0.key"] == ([1, 2, 0, 16], [1, 2, 48, 16], [4, 2, 95, 16])


@pytest.mark.parametrize(
    ("source", "graph"), [("model.gqa.onnx", "gqa"), ("model.onnx", "portable")]
)
def test_a_graph_without_manifest_entry_is_recognised_without_onnx(lm_dir, source, graph):
    """The edge install has no onnx package: ONNX Runtime's view of the inputs decides."""
    onnx_dir = lm_dir[0] / "onnx"
    loose = onnx_dir / f"loose-{graph}.onnx"
    loose.write_bytes((onnx_dir / source).read_bytes())
    code = textwrap.dedent(f"""
        import sys
        sys.modules["onnx"] = None  # `import onnx` now raises ImportError
        from edgezoo import runtime
        lm = runtime.load({str(loose)!r}, backend="ort-cpu")
        print(lm.graph, len(lm.generate("def f(", max_new_tokens=4, ignore_eos=True).token_ids))
    """)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    finally:
        loose.unlink()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [graph, "4"]


@pytest.mark.parametrize(
    "manifest_text",
    [
        "[1, 2]",
        '{"variants": []}',
        '{"variants": {"fp32": {"file": "../../../etc/passwd"}}}',
        '{"variants": {"fp32": {"file": "/etc/passwd"}}}',
        '{"variants": {"fp32": {"file": ".."}}}',
        '{"variants": {"fp32": {}}}',
    ],
)
def test_a_manifest_cannot_point_outside_the_onnx_folder(tmp_path, manifest_text):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "manifest.json").write_text(manifest_text)
    with pytest.raises(CheckpointError, match=r"manifest|not a file name inside onnx/"):
        runtime.load(tmp_path, backend="ort-cpu")


def test_generate_on_a_classifier_and_classify_on_an_lm_say_which_command(lm_dir, cls_dir, capsys):
    from edgezoo.cli import main

    assert main(["generate", str(cls_dir[0]), "def f("]) == 2
    assert "is a classifier: use `edgezoo classify`" in capsys.readouterr().err
    assert main(["classify", str(lm_dir[0]), "import os"]) == 2
    assert "is a language model: use `edgezoo generate`" in capsys.readouterr().err


def test_score_takes_one_text(lm_dir):
    lm = runtime.load(lm_dir[0], backend="ort-cpu")
    with pytest.raises(InputError, match="one text"):
        lm.score(["a", "b"])
