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
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgezoo import io_names


class SlotCache:
    def __init__(self, sess: ort.InferenceSession, slots: int, max_len: int) -> None:
        self.sess, self.slots, self.max_len = sess, slots, max_len
        inputs = {i.name: i for i in sess.get_inputs()}
        self.kv_names = [n for n in inputs if io_names.is_past(n)]
        spec = inputs[self.kv_names[0]].shape
        shape = (slots, spec[1], max_len, spec[3])
        self.buffers = [np.zeros(shape, np.float32) for _ in self.kv_names]
        self.vocab = sess.get_outputs()[0].shape[-1]
        self._views: dict[tuple[int, int], list[ort.OrtValue]] = {}

    def _bound(self, start: int, stop: int) -> ort.IOBinding:
        """A binding whose past and present are rows ``start:stop`` of every buffer."""
        views = self._views.get((start, stop))
        if views is None:
            views = [ort.OrtValue.ortvalue_from_numpy(b[start:stop]) for b in self.buffers]
            self._views[(start, stop)] = views
        binding = self.sess.io_binding()
        binding.bind_output("logits")  # bound first: always output 0
        for name, view in zip(self.kv_names, views, strict=True):
            binding.bind_ortvalue_input(name, view)
            binding.bind_ortvalue_output(io_names.present_of(name), view)
        return binding

    def prefill(self, row: int, chunk: np.ndarray, past_len: int) -> np.ndarray:
        """Append ``chunk`` (token ids) to row ``row``, which holds ``past_len`` tokens;
        returns the logits of the chunk's last token ``[vocab]``."""
        return self.extend(row, chunk, past_len)[-1]

    def extend(self, row: int, chunk: np.ndarray, past_len: int) -> np.ndarray:
        """``prefill`` returning the logits after every token of ``chunk`` ``[len, vocab]``
        (speculative decoding checks several proposed tokens in one call). Rolling back is
        just calling again with a smaller ``past_len``: positions past it are overwritten."""
        total = past_len + len(chunk)
        if total > self.max_len:
            raise ValueError(f"row would hold {total} tokens; the cache holds {self.max_len}")
        binding = self._bound(row, row + 1)
        binding.bind_cpu_input("input_ids", np.asarray(chunk, np.int64)[None, :])
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        self.sess.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[0]

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One token for each of rows ``0..n-1`` (``lengths``: tokens each row holds before
        this one); returns logits ``[n, vocab]``."""
        n = len(tokens)
        width = int(lengths.max()) + 1
        mask = (np.arange(width)[None, :] <= lengths[:, None]).astype(np.int64)
        binding = self._bound(0, n)
        binding.bind_cpu_input("input_ids", np.asarray(tokens, np.int64)[:, None])
        binding.bind_cpu_input("attention_mask", mask)
        self.sess.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[:, 0]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s first ``length`` positions into row ``dst`` (packing rows)."""
        if src != dst:
            for buffer in self.buffers:
                buffer[dst, :, :length] = buffer[src, :, :length]
