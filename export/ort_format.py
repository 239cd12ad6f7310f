"""Convert an exported variant to ONNX Runtime's ``.ort`` format for minimal/mobile builds.

Uses ORT's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``) with the
*Fixed* optimisation style: the graph is optimised once at conversion and a minimal ORT
build loads it without its optimiser. The required-operators config it writes beside the
model is what a custom minimal ORT build is compiled with.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgezoo import manifest
from edgezoo.dirlock import locks_model_dir
from edgezoo.errors import ExportError
from edgezoo.onnx_files import file_facts


@locks_model_dir("export --ort-format")
def to_ort_format(model_dir: str | Path, variant: str = "fp32") -> dict:
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    src = manifest.variant_file(model_dir, variant)
    out_dir = src.parent
    with tempfile.TemporaryDirectory(prefix=".ort-", dir=out_dir) as tmp:
        staged = Path(tmp) / src.name
        shutil.copy(src, staged)
        if src.with_name(src.name + ".data").exists():
            shutil.copy(src.with_name(src.name + ".data"), Path(tmp) / (src.name + ".data"))
        try:
            convert_onnx_models_to_ort(
                Path(tmp),
                output_dir=Path(tmp) / "out",
                optimization_styles=[OptimizationStyle.Fixed],
            )
        except Exception as e:  # the converter raises plain exceptions
            raise ExportError(f"conversion of {src.name} to .ort failed: {e}") from e
        produced = sorted((Path(tmp) / "out").glob("*.ort"))
        if not produced:
            raise ExportError(f"the ORT converter produced no .ort file for {src.name}.")
        target = out_dir / (src.stem + ".ort")
        shutil.move(str(produced[0]), str(target))
        configs = sorted((Path(tmp) / "out").glob("*.config"))
        if configs:
            shutil.move(str(configs[0]), str(out_dir / (src.stem + ".required_operators.config")))
    entry = dict(manifest.read(model_dir)["variants"][variant])
    entry.update(file=target.name, format="ort", source_variant=variant, **file_facts(target))
    manifest.add_variant(model_dir, f"{variant}-ort", entry)
    return entry
