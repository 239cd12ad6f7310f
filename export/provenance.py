"""What produced an artifact: library versions and, in a checkout of edgezoo, its commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout root, in a checkout


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    import edgezoo

    return {
        "edgezoo": edgezoo.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
    }


def source_commit(package_root: Path = PACKAGE_ROOT) -> str | None:
    """The edgezoo commit, only when the package runs from edgezoo's own checkout.

    An installed package can sit inside someone else's git repository (a venv in their
    project): ``git rev-parse`` would then name *their* commit. So the commit counts only
    when the repository's top level is the folder holding this package's stages and its
    ``pyproject.toml`` is edgezoo's; otherwise the version in ``versions()`` identifies it.
    """
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=package_root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if out.returncode or len(lines) != 2 or Path(lines[0]).resolve() != package_root:
        return None
    pyproject = package_root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "edgezoo"' not in pyproject.read_text():
        return None
    return lines[1]
