"""One table comparing every measured variant of a model: size, speed, quality, verdict."""

from __future__ import annotations


def variants_table(variants: dict[str, dict]) -> str:
    """Markdown table, then a line saying how much held-out data the quality column used."""
    rows = [(n, e) for n, e in variants.items() if "quality" in e]
    if not rows:
        return "no measured variants yet (run `edgezoo quantize`)."
    if "chrf" in rows[0][1]["quality"]:
        return _s2s_table(rows)
    lm = "perplexity" in rows[0][1]["quality"]
    head = [
        "variant",
        "graph",
        "precision",
        "MB",
        "ms/token" if lm else "ms/classify",
        "perplexity" if lm else "accuracy",
        "greedy = fp32" if lm else "macro-F1",
        "gate (ort-cpu)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in rows:
        lat = e["latency"].get("decode_ms_per_token_p50", e["latency"].get("classify_ms_p50"))
        q = e["quality"]
        quality = f"{q['perplexity']:.2f}" if lm else f"{q['accuracy']:.3f}"
        agree = e.get("greedy_agreement")
        third = (
            (f"{agree['matching']}/{agree['of']}" if agree else "ref")
            if lm
            else f"{q['macro_f1']:.3f}"
        )
        lines.append(
            f"| {name} | {e['graph']} | {e['precision']} | {e['bytes'] / 1e6:.2f} | {lat:.3f} | {quality} | {third} | {_verdict(e)} |"
        )
    return "\n".join([*lines, "", _measured_on(rows[0][1], lm)])


def _s2s_table(rows: list[tuple[str, dict]]) -> str:
    """Encoder–decoder variants: chrF / exact match of greedy targets on held-out pairs."""
    head = ["variant", "precision", "MB", "ms/token", "chrF", "exact match", "same target as fp32"]
    lines = ["| " + " | ".join([*head, "gate (ort-cpu)"]) + " |", "|" + "---|" * (len(head) + 1)]
    for name, e in rows:
        q, agree = e["quality"], e.get("greedy_agreement")
        same = f"{agree['identical']}/{agree['of']}" if agree else "ref"
        lines.append(
            f"| {name} | {e['precision']} | {e['bytes'] / 1e6:.2f} | "
            f"{e['latency']['decode_ms_per_token_p50']:.3f} | {q['chrf']:.2f} | "
            f"{q['exact_match']:.3f} | {same} | {_verdict(e)} |"
        )
    q, source = rows[0][1]["quality"], rows[0][1].get("eval_data", "the validation split")
    note = (
        f"chrF, exact match: greedy targets for {q['examples']:,} held-out pairs of `{source}`, "
        f"as training's `eval.json` scores them (copy-the-name baseline chrF "
        f"{q['baseline_chrf']:.2f}); ms/token: 64 decoder steps, batch 1."
    )
    return "\n".join([*lines, "", note])


def _verdict(e: dict) -> str:
    gate = e.get("gate", {}).get("ort-cpu")
    if gate is None:
        return "baseline"
    return (
        f"{'**recommended**' if e.get('recommended') else 'not recommended'}: "
        f"{gate['speedup']:.2f}× speed ({_speed(gate)}), {gate['quality_change']}"
    )


def _measured_on(entry: dict, lm: bool) -> str:
    """What the quality column was measured on: every variant, the same held-out data."""
    q, source = entry["quality"], entry.get("eval_data", "the validation split")
    if lm:
        count = f"{q['tokens']:,}" if "tokens" in q else "the"
        return (
            f"Perplexity: {count} held-out tokens of `{source}`, scored as training's "
            "`eval.json` and `edgezoo eval` score them."
        )
    count = f"{q['examples']:,}" if "examples" in q else "the"
    return f"Accuracy: {count} held-out examples of `{source}`."


def _speed(gate: dict) -> str:
    """The speed verdict and how noisy its rounds were (older manifests: faster or not)."""
    speed = gate.get("speed")
    if not speed:
        return "faster" if gate.get("faster") else "not faster"
    spread = max(speed["spread_pct"].values())
    return f"{speed['verdict']}, median of {speed['rounds']} rounds, spread ≤ {spread:.0f}%"
