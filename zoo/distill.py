"""Knowledge distillation: train a small LM on a bigger one's soft targets (``--distill-from``).

A draft model for speculative decoding is only as useful as its agreement with the target.
Trained on the target's own next-token distributions — not only on the corpus' one-hot
next token — a small model learns where the target hesitates and which token it prefers,
so it proposes more of the tokens the target accepts. The loss is Hinton's: the
temperature-softened KL divergence to the teacher, scaled by T² so its gradients keep their
size as T changes, mixed with the usual cross-entropy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from edgezoo.errors import ConfigError
from edgezoo.zoo.modeldir import build_model, load_config, load_weights
from edgezoo.zoo.tokenizer import load_tokenizer, tokenizer_fingerprint
from edgezoo.zoo.train_config import TrainConfig
from edgezoo.zoo.train_tasks import LMTask

DEFAULT_TEMPERATURE = 2.0
DEFAULT_KL_WEIGHT = 0.5


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    kl_weight: float,
) -> torch.Tensor:
    """kl_weight · T² · KL(teacher_T ‖ student_T) + (1 − kl_weight) · CE(student, targets).

    Per token, averaged over every position; logits are (..., vocab) and may be bf16."""
    vocab = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, vocab)
    t = teacher_logits.float().reshape(-1, vocab)
    kl = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    ce = F.cross_entropy(s, targets.reshape(-1)) if kl_weight < 1 else s.new_zeros(())
    return kl_weight * temperature**2 * kl + (1 - kl_weight) * ce


def load_teacher(teacher_dir: str | Path, tok: Tokenizer, context: int) -> nn.Module:
    """The teacher, frozen in eval mode, after checking it can teach this student.

    Same tokenizer (byte for byte: the KL compares distributions over the same token ids)
    and a context at least the student's."""
    teacher_dir = Path(teacher_dir)
    cfg = load_config(teacher_dir)
    if cfg.family != "lm" or getattr(cfg, "id2label", None):
        raise ConfigError(
            f"--distill-from {teacher_dir} is a {cfg.family} model; distillation needs a decoder LM (family lm)."
        )
    if tokenizer_fingerprint(load_tokenizer(teacher_dir)) != tokenizer_fingerprint(tok):
        raise ConfigError(
            f"--distill-from {teacher_dir}: its tokenizer differs from this run's. The student "
            "must share the teacher's vocabulary: leave --vocab-size unset (the teacher's "
            "tokenizer is then copied) and do not combine with --init-from of another tokenizer."
        )
    if cfg.max_position_embeddings < context:
        raise ConfigError(
            f"--distill-from {teacher_dir}: the teacher reads at most {cfg.max_position_embeddings} "
            f"tokens but this run trains on {context}; pass --context {cfg.max_position_embeddings} or less."
        )
    teacher = build_model(cfg)
    load_weights(teacher, teacher_dir / "model.safetensors")
    teacher.eval().requires_grad_(False)
    return teacher


def with_teacher(cfg: TrainConfig, task: object, tok: Tokenizer, context: int) -> DistillTask:
    """The run's LM task, distilling from ``cfg.distill_from``."""
    if not isinstance(task, LMTask):
        raise ConfigError("--distill-from trains a decoder LM: use it with --family lm.")
    teacher = load_teacher(cfg.distill_from, tok, context)
    temperature = (
        DEFAULT_TEMPERATURE if cfg.distill_temperature is None else cfg.distill_temperature
    )
    weight = DEFAULT_KL_WEIGHT if cfg.distill_weight is None else cfg.distill_weight
    return DistillTask(task, teacher, temperature, weight)


class DistillTask(LMTask):
    """The LM task with the teacher's soft targets in the loss; data, sampler and held-out
    evaluation are the plain LM task's, so a distilled model's validation loss compares
    directly with one trained alone."""

    def __init__(
        self, base: LMTask, teacher: nn.Module, temperature: float, kl_weight: float
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"--distill-temperature {temperature} must be > 0 (2 is usual).")
        if not 0 <= kl_weight <= 1:
            raise ConfigError(f"--distill-weight {kl_weight} must lie in [0, 1].")
        self.__dict__.update(base.__dict__)
        self.teacher = teacher
        self.temperature = temperature
        self.kl_weight = kl_weight

    def loss(self, model: nn.Module, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        x, y = (torch.from_numpy(t).to(device, non_blocking=True) for t in self.train.batch(idx))
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_logits, _ = self.teacher(x)
        logits, _ = model(x)
        return distillation_loss(logits, teacher_logits, y, self.temperature, self.kl_weight)
