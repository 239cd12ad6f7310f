"""edgezoo: train small transformers, export to ONNX, quantize, run at the edge.

The stages live in the top-level packages ``zoo``, ``export``, ``quantize``, ``runtime``
and ``benchmarks``; this package holds what they share (errors, atomic file writes) and
the ``edgezoo`` command line.
"""

__version__ = "0.1.0"
