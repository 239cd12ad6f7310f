"""Process-group plumbing for ``torchrun``: DDP by default, FSDP2 on request, and
tensor parallelism (``--tp``) on a 2-D device mesh (data-parallel × tensor-parallel).

A run is distributed exactly when torchrun set ``WORLD_SIZE`` > 1; the backend follows
the device (NCCL on CUDA, gloo on CPU). With one process every helper is a no-op, so the
training loop reads the same either way. Ranks of one tensor-parallel group read the same
examples: data is split over the data-parallel ranks (``dp_rank`` of ``dp_world``) only.
Under torchrun, on one node or several, each restart attempt gets a store prefix and a
"restarted" flag that all ranks agree on (``edgezoo.zoo.attempt``), so ``--max-restarts``
works across nodes too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fsdp: bool = False
    tp: int = 1  # tensor-parallel degree: consecutive ranks form one TP group
    mesh: Any = None  # DeviceMesh ("dp", "tp") when tp > 1
    sequence_parallel: bool = False  # with tp > 1: norms and residuals split along the sequence
    restarted: bool = False  # torchrun restarted this job: every rank agrees, on every node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_world(self) -> int:
        """Data-parallel replicas: each reads its own slice of the global batch."""
        return self.world // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        t = t.clone()
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return t / self.world

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP, or FSDP2 (``fully_shard``: each block, then the root) with ``fsdp=True``;
        with ``tp > 1``, tensor-parallel blocks first, then FSDP2 over the "dp" mesh dim.

        FSDP2 shards parameters, gradients and optimizer state and, unlike FSDP1, also runs
        on CPU with gloo — so the code path that shards across GPUs is tested here too.
        """
        if not self.active:
            return model
        if self.tp > 1:
            from edgezoo.zoo.tensor_parallel import apply_tp

            apply_tp(model, self.mesh["tp"], self.sequence_parallel)
            if self.dp_world == 1:
                return model  # pure TP: gradients of a TP group need no averaging
            if not self.fsdp:
                return _replicate_over(model, self.mesh["dp"])
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            dp_mesh = self.mesh["dp"] if self.tp > 1 else None
            for block in _blocks(model):
                fully_shard(block, mesh=dp_mesh)
            fully_shard(model, mesh=dp_mesh)
            return model  # fully_shard converts the module in place
        from torch.nn.parallel import DistributedDataParallel as DDP

        group = self.mesh.get_group("dp") if self.tp > 1 else None
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, process_group=group)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm; TP mixes DTensor and plain parameters."""
        if self.tp > 1:
            from edgezoo.zoo.tensor_parallel import clip_grad_norm

            return clip_grad_norm(list(model.parameters()), max_norm)
        return nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def no_sync_unless(self, model: nn.Module, sync: bool):
        """Skip DDP's gradient all-reduce on accumulation micro-steps but the last."""
        if self.active and not sync and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """Unsharded weights and optimizer state keyed by parameter name, on CPU: the same
        format whatever the world size or wrapping, so any later run can resume it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(
            model, optimizer, options=opts
        )

    def load_full_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict
    ) -> None:
        """Load a ``full_state`` into a (possibly sharded) model and its optimizer."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=opts)
        set_optimizer_state_dict(model, optimizer, optim, options=opts)

    def teardown(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks: FSDP's natural sharding units."""
    from edgezoo.zoo.bert import EncoderLayer
    from edgezoo.zoo.llama import DecoderLayer

    return [m for m in model.modules() if isinstance(m, DecoderLayer | EncoderLayer)]


def _replicate_over(model: nn.Module, dp_mesh) -> nn.Module:
    """DDP for a tensor-parallel model: DDP itself cannot bucket DTensor gradients, so
    TP × DDP uses PyTorch's FSDP2-based ``replicate`` (whole parameters on every data-
    parallel rank, gradients all-reduced per block), which keeps DTensors intact."""
    from torch.distributed._composable.replicate_with_fsdp import replicate

    for block in _blocks(model):
        replicate(block, mesh=dp_mesh)
    replicate(model, mesh=dp_mesh)
    return model


def setup(
    device: str = "auto", fsdp: bool = False, tp: int = 1, sequence_parallel: bool = False
) -> Dist:
    """Join the process group torchrun describes in the environment (if any)."""
    from edgezoo.zoo.tensor_parallel import check_layout

    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_layout(tp, world, fsdp, sequence_parallel)
    if world <= 1:
        if fsdp:
            from edgezoo.errors import ConfigError

            raise ConfigError(
                "--fsdp needs several processes: launch with --nproc N (or torchrun)."
            )
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        # Processes on one machine share its cores; oversubscribing them slows everyone.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    restarted = False
    if not torch_dist.is_initialized():
        store, restarted = _attempt_store(world, rank)
        backend = "nccl" if use_cuda else "gloo"
        torch_dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    mesh = None
    if tp > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(dev.type, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    return Dist(rank, world, local_rank, dev, fsdp, tp, mesh, sequence_parallel, restarted)


def _attempt_store(world: int, rank: int) -> tuple[torch_dist.Store | None, bool]:
    """torchrun's job store under this attempt's own prefix, and whether it is a restart.

    The agents' store outlives worker restarts, and a new attempt that reuses the old
    keys reads dead peers' addresses (gloo: "connection refused", or a hang). The prefix
    comes from ``attempt.agree``, a handshake all ranks of all nodes agree on — not from
    ``TORCHELASTIC_RESTART_COUNT``, which each node counts for itself (see
    ``edgezoo.zoo.attempt``). Outside torchrun (no ``TORCHELASTIC_RUN_ID``) there are no
    restarts: ``None`` lets ``init_process_group`` read ``env://`` as usual.
    """
    import datetime

    from edgezoo.zoo import attempt

    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None, False
    # With the agents' shared store every worker is a client; without it
    # (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) rank 0 hosts a fresh store per attempt, as
    # torch's own env:// would.
    host = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and rank == 0
    timeout = datetime.timedelta(minutes=10)
    store = torch_dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=host,
        timeout=timeout,
        multi_tenant=host,
    )
    restart_count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    now = attempt.agree(store, rank, world, restart_count, timeout.total_seconds())
    return torch_dist.PrefixStore(now.prefix, store), now.restarted
