"""``Classifier``: sequence classification over an exported encoder graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgezoo.errors import InputError


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

    def predict_proba(self, texts: str | Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError("empty text: give at least one non-empty string to classify.")
        encoded = [e.ids[: self.context] for e in self.tokenizer.encode_batch(texts)]
        probs = []
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
            logits = self.session.run(["logits"], feeds)[0].astype(np.float64)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            probs.append(e / e.sum(-1, keepdims=True))
        return np.concatenate(probs)

    def classify(self, texts: str | Sequence[str]) -> dict[str, Any] | list[dict[str, Any]]:
        probs = self.predict_proba(texts)
        out = [{"label": self.labels[int(p.argmax())], "score": float(p.max())} for p in probs]
        return out[0] if isinstance(texts, str) else out
