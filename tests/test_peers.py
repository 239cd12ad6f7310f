"""Peer runtimes: same greedy tokens as our PyTorch model, failures come back as results."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from benchmarks import peers
from benchmarks.peers import PEERS, run_peer
from edgezoo.zoo import data
from edgezoo.zoo.config import LlamaConfig
from edgezoo.zoo.generate import generate_ids
from edgezoo.zoo.modeldir import build_model, save_model_dir
from edgezoo.zoo.tokenizer import save_tokenizer, train_tokenizer

LM = dict(
    vocab_size=600,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=96,
)
NEW_TOKENS = 16
AGREE = 8  # random weights meet near-ties later on (PERF-NOTES §7)


@pytest.fixture(scope="module")
def lm(tmp_path_factory, text_corpus):
    """A tiny random Llama dir. Weights drawn wider than the trained init (std 0.2, not
    0.02): at 0.02 greedy decoding repeats one token, which would make agreement trivial."""
    tok = train_tokenizer((t for _, t in data.iter_documents(str(text_corpus))), vocab_size=600)
    path = tmp_path_factory.mktemp("peers-lm")
    torch.manual_seed(0)
    model = build_model(LlamaConfig(**LM)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    save_model_dir(model, path)
    save_tokenizer(tok, path, LM["max_position_embeddings"])
    prompt = tok.encode("def main(args):\n    return").ids
    return path, model, prompt


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("peers-work")


@pytest.fixture(scope="module")
def eager(lm, work):
    path, _, prompt = lm
    return run_peer("pytorch-eager", path, prompt, NEW_TOKENS, 2, "fp32", 1, work)


def test_pytorch_eager_equals_generate_ids(lm, eager):
    _, model, prompt = lm
    assert eager.available, eager.note
    assert eager.tokens == generate_ids(model, prompt, NEW_TOKENS)
    assert len(set(eager.tokens)) > 3  # a real continuation, not one token repeated
    assert eager.load_s is not None and eager.load_s > 0
    assert eager.ttft_ms > 0
    assert 0 < eager.decode_ms_per_token_p50 <= eager.decode_ms_per_token_p95
    assert eager.decode_ms_per_token_mean >= eager.decode_ms_per_token_p50 * 0.5
    assert eager.threads == 2 and "torch" in eager.note


@pytest.mark.parametrize("peer", [p for p in PEERS if p not in ("pytorch-eager", "edgezoo")])
def test_peer_greedy_tokens_equal_pytorch(lm, work, eager, peer):
    path, _, prompt = lm
    r = run_peer(peer, path, prompt, NEW_TOKENS, 2, "fp32", 1, work)
    if not r.available:
        pytest.skip(f"{peer}: {r.note}")
    assert r.tokens[:AGREE] == eager.tokens[:AGREE], r.note
    assert len(r.tokens) == NEW_TOKENS  # EOS did not stop it
    assert r.ttft_ms > 0 and 0 < r.decode_ms_per_token_p50 <= r.decode_ms_per_token_p95
    assert (r.peer, r.precision, r.threads) == (peer, "fp32", 2)


def test_in_process_int8_and_unsupported_precision(lm, work):
    path, _, prompt = lm
    r = run_peer("pytorch-eager", path, prompt, 4, 1, "int8", 1, work, isolated=False)
    assert r.available or "quantize_dynamic" in r.note
    assert len(r.tokens) == 4 or not r.available
    r = run_peer("pytorch-eager", path, prompt, 4, 1, "int4", 1, work)
    assert not r.available and "int4" in r.note and r.tokens == []


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(peer="tensorrt-llm"), "unknown peer"),
        (dict(precision="fp8"), "unknown precision"),
        (dict(prompt_ids=[]), "empty prompt"),
        (dict(model_dir="/nonexistent/model"), "config.json is missing"),
    ],
)
def test_bad_requests_come_back_as_notes(lm, work, kwargs, words):
    path, _, prompt = lm
    args = dict(
        peer="pytorch-eager",
        model_dir=path,
        prompt_ids=prompt,
        new_tokens=4,
        threads=1,
        work_dir=work,
    )
    r = run_peer(**{**args, **kwargs})
    assert not r.available and words in r.note
    assert r.ttft_ms is None and r.tokens == []


def test_missing_optional_package_is_a_note(lm, work, monkeypatch):
    path, _, prompt = lm
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ctranslate2" else real(name, *a),
    )
    r = run_peer("ctranslate2", path, prompt, 4, 1, "fp32", 1, work, isolated=False)
    assert not r.available and r.note == "not installed: pip install ctranslate2"


def test_conversion_cache_is_rebuilt_when_the_source_changes(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"max_position_embeddings": 8}))
    builds = []

    def build(folder):
        builds.append(folder)
        (folder / "model.bin").write_text("x")

    target = tmp_path / "work" / "ct2-fp32"
    folder, seconds = peers._cached(target, peers._source_stamp(src, peer="v1"), build)
    assert folder == target and seconds is not None and (target / "model.bin").is_file()
    _, seconds = peers._cached(target, peers._source_stamp(src, peer="v1"), build)
    assert seconds is None and len(builds) == 1
    (src / "config.json").write_text(json.dumps({"max_position_embeddings": 16}))
    _, seconds = peers._cached(target, peers._source_stamp(src, peer="v1"), build)
    assert seconds is not None and len(builds) == 2
    _, seconds = peers._cached(target, peers._source_stamp(src, peer="v2"), build)
    assert seconds is not None and len(builds) == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["ct2-fp32"]  # no temp left


def test_edgezoo_as_a_peer_decodes_like_pytorch_and_reports_its_memory(lm, work, eager, tmp_path):
    """The `edgezoo` peer runs our runtime in a fresh process, like the others, so the bench
    can put whole-process peak RSS side by side."""
    import shutil

    from edgezoo.export.onnx_export import to_onnx

    path, _, prompt = lm
    exported = tmp_path / "exported"
    shutil.copytree(path, exported)
    to_onnx(exported, greedy_steps=4, optimize=False)
    r = run_peer("edgezoo", exported, prompt, NEW_TOKENS, 2, "fp32", 1, work)
    assert r.available, r.note
    assert r.tokens[:AGREE] == eager.tokens[:AGREE]
    assert "gqa" in r.note
    # A Python process with onnxruntime loaded holds tens of MB at least; torch's holds more.
    assert 30 < r.peak_rss_mb < eager.peak_rss_mb, (r.peak_rss_mb, eager.peak_rss_mb)


def _resident_pages(path) -> int:
    """How many of ``path``'s pages are in the page cache (mincore on a mapping of it)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        libc = ctypes.CDLL(None, use_errno=True)
        first = ctypes.c_char.from_buffer(m)
        ok = libc.mincore(ctypes.c_void_p(ctypes.addressof(first)), ctypes.c_size_t(size), vec)
        del first  # release the buffer export before the map closes
        if ok != 0:
            pytest.skip("mincore is not available here")
        return sum(v & 1 for v in vec)


def _file_system(path) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it)."""
    best, kind = "", ""
    for line in open("/proc/mounts"):
        mount, fs = line.split()[1], line.split()[2]
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fs
    return kind


def test_page_cache_eviction_leaves_model_files_cold(tmp_path):
    """Fresh-process memory measurements start from cold files (benchmarks.page_cache)."""
    import sys

    from benchmarks import page_cache

    if not sys.platform.startswith("linux"):
        pytest.skip("posix_fadvise and mincore: Linux")
    nested = tmp_path / "onnx"
    nested.mkdir()
    weights = nested / "model.onnx.data"
    weights.write_bytes(b"\x01" * (4 << 20))
    weights.read_bytes()  # in the page cache now
    if _resident_pages(weights) == 0:
        pytest.skip("this file system keeps no page cache for the file")
    if _file_system(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("a file system in memory has no pages to drop")
    assert page_cache.evict(tmp_path, None, tmp_path / "missing") == 1
    assert _resident_pages(weights) < 1024 // 8
