"""What ``edgezoo tune`` searches: parameters, their ranges, grids, and the train command.

Torch- and Optuna-free, so ranges are checked (and ``edgezoo tune --help`` runs) before
anything heavy loads. Every tunable name is a ``TrainConfig`` field, so a trial's values
drop straight into the config and the best ones into an ``edgezoo train`` command line.
Depth is searched at a fixed parameter budget: a trial picks ``layers`` and the width is
derived so the non-embedding parameters stay near the base preset's.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, fields
from typing import Any

from edgezoo.errors import ConfigError
from edgezoo.zoo.config import LlamaConfig
from edgezoo.zoo.presets import make_config, non_embedding_params, resized
from edgezoo.zoo.train_config import TrainConfig

INT_PARAMS = ("warmup_steps", "batch_size", "layers")
AT_LEAST_ONE = ("batch_size", "layers")
TUNABLE = ("lr", "warmup_steps", "batch_size", "weight_decay", "min_lr_ratio", "layers")
# A depth whose budget-matched width misses the preset's non-embedding count by more than
# this factor is not "the same size", so the range is refused up front.
BUDGET_TOLERANCE = 1.5


@dataclass(frozen=True)
class Param:
    """One searched setting: a numeric range (``log``: sampled on a log scale) or choices."""

    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[float, ...] = ()

    @property
    def is_int(self) -> bool:
        return self.name in INT_PARAMS

    def grid(self, points: int) -> list[float]:
        """``points`` values spread over the range (log-spaced for ``log``), or the choices."""
        if self.choices:
            return list(self.choices)
        if points == 1:
            return [self.low]
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        values = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
        values = [math.exp(v) for v in values] if self.log else values
        if self.is_int:
            return sorted({round(v) for v in values})
        return [float(f"{v:.3g}") for v in values]


def default_space(base: TrainConfig, steps: int) -> dict[str, Param]:
    """Ranges that suit a short CPU run around ``base`` (override any with ``--range``)."""
    layers = make_config(base.family, base.size).num_hidden_layers
    return {
        "lr": Param("lr", 1e-4, 1e-2, log=True),
        "warmup_steps": Param("warmup_steps", 0, max(1, steps // 5)),
        "batch_size": Param("batch_size", choices=(8, 16, 32)),
        "weight_decay": Param("weight_decay", 0.0, 0.3),
        "min_lr_ratio": Param("min_lr_ratio", 0.0, 0.5),
        "layers": Param("layers", max(1, layers // 2), 2 * layers),
    }


def parse_range(text: str) -> Param:
    """``NAME=LOW:HIGH[:log]``, ``NAME=A,B,C`` (choices) or ``NAME=VALUE`` (fixed)."""
    name, sep, spec = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in TUNABLE:
        raise ConfigError(f"unknown parameter {name!r} in --range; tunable: {', '.join(TUNABLE)}")
    if not sep or not spec.strip():
        raise ConfigError(f"--range {text!r} has no range: write {name}=LOW:HIGH or {name}=A,B")
    number = _number_parser(name, text)
    if ":" in spec:
        parts = spec.split(":")
        log = len(parts) == 3 and parts[2] == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ConfigError(f"--range {text!r}: write {name}=LOW:HIGH or {name}=LOW:HIGH:log")
        low, high = number(parts[0]), number(parts[1])
        if not low < high:
            raise ConfigError(f"--range {text!r} is empty: LOW must be below HIGH")
        if log and low <= 0:
            raise ConfigError(f"--range {text!r}: a log range needs LOW > 0")
        return Param(name, low, high, log=log)
    choices = tuple(dict.fromkeys(number(v) for v in spec.split(",") if v.strip()))
    if not choices:
        raise ConfigError(f"--range {text!r} lists no values")
    return Param(name, choices=choices)


def _number_parser(name: str, text: str):
    def number(value: str) -> float:
        try:
            parsed = int(value) if name in INT_PARAMS else float(value)
        except ValueError:
            kind = "a whole number" if name in INT_PARAMS else "a number"
            raise ConfigError(f"--range {text!r}: {value!r} is not {kind}") from None
        if not math.isfinite(parsed) or parsed < 0 or (name in AT_LEAST_ONE and parsed < 1):
            raise ConfigError(f"--range {text!r}: {value!r} is out of range for {name}")
        return parsed

    return number


def build_space(
    base: TrainConfig, steps: int, search: list[str] | None, ranges: list[str]
) -> dict[str, Param]:
    """The searched parameters: ``search`` (None: all) plus every ``--range`` given."""
    defaults = default_space(base, steps)
    names = TUNABLE if search is None else search
    for name in names:
        if name not in TUNABLE:
            raise ConfigError(
                f"unknown parameter {name!r} in --search; tunable: {', '.join(TUNABLE)}"
            )
    space = {name: defaults[name] for name in names}
    space.update((p.name, p) for p in map(parse_range, ranges))
    if "layers" in space:
        check_budget(base, space["layers"])
    return space


def grid_of(space: dict[str, Param], points: int) -> dict[str, list[float]]:
    return {name: p.grid(points) for name, p in space.items()}


def budget_width(base: TrainConfig, layers: int) -> int:
    """The width whose non-embedding parameters at ``layers`` come nearest the preset's."""
    cfg = make_config(base.family, base.size)
    target = non_embedding_params(cfg)
    step = 2 * cfg.num_attention_heads if isinstance(cfg, LlamaConfig) else cfg.num_attention_heads
    widths = range(step, 4 * cfg.hidden_size + step, step)
    return min(widths, key=lambda w: abs(non_embedding_params(resized(cfg, layers, w)) - target))


def check_budget(base: TrainConfig, layers: Param) -> None:
    """Refuse depths that cannot hold the preset's budget at any width the heads allow."""
    cfg = make_config(base.family, base.size)
    target = non_embedding_params(cfg)
    ends = layers.choices or (layers.low, layers.high)
    for n in (int(v) for v in ends):
        got = non_embedding_params(resized(cfg, n, budget_width(base, n)))
        if not target / BUDGET_TOLERANCE <= got <= target * BUDGET_TOLERANCE:
            raise ConfigError(
                f"--range layers: {n} layers cannot hold {base.size}'s {target:,} non-embedding "
                f"parameters (nearest width gives {got:,}); narrow the layers range."
            )


def trial_settings(base: TrainConfig, params: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields for a trial's values: ``layers`` brings its budget-matched width."""
    out = {k: (int(v) if k in INT_PARAMS else float(v)) for k, v in params.items()}
    if "layers" in out:
        out["width"] = budget_width(base, out["layers"])
    return out


# Fields a reproducing command must carry when they differ from TrainConfig's defaults.
COMMAND_FIELDS = (
    "family", "size", "data", "steps", "batch_size", "grad_accum", "context", "lr",
    "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip", "vocab_size", "layers",
    "width", "val_frac", "eval_every", "eval_batches", "seed", "device", "text_field",
    "label_field",
)  # fmt: skip


def train_command(cfg: TrainConfig, out: str) -> str:
    """A ready ``edgezoo train`` line that trains ``cfg`` again into ``out``."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    args = ["edgezoo", "train", "--out", out]
    for name in COMMAND_FIELDS:
        value = getattr(cfg, name)
        if value is None or value == defaults[name]:
            continue
        args += [
            f"--{name.replace('_', '-')}",
            repr(value) if isinstance(value, float) else str(value),
        ]
    return shlex.join(args)
