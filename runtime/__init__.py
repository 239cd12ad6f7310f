"""runtime: load an exported model and run it with numpy + onnxruntime + tokenizers, no torch."""
