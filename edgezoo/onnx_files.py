"""ONNX files on disk: saving one, and the facts a manifest entry records about it.

Shared by export and quantize (both write graphs) without either importing the other.
``onnx`` is imported inside the functions: the runtime's edge install reads manifests
through this package and has no onnx.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgezoo import atomic

if TYPE_CHECKING:
    import onnx

INLINE_BYTES = 1024  # tensors smaller than this (shapes, scalars) stay in the graph file
ALIGNMENT = 4096  # page-aligned weights: ONNX Runtime can map them instead of copying


def data_file(path: Path) -> Path:
    """Where a graph's weights live: ``<name>.data`` beside it."""
    return path.with_name(path.name + ".data")


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Save with every weight in ``<name>.data`` beside the graph, whatever the size.

    Never serialises the weights into one protobuf message (protobuf stops at 2 GB): onnx
    writes each tensor to the data file and drops it from the message as it goes. This is
    the layout ONNX Runtime GenAI's builder writes, and ORT loads it with less memory.
    """
    import onnx

    data_file(path).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file(path).name,
        size_threshold=INLINE_BYTES,
    )


class WeightWriter:
    """Streams initializers into ``<graph>.data`` as a graph is built, one at a time.

    Graph builders (the GQA decoder) call ``tensor(name, array)`` for each weight and get a
    TensorProto that only points into the data file, so the model's weights are never held
    twice (once as numpy, once inside a protobuf).
    """

    def __init__(self, graph_path: Path) -> None:
        self.path = data_file(graph_path)
        self._file = open(self.path, "wb")
        self._offset = 0

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        import onnx
        from onnx import numpy_helper

        array = np.ascontiguousarray(array)
        if array.nbytes < INLINE_BYTES:
            return numpy_helper.from_array(array, name)
        pad = -self._offset % ALIGNMENT
        self._file.write(b"\0" * pad)
        self._offset += pad
        self._file.write(memoryview(array).cast("B"))
        proto = onnx_tensor_stub(name, array)
        where = {"location": self.path.name, "offset": self._offset, "length": array.nbytes}
        for key, value in where.items():
            entry = proto.external_data.add()
            entry.key, entry.value = key, str(value)
        proto.data_location = onnx.TensorProto.EXTERNAL
        self._offset += array.nbytes
        return proto

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def onnx_tensor_stub(name: str, array: np.ndarray) -> onnx.TensorProto:
    """A TensorProto with the name, type and shape of ``array`` but no data."""
    import onnx
    from onnx import helper

    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    proto.dims.extend(array.shape)
    return proto


def publish(staged: Path, folder: Path) -> None:
    """Move a validated graph and its weights from staging into ``folder``, durably.

    Both files are fsynced first; the weights are renamed in before the graph, so a crash
    in between leaves at worst an unreferenced ``.data`` file, never a graph whose
    weights are missing; then the folder is fsynced so the renames survive a power cut."""
    weights = [f for f in staged.parent.iterdir() if f.name.startswith(staged.name + ".")]
    files = [*sorted(weights), staged]  # <name>.data (whatever a writer called it), then graph
    for f in files:
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    for f in files:  # weights first
        os.replace(f, folder / f.name)
    atomic.fsync_dir(folder)


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
    """sha256 and bytes of the graph file and its weights, as one artifact.

    The hash covers the data file too: two exports with the same graph and different
    weights must not share a TensorRT engine cache (keyed by this hash)."""
    weights = (data_file(path), path.with_name(path.name + "_data"))  # ours, optimum's
    import hashlib  # here, not at the top: the runtime imports this module but hashes only for TensorRT

    files = [path, *(f for f in weights if f.exists())]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": sum(f.stat().st_size for f in files)}
