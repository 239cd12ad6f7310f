"""``edgezoo train --nproc N``: run the same training under torchrun, on this machine.

Only a convenience for one node: it execs ``python -m torch.distributed.run --standalone
--nproc_per_node N [--max-restarts R] -m edgezoo.zoo.train <same flags>``. For several
machines run torchrun itself with its c10d rendezvous (docs/scaling-out.md has the
recipe, restarts included); nothing here replaces PyTorch's launcher.
"""

from __future__ import annotations

import subprocess
import sys


def torchrun_command(nproc: int, train_argv: list[str], max_restarts: int = 0) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]
    if max_restarts:
        cmd.append(f"--max-restarts={max_restarts}")
    return [*cmd, "-m", "edgezoo.zoo.train", *train_argv]


def strip_launcher_flags(argv: list[str]) -> list[str]:
    """The ``edgezoo train`` argv without ``train`` and the launcher's own flags."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if arg.startswith(("--nproc=", "--max-restarts=")) or arg == "train":
            continue
        out.append(arg)
    return out


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    return subprocess.call(torchrun_command(nproc, strip_launcher_flags(argv), max_restarts))
