"""quantize: fp16 / int8 / int4 variants of exported graphs, and pruning / low-rank factorisation of model dirs."""
