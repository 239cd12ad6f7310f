"""HostInput: a decode loop's small host inputs reach the graph on every run, whether the
binding shares the array's memory (CPU) or copies it when bound (a device)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgezoo.runtime.host_input import HostInput


def _identity_session(tmp_path) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, [1, 1])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _loop(binding_of, run, host: HostInput, tokens) -> list[int]:
    """What a decode loop does: bind once, then per step write the token, refresh, run."""
    binding = binding_of()
    host.bind(binding)
    seen = []
    for token in tokens:
        host.array[0, 0] = token
        host.refresh(binding)
        seen.append(run(binding))
    return seen


def test_on_the_cpu_the_binding_reads_the_array_itself(tmp_path):
    sess = _identity_session(tmp_path)

    def run(binding):
        binding.bind_output("out")
        sess.run_with_iobinding(binding)
        return int(binding.copy_outputs_to_cpu()[0][0, 0])

    host = HostInput("input_ids", np.zeros((1, 1), np.int64), "cpu")
    assert _loop(sess.io_binding, run, host, [5, 7, 9]) == [5, 7, 9]


class CopyAtBind:
    """A device binding as ORT's IOBinding::BindInput behaves: the value is copied when
    bound, so writes into the host array afterwards are not seen."""

    def __init__(self):
        self.inputs = {}

    def bind_cpu_input(self, name, array):
        self.inputs[name] = np.array(array)

    def bind_ortvalue_input(self, name, value):
        self.inputs[name] = value.numpy().copy()


def test_on_a_device_every_step_binds_the_new_token():
    host = HostInput("input_ids", np.zeros((1, 1), np.int64), "cuda")
    seen = _loop(CopyAtBind, lambda b: int(b.inputs["input_ids"][0, 0]), host, [5, 7, 9])
    assert seen == [5, 7, 9]
