"""Distributed training for real: 2 processes under torchrun, gloo on CPU.

DDP must reproduce the single-process run (same global batch, same data, same result);
FSDP must train and save an ordinary model dir; checkpoints must resume with another
world size; a SIGKILLed worker must be restarted by torchrun and resume.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from conftest import lm_train_config, loss_curve
from safetensors.torch import load_file

from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo.launch import strip_launcher_flags, torchrun_command
from edgezoo.zoo.modeldir import load_model
from edgezoo.zoo.train import train

pytestmark = pytest.mark.slow

COMMON = [
    "--size",
    "nano",
    "--batch-size",
    "8",
    "--context",
    "32",
    "--vocab-size",
    "600",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "4",
    "--eval-every",
    "1000",
    "--log-every",
    "1",
    "--keep-checkpoints",
    "5",
    "--no-progress",
]


def flags(corpus, out, steps, every=5, extra=()) -> list[str]:
    return [
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--checkpoint-every",
        str(every),
        *COMMON,
        *extra,
    ]


def single(corpus, out, steps, every=5, **kw):
    """One process with the same settings as ``flags`` gives torchrun."""
    return train(
        lm_train_config(
            corpus, out, steps=steps, context=32, keep_checkpoints=5, checkpoint_every=every, **kw
        )
    )


def torchrun(
    args: list[str], nproc: int = 2, restarts: int = 0, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        torchrun_command(nproc, args, restarts),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def close(a: dict, b: dict, tol: float = 2e-4) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < tol for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_corpus):
    out = tmp_path_factory.mktemp("ref") / "run"
    single(text_corpus, out, 20)
    return out


def test_ddp_two_processes_match_one_process(reference, text_corpus, tmp_path):
    out = tmp_path / "ddp"
    done = torchrun(flags(text_corpus, out, 20))
    assert done.returncode == 0, done.stderr[-3000:]
    assert close(loss_curve(out), loss_curve(reference))
    ours, theirs = (
        load_file(str(out / "model.safetensors")),
        load_file(str(reference / "model.safetensors")),
    )
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-4
    assert (
        json.loads((out / "checkpoints" / "step-00000020" / "trainer.json").read_text())[
            "world_size"
        ]
        == 2
    )


def test_fsdp_trains_and_saves_an_ordinary_model_dir(reference, text_corpus, tmp_path):
    out = tmp_path / "fsdp"
    done = torchrun(flags(text_corpus, out, 20, extra=["--fsdp"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert close(loss_curve(out), loss_curve(reference), tol=1e-3)  # same math, sharded
    model = load_model(out)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(4, 600, (1, 12))
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() < 1e-4


def test_resume_with_another_world_size_continues_the_curve(reference, text_corpus, tmp_path):
    out = tmp_path / "two-then-one"
    done = torchrun(flags(text_corpus, out, 20, every=10))
    assert done.returncode == 0, done.stderr[-3000:]
    for c in ckpt.list_checkpoints(out)[1:]:  # keep step 10 only: as if it died there
        shutil.rmtree(c)
    single(text_corpus, out, 20, every=10, resume=True)
    assert close(loss_curve(out), loss_curve(reference))


def test_killed_worker_is_restarted_and_resumes(reference, text_corpus, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = torchrun_command(2, flags(text_corpus, out, 20, every=5), max_restarts=1)
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints" / "step-00000005").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        found = subprocess.run(
            ["pgrep", "-f", f"python -u -m edgezoo.zoo.train.*{out}"],
            capture_output=True,
            text=True,
        )
        workers = [int(p) for p in found.stdout.split() if int(p) != proc.pid]
        assert workers, "no worker process found"
        os.kill(max(workers), signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # never leave a stuck job behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "exitcode: -9" in err  # the worker really died mid-run, and torchrun restarted it
    assert close(loss_curve(out), loss_curve(reference))
    assert ckpt.verify(ckpt.list_checkpoints(out)[-1]).step == 20


def test_launcher_builds_the_torchrun_command():
    argv = ["train", "--nproc", "2", "--max-restarts=1", "--fsdp", "--out", "x"]
    assert strip_launcher_flags(argv) == ["--fsdp", "--out", "x"]
    cmd = torchrun_command(2, ["--out", "x"], 1)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--max-restarts=1" in cmd
    assert cmd[-3:] == ["edgezoo.zoo.train", "--out", "x"]
