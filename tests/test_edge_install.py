"""The edge install, for real: a fresh venv with ``pip install <checkout>`` and no extras.

It must hold no torch and no generic top-level package, and still generate, classify
and (with the ``serve`` extra) serve the model dirs this test run exported in the full
environment. Stages whose extra is missing answer with the pip command, not a traceback.
Needs the package registry (as ``make test`` does for its own install).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import venv
from pathlib import Path

import pytest
from conftest import make_model_dir, tiny_bert, tiny_llama

from edgezoo.export.onnx_export import to_onnx
from edgezoo.zoo.config import LlamaConfig

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"

pytestmark = pytest.mark.slow


def _pip(py: Path, *args: str) -> None:
    cmd = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if CONSTRAINTS.is_file():
        cmd += ["-c", str(CONSTRAINTS)]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> Path:
    """A venv with only ``pip install <checkout>``; returns its bin folder."""
    # setuptools builds in the checkout's build/lib and would package stale files left there.
    shutil.rmtree(REPO / "build" / "lib", ignore_errors=True)
    root = tmp_path_factory.mktemp("edge-venv")
    venv.EnvBuilder(with_pip=True).create(root)
    bin_dir = root / "bin"
    _pip(bin_dir / "python", str(REPO))
    return bin_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    lm = tmp_path_factory.mktemp("edge-lm")
    cfg = vars(tiny_llama(max_position_embeddings=96)).copy()
    cfg.pop("preset")
    make_model_dir(lm, LlamaConfig(**cfg), tokenizer)
    to_onnx(lm, greedy_steps=8)
    cls = tmp_path_factory.mktemp("edge-cls")
    make_model_dir(cls, tiny_bert(id2label={0: "a", 1: "b", 2: "c"}), tokenizer)
    to_onnx(cls)
    return lm, cls


def _run(bin_dir: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # Run outside the checkout: its folders must not stand in for the installed package.
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=bin_dir.parent,
        env=env,
        **kw,
    )


def test_edge_install_has_no_torch_and_one_top_level_name(edge):
    probe = _run(
        edge,
        "python",
        "-c",
        "import importlib.metadata as m, importlib.util as u, json; d = m.distribution('edgezoo'); "
        "print(json.dumps({'top': d.read_text('top_level.txt').split(), "
        "'files': [str(f) for f in d.files], "
        "'found': {n: u.find_spec(n) is not None for n in "
        "('torch', 'onnx', 'runtime', 'zoo', 'export', 'quantize', 'benchmarks')}}))",
    )
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    assert facts["top"] == ["edgezoo"]
    outside = [
        f
        for f in facts["files"]
        if not f.startswith(("edgezoo/", "edgezoo-")) and not f.startswith("../")
    ]
    assert outside == [], "files installed outside the edgezoo package"
    assert "edgezoo/runtime/language_model.py" in facts["files"]
    assert "edgezoo/quantize/prune/__init__.py" in facts["files"]
    assert not any(facts["found"].values()), facts["found"]  # no torch, no generic names


def test_edge_install_generates_and_classifies(edge, exported):
    lm_dir, cls_dir = exported
    gen = _run(edge, "edgezoo", "generate", str(lm_dir), "def f(", "--max-new-tokens", "8")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("def f(") and "8 tokens" in gen.stderr
    api = _run(
        edge,
        "python",
        "-c",
        f"import edgezoo; print(len(edgezoo.load({str(lm_dir)!r}).generate('x', "
        "max_new_tokens=5, ignore_eos=True).token_ids))",
    )
    assert api.returncode == 0 and api.stdout.strip() == "5", api.stderr
    cls = _run(edge, "edgezoo", "classify", str(cls_dir), "import os", "def main():")
    assert cls.returncode == 0, cls.stderr
    rows = [json.loads(line) for line in cls.stdout.splitlines()]
    assert len(rows) == 2 and all(r["label"] in ("a", "b", "c") for r in rows)


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["train", "--out", "x"], "train"),
        (["export", "x"], "export"),
        (["quantize", "x", "--to", "int8"], "quantize"),
        (["prune", "x", "--mlp", "0.5"], "train"),
        (["serve", "x"], "serve"),
    ],
)
def test_a_stage_without_its_extra_names_the_pip_command(edge, argv, extra):
    out = _run(edge, "edgezoo", *argv)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"edgezoo: error: '{argv[0]}' needs the {extra} extra: pip install \"edgezoo[{extra}]\""
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_edge_install_with_the_serve_extra_serves(edge, exported):
    _pip(edge / "python", f"{REPO}[serve]")
    assert _run(edge, "python", "-c", "import torch").returncode != 0
    port = _free_port()
    server = subprocess.Popen(
        [str(edge / "edgezoo"), "serve", str(exported[0]), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=edge.parent,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "server did not come up in 120 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        body = json.dumps({"prompt": "def f():", "max_tokens": 4}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.load(r)
        assert r.status == 200
        assert answer["usage"]["completion_tokens"] >= 1 and answer["choices"][0]["text"]
        # chat renders the model's template with jinja2, which the serve extra brings
        chat = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=chat.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.load(r)
        assert answer["object"] == "chat.completion" and answer["usage"]["prompt_tokens"] > 5
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_quantize_extra_quantizes_without_torch(edge, exported, text_corpus, tmp_path):
    """ONNX in, ONNX out: `[quantize]` adds onnx, and still no torch."""
    _pip(edge / "python", f"{REPO}[quantize]")
    assert _run(edge, "python", "-c", "import torch").returncode != 0
    model_dir = tmp_path / "lm"
    shutil.copytree(exported[0], model_dir)
    out = _run(
        edge, "edgezoo", "quantize", str(model_dir), "--to", "int4", "--data", str(text_corpus)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    variants = json.loads((model_dir / "onnx" / "manifest.json").read_text())["variants"]
    assert any(v["precision"] == "int4" for v in variants.values())
