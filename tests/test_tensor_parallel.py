"""Tensor parallelism for real: 2 processes under torchrun, gloo on CPU, ``--tp 2``.

TP splits every block's matrices, not the data, so a TP=2 run must follow the
single-process loss curve (same examples, same math; only the order of fp32 sums inside
the row-parallel all-reduce differs). Checkpoints are full-state, so a run saved at TP 2
resumes on one process and the other way round. Every torchrun call has a hard timeout
that kills its whole process group, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import lm_train_config, loss_curve
from safetensors.torch import load_file

from edgezoo.errors import ConfigError
from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo.launch import torchrun_command
from edgezoo.zoo.presets import make_config
from edgezoo.zoo.tensor_parallel import check_layout, check_tp
from edgezoo.zoo.train import train

pytestmark = pytest.mark.slow

STEPS, EVERY = 50, 25
# Measured on this machine (torch 2.13, gloo, 2 cores) over these 50 steps: TP 2 max
# |Δloss| 1.9e-6 (final weights max |Δ| 2.1e-5); 1 → TP 2 resume 4.8e-7; TP 2 × 2-way
# replicate 1.4e-6; TP 2 + sequence parallel 1.4e-6. Aim (issue #16): 1e-4 fp32 over 50 steps.
TOL = 1e-4

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


def flags(corpus, out, extra=()) -> list[str]:
    return [
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--checkpoint-every",
        str(EVERY),
        *COMMON,
        *extra,
    ]


def single(corpus, out, **kw):
    """One process with the same settings as ``flags`` gives torchrun."""
    return train(
        lm_train_config(
            corpus,
            out,
            steps=STEPS,
            context=32,
            keep_checkpoints=5,
            checkpoint_every=EVERY,
            **kw,
        )
    )


def torchrun(args: list[str], nproc: int = 2, timeout: int = 240) -> tuple[int, str]:
    """(exit code, stderr) of a torchrun job; past ``timeout`` s its process group is killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        torchrun_command(nproc, args),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun hung for more than {timeout} s: {args}")
    return proc.returncode, err


def max_gap(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


def keep_only_first_checkpoint(out) -> None:
    """As if the run had died right after its first checkpoint."""
    for c in ckpt.list_checkpoints(out)[1:]:
        shutil.rmtree(c)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_corpus):
    out = tmp_path_factory.mktemp("ref") / "run"
    single(text_corpus, out)
    return out


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory, text_corpus):
    out = tmp_path_factory.mktemp("tp") / "run"
    code, err = torchrun(flags(text_corpus, out, ["--tp", "2"]))
    assert code == 0, err[-3000:]
    return out


def test_tp2_loss_curve_matches_one_process(reference, tp_run):
    assert len(loss_curve(tp_run)) == STEPS
    assert max_gap(loss_curve(tp_run), loss_curve(reference)) < TOL
    ours, theirs = (
        load_file(str(tp_run / "model.safetensors")),
        load_file(str(reference / "model.safetensors")),
    )
    assert ours.keys() == theirs.keys()  # gathered to full tensors: an ordinary model dir
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-3
    meta = ckpt.verify(ckpt.list_checkpoints(tp_run)[-1]).meta
    assert meta["tensor_parallel"] == 2 and meta["world_size"] == 2


def test_sequence_parallel_tp2_matches_one_process(reference, text_corpus, tmp_path):
    """Norms and residuals split along the sequence (reduce-scatter / all-gather on gloo)."""
    out = tmp_path / "sp"
    code, err = torchrun(flags(text_corpus, out, ["--tp", "2", "--sequence-parallel"]))
    assert code == 0, err[-3000:]
    assert max_gap(loss_curve(out), loss_curve(reference)) < TOL


def test_tp2_checkpoint_resumes_on_one_process(reference, tp_run, text_corpus, tmp_path):
    out = tmp_path / "tp-then-one"
    shutil.copytree(tp_run, out)
    keep_only_first_checkpoint(out)
    single(text_corpus, out, resume=True)
    assert max_gap(loss_curve(out), loss_curve(reference)) < TOL


def test_one_process_checkpoint_resumes_at_tp2(reference, text_corpus, tmp_path):
    out = tmp_path / "one-then-tp"
    shutil.copytree(reference, out)
    keep_only_first_checkpoint(out)
    code, err = torchrun(flags(text_corpus, out, ["--tp", "2", "--resume"]))
    assert code == 0, err[-3000:]
    assert max_gap(loss_curve(out), loss_curve(reference)) < TOL


def test_bad_tp_values_are_refused(text_corpus, tmp_path):
    with pytest.raises(ConfigError, match="--nproc 2"):  # one process cannot split a layer
        single(text_corpus, tmp_path / "one", tp=2)
    with pytest.raises(ConfigError, match="does not divide the 2 processes"):
        check_layout(3, 2)
    with pytest.raises(ConfigError, match="drop --fsdp"):  # nothing left to shard over
        check_layout(2, 2, fsdp=True)
    with pytest.raises(ConfigError, match="add --tp 2"):
        check_layout(1, 2, sequence_parallel=True)
    with pytest.raises(ConfigError, match="key/value heads 2"):  # micro: 6 heads, 2 kv heads
        check_tp(make_config("lm", "micro"), 4)
    with pytest.raises(ConfigError, match="Llama family"):
        check_tp(make_config("cls", "nano"), 2)
    check_tp(make_config("lm", "micro"), 2)  # 6 and 2 heads split in two: fine


def test_launcher_refuses_bad_tp_before_starting_torchrun(text_corpus, tmp_path):
    def edgezoo(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "edgezoo.cli", "train", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    out = tmp_path / "bad"
    done = edgezoo("--nproc", "4", "--tp", "4", "--size", "micro", "--out", str(out))
    assert done.returncode == 2 and "key/value heads 2" in done.stderr, done.stderr[-2000:]
    done = edgezoo("--nproc", "2", "--tp", "3", "--out", str(out))
    assert done.returncode == 2 and "does not divide the 2 processes" in done.stderr
    done = edgezoo("--nproc", "2", "--tp", "0", "--out", str(out))
    assert done.returncode == 2 and "--tp" in done.stderr  # argparse: at least 1
    assert "torch.distributed" not in done.stderr and not out.exists()


def test_workers_refuse_a_model_tp_cannot_split(labelled_csv, tmp_path):
    """``--tp 2 --family cls`` under torchrun: every worker stops with the ConfigError."""
    code, err = torchrun(
        [
            "--family",
            "cls",
            "--data",
            str(labelled_csv),
            "--out",
            str(tmp_path / "cls"),
            "--tp",
            "2",
        ],
        timeout=120,
    )
    assert code != 0 and "Llama family" in err


def test_2d_mesh_tp2_times_data_parallel_matches_one_process(reference, text_corpus, tmp_path):
    """4 processes: TP 2 × 2 data-parallel replicas (FSDP2-based ``replicate``); each
    replica reads half the global batch, so the curve is still the single-process one."""
    out = tmp_path / "tp2x2"
    code, err = torchrun(flags(text_corpus, out, ["--tp", "2"]), nproc=4, timeout=360)
    assert code == 0, err[-3000:]
    assert max_gap(loss_curve(out), loss_curve(reference)) < TOL
    assert ckpt.verify(ckpt.list_checkpoints(out)[-1]).meta["world_size"] == 4
