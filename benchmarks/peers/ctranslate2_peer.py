"""Peer ``ctranslate2``: CTranslate2's converter and ``Generator``, a C++ inference engine
with its own int8 kernels, for a runtime outside the ONNX world.

Named ``ctranslate2_peer`` so that ``import ctranslate2`` here gets the package, not this file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .cache import built, cached, source_stamp
from .common import Loaded, PeerUnavailable, quiet, require

# precision -> (converter quantization, Generator compute_type)
_CT2 = {"fp32": (None, "float32"), "int8": ("int8", "int8_float32")}


def load(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    require("ctranslate2", "ctranslate2")
    if precision not in _CT2:
        raise PeerUnavailable("ctranslate2 has no int4 compute type on CPU (int8 is its smallest)")
    import ctranslate2
    from tokenizers import Tokenizer

    quantization, compute_type = _CT2[precision]
    stamp = source_stamp(model_dir, peer=f"ctranslate2 {ctranslate2.__version__}")

    def convert(tmp: Path) -> None:
        with quiet():
            converter = ctranslate2.converters.TransformersConverter(str(model_dir))
            converter.convert(str(tmp), quantization=quantization, force=True)

    folder, seconds = cached(work / f"ct2-{precision}", stamp, convert)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab_file = folder / "vocabulary.json"
    if vocab_file.is_file():  # ct2 keeps its own id order: it must be the tokenizer's
        vocab = json.loads(vocab_file.read_text())
        if any(tok.id_to_token(i) != t for i, t in enumerate(vocab)):
            raise PeerUnavailable("ctranslate2 vocabulary order differs from tokenizer.json")

    t0 = time.perf_counter()
    generator = ctranslate2.Generator(
        str(folder),
        device="cpu",
        compute_type=compute_type,
        intra_threads=threads,
        inter_threads=1,
    )
    load_s = time.perf_counter() - t0

    def run(tokens: list[str], n: int) -> tuple[list[int], float]:
        t0 = time.perf_counter()
        result = generator.generate_batch(
            [tokens],
            max_length=n,
            sampling_topk=1,
            beam_size=1,
            end_token=[],
            include_prompt_in_result=False,
        )
        return [int(i) for i in result[0].sequences_ids[0]], time.perf_counter() - t0

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        # Per-step hooks (generate_tokens, callback=) hand every token to Python from
        # ctranslate2's worker thread, which costs more than a tiny model's step; so time
        # whole calls: first token alone, then all n, and spread the difference.
        tokens = [tok.id_to_token(i) for i in prompt]
        if None in tokens:
            raise PeerUnavailable("prompt id outside the tokenizer's vocabulary")
        _, ttft = run(tokens, 1)
        out, total = run(tokens, n)
        return out, ttft, [max(total - ttft, 0.0) / (n - 1)] * (n - 1)

    note = (
        f"ctranslate2 {ctranslate2.__version__}, TransformersConverter(quantization="
        f"{quantization}), compute_type={compute_type}, {built(seconds)}; intra_threads="
        f"{threads}, inter_threads=1; generate_batch(sampling_topk=1, end_token=[]); TTFT = a "
        "1-token call, ms/token = (t(n) - t(1)) / (n - 1) per run, so p50/p95 are over runs, "
        "not steps; EOS disabled"
    )
    return Loaded(decode, load_s, note)
