"""edgezoo.runtime: load an exported model and run it with numpy + onnxruntime + tokenizers.

No torch: this is what the edge install (no extras) ships.

    from edgezoo import runtime
    lm = runtime.load("runs/demo", backend="auto", variant="fp32")
    print(lm.generate("def main():", max_new_tokens=32).text)
"""

from edgezoo.runtime.api import load
from edgezoo.runtime.sampling import SamplingParams

__all__ = ["SamplingParams", "load"]
