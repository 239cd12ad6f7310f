"""export: zoo model dirs (and local Hugging Face checkpoints) to validated ONNX graphs.

``export.to_onnx(model_dir)`` writes ``onnx/model.onnx`` (the portable graph) and, for
decoders, ``onnx/model.gqa.onnx`` (ONNX Runtime's fused-attention graph with an in-place
KV cache), validates both against PyTorch and records them in ``onnx/manifest.json``.
"""
