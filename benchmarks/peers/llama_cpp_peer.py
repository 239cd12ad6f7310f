"""Peer ``llama-cpp``: llama.cpp through llama-cpp-python, on a GGUF made by llama.cpp's own
HF -> GGUF converter (f32, Q8_0 or Q4_0): the usual way small LLMs run on CPUs at the edge.

The converter is not in llama-cpp-python's wheel: it comes from the matching sdist (or a
llama.cpp checkout), fetched once and cached. Named ``llama_cpp_peer`` so that
``import llama_cpp`` here gets the package, not this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .cache import built, cached, source_stamp
from .common import Decode, Loaded, PeerUnavailable, context_length, one_line, require, version

# llama.cpp's file types for our precisions: f32 as is, Q8_0 (int8, blocks of 32) and Q4_0
# (int4, blocks of 32, symmetric — like our int4; llama.cpp keeps its output matrix at Q6_K).
_GGUF_FTYPES = {"fp32": ("f32", None), "int8": ("q8_0", None), "int4": ("f32", "Q4_0")}
# The converter (convert_hf_to_gguf.py and its `conversion` and `gguf-py` packages) ships in
# llama-cpp-python's source distribution, not in its wheel: fetched from the package index.
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")

# Run inside the converter's folder. Our byte-level BPE splits text with GPT-2's regex; the
# converter only knows tokenizers by a hash of their output, so it is told the family.
_CONVERT_SCRIPT = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/gguf-py"]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
convert_hf_to_gguf.main()
"""


def load(model_dir: Path, precision: str, threads: int, work: Path) -> Loaded:
    require("llama_cpp", "llama-cpp-python (it compiles llama.cpp: a few minutes)")
    import llama_cpp

    outtype, quant = _GGUF_FTYPES[precision]
    llama_version = version("llama-cpp-python")
    stamp = source_stamp(
        model_dir, peer=f"llama-cpp-python {llama_version}", ftype=quant or outtype
    )

    def convert(tmp: Path) -> None:
        _convert(llama_cpp, model_dir, outtype, quant, threads, work, tmp)

    folder, seconds = cached(work / f"gguf-{precision}", stamp, convert)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(folder / "model.gguf"),
        n_ctx=context_length(model_dir),
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    note = (
        f"llama-cpp-python {llama_version} (llama.cpp built from its sdist with native CPU flags), "
        f"GGUF by convert_hf_to_gguf.py --outtype {outtype}"
        f"{f' then llama_model_quantize {quant}' if quant else ''}, {built(seconds)}; "
        f"n_threads={threads}; Llama.generate(temp=0), per-step Python loop; EOS ignored"
    )
    return Loaded(_decoder(llm), load_s, note)


def _convert(
    llama_cpp: Any,
    model_dir: Path,
    outtype: str,
    quant: str | None,
    threads: int,
    work: Path,
    tmp: Path,
) -> None:
    """``tmp/model.gguf`` from the HF dir: converted, then quantized when ``quant`` says so."""
    converter = _llama_cpp_converter(work)  # only when converting: cached runs stay offline
    gguf = tmp / "model.gguf"
    cmd = [sys.executable, "-c", _CONVERT_SCRIPT, str(converter), str(model_dir)]
    cmd += ["--outtype", outtype, "--outfile", str(gguf if quant is None else tmp / "f32.gguf")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise PeerUnavailable(f"convert_hf_to_gguf.py failed: {last[0][:200]}")
    if quant is not None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
        params.nthread = threads
        code = llama_cpp.llama_model_quantize(
            str(tmp / "f32.gguf").encode(), str(gguf).encode(), params
        )
        (tmp / "f32.gguf").unlink()
        if code != 0:
            raise PeerUnavailable(f"llama_model_quantize to {quant} failed with code {code}")


def _llama_cpp_converter(work: Path) -> Path:
    """The folder holding llama.cpp's HF → GGUF converter for the installed llama-cpp-python.

    ``$EDGEZOO_LLAMA_CPP_SRC`` may point at a llama.cpp checkout; otherwise the matching
    llama-cpp-python sdist is downloaded (registry only) and the converter extracted, once.
    """
    if os.environ.get("EDGEZOO_LLAMA_CPP_SRC"):
        folder = Path(os.environ["EDGEZOO_LLAMA_CPP_SRC"])
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise PeerUnavailable(f"$EDGEZOO_LLAMA_CPP_SRC={folder} has no convert_hf_to_gguf.py")
        return folder
    llama_version = version("llama-cpp-python")

    def fetch(tmp: Path) -> None:
        import tarfile

        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={llama_version}"]
        cmd += ["--no-deps", "--no-binary", ":all:", "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        archives = list(tmp.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise PeerUnavailable(
                f"could not download llama-cpp-python {llama_version}'s source for its GGUF "
                f"converter ({one_line(RuntimeError(proc.stderr or proc.stdout))}); set "
                "EDGEZOO_LLAMA_CPP_SRC to a llama.cpp checkout"
            )
        prefix = archives[0].name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
        with tarfile.open(archives[0]) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and m.name[len(prefix) :].split("/")[0] in _CONVERTER_FILES
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            # filter="data" refuses links and paths out of ``tmp`` (Python >= 3.10.12 / 3.11.4).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **safe)
        archives[0].unlink()

    target = work.parent / f"llama-cpp-converter-{llama_version}"
    folder, _ = cached(target, {"version": llama_version}, fetch)
    return folder


def _decoder(llm: Any) -> Decode:
    """``Llama.generate`` stepped from Python, each yield (one token) timed."""

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        llm.reset()
        out, times = [], []
        t = time.perf_counter()
        # Llama.generate never stops by itself (EOS included); temp=0 is llama.cpp's greedy
        # sampler. Each yield is one step: eval of the previous token, then sampling.
        for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
            now = time.perf_counter()
            times.append(now - t)
            out.append(int(token))
            if len(out) == n:
                break
            t = time.perf_counter()
        return out, times[0], times[1:]

    return decode
