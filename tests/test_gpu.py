"""GPU paths (marked ``gpu``: skipped without CUDA): bf16 and compiled training on CUDA, and
ONNX Runtime's CUDA execution provider against the CPU one on the same exported graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import lively_model_dir, lm_train_config, loss_curve, make_model_dir, tiny_bert

from edgezoo import runtime
from edgezoo.errors import ConfigError
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime import backends

pytestmark = pytest.mark.gpu

PROMPTS = ["def main(args):\n    return", "import os", 'class Config(object):\n    """Hold']


def _needs_ort_cuda():
    if "CUDAExecutionProvider" not in backends.available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    """Varied greedy text (a decode step that missed its new token or its cache would
    show) and head_dim 64, the presets' (tiny_llama's 16 takes other attention kernels)."""
    heads = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
    return lively_model_dir(tmp_path_factory.mktemp("gpu-lm"), tokenizer, 0, 16, **heads)


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("gpu-cls")
    cfg = tiny_bert(max_position_embeddings=96, id2label={0: "a", 1: "b", 2: "c"})
    make_model_dir(path, cfg, tokenizer)
    to_onnx(path)
    return path


def test_bf16_cuda_training_learns_and_saves_fp32_weights(text_corpus, tmp_path):
    from safetensors.torch import load_file

    from edgezoo.zoo.train import train

    run = tmp_path / "run"
    train(lm_train_config(text_corpus, run, steps=40, device="cuda", lr=5e-3))
    curve = loss_curve(run)
    assert all(np.isfinite(v) for v in curve.values())
    first = np.mean([curve[s] for s in range(1, 6)])
    last = np.mean([curve[s] for s in range(36, 41)])
    assert last < first - 0.5, (first, last)
    weights = load_file(run / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert json.loads((run / "config.json").read_text())["torch_dtype"] == "float32"


def test_compiled_cuda_training_follows_the_eager_run(text_corpus, tmp_path):
    from edgezoo.zoo.train import train

    curves = {}
    for compiled in (False, True):
        run = tmp_path / f"run-{compiled}"
        train(lm_train_config(text_corpus, run, steps=6, device="cuda", compile=compiled))
        curves[compiled] = loss_curve(run)
    # Same seed, same batches: bf16 kernels differ in rounding only, not in what is learnt.
    for step in range(1, 7):
        assert abs(curves[True][step] - curves[False][step]) < 0.05, (step, curves)


def test_cuda_forward_matches_cpu_in_fp32(lm_dir):
    from edgezoo.zoo.modeldir import load_model

    ids = torch.randint(0, 600, (2, 40), generator=torch.Generator().manual_seed(0))
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        cpu = load_model(lm_dir).eval()(ids)[0]
        gpu = load_model(lm_dir, device="cuda").eval()(ids.to("cuda"))[0].cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4), (cpu - gpu).abs().max()


def test_cuda_backend_matches_cpu(lm_dir):
    """The single-prompt greedy loop (buffers bound once, the token ids rebound on a device:
    ORT copies an input when it is bound, so a write after that never reaches the GPU)."""
    _needs_ort_cuda()
    for prompt in PROMPTS:
        cpu = runtime.load(lm_dir, backend="ort-cpu").generate(
            prompt, max_new_tokens=32, ignore_eos=True
        )
        assert len(set(cpu.token_ids)) > 4, cpu.token_ids  # a stale input would show
        gpu = runtime.load(lm_dir, backend="ort-cuda").generate(
            prompt, max_new_tokens=32, ignore_eos=True
        )
        assert gpu.token_ids == cpu.token_ids


def test_encoder_decoder_on_cuda_matches_cpu(s2s_exported):
    _needs_ort_cuda()
    path = s2s_exported[0]
    cpu = runtime.load(path, backend="ort-cpu", variant="fp32")
    gpu = runtime.load(path, backend="ort-cuda", variant="fp32")
    for source in ["def add(a, b):\n    return a + b", "import os"]:
        want = cpu.generate(source, max_new_tokens=16, ignore_eos=True).token_ids
        assert len(set(want)) > 2, want
        assert gpu.generate(source, max_new_tokens=16, ignore_eos=True).token_ids == want


