"""Peer ``ort-genai``: ONNX Runtime GenAI, its model builder's graph and its own generation
loop: the runtime Microsoft ships for LLMs on ONNX Runtime, beside edgezoo's export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgezoo import atomic

from .cache import built, cached, source_stamp
from .common import Decode, Loaded, PeerUnavailable, require, version


def load(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    require("onnxruntime_genai", "onnxruntime-genai")
    import onnxruntime_genai as og

    genai_version = version("onnxruntime-genai")
    # int8 with tied embeddings: the builder (0.15.2) shares them as a 4-bit Gather but
    # names the input as 8-bit, an invalid graph; untie them for int8 only.
    extra = ["--extra_options", "shared_embeddings=false"] if precision == "int8" else []
    stamp = source_stamp(model_dir, peer=f"onnxruntime-genai {genai_version}", args=" ".join(extra))

    def build(tmp: Path) -> None:
        _build(model_dir, precision, extra, work, tmp, genai_version)

    folder, seconds = cached(work / f"genai-{precision}", stamp, build)
    model, min_length, eos_stop, load_s = _open(og, folder, model_dir, threads)
    # An application needs the tokenizer to turn ids into text, and edgezoo's load (and
    # peak memory) includes its own: so GenAI's does too (~8 MB at a 22k vocabulary).
    t0 = time.perf_counter()
    tokenizer = og.Tokenizer(model)
    load_s += time.perf_counter() - t0
    note = (
        f"onnxruntime-genai {genai_version} (onnxruntime {version('onnxruntime')}), model builder "
        f"-p {precision} -e cpu {' '.join(extra) or '(its defaults)'}, {built(seconds)}; genai_config "
        f"intra_op_num_threads={threads}, inter_op_num_threads=1; greedy "
        f"(do_sample=False, max_length=prompt+new), per-step generate_next_token; {eos_stop}; "
        "its tokenizer loaded and the output detokenized, as edgezoo's"
    )
    return Loaded(_decoder(og, model, tokenizer, min_length), load_s, note)


def _build(
    model_dir: Path, precision: str, extra: list[str], work: Path, tmp: Path, genai_version: str
) -> None:
    """Run the model builder into ``tmp`` (a child process, offline)."""
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model_dir),
        "-o",
        str(tmp),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(work / "genai-cache"),
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        if "cannot import name" in last and "transformers" in last:
            # 0.16+ builders import model classes of transformers 5, which
            # optimum-onnx (transformers<4.58) rules out.
            last += (
                f" (transformers {version('transformers')} is too old for this builder; "
                "pip install 'onnxruntime-genai<0.16')"
            )
        raise PeerUnavailable(f"onnxruntime-genai {genai_version} model builder failed: {last}")


def _open(og: Any, folder: Path, model_dir: Path, threads: int) -> tuple[Any, bool, str, float]:
    """The built model with this run's threads and no EOS.

    Returns (model, EOS suppressed by min_length, EOS note, load seconds).

    Threads and EOS live in genai_config.json; they are rewritten for this run. Older genai
    rejects an empty EOS list: then EOS is suppressed with min_length instead.
    """
    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    session = config["model"]["decoder"].setdefault("session_options", {})
    session["intra_op_num_threads"] = threads
    session["inter_op_num_threads"] = 1
    eos_stop = "EOS disabled (eos_token_id=[])"
    original_eos = json.loads((model_dir / "config.json").read_text()).get("eos_token_id", 2)
    config["model"]["eos_token_id"] = []
    atomic.write_json(config_path, config)
    t0 = time.perf_counter()
    try:
        model = og.Model(str(folder))
        min_length = False
    except Exception:  # older genai rejects an empty EOS list: suppress EOS instead
        config["model"]["eos_token_id"] = original_eos
        atomic.write_json(config_path, config)
        model = og.Model(str(folder))
        min_length = True
        eos_stop = "EOS suppressed with min_length (changes the argmax where EOS would win)"
    return model, min_length, eos_stop, time.perf_counter() - t0


def _decoder(og: Any, model: Any, tokenizer: Any, min_length: bool) -> Decode:
    """Greedy search driven one ``generate_next_token`` at a time, each step timed; the
    output is detokenized after the clock stops (edgezoo's generate returns text too)."""

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        # The clock starts before the generator is made, as edgezoo's starts before its KV
        # cache is allocated: both TTFTs are request -> first token.
        t0 = time.perf_counter()
        params = og.GeneratorParams(model)
        length = len(prompt) + n
        search = {"max_length": length, "do_sample": False}
        if min_length:
            search["min_length"] = length
        params.set_search_options(**search)
        generator = og.Generator(model, params)  # allocates the KV cache
        tokens = np.asarray(prompt, dtype=np.int32)
        generator.append_tokens(tokens)  # prefill: the prompt's logits
        generator.generate_next_token()  # picks the first token from them
        out = [int(generator.get_next_tokens()[0])]
        ttft = time.perf_counter() - t0
        steps = []
        while len(out) < n and not generator.is_done():
            t = time.perf_counter()
            generator.generate_next_token()  # runs the last token, then picks the next
            out.append(int(generator.get_next_tokens()[0]))
            steps.append(time.perf_counter() - t)
        tokenizer.decode(np.asarray(out, dtype=np.int32))
        return out, ttft, steps

    return decode
