"""``Classifier``: sequence classification over an exported encoder graph."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgezoo.errors import ConfigError, InputError
from edgezoo.io_names import LAST_HIDDEN_STATE


class Classifier:
    """``classify(texts)`` → labels with scores; ``predict_proba(texts)`` → [n, labels]."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        config: dict[str, Any],
        *,
        backend: str = "ort-cpu",
        variant: str = "fp32",
        reason: str = "",
        batch_size: int = 32,
    ) -> None:
        self.session, self.tokenizer, self.config = session, tokenizer, config
        self.backend, self.variant, self.reason, self.batch_size = (
            backend,
            variant,
            reason,
            batch_size,
        )
        id2label = config.get("id2label") or {}
        n = int(config.get("num_labels") or len(id2label) or session.get_outputs()[0].shape[-1])
        self.labels = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(n)]
        self.context = int(config.get("max_position_embeddings", 512))
        self.input_names = {i.name for i in session.get_inputs()}
        self.pad_id = tokenizer.token_to_id("<pad>") or 0

    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Token ids of each text (non-empty), cut to the context."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError("empty text: give at least one non-empty string to classify.")
        return [e.ids[: self.context] for e in self.tokenizer.encode_batch(texts)]

    def _run(
        self, encoded: list[list[int]], output: str
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(output, attention mask)`` per chunk of ``batch_size`` right-padded rows."""
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            width = max(len(e) for e in chunk)
            ids = np.full((len(chunk), width), self.pad_id, np.int64)
            mask = np.zeros_like(ids)
            for r, e in enumerate(chunk):
                ids[r, : len(e)], mask[r, : len(e)] = e, 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            yield self.session.run([output], feeds)[0], mask

    def predict_proba(self, texts: str | Sequence[str]) -> np.ndarray:
        probs = []
        for logits, _ in self._run(self.encode(texts), "logits"):
            logits = logits.astype(np.float64)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            probs.append(e / e.sum(-1, keepdims=True))
        return np.concatenate(probs)

    def check_can_embed(self) -> None:
        """Raise ``ConfigError`` (saying to re-export) when the graph has no hidden states:
        graphs exported before edgezoo added them, and decoder classifiers, return logits only."""
        if LAST_HIDDEN_STATE not in {o.name for o in self.session.get_outputs()}:
            raise ConfigError(
                f"this {self.variant} graph has no {LAST_HIDDEN_STATE!r} output, so it cannot "
                "embed: re-export the model dir with this edgezoo (edgezoo export DIR), which "
                "adds it to BERT-style encoder graphs."
            )

    def embed(self, texts: str | Sequence[str]) -> np.ndarray:
        """Sentence embeddings ``[n, hidden]`` float32: the last hidden states averaged over
        each text's tokens (padding masked out), scaled to unit length, so a dot product is
        the cosine similarity (as sentence-transformers' mean pooling + normalize)."""
        return self.embed_ids(self.encode(texts))

    def embed_ids(self, encoded: list[list[int]]) -> np.ndarray:
        """``embed`` for texts already tokenized (``encode``)."""
        self.check_can_embed()
        out = []
        for hidden, mask in self._run(encoded, LAST_HIDDEN_STATE):
            m = mask[:, :, None].astype(np.float64)
            mean = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1)
            norm = np.linalg.norm(mean, axis=-1, keepdims=True)
            out.append((mean / np.maximum(norm, 1e-12)).astype(np.float32))
        return np.concatenate(out)

    def classify(self, texts: str | Sequence[str]) -> dict[str, Any] | list[dict[str, Any]]:
        probs = self.predict_proba(texts)
        out = [{"label": self.labels[int(p.argmax())], "score": float(p.max())} for p in probs]
        return out[0] if isinstance(texts, str) else out
