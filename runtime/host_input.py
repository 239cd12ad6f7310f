"""A small host array that a bound graph reads on every run (a step's token ids, the first
position whose logits the graph computes).

On the CPU an ``OrtValue`` over the array shares its memory: it is bound once and a write
into the array is what the next run reads. On a device ONNX Runtime copies an input when
it is bound (``IOBinding::BindInput``), so a write after binding never reaches the graph
— a decode loop would feed its first token forever. There the array is bound again, one
small copy, before each run.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


class HostInput:
    """``name``'s host array and how a binding gets its current contents (see above)."""

    def __init__(self, name: str, array: np.ndarray, device: str) -> None:
        self.name, self.array = name, array
        self.shared = device == "cpu"  # whether the binding reads the array itself
        self._value = ort.OrtValue.ortvalue_from_numpy(array) if self.shared else None

    def bind(self, binding: ort.IOBinding) -> None:
        """Bind the array's current contents (on the CPU: the array itself, once is enough)."""
        if self._value is not None:
            binding.bind_ortvalue_input(self.name, self._value)
        else:
            binding.bind_cpu_input(self.name, self.array)

    def refresh(self, binding: ort.IOBinding) -> None:
        """Before a run that must see writes made since the last bind."""
        if not self.shared:
            binding.bind_cpu_input(self.name, self.array)
