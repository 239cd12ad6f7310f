"""Rival variants: graphs of one kind and precision that a precision name alone cannot tell
apart — the int8 GQA graph as weight-only ``MatMulNBits`` (``gqa-int8``) and as dynamic
``MatMulInteger`` with per-row activation scales (``gqa-int8-dynamic``). Which is faster
depends on the CPU (dynamic int8 runs on AMX / VNNI integer units where a CPU has them) and
on the model's size, and differs by use: one token at a time, several per call (a prompt,
a speculative check), or one token for each of several prompts (a server's batch).

So the quality gate times rivals against each other — one model loaded at a time (two
sessions in one process disturb each other), in interleaved rounds (this machine's speed
drifts more than they differ), medians — and marks in each one's ``preferred`` the uses
it is clearly faster for (by the speed margin; on a tie the one listed first keeps it).
``runtime.load(variant="int8")`` loads the one preferred for requests, with a draft or
prompt lookup the one preferred for multi-token calls, and with ``expected_batch`` > 1 (what
``edgezoo serve`` passes: its slots) the one preferred for batched decode.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median
from typing import Any

from edgezoo.quantize.speed import one_loaded_at_a_time, speed_verdict
from edgezoo.runtime.model_files import BATCHED, MULTI_TOKEN, REQUESTS, USES
from edgezoo.runtime.timing import time_calls, time_decode

CHECK_TOKENS = 8
NEW_TOKENS = 64
BATCH_ROWS = 8  # the server's default --max-batch
BATCH_STEPS = 16


def rivals(variants: dict[str, dict]) -> list[list[str]]:
    """Groups of compressed GQA graphs of one precision, each within the quality budget (a
    variant the gate rejects is no rival). Only GQA graphs: they are what a precision name
    loads on ort-cpu, and the multi-token timing runs on their in-place cache."""
    groups: dict[str, list[str]] = {}
    for name, entry in variants.items():
        verdict = entry.get("gate", {}).get("ort-cpu", {})
        compressed = entry.get("precision") != "fp32" and entry.get("graph") == "gqa"
        if compressed and verdict.get("within_budget"):
            groups.setdefault(entry["precision"], []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def time_uses(lm: Any, prompt: str) -> dict[str, float]:
    """ms of one request, of one ``CHECK_TOKENS``-token call after the prompt, and of one
    decode step over ``BATCH_ROWS`` prompts (median of ``BATCH_STEPS``), each after a
    warm-up run."""
    lm.generate(prompt, max_new_tokens=NEW_TOKENS)  # warm-up: allocations, thread pool
    g = lm.generate(prompt, max_new_tokens=NEW_TOKENS)
    ids = lm.encode([prompt])[0]
    check = time_calls(lm, ids, (CHECK_TOKENS,), rounds=2)
    batch = time_decode(lm, [ids] * BATCH_ROWS, BATCH_STEPS, repeats=1)
    return {
        USES[REQUESTS]: (g.time_to_first_token_s + g.decode_s) * 1000,
        USES[MULTI_TOKEN]: check[CHECK_TOKENS] * 1000,
        USES[BATCHED]: median(batch.step_s) * 1000,
    }


def prefer(
    variants: dict[str, dict],
    load: Callable[[str], Any],
    prompt: str,
    rounds: int,
    margin: float,
) -> None:
    """Time every group of ``rivals`` (``load(name)`` gives a model) and record, in place,
    each rival's ``rival_timing`` and the uses it is ``preferred`` for."""
    for entry in variants.values():
        entry.pop("preferred", None), entry.pop("rival_timing", None)
    for names in rivals(variants):
        timed = one_loaded_at_a_time(names, lambda n: time_uses(load(n), prompt), rounds)
        samples = {n: {k: [t[k] for t in timed[n]] for k in USES.values()} for n in names}
        for name in names:
            variants[name]["rival_timing"] = {
                "ort-cpu": {
                    "against": [n for n in names if n != name],
                    "rounds": rounds,
                    **{key: round(median(samples[name][key]), 3) for key in USES.values()},
                    "request": f"the held-out prompt, then {NEW_TOKENS} tokens",
                    "check": f"{CHECK_TOKENS} tokens in one call after the prompt",
                    "batch_step": f"one decode step of {BATCH_ROWS} copies of the prompt",
                }
            }
        for use, key in USES.items():
            best = names[0]
            for challenger in names[1:]:
                verdict = speed_verdict(samples[best][key], samples[challenger][key], margin)
                if verdict["verdict"] == "faster":
                    best = challenger
            variants[best].setdefault("preferred", {}).setdefault("ort-cpu", []).append(use)
