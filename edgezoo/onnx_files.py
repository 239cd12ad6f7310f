"""ONNX files on disk: saving one, and the facts a manifest entry records about it.

Shared by export and quantize (both write graphs) without either importing the other.
``onnx`` is imported inside the functions: the runtime's edge install reads manifests
through this package and has no onnx.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgezoo import atomic

if TYPE_CHECKING:
    import onnx

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf's hard limit is 2 GB


def data_file(path: Path) -> Path:
    """Where a graph's external weights live: ``<name>.data`` beside it."""
    return path.with_name(path.name + ".data")


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Save, with weights in ``<name>.data`` beside it when the graph is too big for protobuf."""
    import onnx

    if proto.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file(path).name,
        )
    else:
        onnx.save_model(proto, str(path))


def io_signature(path: Path) -> dict[str, list]:
    """Inputs and outputs (name, dtype, shape with dim symbols) and the opset of a graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def sig(values):
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {
        "inputs": sig(model.graph.input),
        "outputs": sig(model.graph.output),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def file_facts(path: Path) -> dict:
    """sha256 of the graph file and the bytes of graph + external weights."""
    files = [path, *([data_file(path)] if data_file(path).exists() else [])]
    return {"sha256": atomic.sha256_file(path), "bytes": sum(f.stat().st_size for f in files)}
