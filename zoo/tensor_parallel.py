"""Tensor parallelism for the Llama family, on ``torch.distributed.tensor.parallel``.

Megatron's split, done by PyTorch's own DTensor engine: in each decoder block, q/k/v and
gate/up are column-parallel (each rank holds a slice of the heads / of the MLP's hidden
units) and o/down are row-parallel (each rank's partial product is summed by one
all-reduce). A block thus costs two all-reduces forward and two backward, and each rank
holds 1/tp of every block's matrices and of their Adam moments. Embeddings, norms and the
LM head stay replicated: they are small at the sizes this zoo trains, and the tied
embedding/LM-head weight would otherwise need a vocabulary-parallel loss.

Sequence parallelism (``--sequence-parallel``, Megatron-SP) also splits what lies between
the blocks' matrices — the residual stream, the norms and their activations — along the
sequence: the row-parallel outputs are reduce-scattered instead of all-reduced and gathered
again before the next column-parallel input (same bytes on the wire, 1/tp of those
activations per rank). gloo has both collectives (checked with torch 2.13).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from edgezoo.errors import ConfigError
from edgezoo.zoo.config import LlamaConfig, ModelConfig


def check_layout(tp: int, world: int, fsdp: bool = False, sequence_parallel: bool = False) -> None:
    """Refuse a --tp the process count cannot hold, before any process group exists."""
    if tp < 1:
        raise ConfigError(f"--tp {tp}: the tensor-parallel degree must be >= 1.")
    if sequence_parallel and tp == 1:
        raise ConfigError(
            "--sequence-parallel splits the sequence over a TP group: add --tp 2 or more."
        )
    if tp == 1:
        return
    if world == 1:
        raise ConfigError(
            f"--tp {tp} splits each layer over {tp} processes: launch with --nproc {tp} "
            "(or torchrun), or drop --tp."
        )
    if world % tp:
        raise ConfigError(
            f"--tp {tp} does not divide the {world} processes: launch with --nproc a multiple "
            f"of {tp} (processes = tp × data-parallel)."
        )
    if fsdp and world == tp:
        raise ConfigError(
            f"--fsdp shards over the data-parallel processes, and --nproc {world} --tp {tp} "
            f"leaves one: launch with --nproc {2 * tp} or more, or drop --fsdp."
        )


def check_tp(model_cfg: ModelConfig, tp: int) -> None:
    """Refuse a model that cannot be split evenly over ``tp`` ranks, naming what to change."""
    if tp == 1:
        return
    if not isinstance(model_cfg, LlamaConfig):
        raise ConfigError(
            f"--tp is implemented for the Llama family (--family lm) only, not {model_cfg.family!r}."
        )
    sizes = {
        "attention heads": model_cfg.num_attention_heads,
        "key/value heads": model_cfg.num_key_value_heads,
        "MLP intermediate size": model_cfg.intermediate_size,
    }
    bad = [f"{name} {n}" for name, n in sizes.items() if n % tp]
    if bad:
        raise ConfigError(
            f"--tp {tp} must divide the model's {', '.join(bad)}: each rank holds a whole "
            f"number of heads. Pick a --tp that divides {model_cfg.num_key_value_heads} "
            f"(the key/value heads) or another --size."
        )


def check_launch(cfg, nproc: int) -> None:
    """What ``edgezoo train --nproc N --tp T`` can refuse before starting torchrun: the
    layout, and a preset's heads (an ``--init-from`` model is checked by the workers)."""
    from edgezoo.zoo.presets import make_config, resized

    check_layout(cfg.tp, nproc, cfg.fsdp, cfg.sequence_parallel)
    if cfg.tp > 1 and not cfg.init_from:
        check_tp(resized(make_config(cfg.family, cfg.size), cfg.layers, cfg.width), cfg.tp)


def tp_plan(sequence_parallel: bool = False) -> dict[str, object]:
    """Column-parallel into each block's attention and MLP, row-parallel out of them; with
    ``sequence_parallel`` the norms and the residual stream are sharded along the sequence."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    plan: dict[str, object] = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    if not sequence_parallel:
        return plan
    out = RowwiseParallel(output_layouts=Shard(1), use_local_output=False)  # reduce-scatter
    rest = (None, None, None, None)  # rotary cos/sin, mask, past: not distributed
    plan |= {
        "input_layernorm": SequenceParallel(),
        "self_attn": PrepareModuleInput(
            input_layouts=(Shard(1), *rest), desired_input_layouts=(Replicate(), *rest)
        ),
        "self_attn.o_proj": out,
        "post_attention_layernorm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "mlp.down_proj": out,
    }
    return plan


def sp_edges_plan() -> dict[str, object]:
    """Where the sequence-sharded stream starts (after the replicated embedding) and ends
    (gathered before the replicated, tied LM head)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        PrepareModuleInput,
        PrepareModuleOutput,
        SequenceParallel,
    )

    return {
        "model.embed_tokens": PrepareModuleOutput(
            output_layouts=Replicate(), desired_output_layouts=Shard(1), use_local_output=False
        ),
        "model.norm": SequenceParallel(),
        "lm_head": PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
        ),
    }


def apply_tp(model: nn.Module, mesh, sequence_parallel: bool = False) -> nn.Module:
    """Shard every decoder block over the 1-D ``mesh``; attention then runs on its local
    heads (the column-parallel q/k/v outputs hold heads/tp and kv_heads/tp heads)."""
    from torch.distributed.tensor.parallel import parallelize_module

    from edgezoo.zoo.llama import DecoderLayer

    if sequence_parallel:
        if not hasattr(model, "lm_head"):
            raise ConfigError("--sequence-parallel is for the causal LM (not a classifier).")
        parallelize_module(model, mesh, sp_edges_plan())
    tp = mesh.size()
    for block in model.modules():
        if isinstance(block, DecoderLayer):
            parallelize_module(block, mesh, tp_plan(sequence_parallel))
            block.self_attn.n_heads //= tp
            block.self_attn.n_kv //= tp
    return model


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for a model whose parameters are partly DTensors.

    torch's version stacks every gradient's norm, which fails when plain tensors and
    DTensors (or DTensors on different meshes, as under TP × FSDP) are mixed. Here each
    kind is normed apart, made a full (replicated) scalar, and the squares summed."""
    from torch.distributed.tensor import DTensor

    groups: dict[object, list[nn.Parameter]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            g = p.grad
            key = (id(g.device_mesh), tuple(g.placements)) if isinstance(g, DTensor) else None
            groups[key].append(p)
    norms = []
    for ps in groups.values():
        n = torch.nn.utils.get_total_norm([p.grad for p in ps])
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    for ps in groups.values():
        torch.nn.utils.clip_grads_with_norm_(ps, max_norm, total)
    return total
