"""What a search leaves behind: the best settings, a ready ``edgezoo train`` line, plots.

``best_command.txt`` holds a command that trains the best trial's settings again (from
scratch, into a dir of your choosing); ``best_params.json`` the same as data, with the
value it scored. Plots use ``optuna.visualization.matplotlib`` when the ``plots`` extra is
installed and are skipped with a note otherwise.
"""

from __future__ import annotations

import sys
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from edgezoo import atomic
from edgezoo.zoo.train_config import TrainConfig
from edgezoo.zoo.tune_space import train_command

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from edgezoo.zoo.tune import TuneConfig

PLOTS = ("optimization_history", "param_importances", "intermediate_values")


def best_train_config(best: FrozenTrial) -> TrainConfig:
    """The TrainConfig the best trial ran (recorded on the trial when it started)."""
    return TrainConfig(**best.user_attrs["train_config"])


def write_outputs(tc: TuneConfig, study: optuna.Study, best: FrozenTrial) -> str:
    """best_command.txt, best_params.json and the plots in ``tc.out``; returns the command."""
    from edgezoo.zoo.tune import OBJECTIVE, trial_values

    out = Path(tc.out)
    cfg = best_train_config(best)
    command = train_command(cfg, str(out / "best-model"))
    atomic.write_text(out / "best_command.txt", command + "\n")
    atomic.write_json(
        out / "best_params.json",
        {
            "study": tc.study_name,
            "storage": tc.storage_url(),
            "metric": OBJECTIVE[tc.family][0],
            "direction": OBJECTIVE[tc.family][1],
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "width": cfg.width,
            "model_dir": cfg.out,
            "command": command,
            "trials": trial_values(study),
        },
    )
    print(f"best trial {best.number}: {OBJECTIVE[tc.family][0]} {best.value:.4f}")
    print(command)
    write_plots(study, out)
    return command


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """PNG plots of the search; none (with a note) without matplotlib or enough trials."""
    if find_spec("matplotlib") is None:
        _note('plots skipped: matplotlib is not installed (pip install "edgezoo[plots]")')
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    written = []
    pruned_or_reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    for name in PLOTS if pruned_or_reported else PLOTS[:2]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib plots are "experimental"
                axes = getattr(vis, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            _note(f"{name} plot skipped: {e}")
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        path = out / f"{name}.png"
        atomic.write_with(path, lambda tmp, fig=figure: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(figure)
        written.append(path)
    return written


def _note(message: str) -> None:
    print(f"tune: {message}", file=sys.stderr)
