"""The CPU-checkable parts of benchmarks/gpu_check.sh: its torch-free helper and a dry run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_compare as gc

REPO = Path(__file__).resolve().parents[1]


def test_compare_tokens_exact_and_first_mismatch():
    assert gc.compare_tokens([1, 2, 3], [1, 2, 3])["match"] is True
    diff = gc.compare_tokens([1, 2, 3, 4], [1, 2, 9, 4])
    assert (diff["match"], diff["first_mismatch"], diff["common_prefix"]) == (False, 2, 2)
    assert diff["prefix_fraction"] == 0.5


def test_compare_tokens_length_difference_is_a_mismatch_at_the_end():
    short = gc.compare_tokens([1, 2, 3], [1, 2])
    assert (short["match"], short["first_mismatch"], short["common_prefix"]) == (False, 2, 2)
    assert gc.compare_tokens([], [])["match"] is True


@pytest.mark.parametrize("size", ["nano", "small", "medium"])
def test_flops_per_token_from_config_json_equals_the_throughput_benchmark(size):
    """The torch-free FLOP count (from config.json) is benchmarks/train_throughput's."""
    pytest.importorskip("torch")
    from benchmarks.train_throughput import flops_per_token
    from edgezoo.zoo.presets import make_config

    cfg = make_config("lm", size)
    assert gc.flops_per_token(cfg.to_hf_dict(), 512) == flops_per_token(cfg, 512)


def test_mfu_uses_steady_log_lines_not_the_compile_warmup():
    config = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 600,
    }
    rows = [
        {"step": 25, "loss": 5.0, "tokens_per_s": 10.0},  # includes torch.compile
        {"step": 50, "loss": 4.0, "tokens_per_s": 1000.0},
        {"step": 75, "loss": 3.5, "tokens_per_s": 1200.0},
        {"step": 75, "event": "final", "loss": 3.4, "train_tokens_per_s": 700.0},
    ]
    row = gc.mfu_row(config, rows, context=128, peak_tflops=1.0)
    assert row["tokens_per_s"] == 1100.0
    assert row["tokens_per_s_whole_run"] == 700.0
    assert row["steps"] == 75 and row["final_loss"] == 3.5
    dense, attn = gc.flops_per_token(config, 128)
    assert row["mfu"] == pytest.approx(1100.0 * (dense + attn) / 1e12)


def _write_results(tmp_path: Path) -> tuple[Path, Path]:
    steps = tmp_path / "steps.tsv"
    steps.write_text(
        "install\tok\t0\t100.5\t240\t\n"
        "train\ttimeout\t124\t180.0\t180\tkilled after 180s\n"
        "export\tskipped\t\t0\t120\tneeds /x/model.safetensors\n"
    )
    res = tmp_path / "results"
    res.mkdir()
    (res / "env.json").write_text(json.dumps({"cuda_available": False, "torch": "2.13.0+cpu"}))
    for backend, ids in (("ort-cpu", [5, 6, 7, 8]), ("ort-cuda", [5, 6, 0, 8])):
        row = {"backend": backend, "asked_variant": "fp32", "fp16": False, "token_ids": ids}
        (res / f"tokens-lm-{backend}-fp32.json").write_text(json.dumps(row | {"model": "lm"}))
    # another model, timed on the GPU only: nothing of its own to compare with
    other = {"model": "lm-big", "backend": "ort-cuda", "asked_variant": "fp32", "token_ids": [1]}
    (res / "tokens-lm-big-ort-cuda-fp32.json").write_text(json.dumps(other))
    err = {"backend": "tensorrt", "asked_variant": "fp32", "fp16": False, "error": "ConfigError: x"}
    (res / "tokens-lm-tensorrt-fp32.json").write_text(json.dumps(err))
    (res / "broken.json").write_text("{not json")
    return steps, res


def test_summary_writes_json_and_markdown_comparing_against_ort_cpu(tmp_path):
    steps, res = _write_results(tmp_path)
    out = tmp_path / "out" / "gpu-check.json"
    args = ["summary", "--steps", str(steps), "--results", str(res), "--out", str(out)]
    assert gc.main([*args, "--elapsed", "12"]) == 0
    summary = json.loads(out.read_text())
    assert summary["ran_on_gpu"] is False
    assert [s["status"] for s in summary["steps"]] == ["ok", "timeout", "skipped"]
    assert summary["steps"][1]["rc"] == 124 and summary["steps"][2]["rc"] is None
    assert summary["step_counts"] == {"ok": 1, "timeout": 1, "skipped": 1}
    cuda = next(r for r in summary["tokens"] if r["backend"] == "ort-cuda" and r["model"] == "lm")
    assert cuda["vs_ort_cpu_fp32"]["first_mismatch"] == 2
    big = next(r for r in summary["tokens"] if r["model"] == "lm-big")
    assert "vs_ort_cpu_fp32" not in big
    assert "vs_ort_cpu_fp32" not in next(r for r in summary["tokens"] if r["backend"] == "ort-cpu")
    assert "error" in summary["broken"]
    md = out.with_suffix(".md").read_text()
    assert "differs at 2" in md and "reference" in md and "ConfigError" in md


def test_summary_of_nothing_still_writes_a_file(tmp_path):
    out = tmp_path / "gpu-check.json"
    args = ["summary", "--steps", str(tmp_path / "none.tsv"), "--results", str(tmp_path / "no")]
    assert gc.main([*args, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["steps"] == []


def test_helper_imports_no_torch():
    code = "import sys, benchmarks.gpu_compare; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_script_parses_and_dry_run_lists_every_step_and_writes_the_summary(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True)
    env = {
        **os.environ,
        "GPU_CHECK_DRY_RUN": "1",
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_CHECK_PYTHON": sys.executable,
    }
    out = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    for name in ("install", "pytest-gpu", "train", "export", "quantize", "tokens-ort-trt-int8"):
        assert f"[dry-run] {name} " in out.stdout
    summary = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert summary["steps"] and {s["status"] for s in summary["steps"]} == {"dry-run"}
    assert (tmp_path / "out" / "gpu-check.log").read_text().count("[dry-run]") == len(
        summary["steps"]
    )
