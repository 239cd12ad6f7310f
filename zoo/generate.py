"""Reference text generation in PyTorch (greedy or sampled) with the model's KV cache.

The ONNX runtime must reproduce this token for token; export validation and the parity
tests compare against it.
"""

from __future__ import annotations

import time

import torch

from edgezoo.zoo.llama import LlamaForCausalLM


@torch.no_grad()
def generate_ids(
    model: LlamaForCausalLM,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """Continue ``prompt_ids``; greedy when ``temperature`` is 0. Returns the new ids only."""
    limit = model.config.max_position_embeddings
    if not prompt_ids:
        raise ValueError("empty prompt: give at least one token (the tokenizer adds <s>)")
    max_new_tokens = min(max_new_tokens, limit - len(prompt_ids))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = torch.tensor([prompt_ids])
    logits, past = model(ids)
    out: list[int] = []
    for step in range(max_new_tokens):
        last = logits[0, -1].float()
        if temperature > 0:
            probs = torch.softmax(last / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=gen))
        else:
            token = int(last.argmax())
        out.append(token)
        if token == eos_id or step == max_new_tokens - 1:
            break
        pos = torch.tensor([[len(prompt_ids) + step]])
        mask = torch.ones(1, len(prompt_ids) + step + 1, dtype=torch.long)
        logits, past = model(torch.tensor([[token]]), mask, pos, past)
    return out


@torch.inference_mode()
def time_greedy_decode(
    model: LlamaForCausalLM, prompt_ids: list[int], new_tokens: int
) -> tuple[list[int], float, list[float]]:
    """(tokens, seconds to first token, seconds of each later step) of a greedy decode.

    The PyTorch eager baseline the demo and the benchmarks put next to the runtime: the
    zoo's own model (SDPA attention, concatenating KV cache), EOS ignored so every run has
    ``new_tokens`` tokens. Thread count is the caller's (``torch.set_num_threads``)."""
    t0 = time.perf_counter()
    logits, past = model(torch.tensor([prompt_ids]))
    token = int(logits[0, -1].argmax())
    ttft = time.perf_counter() - t0
    out, steps = [token], []
    for step in range(new_tokens - 1):
        t = time.perf_counter()
        pos = torch.tensor([[len(prompt_ids) + step]])
        mask = torch.ones(1, len(prompt_ids) + step + 1, dtype=torch.long)
        logits, past = model(torch.tensor([[token]]), mask, pos, past)
        token = int(logits[0, -1].argmax())
        steps.append(time.perf_counter() - t)
        out.append(token)
    return out, ttft, steps
