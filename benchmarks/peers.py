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
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgezoo import atomic

PEERS: tuple[str, ...] = ("pytorch-eager", "optimum-ort", "ort-genai", "ctranslate2", "llama-cpp")
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "int4")
STAMP_FILE = "edgezoo-source.json"  # in each cached conversion: what it was built from


@dataclass
class PeerResult:
    peer: str  # "pytorch-eager", "optimum-ort", "ort-genai", "ctranslate2", "llama-cpp"
    precision: str  # "fp32" | "int8" | "int4"
    available: bool
    note: str  # why skipped / what exactly was run (versions, settings)
    threads: int
    load_s: float | None = None
    ttft_ms: float | None = None  # prefill of the prompt + first token
    decode_ms_per_token_p50: float | None = None
    decode_ms_per_token_p95: float | None = None
    tokens: list[int] = field(default_factory=list)  # generated ids (greedy)


class PeerUnavailable(Exception):
    """A peer cannot run this request here; the message is the note."""


# One timed decode: (generated ids, seconds to first token, seconds of each later step).
Decode = Callable[[list[int], int], tuple[list[int], float, list[float]]]


@dataclass
class _Loaded:
    decode: Decode
    load_s: float
    note: str


def run_peer(
    peer: str,
    model_dir: Path,
    prompt_ids: list[int],
    new_tokens: int,
    threads: int,
    precision: str = "fp32",
    repeats: int = 3,
    work_dir: Path | None = None,
    *,
    isolated: bool = True,
) -> PeerResult:
    """Greedy-decode ``new_tokens`` after ``prompt_ids`` with ``peer``; never raises.

    One untimed warm-up run, then ``repeats`` timed runs: TTFT is their median, the decode
    percentiles pool every step of every run. Conversions are cached in ``work_dir``
    (a temporary folder, deleted afterwards, when it is None).

    ``isolated`` (the default) runs the peer in a fresh Python process. Runtimes in one
    process slow each other down: OpenMP and ONNX Runtime pools keep spin-waiting after
    their work, and on 2 cores that took a later peer from 0.035 to 0.28 ms/token. A
    native crash in a peer then also becomes a result instead of killing the benchmark.
    """
    result = PeerResult(peer=peer, precision=precision, available=False, note="", threads=threads)
    try:
        _check_request(peer, precision, prompt_ids, new_tokens, threads)
        if isolated:
            return _run_in_child(
                peer, model_dir, prompt_ids, new_tokens, threads, precision, repeats, work_dir
            )
        model_dir = Path(model_dir)
        prompt_ids = [int(i) for i in prompt_ids]
        limit = _context_length(model_dir)
        capped = max(0, min(new_tokens, limit - len(prompt_ids)))
        if capped < 1:
            raise PeerUnavailable(f"prompt of {len(prompt_ids)} tokens fills the context {limit}")
        with _work_folder(work_dir) as work:
            loaded = _LOADERS[peer](model_dir, precision, threads, Path(work))
            result.load_s = loaded.load_s
            notes = [loaded.note]
            if capped < new_tokens:
                notes.append(f"new_tokens capped to {capped} by the context length {limit}")
            tokens, ttft_ms, p50, p95, consistent = _measure(
                loaded.decode, prompt_ids, capped, max(1, repeats)
            )
            if len(tokens) < capped:
                notes.append(f"stopped early after {len(tokens)} of {capped} tokens")
            if not consistent:
                notes.append("tokens differed between repeats (non-deterministic)")
        result.available = True
        result.note = "; ".join(notes)
        result.tokens = tokens
        result.ttft_ms, result.decode_ms_per_token_p50, result.decode_ms_per_token_p95 = (
            ttft_ms,
            p50,
            p95,
        )
    except PeerUnavailable as e:
        result.note = str(e)
    except Exception as e:  # a peer's failure is a result, not a crash of the benchmark
        result.note = _one_line(e)
        result.load_s = None
    return result


