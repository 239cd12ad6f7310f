"""How good an encoder–decoder variant is: chrF of its greedy targets on held-out pairs.

The pairs are the model's own held-out split (``run.json``: data, fields, validation
fraction, longest source), encoded, cut and decoded as training's final evaluation does
(``zoo.train_tasks.score_pairs``: greedy, up to ``TARGET_TOKENS``), so the fp32 row
reproduces ``eval.json``'s ``val_chrf`` and every variant is scored on exactly the same
sources. Greedy agreement compares each variant's token ids with fp32's, pair by pair.
chrF, BLEU and exact match come from sacrebleu (``zoo.metrics``), the copy-the-name
baseline from ``zoo.s2s_data``; nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgezoo.errors import DataError
from edgezoo.jsonfile import read_object
from edgezoo.zoo import eval_split, s2s_data
from edgezoo.zoo.metrics import generation_report

MAX_PAIRS = 300  # the built-in task holds out 290: all of them
BATCH = 16
TARGET_TOKENS = s2s_data.TARGET_TOKENS  # the longest target, as training's evaluation


def heldout_pairs(
    model_dir: Path, source: str | None = None, max_pairs: int = MAX_PAIRS
) -> tuple[list[tuple[str, str]], int, str]:
    """(source, target) held-out pairs, the longest source in tokens, and the data's name."""
    split = eval_split.eval_split(model_dir, "s2s", source)
    pairs = s2s_data.read_pairs(split.source, split.source_field, split.target_field)
    held = s2s_data.split_pairs(pairs, split.val_frac)[1][:max_pairs]
    if not held:
        raise DataError(f"{split.source} gives no held-out pairs; pass --data with more pairs.")
    config = read_object(Path(model_dir) / "config.json", "re-run `edgezoo export`.")
    longest = int(split.context or config.get("n_positions") or 512)
    return [(src, tgt) for _, src, tgt in held], longest, split.source


def score(model: Any, pairs: list[tuple[str, str]], longest: int) -> tuple[dict, list[list[int]]]:
    """Quality of a runtime ``Seq2SeqModel`` on ``pairs`` and its greedy token ids per pair."""
    tok = model.tokenizer
    longest = min(longest, getattr(model, "max_source", longest))
    sources = [e.ids[:longest] for e in tok.encode_batch([s for s, _ in pairs])]
    rows: list[list[int]] = []
    for start in range(0, len(sources), BATCH):
        batch = sources[start : start + BATCH]
        rows += [g.token_ids for g in model.generate_ids(batch, max_new_tokens=TARGET_TOKENS)]
    references = [t for _, t in pairs]
    report = generation_report(references, tok.decode_batch(rows))
    baseline = [s2s_data.copy_name_baseline(s) for s, _ in pairs]
    quality = {
        **report,
        "baseline_chrf": generation_report(references, baseline)["chrf"],
        "examples": len(pairs),
    }
    return quality, rows


def agreement(rows: list[list[int]], reference: list[list[int]]) -> dict[str, int]:
    """How many pairs got fp32's exact target, and how many target tokens matched fp32's
    up to the first difference (of all fp32's tokens)."""
    if len(rows) != len(reference):
        raise ValueError(f"{len(rows)} generations against {len(reference)} reference ones")
    prefix = 0
    for got, want in zip(rows, reference, strict=True):
        same = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        prefix += min(len(got), len(want)) if same is None else same
    return {
        "identical": sum(a == b for a, b in zip(rows, reference, strict=True)),
        "of": len(rows),
        "prefix_tokens": prefix,
        "of_tokens": sum(len(r) for r in reference),
    }
