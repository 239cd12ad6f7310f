"""``python -m benchmarks.gpu_torch``: the PyTorch half of ``benchmarks/gpu_check.sh``.

* ``ddp-step`` (run under ``torchrun --nproc_per_node 1``): joins an NCCL process group,
  all-reduces a bf16 tensor and takes bf16-autocast training steps of a DDP-wrapped zoo
  LM with the trainer's fused AdamW. With one process the trainer itself never starts a
  process group (``zoo.distributed.setup`` needs WORLD_SIZE > 1, and NCCL refuses two ranks
  on one GPU), so this is the cheapest check that NCCL + DDP + bf16 work on the machine.
* ``eager-decode``: PyTorch eager bf16 greedy decode of a model dir on CUDA, per-token
  latency: the baseline TensorRT and ort-cuda are compared against (issue #17).

Needs torch with CUDA; benchmarks/gpu_compare.py is the torch-free half.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def cmd_ddp_step(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from edgezoo.zoo.modeldir import build_model
    from edgezoo.zoo.presets import make_config
    from edgezoo.zoo.train import TrainConfig, autocast_for, make_optimizer

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group(backend="nccl")
    t = torch.ones(1024, device=device, dtype=torch.bfloat16)
    dist.all_reduce(t)
    torch.manual_seed(0)
    cfg = make_config("lm", args.size)
    model = DDP(build_model(cfg).to(device).train(), device_ids=[local_rank])
    opt = make_optimizer(model, TrainConfig(), device)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.context + 1), device=device)
    losses, times = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        with autocast_for(device):
            logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    row = {
        "backend": dist.get_backend(),
        "world_size": dist.get_world_size(),
        "all_reduce_ok": bool(t[0].item() == dist.get_world_size()),
        "size": args.size,
        "steps": args.steps,
        "losses": losses,
        "step_ms_after_first": statistics.median(times[1:]) * 1000 if len(times) > 1 else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
    }
    dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row, indent=2))
    return 0


def cmd_eager_decode(args: argparse.Namespace) -> int:
    import torch

    from edgezoo.zoo.modeldir import load_model
    from edgezoo.zoo.tokenizer import load_tokenizer

    device = torch.device("cuda")
    model = load_model(args.model_dir, device).to(torch.bfloat16)
    tok = load_tokenizer(args.model_dir)
    prompt = tok.encode(args.prompt).ids

    @torch.inference_mode()
    def decode(n: int) -> tuple[list[int], list[float]]:
        logits, past = model(torch.tensor([prompt], device=device))
        token = int(logits[0, -1].argmax())
        out, steps = [token], []
        for step in range(n - 1):
            t0 = time.perf_counter()
            pos = torch.tensor([[len(prompt) + step]], device=device)
            mask = torch.ones(1, len(prompt) + step + 1, dtype=torch.long, device=device)
            logits, past = model(torch.tensor([[token]], device=device), mask, pos, past)
            token = int(logits[0, -1].argmax())  # .item() synchronises: the step is complete
            steps.append(time.perf_counter() - t0)
            out.append(token)
        return out, steps

    decode(4)  # warm-up: kernels, allocator
    steps: list[float] = []
    tokens: list[int] = []
    for _ in range(args.repeats):
        tokens, s = decode(args.new_tokens)
        steps.extend(s)
    row = {
        "model": Path(args.model_dir).name,
        "backend": "pytorch-eager-cuda",
        "dtype": "bf16",
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "decode_ms_p50": statistics.median(steps) * 1000,
        "token_ids": tokens,
    }
    Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "token_ids"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_torch", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ddp-step", help="NCCL + DDP + bf16 steps (under torchrun)")
    s.add_argument("--size", default="nano")
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--context", type=int, default=256)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_ddp_step)
    s = sub.add_parser("eager-decode", help="PyTorch eager bf16 decode latency on CUDA")
    s.add_argument("model_dir")
    s.add_argument("--prompt", default="def main(args):\n    ")
    s.add_argument("--new-tokens", type=int, default=64)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_eager_decode)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
