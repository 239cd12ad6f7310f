"""Training settings as plain data, and their command-line flags.

Kept apart from ``zoo.train`` so ``edgezoo --help`` does not import torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from edgezoo.argtypes import at_least, fraction, positive
from edgezoo.zoo import corpus
from edgezoo.zoo.presets import FAMILIES

PRECISIONS = ("auto", "fp32", "bf16")  # --precision: the forward pass's autocast (train_optim)


@dataclass
class TrainConfig:
    family: str = "lm"
    size: str = "nano"
    data: str | None = None  # None: the built-in corpus for the family
    out: str = "runs/lm-nano"
    steps: int | None = None  # optimizer steps; or give a token budget
    tokens: int | None = None
    batch_size: int = 16  # global sequences per optimizer step (over accumulation and ranks)
    grad_accum: int = 1
    context: int | None = None  # sequence length; default: the preset's (LM) or 128 (cls)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    vocab_size: int | None = None  # default: the preset's
    tokenizer: str | None = None  # a model dir or tokenizer.json to use as is (no training)
    layers: int | None = None  # depth / width instead of the preset's (heads stay)
    width: int | None = None
    val_frac: float = 0.05
    eval_every: int = 100
    eval_batches: int = 16
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"  # forward-pass autocast: auto (bf16 on capable GPUs), fp32, bf16
    fsdp: bool = False
    tp: int = 1  # tensor-parallel degree (Llama family, under torchrun)
    sequence_parallel: bool = False  # with tp > 1: shard norms/residuals along the sequence
    resume: bool = False
    init_from: str | None = None
    distill_from: str | None = None  # teacher model dir (lm): train on its soft targets
    distill_temperature: float | None = None  # None: 2.0
    distill_weight: float | None = None  # weight of the KL term; None: 0.5
    text_field: str = "text"
    label_field: str = "label"
    source_field: str = "source"  # s2s: JSONL/CSV columns of the source and target text
    target_field: str = "target"
    tokenizer_chars: int = 20_000_000
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_data(self) -> str:
        builtin = {"lm": corpus.LM_CORPUS, "s2s": corpus.S2S_CORPUS}
        return self.data or builtin.get(self.family, corpus.CLS_CORPUS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default=d.family,
        help="lm: decoder LM (Llama); cls: encoder classifier (BERT); s2s: encoder-decoder (T5)",
    )
    p.add_argument("--size", default=d.size, help="size preset (see `edgezoo models`)")
    p.add_argument(
        "--data",
        default=None,
        help=f"text file/folder/.jsonl (lm), .csv/.jsonl with text+label (cls) or source+target (s2s); default {corpus.LM_CORPUS} / {corpus.CLS_CORPUS} / {corpus.S2S_CORPUS}",
    )
    p.add_argument(
        "--out", required=True, help="model dir to write (checkpoints go in OUT/checkpoints)"
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=at_least(1), help="optimizer steps to train (default 1000)")
    budget.add_argument(
        "--tokens", type=at_least(1), help="stop after this many training tokens instead"
    )
    p.add_argument(
        "--batch-size",
        type=at_least(1),
        default=d.batch_size,
        help="global batch in sequences, over accumulation and processes",
    )
    p.add_argument(
        "--grad-accum",
        type=at_least(1),
        default=d.grad_accum,
        help="micro-batches per step (same result, less memory)",
    )
    p.add_argument(
        "--context",
        type=at_least(2),
        help="sequence length (default: preset context for lm and s2s (longest source), 128 for cls)",
    )
    p.add_argument("--lr", type=positive, default=d.lr, help="peak learning rate (AdamW)")
    p.add_argument(
        "--min-lr-ratio",
        type=float,
        default=d.min_lr_ratio,
        help="cosine decay ends at this fraction of --lr",
    )
    p.add_argument(
        "--warmup-steps",
        type=at_least(0),
        default=d.warmup_steps,
        help="steps of linear warmup to --lr",
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument(
        "--grad-clip", type=float, default=d.grad_clip, help="clip the gradient norm to this"
    )
    p.add_argument("--vocab-size", type=int, help="tokenizer vocabulary (default: the preset's)")
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="use this tokenizer as is instead of training one: a model dir or a tokenizer.json "
        "(models that must share token ids, e.g. a draft and its target; the vocabulary sets "
        "the model's)",
    )
    p.add_argument(
        "--layers",
        type=at_least(1),
        help="transformer blocks instead of the preset's (its heads and MLP ratio stay)",
    )
    p.add_argument(
        "--width",
        type=at_least(2),
        help="hidden size instead of the preset's: a multiple of the heads (x2 for lm)",
    )
    p.add_argument(
        "--val-frac",
        type=float,
        default=d.val_frac,
        help="fraction of the documents held out for evaluation",
    )
    p.add_argument(
        "--eval-every",
        type=at_least(1),
        default=d.eval_every,
        help="evaluate on the held-out split every N steps",
    )
    p.add_argument(
        "--eval-batches",
        type=at_least(1),
        default=d.eval_batches,
        help="held-out batches per mid-run evaluation (the final one, in eval.json, scores the "
        "whole held-out set, as `edgezoo eval` and the quantize table do)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=at_least(1),
        default=d.checkpoint_every,
        help="save a resumable checkpoint in OUT/checkpoints every N steps",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=at_least(1),
        default=d.keep_checkpoints,
        help="newest checkpoints to keep (older ones are deleted)",
    )
    p.add_argument(
        "--log-every",
        type=at_least(1),
        default=d.log_every,
        help="write a training.jsonl line every N steps",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed for weights and data order (reproducible runs)",
    )
    p.add_argument(
        "--device",
        default=d.device,
        help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="forward-pass autocast. auto: bf16 on GPUs that support it, fp32 elsewhere (CPU "
        "stays exact); bf16: also on CPU, faster on CPUs with AMX or AVX-512 BF16; fp32: never. "
        "Weights and optimizer state stay fp32",
    )
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="shard parameters, gradients and optimizer state (FSDP2) across processes",
    )
    p.add_argument(
        "--tp",
        type=at_least(1),
        default=d.tp,
        help="tensor parallelism: split each layer's heads and MLP over this many processes "
        "(lm only; --nproc a multiple of it; the rest is data parallel, DDP or --fsdp)",
    )
    p.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="with --tp: also split the norms and residual stream along the sequence "
        "(less activation memory per rank at long context; same math)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest valid checkpoint in --out"
    )
    p.add_argument(
        "--init-from", help="start from this model dir's weights and tokenizer (fine-tuning)"
    )
    distill = p.add_argument_group("distillation (lm)")
    distill.add_argument(
        "--distill-from",
        metavar="TEACHER_DIR",
        help="train on this bigger LM's soft targets (KL on temperature-softened logits) "
        "as well as the corpus: a better draft model for speculative decoding. The teacher's "
        "tokenizer is used",
    )
    distill.add_argument(
        "--distill-temperature",
        type=positive,
        help="softmax temperature of both models in the KL term (default 2)",
    )
    distill.add_argument(
        "--distill-weight",
        type=fraction,
        help="weight of the KL term, the rest is cross-entropy on the corpus (default 0.5)",
    )
    p.add_argument(
        "--text-field", default=d.text_field, help="JSONL/CSV/Parquet column holding the text"
    )
    p.add_argument("--label-field", default=d.label_field, help="column holding the label (cls)")
    p.add_argument(
        "--source-field", default=d.source_field, help="column holding the source text (s2s)"
    )
    p.add_argument(
        "--target-field", default=d.target_field, help="column holding the target text (s2s)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = set(TrainConfig.__dataclass_fields__) - {"extra", "tokenizer_chars"}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
