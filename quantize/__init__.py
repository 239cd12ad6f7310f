"""edgezoo.quantize: fp16 / int8 / int4 variants of exported graphs (ONNX in, ONNX out, no
torch), and pruning / low-rank factorisation of model dirs (``edgezoo.quantize.prune``)."""
