"""The same greedy decode on the same weights with other runtimes, for side-by-side numbers.

Each peer opens our Hugging Face-layout model dir with its own tools (export, model
builder or converter), decodes a fixed number of tokens greedily from the same prompt ids
with a fixed thread count, and reports load time, time to first token, per-token decode
p50/p95 and the tokens it produced, so ``benchmarks.bench`` can put edgezoo beside it and
check that both ran the same model. EOS never stops a run early where the API allows it.

Optional peers import lazily; a peer that is missing or fails comes back as
``available=False`` with a one-line note instead of an exception. Converted models are
cached under ``work_dir`` (one folder per peer and precision, rebuilt when the source
model dir changes).

    python -m benchmarks.peers runs/lm-small --peers pytorch-eager,ort-genai --precision fp32

Layout: ``run`` (``run_peer``), ``child`` (the fresh process each peer runs in),
``measure`` (timing), ``cache`` (work folders and cached conversions), ``common`` (types and
helpers every peer shares), ``registry`` (peer name -> loader), one module per peer
(``pytorch_eager``, ``optimum_ort``, ``ort_genai``, ``ctranslate2_peer``,
``llama_cpp_peer``) and ``cli`` (``python -m benchmarks.peers``).
"""

from __future__ import annotations

from .cache import STAMP_FILE, cached, source_stamp
from .cli import main
from .common import PRECISIONS, PeerResult, PeerUnavailable
from .registry import PEERS
from .run import run_peer

# The names these helpers had when the package was one module (tests use them).
_cached = cached
_source_stamp = source_stamp

__all__ = [
    "PEERS",
    "PRECISIONS",
    "STAMP_FILE",
    "PeerResult",
    "PeerUnavailable",
    "main",
    "run_peer",
]
