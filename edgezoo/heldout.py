"""The one held-out LM measurement: which windows of the validation tokens are scored, how.

Training's ``eval.json``, ``edgezoo eval`` and the quantize quality table report the same
number only if they cut the same token stream into the same windows and stop at the same
count; this module is that definition, torch-free so PyTorch, the quantize stage and the
ONNX Runtime side all use it.

A window is at most ``context`` tokens; the model reads all but its last and predicts
each next one, so a window of n tokens scores n − 1. Consecutive windows share one
token, so every token after the first is predicted exactly once, and a window fits the
runtime's context (``LanguageModel.score_ids``) as it is. At most ``max_tokens`` tokens
are scored; the last window may be shorter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgezoo.jsonfile import read_object

EVAL_TOKENS = 8192  # scored tokens: enough to rank variants, cheap for every ONNX variant on CPU


def lm_windows(stream: np.ndarray, context: int, max_tokens: int = EVAL_TOKENS) -> list[np.ndarray]:
    """int64 windows of ``stream`` that together score ``min(len - 1, max_tokens)`` tokens."""
    if context < 2:
        raise ValueError(f"an evaluation window needs at least 2 tokens, got context={context}")
    tokens = np.asarray(stream[: max_tokens + 1], dtype=np.int64)
    step = context - 1
    return [tokens[start : start + context] for start in range(0, len(tokens) - 1, step)]


def scored_tokens(windows: list[np.ndarray]) -> int:
    """How many next-token predictions ``windows`` hold."""
    return sum(len(w) - 1 for w in windows)


def eval_context(model_dir: str | Path) -> int:
    """The window a model dir is evaluated at: the context it was trained on.

    ``tokenizer_config.json``'s ``model_max_length`` is the training context; a model may
    have more positions than it saw (``config.json``), which would only measure how badly
    it extrapolates. Imported models often say 10^30 there, so the positions cap it."""
    model_dir = Path(model_dir)
    fix = "restore it from the model dir it came from."
    config = read_object(model_dir / "config.json", fix)
    positions = int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
    tok_config = model_dir / "tokenizer_config.json"
    trained = read_object(tok_config, fix).get("model_max_length") if tok_config.is_file() else None
    if isinstance(trained, (int, float)) and trained >= 2:
        return int(min(trained, positions))
    return positions


@dataclass
class LossTally:
    """Summed next-token loss over scored tokens: one mean and perplexity for every stage."""

    total: float = 0.0
    tokens: int = 0

    def add(self, loss_sum: float, tokens: int) -> None:
        self.total += loss_sum
        self.tokens += tokens

    @property
    def loss(self) -> float:
        return self.total / self.tokens

    def report(self) -> dict[str, float]:
        """``loss``, ``perplexity`` and ``tokens``: the keys eval.json and the manifest keep."""
        return {
            "loss": self.loss,
            "perplexity": math.exp(min(self.loss, 50.0)),
            "tokens": self.tokens,
        }
