"""Whether an int4 variant's LM head can be int4 too — decided per model, on its own data.

The LM head is the largest single matrix of a small LM and the last one before sampling,
so it is where 4-bit rounding shows first; an 8-bit head is the safe default, a 4-bit one
is smaller and faster (ONNX Runtime GenAI ships 4-bit heads). ``--head-bits auto`` builds
the variant both ways and keeps the 4-bit head when the variant's held-out perplexity
stays within the quality budget of the fp32 graph it came from — measured, not assumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgezoo.errors import CheckpointError, ExportError
from edgezoo.quantize.evaluate import score_windows

AUTO = "auto"
CHOICE_WINDOWS = 24  # held-out windows scored per candidate: enough to tell 0.5 % apart


def choose_head_bits(
    src: Path,
    staged: Path,
    build: Callable[[Path, int], dict],
    model_dir: Path,
    windows: list[np.ndarray],
    budget_pct: float,
    graph: str,
) -> dict:
    """Build ``staged`` with an int8 head and, beside it, with an int4 head (``build(dst,
    head_bits)`` returns the manifest details); score ``src`` and both on the first
    held-out windows; leave the chosen graph at ``staged`` and return its details with
    the evidence under ``lm_head_choice``. The losing candidate stays in its own folder
    under the staging directory, which the caller removes."""
    details = build(staged, 8)
    alternative = staged.parent / "head-int4" / staged.name
    alternative.parent.mkdir()
    details4 = build(alternative, 4)
    sample = windows[:CHOICE_WINDOWS]
    ppl = {
        name: _perplexity(path, model_dir, sample, graph)
        for name, path in (("source", src), ("head_int8", staged), ("head_int4", alternative))
    }
    limit = ppl["source"] * (1 + budget_pct / 100)
    keep_int4 = ppl["head_int4"] <= limit
    if keep_int4:
        for f in sorted(alternative.parent.iterdir()):  # the graph and its weights, same names
            os.replace(f, staged.parent / f.name)
        details = details4
    details["lm_head_choice"] = {
        "perplexity": {k: round(v, 4) for k, v in ppl.items()},
        "budget_pct": budget_pct,
        "windows": len(sample),
        "chosen_bits": 4 if keep_int4 else 8,
        "why": (
            f"int4 head within {budget_pct} % of the source's perplexity"
            if keep_int4
            else f"int4 head beyond {budget_pct} % of the source's perplexity: int8 head kept"
        ),
    }
    return details


def _perplexity(path: Path, model_dir: Path, windows: list[np.ndarray], graph: str) -> float:
    """Held-out perplexity of one graph file, through the runtime's own scoring."""
    from edgezoo.jsonfile import read_object
    from edgezoo.runtime.api import load_tokenizer
    from edgezoo.runtime.language_model import LanguageModel
    from edgezoo.runtime.session import make_session

    try:
        session = make_session(path, "ort-cpu", threads=2)
    except CheckpointError as e:  # a candidate we just built: the quantizer failed, not export
        raise ExportError(
            f"{path.name} does not load in ONNX Runtime ({e}); variant not written."
        ) from e
    model = LanguageModel(
        session,
        load_tokenizer(model_dir),
        read_object(model_dir / "config.json", "re-export the model dir."),
        graph=graph,
    )
    return score_windows(model, windows)["perplexity"]
