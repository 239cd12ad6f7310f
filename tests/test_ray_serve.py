"""Replicas on Ray Serve: the options Ray gets, the replica's app, and a real local Ray run.

The end-to-end test starts `edgezoo serve DIR --ray --replicas 2` as a user would (a local
Ray instance on loopback), spreads concurrent requests over both replicas, SIGKILLs one
replica's process and checks that no request fails while Ray replaces it, then stops the
server with Ctrl-C and checks that none of the processes it started is left. It is skipped
where ray is not installed (CI installs .[all], which has the cluster extra).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest
from conftest import make_model_dir, tiny_llama
from fastapi.testclient import TestClient

from edgezoo.cli import main as edgezoo_main
from edgezoo.errors import ConfigError
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime.ray_serve import (
    REPLICA_HEADER,
    ReplicaOptions,
    Scaling,
    build_app,
    deployment_options,
    replica_threads,
    worker_alive,
)

needs_ray = pytest.mark.skipif(
    find_spec("ray") is None, reason='needs the cluster extra: pip install "edgezoo[cluster]"'
)
CONTEXT = 64
STARTUP_S = 150  # a local Ray and two replicas start in ~15 s on 2 quiet cores
REPLACE_S = 90  # Ray noticed and replaced a killed replica in ~4 s here


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("ray-lm")
    make_model_dir(path, tiny_llama(max_position_embeddings=CONTEXT), tokenizer)
    to_onnx(path, greedy_steps=8, fast=False, optimize=False)
    return path


# ---------------------------------------------------------------------- without Ray --------


def test_deployment_options_follow_the_server_limits():
    opts = ReplicaOptions("m", max_queue=10, max_batch=4, parallel=6)
    fixed = deployment_options(opts, Scaling(replicas=3, cpus_per_replica=2))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    # what `edgezoo serve` lets uvicorn hold: its queue + the 6 it decodes + 32 to spare
    assert fixed["max_ongoing_requests"] == 10 + 6 + 32
    assert fixed["max_queued_requests"] == 10
    assert fixed["ray_actor_options"] == {"num_cpus": 2}

    auto = deployment_options(opts, Scaling(replicas=2, min_replicas=0, max_replicas=5))
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 2,
        "max_replicas": 5,
        "target_ongoing_requests": 6,
    }
    tuned = deployment_options(opts, Scaling(max_replicas=4, target_ongoing_requests=2.5))
    assert tuned["autoscaling_config"]["target_ongoing_requests"] == 2.5
    assert tuned["autoscaling_config"]["min_replicas"] == 1


@pytest.mark.parametrize(
    ("scaling", "says"),
    [
        (Scaling(min_replicas=2), "pass --max-replicas too"),
        (Scaling(target_ongoing_requests=3), "pass --max-replicas too"),
        (Scaling(min_replicas=3, max_replicas=2, replicas=2), "0 <= min <= max"),
        (Scaling(replicas=5, max_replicas=4), "keep it between"),
        (Scaling(cpus_per_replica=0), "use a number > 0"),
    ],
)
def test_impossible_scaling_is_one_clear_error(scaling, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        deployment_options(ReplicaOptions("m"), scaling)


def test_replica_threads_default_to_its_cpus():
    assert replica_threads(0, 1) == 1
    assert replica_threads(0, 4) == 4
    assert replica_threads(0, 0.25) == 1
    assert replica_threads(3, 1) == 3  # asked for: kept


def test_replica_app_is_the_server_app_with_its_id(lm_dir):
    """What each replica serves: the same routes, auth and Host guard, tagged with its id."""
    keyless = build_app(ReplicaOptions(str(lm_dir)), "r1")
    with TestClient(keyless, base_url="http://localhost") as c:
        assert worker_alive(keyless)
        r = c.post("/v1/completions", json={"prompt": "def f():", "max_tokens": 3})
        assert r.status_code == 200 and r.headers[REPLICA_HEADER] == "r1"
        assert r.json()["model"] == lm_dir.name and r.json()["usage"]["completion_tokens"] == 3
        refused = c.get("/health", headers={"host": "evil.example"})
        assert refused.status_code == 403 and refused.headers[REPLICA_HEADER] == "r1"
    assert not worker_alive(keyless)  # the lifespan stopped the worker: check_health fails

    keyed = build_app(
        ReplicaOptions(str(lm_dir), api_key="k3y", model_name="tiny", max_tokens_limit=5), "r2"
    )
    with TestClient(keyed, base_url="http://10.0.0.7") as c:
        assert c.get("/v1/models").status_code == 401
        too_long = c.post(
            "/v1/completions",
            json={"prompt": "x", "max_tokens": 6},
            headers={"authorization": "Bearer k3y"},
        )
        assert too_long.status_code == 400 and "max_tokens" in too_long.text
        assert c.get("/v1/models", headers={"authorization": "Bearer k3y"}).json()["data"][0][
            "id"
        ] == ("tiny")


def test_ray_flags_without_ray_are_refused(lm_dir, capsys):
    assert edgezoo_main(["serve", str(lm_dir), "--replicas", "2"]) == 2
    assert "--replicas scales out on Ray Serve: add --ray" in capsys.readouterr().err


def test_without_ray_the_command_names_the_extra(lm_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert edgezoo_main(["serve", str(lm_dir), "--ray", "--replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert (
        "edgezoo: error: 'serve --ray' needs the cluster extra: pip install \"edgezoo[cluster]\""
        in err
    )


# ---------------------------------------------------------------------- on a local Ray -----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid`` (from /proc), with its command line."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            found[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            todo.extend(children.get(p, []))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout_s: float, seen: list[str]) -> None:
    """Read the server's output until ``pattern`` (the output so far goes into ``seen``)."""
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            seen.append(line)
            if pattern in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout_s):
        raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{''.join(seen)[-4000:]}")


