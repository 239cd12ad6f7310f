"""The two ways a decoder graph keeps its KV cache between steps.

``ConcatCache`` (portable graphs): each step returns ``present`` = past + new keys, which
becomes the next step's ``past``. The tensors stay where ORT put them (as ``OrtValue``s,
on the GPU under CUDA) instead of round-tripping through numpy.

``SharedBufferCache`` (GroupQueryAttention graphs): one buffer per layer, allocated once
at the maximum length and bound as both ``past`` and ``present``; the kernel writes the
new keys in place, the token ids come from and the logits go to preallocated buffers bound
once, so a decode step allocates and binds nothing but the mask (on a device also the
token ids: ORT copies a host input when it is bound, see ``host_input``).

``decode_rows=2`` (graphs whose manifest entry asks for it: per-row int8): each decode
step runs the token twice — the copy lands one position further and the next step
overwrites it. The attention kernel rounds a one-row call differently from a
several-row call (~1e-6); quantizing activations can magnify that into another token.
Two rows put every step on the several-row path, so a speculative check gives the plain
loop's logits bit for bit. Batches of several prompts decode one row per prompt: ORT's
GQA kernel takes several tokens per call only for a batch of one.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgezoo import io_names
from edgezoo.runtime.host_input import HostInput


class ConcatCache:
    def __init__(self, sess: ort.InferenceSession, batch: int, device: str) -> None:
        self.sess, self.device = sess, device
        inputs = {i.name: i for i in sess.get_inputs()}
        self.kv_names = [n for n in inputs if io_names.is_past(n)]
        self.has_positions = "position_ids" in inputs
        self.has_mask = "attention_mask" in inputs
        self.past: list[ort.OrtValue] = []
        for name in self.kv_names:
            shape = [
                batch if not isinstance(d, int) and i == 0 else (0 if not isinstance(d, int) else d)
                for i, d in enumerate(inputs[name].shape)
            ]
            self.past.append(
                ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), device, 0)
            )
        self.outputs = ["logits"] + [io_names.present_of(n) for n in self.kv_names]

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        binding = self.sess.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        if self.has_mask:
            binding.bind_cpu_input("attention_mask", mask)
        if self.has_positions:
            binding.bind_cpu_input("position_ids", positions)
        for name, value in zip(self.kv_names, self.past, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, self.device)
        self.sess.run_with_iobinding(binding)
        out = binding.get_outputs()
        self.past = list(out[1:])
        return out[0].numpy()


def trims_logits(sess: ort.InferenceSession) -> bool:
    """Whether the graph can return logits from a given position on (``logits_from``: GQA
    graphs exported by this version; older ones return every position's)."""
    return any(i.name == io_names.LOGITS_FROM for i in sess.get_overridable_initializers())


def runs_filler(decode_rows: int, rows: int, tokens: int, total: int, max_len: int) -> bool:
    """Whether a call of ``tokens`` new tokens on ``rows`` rows, ``total`` positions long,
    runs with a filler token (``decode_rows=2``, above): one token of one row, with room
    for one more position."""
    return decode_rows == 2 and rows == 1 and tokens == 1 and total < max_len


class SharedBufferCache:
    def __init__(
        self,
        sess: ort.InferenceSession,
        batch: int,
        max_len: int,
        device: str,
        decode_rows: int = 1,
        steady_mask: bool | None = None,
    ) -> None:
        """``steady_mask`` (default: on the CPU): see ``_bind_mask``."""
        self.sess, self.device, self.max_len = sess, device, max_len
        # ORT's GQA kernel takes several tokens per call only for a batch of one.
        self.decode_rows = rows = decode_rows if batch == 1 else 1
        self.filler_mask = np.ones((1, max_len), np.int64) if rows == 2 else None  # views of it
        inputs = {i.name: i for i in sess.get_inputs()}
        self.kv_names = [n for n in inputs if io_names.is_past(n)]
        spec = inputs[self.kv_names[0]].shape
        shape = [batch, spec[1], max_len, spec[3]]
        self.buffers = [
            ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0)
            for _ in self.kv_names
        ]
        vocab = sess.get_outputs()[0].shape[-1]
        if device == "cpu":  # an OrtValue over a numpy array shares its memory: no copy to read
            self.logits_host = np.empty((batch, rows, vocab), np.float32)
            self.step_logits = ort.OrtValue.ortvalue_from_numpy(self.logits_host)
        else:
            self.logits_host = None
            self.step_logits = ort.OrtValue.ortvalue_from_shape_and_type(
                [batch, rows, vocab], np.float32, device, 0
            )
        steady = device == "cpu" if steady_mask is None else steady_mask
        self.steady_mask = np.zeros((batch, max_len), np.int64) if steady else None
        self.steady_value = ort.OrtValue.ortvalue_from_numpy(self.steady_mask) if steady else None
        self.steady_width = 0  # columns of steady_mask in use (zeros after them)
        self.steady_bound = False
        # A decode step's token ids: one host buffer a step writes into (``HostInput``).
        self.step_ids_host = np.zeros((batch, rows), np.int64)
        self.step_ids = HostInput("input_ids", self.step_ids_host, device)
        self.decode_bound = False  # whether the one-token ids and logits are bound now
        # One binding for the whole generation: the cache buffers are bound once as both
        # past and present; a decode step only rebinds the mask (its length grows).
        self.binding = sess.io_binding()
        self.binding.bind_output("logits", device)  # bound first: always output 0
        for name, buf in zip(self.kv_names, self.buffers, strict=True):
            self.binding.bind_ortvalue_input(name, buf)
            self.binding.bind_ortvalue_output(io_names.present_of(name), buf)
        # The first position whose logits the graph computes: bound once; 0 (all) except
        # while a prompt runs (``last_logits``).
        self.logits_from = np.zeros(1, np.int64)
        self.trims = trims_logits(sess)
        self.logits_from_input = HostInput(io_names.LOGITS_FROM, self.logits_from, device)
        if self.trims:
            self.logits_from_input.bind(self.binding)

    def last_logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Run a right-padded batch of prompts; returns the logits after each row's last
        token ``[batch, vocab]``, computing no earlier position's the graph can skip (all
        positions from the shortest row's last on)."""
        lengths = mask.sum(axis=1)
        first = int(lengths.min()) - 1 if self.trims else 0
        self.logits_from[0] = first
        try:
            logits = self.step(ids, mask)
        finally:
            self.logits_from[0] = 0
        return logits[np.arange(len(ids)), lengths - 1 - first]

    def step(
        self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """``mask`` is right-padded: its row sums are each row's total length. Returns the
        logits of positions ``logits_from`` on (all, unless ``last_logits`` runs); a one-token
        step returns ``[batch, decode_rows, vocab]``: row 0 is the token's."""
        binding = self.binding
        one_token = ids.shape[1] == 1
        if one_token and self.decode_rows == 2:  # batch 1: the mask is all ones
            if runs_filler(self.decode_rows, len(ids), 1, mask.shape[1], self.max_len):
                mask = self.filler_mask[:, : mask.shape[1] + 1]
            else:  # no room for the filler: a one-row call
                one_token = False
        if one_token:
            self.step_ids_host[...] = ids
            if not self.decode_bound:
                self.step_ids.bind(binding)
                binding.bind_ortvalue_output("logits", self.step_logits)
                self.decode_bound = True
            else:
                self.step_ids.refresh(binding)
        else:  # a prompt or several guesses: sized per call
            binding.bind_cpu_input("input_ids", ids)
            self.decode_bound = False
            if self.logits_host is not None:
                # ORT writes a prompt's logits (512 tokens × 32k vocabulary: 65 MB) straight
                # into the array returned, instead of into its own tensor then copied to numpy:
                # one copy of them at the peak, not two.
                computed = ids.shape[1] - int(self.logits_from[0])  # positions with logits
                logits = np.empty((len(ids), computed, self.logits_host.shape[-1]), np.float32)
                binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
            else:
                binding.bind_output("logits", self.device)
        self._bind_mask(mask, one_token)
        if self.trims:
            self.logits_from_input.refresh(binding)
        self.sess.run_with_iobinding(binding)
        if one_token:
            return self.logits_host if self.logits_host is not None else self.step_logits.numpy()
        return logits if self.logits_host is not None else binding.get_outputs()[0].numpy()

    def _bind_mask(self, mask: np.ndarray, one_token: bool) -> None:
        """A decode step's mask goes into one buffer of the full length, bound once (on the
        CPU): the graph reads each row's length from its sum, so the zeros after it change
        nothing (logits equal bit for bit, tested), and the step no longer binds a new,
        longer array every token: 6–17 % of a ``nano``/``micro`` step, within noise at
        ``small`` (``benchmarks/results/steady_mask.md``). A prompt or several guesses bind
        their own mask. Devices bind the growing mask every step (the steady one has not
        run on a GPU)."""
        if not one_token or self.steady_mask is None:
            self.binding.bind_cpu_input("attention_mask", mask)
            self.steady_bound = False
            return
        width = mask.shape[1]
        if width < self.steady_width:
            self.steady_mask[:, width : self.steady_width] = 0
        self.steady_mask[:, :width] = mask
        self.steady_width = width
        if not self.steady_bound:
            self.binding.bind_ortvalue_input("attention_mask", self.steady_value)
            self.steady_bound = True


class HostConcatCache:
    """The concatenating cache for sessions without I/O binding (native TensorRT): numpy
    arrays in and out each step, fed back as the next step's past."""

    def __init__(self, sess, batch: int) -> None:
        self.sess = sess
        inputs = {i.name: i for i in sess.get_inputs()}
        self.kv_names = [n for n in inputs if io_names.is_past(n)]
        self.input_names = set(inputs)
        self.past = [
            np.zeros((batch, inputs[n].shape[1], 0, inputs[n].shape[3]), np.float32)
            for n in self.kv_names
        ]

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            **dict(zip(self.kv_names, self.past, strict=True)),
        }
        out = self.sess.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
        self.past = out[1:]
        return out[0]