def _check_request(
    peer: str, precision: str, prompt_ids: list[int], new_tokens: int, threads: int
) -> None:
    if peer not in PEERS:
        raise PeerUnavailable(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    if precision not in PRECISIONS:
        raise PeerUnavailable(f"unknown precision {precision!r}; use fp32, int8 or int4")
    if not prompt_ids:
        raise PeerUnavailable("empty prompt: give at least one token id")
    if new_tokens < 1 or threads < 1:
        raise PeerUnavailable("new_tokens and threads must both be at least 1")


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


_RESULT_MARK = "EDGEZOO-PEER-RESULT "
CHILD_TIMEOUT_S = 3 * 3600  # a large int4 genai build is the slowest step we have seen


def _run_in_child(
    peer: str,
    model_dir: Path,
    prompt_ids: list[int],
    new_tokens: int,
    threads: int,
    precision: str,
    repeats: int,
    work_dir: Path | None,
) -> PeerResult:
    request = {
        "peer": peer,
        "model_dir": str(Path(model_dir).resolve()),
        "prompt_ids": [int(i) for i in prompt_ids],
        "new_tokens": new_tokens,
        "threads": threads,
        "precision": precision,
        "repeats": repeats,
        "work_dir": None if work_dir is None else str(Path(work_dir).resolve()),
    }
    repo = str(Path(__file__).resolve().parents[1])  # this checkout's benchmarks and zoo
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",  # every peer reads the local dir; nothing may be downloaded
        "TRANSFORMERS_OFFLINE": "1",
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.peers", "--child"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return PeerResult(peer, precision, False, f"timed out after {CHILD_TIMEOUT_S} s", threads)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return PeerResult(**json.loads(line[len(_RESULT_MARK) :]))
    how = f"exit code {proc.returncode}"
    if proc.returncode < 0:
        how = f"signal {signal.Signals(-proc.returncode).name}"
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    note = f"peer process died ({how}): {tail[-1] if tail else 'no output'}"[:300]
    return PeerResult(peer, precision, False, note, threads)


def _measure(
    decode: Decode, prompt: list[int], n: int, repeats: int
) -> tuple[list[int], float, float | None, float | None, bool]:
    decode(prompt, n)  # warm-up: first-run allocations and lazy initialisation
    runs = [decode(prompt, n) for _ in range(repeats)]
    ttft_ms = float(np.median([r[1] for r in runs]) * 1e3)
    steps = [s for r in runs for s in r[2]]
    p50 = p95 = None
    if steps:
        p50, p95 = (float(v) * 1e3 for v in np.percentile(steps, [50, 95]))
    consistent = all(r[0] == runs[0][0] for r in runs)
    return runs[-1][0], ttft_ms, p50, p95, consistent


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _work_folder(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="edgezoo-peers-") as tmp:
        yield Path(tmp)


def _context_length(model_dir: Path) -> int:
    path = model_dir / "config.json"
    if not path.is_file():
        raise PeerUnavailable(f"{model_dir} is not a model dir: config.json is missing")
    cfg = json.loads(path.read_text())
    return int(cfg.get("max_position_embeddings") or 1 << 30)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _require(module: str, dist: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PeerUnavailable(f"not installed: pip install {dist}")


def _source_stamp(model_dir: Path, **extra: str) -> dict:
    """What a cached conversion was built from: config/tokenizer hashes, weight files' stat."""
    stamp: dict = {"model_dir": str(model_dir.resolve()), **extra}
    for name in ("config.json", "tokenizer.json"):
        p = model_dir / name
        if p.is_file():
            stamp[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(model_dir.glob("*.safetensors")):
        st = p.stat()
        stamp[p.name] = [st.st_size, st.st_mtime_ns]
    return stamp


def _cached(target: Path, stamp: dict, build: Callable[[Path], None]) -> tuple[Path, float | None]:
    """``target`` built by ``build(tmp)`` unless a build from the same source is there.

    Returns the folder and the build seconds (None when the cache was used). The build
    goes to a temporary folder swapped in whole, so an interrupted build leaves no cache.
    """
    stamp_path = target / STAMP_FILE
    if stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return target, None
        except json.JSONDecodeError:
            pass
    t0 = time.perf_counter()
    with atomic.atomic_dir(target) as tmp:
        build(tmp)
        atomic.write_json(tmp / STAMP_FILE, stamp)
    return target, time.perf_counter() - t0


def _built(seconds: float | None) -> str:
    return "cached conversion" if seconds is None else f"converted in {seconds:.1f} s"


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters and converters warn a lot about tracing; none of it changes the numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------- pytorch-eager


def _load_pytorch(model_dir: Path, precision: str, threads: int, work: Path) -> _Loaded:
    import torch
    from torch import nn

    from zoo.modeldir import load_model

    if precision == "int4":
        raise PeerUnavailable("pytorch-eager has no int4 path (fp32, or int8 via quantize_dynamic)")
    t0 = time.perf_counter()
    model = load_model(model_dir)
    how = "fp32"
    if precision == "int8":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
                model = torch.ao.quantization.quantize_dynamic(
                    model, {nn.Linear}, dtype=torch.qint8
                )
        except Exception as e:
            raise PeerUnavailable(
                f"torch.ao quantize_dynamic failed on torch {torch.__version__}: "
                f"{type(e).__name__}: {e}"
            ) from e
        how = f"int8 torch.ao quantize_dynamic(nn.Linear, qint8, engine {torch.backends.quantized.engine})"
    load_s = time.perf_counter() - t0

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        steps: list[float] = []
        with _torch_threads(threads), torch.inference_mode():
            t0 = time.perf_counter()
            logits, past = model(torch.tensor([prompt]))
            token = int(logits[0, -1].argmax())
            ttft = time.perf_counter() - t0
            out = [token]
            for step in range(n - 1):
                t = time.perf_counter()
                pos = torch.tensor([[len(prompt) + step]])
                mask = torch.ones(1, len(prompt) + step + 1, dtype=torch.long)
                logits, past = model(torch.tensor([[token]]), mask, pos, past)
                token = int(logits[0, -1].argmax())
                steps.append(time.perf_counter() - t)
                out.append(token)
        return out, ttft, steps

    note = (
        f"torch {torch.__version__}, zoo LlamaForCausalLM (SDPA attention, concatenating KV "
        f"cache), {how}, torch.set_num_threads({threads}), inference_mode; EOS ignored"
    )
    return _Loaded(decode, load_s, note)


# ---------------------------------------------------------------------------- optimum-ort


def _load_optimum(model_dir: Path, precision: str, threads: int, work: Path) -> _Loaded:
    _require("optimum.onnxruntime", "optimum-onnx[onnxruntime]")
    if precision == "int4":
        raise PeerUnavailable("optimum-ort: ORTQuantizer has no int4 weight-only mode")
    import onnxruntime as ort
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    with _quiet():
        from optimum.onnxruntime import ORTModelForCausalLM

    versions = (
        f"optimum {_version('optimum')}, optimum-onnx {_version('optimum-onnx')}, "
        f"onnxruntime {ort.__version__}, transformers {_version('transformers')}"
    )
    stamp = _source_stamp(model_dir, peer=versions)

    def session_options() -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        return so

    def export(tmp: Path) -> None:
        with _quiet():
            m = ORTModelForCausalLM.from_pretrained(
                model_dir,
                export=True,
                use_cache=True,
                provider="CPUExecutionProvider",
                session_options=session_options(),
            )
            m.save_pretrained(tmp)

    fp32_dir, seconds = _cached(work / "optimum-ort-fp32", stamp, export)
    built = [_built(seconds)]
    file_name, how = "model.onnx", "fp32"
    folder = fp32_dir
    if precision == "int8":
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        isa = _int8_isa()
        qconfig = getattr(AutoQuantizationConfig, isa)(is_static=False, per_channel=False)

        def quantize(tmp: Path) -> None:
            with _quiet():
                q = ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx")
                q.quantize(save_dir=tmp, quantization_config=qconfig)
                for name in ("config.json", "generation_config.json"):
                    if (fp32_dir / name).is_file() and not (tmp / name).is_file():
                        (tmp / name).write_bytes((fp32_dir / name).read_bytes())

        folder, seconds = _cached(work / "optimum-ort-int8", {**stamp, "isa": isa}, quantize)
        built.append("cached quantization" if seconds is None else f"quantized in {seconds:.1f} s")
        file_name = "model_quantized.onnx"
        how = f"int8 dynamic ORTQuantizer AutoQuantizationConfig.{isa}(is_static=False, per_channel=False)"

    t0 = time.perf_counter()
    with _quiet():
        model = ORTModelForCausalLM.from_pretrained(
            folder,
            file_name=file_name,
            use_cache=True,
            provider="CPUExecutionProvider",
            session_options=session_options(),
        )
    load_s = time.perf_counter() - t0
    model.generation_config.eos_token_id = None  # fixed token counts: EOS must not stop
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    class _Stamps(StoppingCriteria):
        """Called once per generated token: its timestamps give per-step times."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        ids = torch.tensor([prompt])
        stamps = _Stamps()
        with _torch_threads(threads), _quiet():
            t0 = time.perf_counter()
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([stamps]),
            )
        times = [t0, *stamps.times]
        steps = [b - a for a, b in itertools.pairwise(times[1:])]
        return out[0, len(prompt) :].tolist(), times[1] - t0, steps

    note = (
        f"{versions}; ORTModelForCausalLM(export=True, use_cache=True, CPUExecutionProvider, "
        f"intra_op={threads}, inter_op=1, use_io_binding={model.use_io_binding}), {how}; "
        f"{', '.join(built)}; greedy generate(), step times from a StoppingCriteria per "
        "token; EOS disabled (eos_token_id=None)"
    )
    return _Loaded(decode, load_s, note)


def _int8_isa() -> str:
    """The AutoQuantizationConfig preset for this CPU."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


# ---------------------------------------------------------------------------- ort-genai


def _load_genai(model_dir: Path, precision: str, threads: int, work: Path) -> _Loaded:
    _require("onnxruntime_genai", "onnxruntime-genai")
    import onnxruntime_genai as og

    version = _version("onnxruntime-genai")
    # int8 with tied embeddings: the builder (0.15.2) shares them as a 4-bit Gather but
    # names the input as 8-bit, an invalid graph; untie them for int8 only.
    extra = ["--extra_options", "shared_embeddings=false"] if precision == "int8" else []
    stamp = _source_stamp(model_dir, peer=f"onnxruntime-genai {version}", args=" ".join(extra))

    def build(tmp: Path) -> None:
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
                    f" (transformers {_version('transformers')} is too old for this builder; "
                    "pip install 'onnxruntime-genai<0.16')"
                )
            raise PeerUnavailable(f"onnxruntime-genai {version} model builder failed: {last}")

    folder, seconds = _cached(work / f"genai-{precision}", stamp, build)

    # Threads and EOS live in genai_config.json; rewrite them for this run.
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
    load_s = time.perf_counter() - t0

    def decode(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        params = og.GeneratorParams(model)
        length = len(prompt) + n
        search = {"max_length": length, "do_sample": False}
        if min_length:
            search["min_length"] = length
        params.set_search_options(**search)
        generator = og.Generator(model, params)
        tokens = np.asarray(prompt, dtype=np.int32)
        t0 = time.perf_counter()
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
        return out, ttft, steps

    note = (
        f"onnxruntime-genai {version} (onnxruntime {_version('onnxruntime')}), model builder "
        f"-p {precision} -e cpu {' '.join(extra) or '(its defaults)'}, {_built(seconds)}; genai_config "
        f"intra_op_num_threads={threads}, inter_op_num_threads=1; greedy "
        f"(do_sample=False, max_length=prompt+new), per-step generate_next_token; {eos_stop}"
    )
    return _Loaded(decode, load_s, note)


# ---------------------------------------------------------------------------- ctranslate2

_CT2 = {"fp32": (None, "float32"), "int8": ("int8", "int8_float32")}


def _load_ct2(model_dir: Path, precision: str, threads: int, work: Path) -> _Loaded:
    _require("ctranslate2", "ctranslate2")
    if precision not in _CT2:
        raise PeerUnavailable("ctranslate2 has no int4 compute type on CPU (int8 is its smallest)")
    import ctranslate2
    from tokenizers import Tokenizer

    quantization, compute_type = _CT2[precision]
    stamp = _source_stamp(model_dir, peer=f"ctranslate2 {ctranslate2.__version__}")

    def convert(tmp: Path) -> None:
        with _quiet():
            converter = ctranslate2.converters.TransformersConverter(str(model_dir))
            converter.convert(str(tmp), quantization=quantization, force=True)

    folder, seconds = _cached(work / f"ct2-{precision}", stamp, convert)
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
        f"{quantization}), compute_type={compute_type}, {_built(seconds)}; intra_threads="
        f"{threads}, inter_threads=1; generate_batch(sampling_topk=1, end_token=[]); TTFT = a "
        "1-token call, ms/token = (t(n) - t(1)) / (n - 1) per run, so p50/p95 are over runs, "
        "not steps; EOS disabled"
    )
    return _Loaded(decode, load_s, note)


# ---------------------------------------------------------------------------- llama-cpp


# llama.cpp's file types for our precisions: f32 as is, Q8_0 (int8, blocks of 32) and Q4_0
# (int4, blocks of 32, symmetric — like our int4; llama.cpp keeps its output matrix at Q6_K).
_GGUF_FTYPES = {"fp32": ("f32", None), "int8": ("q8_0", None), "int4": ("f32", "Q4_0")}
# The converter (convert_hf_to_gguf.py and its `conversion` and `gguf-py` packages) ships in
# llama-cpp-python's source distribution, not in its wheel: fetched from the package index.
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


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
    version = _version("llama-cpp-python")

    def fetch(tmp: Path) -> None:
        import tarfile

        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}"]
        cmd += ["--no-deps", "--no-binary", ":all:", "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        archives = list(tmp.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise PeerUnavailable(
                f"could not download llama-cpp-python {version}'s source for its GGUF converter "
                f"({_one_line(RuntimeError(proc.stderr or proc.stdout))}); set "
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

    folder, _ = _cached(work.parent / f"llama-cpp-converter-{version}", {"version": version}, fetch)
    return folder


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


def _load_llama_cpp(model_dir: Path, precision: str, threads: int, work: Path) -> _Loaded:
    _require("llama_cpp", "llama-cpp-python (it compiles llama.cpp: a few minutes)")
    import llama_cpp

    outtype, quant = _GGUF_FTYPES[precision]
    version = _version("llama-cpp-python")
    stamp = _source_stamp(model_dir, peer=f"llama-cpp-python {version}", ftype=quant or outtype)

    def convert(tmp: Path) -> None:
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

    folder, seconds = _cached(work / f"gguf-{precision}", stamp, convert)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(folder / "model.gguf"),
        n_ctx=_context_length(model_dir),
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    load_s = time.perf_counter() - t0

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

    note = (
        f"llama-cpp-python {version} (llama.cpp built from its sdist with native CPU flags), "
        f"GGUF by convert_hf_to_gguf.py --outtype {outtype}"
        f"{f' then llama_model_quantize {quant}' if quant else ''}, {_built(seconds)}; "
        f"n_threads={threads}; Llama.generate(temp=0), per-step Python loop; EOS ignored"
    )
    return _Loaded(decode, load_s, note)


_LOADERS: dict[str, Callable[[Path, str, int, Path], _Loaded]] = {
    "pytorch-eager": _load_pytorch,
    "optimum-ort": _load_optimum,
    "ort-genai": _load_genai,
    "ctranslate2": _load_ct2,
    "llama-cpp": _load_llama_cpp,
}


# ---------------------------------------------------------------------------- command line


def _child() -> int:
    """``run_peer(isolated=True)``'s other half: request JSON on stdin, result on stdout."""
    request = json.loads(sys.stdin.read())
    result = run_peer(**request, isolated=False)
    sys.stdout.write("\n" + _RESULT_MARK + json.dumps(asdict(result)) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--peers", default=",".join(PEERS), help="comma list (default: all)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--prompt", default="def main(args):\n    return")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", type=Path, default=None, help="conversion cache")
    args = p.parse_args(argv)
    from tokenizers import Tokenizer

    prompt = Tokenizer.from_file(str(args.model_dir / "tokenizer.json")).encode(args.prompt).ids
    for peer in [s.strip() for s in args.peers.split(",") if s.strip()]:
        r = run_peer(
            peer,
            args.model_dir,
            prompt,
            args.new_tokens,
            args.threads,
            args.precision,
            args.repeats,
            args.work_dir,
        )
        print(json.dumps(asdict(r)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