@needs_ray
@pytest.mark.slow
def test_two_replicas_spread_load_and_survive_a_killed_replica(lm_dir):
    port, key = free_port(), "s3cret"
    env = {**os.environ, "EDGEZOO_API_KEY": key, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "edgezoo.cli", "serve", str(lm_dir), "--ray"]
    command += ["--replicas", "2", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    started: dict[int, str] = {}
    output: list[str] = []
    try:
        wait_for_line(proc, "2 replicas on a local Ray instance", STARTUP_S, output)
        url = f"http://127.0.0.1:{port}/v1/completions"
        auth = {"authorization": f"Bearer {key}"}
        body = {"prompt": "def main(args):", "max_tokens": 8, "temperature": 0}

        with httpx.Client(timeout=60) as client:

            def complete(_: int = 0) -> tuple[int, str]:
                r = client.post(url, json=body, headers=auth)
                return r.status_code, r.headers.get(REPLICA_HEADER, "")

            # The same auth as `edgezoo serve`: Ray's proxy passes headers through.
            assert client.post(url, json=body).status_code == 401
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(complete, range(24)))
            assert {status for status, _ in answers} == {200}
            first = {replica for _, replica in answers}
            assert len(first) == 2, answers  # Ray's router used both replicas

            started = descendants(proc.pid)
            replicas = [p for p, cmd in started.items() if cmd.startswith("ray::ServeReplica")]
            assert len(replicas) == 2, started
            os.kill(replicas[0], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(replicas[0]) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(replicas[0])

            # Every request after the kill succeeds; Ray starts a replacement meanwhile.
            after: list[tuple[int, str]] = []
            deadline = time.monotonic() + REPLACE_S
            with ThreadPoolExecutor(4) as pool:
                while time.monotonic() < deadline:
                    after += pool.map(complete, range(4))
                    if {r for _, r in after} - first:
                        break
            assert [a for a in after if a[0] != 200] == [], after
            new = {r for _, r in after} - first
            assert len(new) == 1, f"no replacement replica answered within {REPLACE_S} s"
            survivors = {r for _, r in after} & first
            assert len(survivors) == 1, after  # the killed one never answers again

        started |= descendants(proc.pid)  # the replacement too
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, "".join(output)[-4000:]
        deadline = time.monotonic() + 15
        while [p for p in started if alive(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: started[p] for p in started if alive(p)}
        assert left == {}, f"processes left after Ctrl-C: {left}"
    finally:
        if proc.poll() is None:
            started |= descendants(proc.pid)
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        for pid in [proc.pid, *started]:
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def test_replica_loads_the_draft_it_is_given(lm_dir):
    """`serve --ray --prompt-lookup`: each replica loads the model with the same draft. This
    dir has no gqa graph, so the replica says what speculative decoding needs (the server
    side of a draft is tested in test_speculative.py)."""
    with pytest.raises(ConfigError, match="speculative decoding needs the target's gqa graph"):
        build_app(ReplicaOptions(str(lm_dir), draft="prompt-lookup", draft_tokens=3), "r3")
