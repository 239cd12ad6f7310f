"""Assemble ``benchmarks/README.md`` from the committed results (``make bench-results``)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"

SECTIONS = [
    ("demo", "The demo's trained model: every variant against PyTorch eager", "demo.md"),
    (
        "bench",
        "Decode latency per size × precision × batch × prompt (random-init weights)",
        "bench.md",
    ),
    (
        "loop",
        "The current decode loop and graph against ONNX Runtime GenAI and llama.cpp (small sizes)",
        "bench_loop.md",
    ),
    (
        "sweep-tokens",
        "Scaling sweep: loss vs size at equal tokens, a power law and its prediction",
        "sweep_tokens.md",
    ),
    (
        "sweep-isoflop",
        "IsoFLOP: the compute-optimal size per budget, N* ∝ C^a",
        "sweep_isoflop.md",
    ),
    ("sweep-lr", "The sweep's learning-rate rule against ½× and 2×", "sweep_lr.md"),
    (
        "quantize",
        "Every variant of the equal-tokens sweep's trained models: size, quality, speed, gate; "
        "quality vs latency Pareto front",
        "quantize_sizes.md",
    ),
    ("sweep", "Scaling sweep at equal compute (what undertraining looks like)", "sweep.md"),
    (
        "prune",
        "Structured pruning (25 % attention + 30 % MLP): decode speed per size",
        "prune_speed.md",
    ),
    ("serve", "HTTP server under load (loopback)", "serve_load.md"),
    (
        "serve-mixed",
        "Continuous vs static batching under a mixed Poisson load (TTFT, inter-token latency)",
        "serve_mixed.md",
    ),
    ("serve-abuse", "The server under 10 % hostile traffic", "serve_abuse.md"),
    (
        "speculative",
        "Speculative decoding: prompt lookup, and drafts trained alone vs distilled",
        "speculative.md",
    ),
    (
        "speculative-small",
        "Speculative decoding on a trained `small` target, beside ONNX Runtime GenAI",
        "speculative_small.md",
    ),
    (
        "speculative-small-int4-draft",
        "Speculative decoding on the trained `small` target with int4 drafts (the target's "
        "own int4 graph among them), beside ONNX Runtime GenAI",
        "speculative_small_int4draft.md",
    ),
    (
        "speculative-small-avx2",
        "Speculative decoding on an AVX2-only host: a `small` target trained 500 steps, the "
        "demo model as the draft, with and without the corpus, and as the proposer ran before",
        "speculative_small_avx2.md",
    ),
    (
        "speculative-small-avx512",
        "Speculative decoding on an AMD AVX-512/VNNI host: the full `small` recipe (500 + 500 "
        "bf16 steps), the demo and the distilled `nano` as drafts, with and without the corpus",
        "speculative_small_avx512.md",
    ),
    (
        "call-cost",
        "What a call of several tokens costs against one, per variant (the price of checking "
        "speculative guesses)",
        "call_cost.md",
    ),
    (
        "peers-genai",
        "Beside ONNX Runtime GenAI, nano → medium × fp32/int8/int4: decode step, TTFT at 32 "
        "and 512 tokens, peak memory of fresh processes",
        "peers_genai.md",
    ),
    (
        "peers-genai-avx2",
        "Beside ONNX Runtime GenAI on an AVX2-only host (AMD EPYC: no AVX-512, VNNI or AMX), "
        "the same table",
        "peers_genai_avx2.md",
    ),
    (
        "peers-genai-avx512",
        "Beside ONNX Runtime GenAI on an AMD host with AVX-512 and VNNI (no AMX), nano → "
        "medium, prompts of 32 and 512 tokens",
        "peers_genai_avx512.md",
    ),
    (
        "int8-forms",
        "The two int8 graphs (weight-only MatMulNBits, dynamic MatMulInteger with per-token scales) beside GenAI's int8: "
        "decode, TTFT, memory, multi-token call cost",
        "int8_forms.md",
    ),
    (
        "step-overhead",
        "A decode step: the ONNX Runtime call vs the Python loop around it",
        "step_overhead.md",
    ),
    ("ray", "Ray Serve replicas: plain vs 1 vs 2 replicas on one machine", "ray_replicas.md"),
    ("s2s-quant", "Encoder-decoder (s2s) variants: held-out chrF, size, speed", "s2s_quant.md"),
    ("s2s", "Encoder-decoder (s2s) decode: edgezoo beside Optimum and CTranslate2", "s2s_bench.md"),
    (
        "memory",
        "Runtime memory: peak RSS per size × precision, prepacking on/off",
        "runtime_memory.md",
    ),
    (
        "export",
        "Export and quantize cost per preset (time, peak memory), and the fp32 graphs' speed",
        "export_cost.md",
    ),
    ("train", "Training throughput and MFU", "train_throughput.md"),
    ("ddp", "Distributed training: 1 vs 2 processes (DDP, gloo, CPU)", "ddp_scaling.md"),
    (
        "tp",
        "Tensor parallelism: memory per rank and step time, TP 1 vs 2 (gloo, CPU)",
        "tp.md",
    ),
    ("tune", "Hyperparameter search: TPE vs random at equal trials", "tune_compare.md"),
]


def main() -> None:
    parts = [
        "# Benchmarks\n",
        "Numbers measured on this project's development machine (2 vCPUs, no GPU). Timing here is noisy:",
        "compare ratios within one table (one run), not across tables. Regenerate everything with",
        "`make bench-results` (installs the `peers` extra, then runs the demo, `python -m benchmarks.bench`, `python -m benchmarks.sweep` (tokens, IsoFLOP, lr check, equal compute), the\n"
        "per-size quantization, pruning-speed, server-load, export-cost, training, DDP and TP benchmarks, then this script).\n",
        "No table here ran on a GPU. `bash benchmarks/gpu_check.sh` runs every GPU path (CUDA and TensorRT",
        "backends, bf16 + `torch.compile` training with MFU, NCCL) in one go when a GPU is lent: see",
        "[gpu_check.md](gpu_check.md).\n",
    ]
    for _, title, name in SECTIONS:
        path = RESULTS / name
        if not path.is_file():
            continue
        parts.append(f"## {title}\n")
        parts.append(path.read_text())
        png = path.with_suffix(".png")
        if png.is_file():
            parts.append(f"![{title}](results/{png.name})\n")
    (HERE / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
