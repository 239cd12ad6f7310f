"""ONNX Runtime's transformer optimizer on the portable graph.

``onnxruntime.transformers.optimizer`` fuses the patterns ORT has kernels for (LayerNorm
+ residual → SkipLayerNormalization, MatMul + bias + GELU → BiasGelu, RMSNorm →
SimplifiedLayerNormalization, ...). The result uses ORT contrib ops, so it is an ORT-only
variant; it is kept only if it re-validates against PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from edgezoo.zoo.config import LlamaConfig


def optimize_for_ort(src: Path, dst: Path, cfg) -> dict[str, int]:
    """Write the fused graph to ``dst``; return the fusions that happened (op → count)."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = (
        "gpt2" if isinstance(cfg, LlamaConfig) else "bert"
    )  # gpt2: the generic decoder fusions
    logging.disable(logging.WARNING)  # its fusion modules log shape-inference chatter per graph
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints shape-inference chatter
            opt = optimize_model(
                str(src),
                model_type=model_type,
                num_heads=cfg.num_attention_heads,
                hidden_size=cfg.hidden_size,
                opt_level=0,  # Python fusions only: the session that opens the graph optimises it anyway
                use_gpu=False,
            )
            fusions = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(
                str(dst), use_external_data_format=src.with_name(src.name + ".data").exists()
            )
    finally:
        logging.disable(logging.NOTSET)
    return fusions
