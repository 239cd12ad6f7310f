"""KV-cache slots for continuous batching over a GroupQueryAttention graph.

One buffer per layer holds ``slots`` rows of ``max_len`` positions. The GQA kernel reads
each row's own length from the attention mask (right-padded: a row's ones are its tokens),
so rows at different positions decode together, and a prompt can be prefilled chunk by
chunk into one row while the others keep decoding — both exact against a one-row run
(tests check it).

Rows in use are kept packed at the front (``0..n-1``): a decode step binds a view of the
first ``n`` rows, which is contiguous, so it costs what a batch of ``n`` costs and nothing
for idle slots. Freeing a row moves the last one into its place (a copy of its used
positions only). The buffers are numpy arrays that ORT reads and writes in place, so
this cache runs on the CPU.

``decode_rows=2``: one-token calls of one row run the token twice, as
``SharedBufferCache`` does (see ``kv_cache``), so that they round as several-token calls
do. A step of several rows runs one token each: ORT's GQA kernel takes several tokens per
call only for a batch of one.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgezoo import io_names
from edgezoo.runtime.kv_cache import runs_filler, trims_logits


class SlotCache:
    def __init__(
        self, sess: ort.InferenceSession, slots: int, max_len: int, decode_rows: int = 1
    ) -> None:
        self.sess, self.slots, self.max_len, self.decode_rows = sess, slots, max_len, decode_rows
        inputs = {i.name: i for i in sess.get_inputs()}
        self.kv_names = [n for n in inputs if io_names.is_past(n)]
        spec = inputs[self.kv_names[0]].shape
        shape = (slots, spec[1], max_len, spec[3])
        self.buffers = [np.zeros(shape, np.float32) for _ in self.kv_names]
        self.vocab = sess.get_outputs()[0].shape[-1]
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}
        # The first position of a call whose logits the graph computes (bound once per
        # binding; each call sets it): a prefill needs only its last token's.
        self.logits_from = np.zeros(1, np.int64)
        self.trims = trims_logits(sess)
        # A one-row call's mask is all ones: a view of this row, not a new array per call.
        self.ones = np.ones((1, max_len), np.int64)  # a filler call needs total + 1 <= max_len

    def _bound(self, start: int, stop: int) -> ort.IOBinding:
        """A binding whose past and present are rows ``start:stop`` of every buffer: made
        once per row range and kept (rebinding 2 × layers buffers on every call was ~4 % of
        a speculative step under the profiler); a call rebinds only its ids, mask and
        logits."""
        binding = self._bindings.get((start, stop))
        if binding is None:
            binding = self.sess.io_binding()
            for name, buffer in zip(self.kv_names, self.buffers, strict=True):
                view = ort.OrtValue.ortvalue_from_numpy(buffer[start:stop])
                binding.bind_ortvalue_input(name, view)
                binding.bind_ortvalue_output(io_names.present_of(name), view)
            if self.trims:
                binding.bind_ortvalue_input(
                    io_names.LOGITS_FROM, ort.OrtValue.ortvalue_from_numpy(self.logits_from)
                )
            self._bindings[(start, stop)] = binding
        return binding

    def _run(
        self, binding: ort.IOBinding, ids: np.ndarray, mask: np.ndarray, last_only: bool = False
    ) -> np.ndarray:
        """Run with these ids and mask; ORT writes the logits (of every position, or of the
        last only) straight into the array returned (a fresh one per call: callers may keep
        it)."""
        first = ids.shape[1] - 1 if last_only and self.trims else 0
        self.logits_from[0] = first
        logits = np.empty((len(ids), ids.shape[1] - first, self.vocab), np.float32)
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        self.sess.run_with_iobinding(binding)
        return logits

    def prefill(self, row: int, chunk: np.ndarray, past_len: int) -> np.ndarray:
        """Append ``chunk`` (token ids) to row ``row``, which holds ``past_len`` tokens;
        returns the logits of the chunk's last token ``[vocab]`` (the only ones computed)."""
        return self._extend(row, chunk, past_len, last_only=True)[-1]

    def extend(self, row: int, chunk: np.ndarray, past_len: int) -> np.ndarray:
        """``prefill`` returning the logits after every token of ``chunk`` ``[len, vocab]``
        (speculative decoding checks several proposed tokens in one call). Rolling back is
        just calling again with a smaller ``past_len``: positions past it are overwritten."""
        return self._extend(row, chunk, past_len, last_only=False)

    def _extend(self, row: int, chunk: np.ndarray, past_len: int, last_only: bool) -> np.ndarray:
        total = past_len + len(chunk)
        if total > self.max_len:
            raise ValueError(f"row would hold {total} tokens; the cache holds {self.max_len}")
        ids = np.asarray(chunk, np.int64)[None, :]
        if runs_filler(self.decode_rows, 1, len(chunk), total, self.max_len):
            ids = np.repeat(ids, 2, axis=1)  # the token and its filler
            logits = self._run(self._bound(row, row + 1), ids, self.ones[:, : total + 1])
            return logits[0, :1]
        return self._run(self._bound(row, row + 1), ids, self.ones[:, :total], last_only)[0]

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One token for each of rows ``0..n-1`` (``lengths``: tokens each row holds before
        this one); returns logits ``[n, vocab]``."""
        n = len(tokens)
        filler = runs_filler(self.decode_rows, n, 1, int(lengths[0]) + 1, self.max_len)
        rows = 2 if filler else 1
        width = int(lengths.max()) + rows
        mask = (np.arange(width)[None, :] < (lengths + rows)[:, None]).astype(np.int64)
        ids = np.repeat(np.asarray(tokens, np.int64)[:, None], rows, axis=1)
        return self._run(self._bound(0, n), ids, mask)[:, 0]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s first ``length`` positions into row ``dst`` (packing rows)."""
        if src != dst:
            for buffer in self.buffers:
                buffer[dst, :, :length] = buffer[src, :, :length]
