"""Which attempt of a torchrun job is this? An answer every worker on every node agrees on.

torchrun's agents share one TCP store per job (``TORCHELASTIC_USE_AGENT_STORE``), and it
outlives worker restarts: a new attempt that keeps the same keys reads the dead attempt's
peer addresses and fails ("connection refused") or hangs. Each attempt therefore needs
its own key prefix, agreed by all its workers. ``TORCHELASTIC_RESTART_COUNT`` cannot be
it: each agent counts only its own failures, and a node whose workers were healthy
restarts them for another node's failure without counting (torch's "membership changes
do not count as retries"), so two nodes can start the same attempt with counts 0 and 1.

The workers agree through the store instead, in a handshake that stale keys cannot fool:

1. Global rank 0 draws the attempt number: ``gen = add("gen", 1)`` — a new value per
   attempt, so no key written under an older ``gen`` can match it.
2. Every other rank reads ``gen``, registers a fresh random nonce under it, and counts
   itself in. It re-registers whenever ``gen`` changes (it may have read an older one
   before this attempt's rank 0 arrived).
3. Once all ``world - 1`` ranks have counted in under its ``gen``, rank 0 answers each
   rank's nonce. A rank accepts ``gen`` only when the answer carries its own nonce.

Only live workers write: torchrun stops every worker of the old attempt before the
rendezvous that starts the new one, so whoever writes under this attempt's ``gen`` is
part of it. Nonces are new per process, so an answer left over from an older attempt
never carries one. The same handshake tells the attempt's workers whether they are a
restart (``gen > 1``, or any rank's agent counted a restart), so every node decides to
resume — or not — together.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from torch.distributed import Store

from edgezoo.errors import DistributedError

_ROOT = "edgezoo/attempt"
_POLL_S = 0.01


@dataclass(frozen=True)
class Attempt:
    number: int  # 1 for the job's first attempt, then one more per restart
    restarted: bool  # a previous attempt of this job ran: continue from its checkpoint

    @property
    def prefix(self) -> str:
        """Store prefix that keeps this attempt's process-group keys apart."""
        return f"{_ROOT}-{self.number}"


def agree(
    store: Store, rank: int, world: int, restart_count: int, timeout_s: float = 600.0
) -> Attempt:
    """Run the handshake above on ``store`` (torchrun's un-prefixed job store)."""
    deadline = time.monotonic() + timeout_s
    if rank == 0:
        return _lead(store, world, restart_count > 0, deadline, timeout_s)
    return _follow(store, rank, restart_count > 0, deadline, timeout_s)


def _lead(store: Store, world: int, restarted: bool, deadline: float, timeout_s: float) -> Attempt:
    gen = store.add(f"{_ROOT}/gen", 1)
    arrived = f"{_ROOT}/{gen}/arrived"
    while store.add(arrived, 0) < world - 1:
        if time.monotonic() > deadline:
            raise DistributedError(
                f"rank 0 waited {timeout_s:.0f} s for {world - 1 - store.add(arrived, 0)} of "
                f"{world - 1} other ranks to join attempt {gen}; check that every node runs "
                "the same torchrun command and can reach this one."
            )
        time.sleep(_POLL_S)
    ranks = range(1, world)
    if not ranks:
        return Attempt(gen, restarted or gen > 1)
    hellos = [
        v.decode().split() for v in store.multi_get([f"{_ROOT}/{gen}/hello/{r}" for r in ranks])
    ]
    restarted = restarted or gen > 1 or any(flag == "1" for _, flag in hellos)
    store.multi_set(
        [f"{_ROOT}/{gen}/answer/{r}" for r in ranks],
        [f"{nonce} {int(restarted)}" for nonce, _ in hellos],
    )
    return Attempt(gen, restarted)


def _follow(store: Store, rank: int, restarted: bool, deadline: float, timeout_s: float) -> Attempt:
    nonce = uuid.uuid4().hex
    registered = 0
    while True:
        gen = store.add(f"{_ROOT}/gen", 0)
        if gen != registered:  # rank 0 of a newer attempt arrived (or the first one did)
            store.set(f"{_ROOT}/{gen}/hello/{rank}", f"{nonce} {int(restarted)}")
            store.add(f"{_ROOT}/{gen}/arrived", 1)
            registered = gen
        answer = f"{_ROOT}/{registered}/answer/{rank}"
        if registered and store.check([answer]):
            mine, flag = store.get(answer).decode().split()
            if mine == nonce:
                return Attempt(registered, flag == "1")
        if time.monotonic() > deadline:
            raise DistributedError(
                f"rank {rank} waited {timeout_s:.0f} s for rank 0 to start this attempt; "
                "check that rank 0's node is up and runs the same torchrun command."
            )
        time.sleep(_POLL_S)
