"""Peer name -> loader, in one place: adding a peer is a module plus a line here.

``PEERS`` (the names ``run_peer`` accepts, in the order the command line runs them) is
derived from it, so the two cannot drift apart.
"""

from __future__ import annotations

from . import (
    ctranslate2_peer,
    edgezoo_peer,
    llama_cpp_peer,
    optimum_ort,
    ort_genai,
    pytorch_eager,
)
from .common import Loader

LOADERS: dict[str, Loader] = {
    "pytorch-eager": pytorch_eager.load,
    "optimum-ort": optimum_ort.load,
    "ort-genai": ort_genai.load,
    "ctranslate2": ctranslate2_peer.load,
    "llama-cpp": llama_cpp_peer.load,
    "edgezoo": edgezoo_peer.load,  # ourselves in a fresh process: whole-process memory
}
PEERS: tuple[str, ...] = tuple(LOADERS)
