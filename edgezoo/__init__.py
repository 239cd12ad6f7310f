"""edgezoo: train small transformers, export to ONNX, quantize, run at the edge.

One import name, one subpackage per stage::

    edgezoo.zoo        model families, presets, tokenizer, data, training   (extra: train)
    edgezoo.export     torch -> validated ONNX graphs                        (extra: export)
    edgezoo.quantize   fp16 / int8 / int4 variants, pruning                  (extra: quantize)
    edgezoo.runtime    load() and run any variant; no torch                  (core install)

The package itself holds only what every stage shares (errors, atomic writes, the
manifest, ONNX I/O names), so ``import edgezoo`` stays light. The usual entry point::

    import edgezoo
    lm = edgezoo.load("runs/demo", variant="int8")
    print(lm.generate("def main():", max_new_tokens=32).text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from edgezoo.runtime import SamplingParams, load

__all__ = ["SamplingParams", "__version__", "load"]


def __getattr__(name: str) -> Any:
    """``edgezoo.load`` / ``edgezoo.SamplingParams`` import the runtime on first use only."""
    if name in ("load", "SamplingParams"):
        from edgezoo import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'edgezoo' has no attribute {name!r}")