@pytest.mark.parametrize("graph", ["portable", "ort-optimized", "gqa"])
def test_ort_cuda_scores_and_generates_like_the_cpu(lm_dir, graph):
    _needs_ort_cuda()
    cpu = runtime.load(lm_dir, backend="ort-cpu", graph=graph)
    gpu = runtime.load(lm_dir, backend="ort-cuda", graph=graph)
    assert gpu.backend == "ort-cuda" and gpu.graph == graph
    text = "\n".join(PROMPTS) * 3
    assert gpu.score(text)["loss"] == pytest.approx(cpu.score(text)["loss"], abs=1e-3)
    # A batch of prompts of different lengths (padding / per-row lengths on the device).
    want = [g.token_ids for g in cpu.generate(PROMPTS, max_new_tokens=24, ignore_eos=True)]
    got = gpu.generate(PROMPTS, max_new_tokens=24, ignore_eos=True)
    assert [g.token_ids for g in got] == want


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory, lm_dir, text_corpus):
    """``lm_dir``'s fp16 and int4 variants (a copy: the fp32 tests keep their dir)."""
    import shutil

    from edgezoo.quantize.pipeline import QuantizeOptions, quantize_model

    path = tmp_path_factory.mktemp("gpu-q") / "lm"
    shutil.copytree(lm_dir, path)
    opts = QuantizeOptions(data=str(text_corpus), speed_rounds=1)
    for target in ("fp16", "int4"):
        quantize_model(path, target, opts)
    return path


@pytest.mark.parametrize(("variant", "tolerance"), [("fp16", 0.02), ("int4", 0.05)])
def test_quantized_variants_on_cuda_score_like_their_source(quantized_dir, variant, tolerance):
    """fp16 is the GPU's own precision; int4's MatMulNBits has a CUDA kernel of its own
    (the CPU's computes in int8): each within ``tolerance`` nats of the fp32 loss on the CPU."""
    _needs_ort_cuda()
    text = "\n".join(PROMPTS) * 3
    reference = runtime.load(quantized_dir, backend="ort-cpu", variant="fp32").score(text)["loss"]
    gpu = runtime.load(quantized_dir, backend="ort-cuda", variant=variant)
    assert gpu.backend == "ort-cuda" and gpu.variant.endswith(variant)
    assert gpu.score(text)["loss"] == pytest.approx(reference, abs=tolerance)
    got = gpu.generate(PROMPTS[0], max_new_tokens=24, ignore_eos=True).token_ids
    assert len(got) == 24 and len(set(got)) > 4, got  # decodes on: no stale token


def test_speculative_decoding_on_cuda_says_it_runs_on_the_cpu(lm_dir):
    """Rollback is a length change of the CPU cache; on CUDA the load says so, not later."""
    _needs_ort_cuda()
    with pytest.raises(ConfigError, match="ort-cpu"):
        runtime.load(lm_dir, backend="ort-cuda", graph="gqa", draft="prompt-lookup")


def test_native_tensorrt_matches_cpu(lm_dir):
    """The portable graph on a TensorRT engine (its KV cache goes through host arrays that
    polygraphy reuses between runs: a step reading a stale one would show here)."""
    pytest.importorskip("tensorrt")
    cpu = runtime.load(lm_dir, backend="ort-cpu", graph="portable")
    trt = runtime.load(lm_dir, backend="tensorrt")
    for prompt in PROMPTS:
        want = cpu.generate(prompt, max_new_tokens=32, ignore_eos=True).token_ids
        assert trt.generate(prompt, max_new_tokens=32, ignore_eos=True).token_ids == want


def test_classifier_on_cuda_matches_cpu(cls_dir):
    _needs_ort_cuda()
    texts = ["def add(a, b): return a + b", "import os\nos.getcwd()", "x"]
    cpu = runtime.load(cls_dir, backend="ort-cpu").predict_proba(texts)
    gpu = runtime.load(cls_dir, backend="ort-cuda").predict_proba(texts)
    assert np.allclose(cpu, gpu, atol=1e-4), np.abs(cpu - gpu).max()
