"""edgezoo.export: zoo model dirs (and local Hugging Face checkpoints) to validated ONNX.

``to_onnx(model_dir)`` (in ``edgezoo.export.onnx_export``) writes ``onnx/model.onnx`` (the
portable graph), ``onnx/model.opt.onnx`` (ORT's fusions) and, for decoders,
``onnx/model.gqa.onnx`` (fused attention with an in-place KV cache), each with its weights
in ``<name>.data``; validates them against PyTorch through the runtime's own decode loop
and records them in ``onnx/manifest.json``.
"""
