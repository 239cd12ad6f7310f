"""Restarts across nodes: the attempt handshake alone (threads on one store, with the
stale keys a dead attempt leaves), then for real — two torchrun agents on loopback, as two
nodes would run them (c10d rendezvous, one worker each). A worker SIGKILLed mid-run must
bring both nodes into a new attempt that resumes from the last checkpoint and ends on the
single-process loss curve.

Every process runs in its own session under a hard deadline: a hang fails the test and
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as torch_dist
from conftest import loss_curve
from test_distributed import close, flags, single

from edgezoo.errors import DistributedError
from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo.attempt import Attempt, agree

STEPS = 10  # checkpoints at 5 and 10; the worker dies after step 5
DEADLINE_S = 150  # the whole two-node run, restart included; a hang fails here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_command(port: int, is_host: bool, train_argv: list[str]) -> list[str]:
    """One node's torchrun: the head hosts the rendezvous store, the other joins it."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=edgezoo-multinode-test",
        f"--rdzv-conf=is_host={str(is_host).lower()}",
        "--local-addr=127.0.0.1",
        "--max-restarts=1",
        "--monitor-interval=0.1",
        "-m",
        "edgezoo.zoo.train",
        *train_argv,
    ]


def kill_everything(agent: subprocess.Popen) -> None:
    """SIGKILL an agent and its workers. torchrun starts each worker in a session of its
    own, so the agent's process group does not hold them: kill theirs first."""
    if agent.poll() is None:
        for pid in children(agent):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()


def children(agent: subprocess.Popen) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def worker_of(agent: subprocess.Popen) -> int:
    """The pid of the one worker this agent runs (its direct child)."""
    pids = children(agent)
    assert len(pids) == 1, f"expected one worker under agent {agent.pid}, found {pids}"
    return pids[0]


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def run_ranks(store, counts: list[int], start_rank0_after: float = 0.0) -> list[Attempt]:
    """One attempt: a thread per rank (rank r's agent counted ``counts[r]`` restarts)."""
    results: list = [None] * len(counts)

    def rank(r: int) -> None:
        if r == 0:
            time.sleep(start_rank0_after)
        try:
            results[r] = agree(store, r, len(counts), counts[r], timeout_s=20)
        except Exception as e:  # reported by the assertion below
            results[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(counts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(isinstance(a, Attempt) for a in results), results
    return results


def test_every_rank_agrees_on_the_attempt_though_nodes_count_restarts_differently():
    store = torch_dist.HashStore()
    first = run_ranks(store, [0, 0, 0, 0])
    assert set(first) == {Attempt(1, False)}
    # One node's agent counted the failure, the others restarted for it without counting;
    # the other ranks arrive first and find the first attempt's keys, answers included.
    second = run_ranks(store, [0, 1, 0, 0], start_rank0_after=0.3)
    assert set(second) == {Attempt(2, True)}
    # no agent counted anything (a membership change): still a restart, still agreed
    third = run_ranks(store, [0, 0, 0, 0], start_rank0_after=0.1)
    assert set(third) == {Attempt(3, True)}
    assert len({first[0].prefix, second[0].prefix, third[0].prefix}) == 3


def test_a_fresh_store_per_attempt_still_learns_of_the_restart():
    """TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: no history in the store, so the agents'
    counts decide — any one of them counting a restart makes every rank resume."""
    assert set(run_ranks(torch_dist.HashStore(), [0, 0, 1])) == {Attempt(1, True)}


def test_rank0_waits_for_every_rank_of_its_own_attempt():
    store = torch_dist.HashStore()
    run_ranks(store, [0, 0])
    result: list = []
    lead = threading.Thread(target=lambda: result.append(agree(store, 0, 2, 0, timeout_s=20)))
    lead.start()
    lead.join(timeout=0.5)  # rank 1's hello from attempt 1 is still in the store
    assert lead.is_alive() and not result
    assert agree(store, 1, 2, 0, timeout_s=20) == Attempt(2, True)
    lead.join(timeout=10)
    assert result == [Attempt(2, True)]


def test_a_missing_rank_is_a_clear_error_not_a_hang():
    with pytest.raises(DistributedError, match="1 of 1 other ranks"):
        agree(torch_dist.HashStore(), 0, 2, 0, timeout_s=0.2)
    with pytest.raises(DistributedError, match="rank 0"):
        agree(torch_dist.HashStore(), 1, 2, 0, timeout_s=0.2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_corpus):
    out = tmp_path_factory.mktemp("ref") / "run"
    single(text_corpus, out, STEPS)
    return out


@pytest.mark.slow
def test_two_nodes_restart_after_a_killed_worker_and_resume(reference, text_corpus, tmp_path):
    """The non-head node's worker dies. Its agent counts a restart; the head's agent
    restarts its healthy rank 0 for it without counting one — the case where per-node
    restart counts disagree (the head's rank 0 must still resume, not start over)."""
    victim = "other"
    out = tmp_path / "two-nodes"
    argv = flags(text_corpus, out, STEPS, every=5)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = {name: tmp_path / f"{name}.log" for name in ("head", "other")}
    agents: dict[str, subprocess.Popen] = {}
    try:
        for name in ("head", "other"):
            with logs[name].open("w") as log:
                agents[name] = subprocess.Popen(
                    agent_command(port, name == "head", argv),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.time() + DEADLINE_S
        while not (out / "checkpoints" / "step-00000005").exists():
            for name, agent in agents.items():
                assert agent.poll() is None, f"{name} agent exited early:\n{tail(logs[name])}"
            assert time.time() < deadline, "no checkpoint at step 5 in time"
            time.sleep(0.02)
        os.kill(worker_of(agents[victim]), signal.SIGKILL)
        for name, agent in agents.items():
            try:
                agent.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"{name} agent hung after the restart:\n"
                    + "\n".join(f"--- {n}\n{tail(p)}" for n, p in logs.items())
                )
    finally:
        for agent in agents.values():  # never leave a stuck job behind
            kill_everything(agent)
    for name, agent in agents.items():
        assert agent.returncode == 0, f"{name} agent failed:\n{tail(logs[name])}"
    # the worker really died mid-run, and its agent restarted it
    assert "exitcode: -9" in logs[victim].read_text(errors="replace")
    assert close(loss_curve(out), loss_curve(reference))
    assert ckpt.verify(ckpt.list_checkpoints(out)[-1]).step == STEPS
