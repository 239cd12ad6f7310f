"""Speculative decoding on trained models: tokens/s of the target alone vs with a draft
model and with prompt lookup, acceptance rates, and a check that greedy text is unchanged.

    python -m benchmarks.speculative --target runs/spec-mini --draft runs/demo

Prompts are held-out stdlib documents (the corpus' own validation split), cut before a
``def``; every prompt decodes ``--max-new-tokens`` greedy tokens (EOS ignored, so every
method does the same work). Methods run interleaved per prompt, rounds repeat the lot;
medians are reported (this machine's timing drifts ±20 % over minutes).

``--peer ort-genai`` (the default) also decodes every prompt with ONNX Runtime GenAI on the
same target weights at the row's precision (its own model builder; a fresh process per
prompt, once per round, between our methods' rounds), so each method's speed is given
against the peer a user would otherwise pick, and its greedy tokens are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgezoo import atomic, runtime
from edgezoo.runtime.api import one_thread_draft
from edgezoo.runtime.backends import cache_root
from edgezoo.runtime.corpus_lookup import CORPUS_GUESSES, MIN_NGRAM, load_index
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.runtime.speculative import (
    MIN_CONFIDENCE,
    DraftLength,
    DraftModel,
    GuessCounts,
    SpeculativeLM,
)
from edgezoo.zoo.data import is_validation, iter_documents

RESULTS = Path(__file__).parent / "results"


def heldout_prompts(n: int, chars: int = 400) -> list[str]:
    """The ``chars`` characters before a ``def`` in ``n`` validation-split stdlib files."""
    prompts = []
    for doc_id, text in iter_documents("builtin:stdlib"):
        if not is_validation(doc_id, 0.05):
            continue
        cut = text.find("\ndef ", len(text) // 3)
        if cut > chars:
            prompts.append(text[cut - chars : cut + 5])
        if len(prompts) == n:
            break
    return prompts


def training_corpus(folder: Path) -> Path:
    """The built-in corpus' training split (never the held-out prompts' documents) as one
    text file per document under ``folder``: the lookup corpus of a model trained on it."""
    if not (folder / ".done").is_file():  # hidden: not part of the corpus
        with atomic.atomic_dir(folder) as tmp:
            for i, (doc_id, text) in enumerate(iter_documents("builtin:stdlib")):
                if not is_validation(doc_id, 0.05):
                    (tmp / f"{i:05d}.txt").write_text(text, encoding="utf-8")
            (tmp / ".done").write_text("")
    return folder


class OneCount(GuessCounts):
    """The guess count before each source kept its own: one schedule for every source."""

    def k(self, source: str) -> int:
        k = super().k("any")
        self.source = source  # the tallies still name it
        return k

    def update(self, proposed: int, accepted: int) -> None:
        self.source = self.source and "any"
        super().update(proposed, accepted)


class Unguarded(SpeculativeLM):
    """A draft proposer as it was before: one guess count for copies and the draft model,
    and the draft guessing on however unsure it is (``--ablate``)."""

    def length(self) -> GuessCounts:
        return OneCount(self.k, self.max_k)

    def _proposer(self) -> DraftModel:
        return DraftModel(self.draft, self.target, corpus=self.corpus, min_confidence=0)


def time_method(model, prompt_ids: list[int], params: SamplingParams) -> tuple[float, list, dict]:
    start = time.perf_counter()
    result = model.generate_ids([prompt_ids], params)[0]
    elapsed = time.perf_counter() - start
    stats = getattr(model, "last_stats", None)
    extra = {"proposed": stats.proposed, "accepted": stats.accepted} if stats else {}
    for source, tally in (stats.by_source if stats else {}).items():
        for name, value in zip(("calls", "proposed", "accepted"), tally, strict=True):
            extra[f"{source} {name}"] = value
    return elapsed, result.token_ids, extra


def draft_label(path: str, target: str = "", variant: str = "") -> str:
    """``draft <dir name>``, with the run's distillation weight when it had a teacher;
    ``draft: the target's <variant>`` when the draft is the target's own dir."""
    if target and Path(path).resolve() == Path(target).resolve():
        return f"draft: the target's own {variant}"
    run = Path(path) / "run.json"
    meta = json.loads(run.read_text()) if run.is_file() else {}
    if meta.get("distill_from"):
        weight = meta.get("distill_weight")
        weight = 0.5 if weight is None else weight
        kind = "trained alone" if weight == 0 else f"distilled (KL weight {weight})"
        return f"draft {Path(path).name}: {kind}"
    return f"draft {Path(path).name}"


def peer_round(args: argparse.Namespace, variant: str, encoded: list[list[int]]) -> dict:
    """One pass of ``--peer`` over the prompts: seconds in all, its tokens, or why not."""
    from benchmarks.peers import run_peer
    from benchmarks.peers.edgezoo_peer import VARIANTS

    precision = {v: k for k, v in VARIANTS.items()}.get(variant)
    if precision == "int8-dynamic" and args.peer != "edgezoo":
        precision = "int8"  # a peer has one int8: beside each of our int8 forms
    if precision is None:
        return {"note": f"no {args.peer} precision matches variant {variant}"}
    seconds, tokens = 0.0, []
    for ids in encoded:
        r = run_peer(
            args.peer,
            Path(args.target),
            ids,
            args.max_new_tokens,
            args.threads,
            precision,
            1,
            Path(args.work),
        )
        if not r.available or r.decode_ms_per_token_mean is None:
            return {"note": r.note}
        seconds += (r.ttft_ms + r.decode_ms_per_token_mean * (len(r.tokens) - 1)) / 1e3
        tokens.append(r.tokens)
    return {"seconds": seconds, "tokens": tokens, "note": r.note}


def run_variant(args: argparse.Namespace, variant: str, prompts: list[str]) -> dict:
    target = runtime.load(args.target, backend="ort-cpu", variant=variant, threads=args.threads)
    max_k = DraftLength(args.k, args.max_k).most
    methods = {
        "target alone": target,
        f"prompt lookup, fixed {args.k}": SpeculativeLM(target, None, k=args.k, max_k=args.k),
        "prompt lookup": SpeculativeLM(target, None, k=args.k, max_k=max_k),
    }
    if args.corpus:
        corpus = load_index(args.corpus, target.tokenizer, cache_root())
        methods["prompt + corpus lookup"] = SpeculativeLM(
            target, None, k=args.k, max_k=max_k, corpus=corpus
        )
    drafts, draft_threads, paths = {}, {}, list(filter(None, args.draft.split(",")))
    paired = None  # a second instance of the target, for drafts with a thread pool
    for path in paths:
        draft_variant = variant if args.draft_variant == "same" else args.draft_variant
        threads = one_thread_draft(path, draft_variant, args.threads, args.draft_threads)
        # As runtime.load(draft=DIR) loads them: a one-thread draft beside the target's own
        # (spinning) pool; a draft with a pool and a second instance of the target in turns,
        # each pool asleep once its run is over.
        if threads != 1 and paired is None:
            paired = runtime.load(
                args.target,
                backend="ort-cpu",
                variant=variant,
                threads=args.threads,
                takes_turns=True,
            )
        checker = target if threads == 1 else paired
        draft = runtime.load(
            path,
            backend="ort-cpu",
            variant=draft_variant,
            threads=threads,
            takes_turns=threads != 1,
        )
        label = draft_label(path, args.target, draft.variant)
        drafts[label], draft_threads[label] = draft.variant, threads
        methods[label] = SpeculativeLM(checker, draft, k=args.k, max_k=max_k)
        if args.ablate:
            methods[f"{label}, one count, no confidence stop"] = Unguarded(
                checker, draft, k=args.k, max_k=max_k
            )
        if args.corpus:
            methods[f"{label} + corpus"] = SpeculativeLM(
                checker, draft, k=args.k, max_k=max_k, corpus=corpus
            )
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    encoded = [target.encode([p])[0] for p in prompts]
    rates: dict[str, list[float]] = {m: [] for m in methods}
    totals: dict[str, dict[str, int]] = {m: {"proposed": 0, "accepted": 0} for m in methods}
    identical = dict.fromkeys(methods, True)
    peer_rates, peer = [], {}
    for round_ in range(args.rounds):
        seconds = dict.fromkeys(methods, 0.0)
        alone_tokens = []
        for i, ids in enumerate(encoded):
            # Each prompt starts at another method: what runs just before a method (a plain
            # session's threads still spinning, the caches another model left) changes its
            # speed, and a fixed order would always hand the same method the same neighbour.
            names = list(methods)
            start = (i + len(encoded) * round_) % len(names)
            produced = {}
            for name in names[start:] + names[:start]:
                elapsed, produced[name], extra = time_method(methods[name], ids, params)
                seconds[name] += elapsed
                for key, value in extra.items():
                    totals[name][key] = totals[name].get(key, 0) + value
            reference = produced["target alone"]
            for name, tokens in produced.items():
                identical[name] &= tokens == reference
            alone_tokens.append(reference)
        for name in methods:
            rates[name].append(len(encoded) * args.max_new_tokens / seconds[name])
        peer_failed = bool(peer) and "seconds" not in peer
        if args.peer and not peer_failed:
            same = peer.get("identical", True)
            peer = peer_round(args, variant, encoded)
            if "seconds" in peer:
                peer_rates.append(len(encoded) * args.max_new_tokens / peer["seconds"])
                peer["identical"] = same and peer["tokens"] == alone_tokens
    alone = statistics.median(rates["target alone"])
    peer_rate = statistics.median(peer_rates) if peer_rates else None
    return {
        "variant": variant,
        "target_variant": target.variant,
        "draft_variants": drafts,
        "draft_threads": draft_threads,
        "identical_greedy_text": identical,
        "tokens_per_s": {m: statistics.median(r) for m, r in rates.items()},
        "rounds_tokens_per_s": rates,
        "speedup": {m: statistics.median(r) / alone for m, r in rates.items()},
        "acceptance": {
            m: t["accepted"] / t["proposed"] for m, t in totals.items() if t["proposed"]
        },
        "guess_sources": {m: t for m, t in totals.items() if t["proposed"]},
        "peer": {
            "name": args.peer,
            "tokens_per_s": peer_rate,
            "rounds_tokens_per_s": peer_rates,
            "greedy_tokens_equal": peer.get("identical"),
            "note": peer.get("note", ""),
            "vs_peer": {m: statistics.median(r) / peer_rate for m, r in rates.items() if peer_rate},
        },
    }


def val_loss(model_dir: str) -> float | None:
    """The run's final held-out loss (training.jsonl's "final" line)."""
    log = Path(model_dir) / "training.jsonl"
    if not log.is_file():
        return None
    finals = [json.loads(line) for line in log.read_text().splitlines() if '"final"' in line]
    return finals[-1].get("val_loss") if finals else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="runs/spec-mini")
    p.add_argument(
        "--draft", default="runs/demo", help="draft model dirs, comma-separated ('' for none)"
    )
    p.add_argument("--variants", default="gqa,gqa-int8,gqa-int8-dynamic,gqa-int4")
    p.add_argument(
        "--draft-variant",
        default="same",
        help="the drafts' variant: 'same' as the target's, or one for every row (e.g. gqa)",
    )
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--k", type=int, default=4, help="guesses checked per target call at first")
    p.add_argument(
        "--max-k",
        type=int,
        default=None,
        help="the most guesses per call as the count adapts (default: 3 x --k)",
    )
    p.add_argument(
        "--corpus",
        default="",
        help="also time prompt lookup with this lookup corpus ('builtin': the built-in "
        "corpus' training split, written under runs/; '' for none)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--ablate",
        action="store_true",
        help="also time each draft as the proposer ran before: one guess count for every "
        "source, no stop on an unsure guess",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--draft-threads",
        type=int,
        default=None,
        help="the drafts' threads (default: runtime.load's rule, 1 for a small draft)",
    )
    p.add_argument(
        "--peer",
        default="ort-genai",
        help="the runtime to compare with on the same target weights ('' for none)",
    )
    p.add_argument("--work", default="runs/bench/peers-spec", help="the peer's converted models")
    p.add_argument("--out", default=str(RESULTS / "speculative"))
    args = p.parse_args(argv)
    if args.corpus == "builtin":
        args.corpus = str(training_corpus(Path("runs/lookup-corpus/stdlib-train")))
    prompts = heldout_prompts(args.prompts)
    rows = [run_variant(args, v, prompts) for v in args.variants.split(",")]
    for row in rows:
        print(row, flush=True)
    result = {
        "target": args.target,
        "draft": args.draft,
        "val_loss": {d: val_loss(d) for d in [args.target, *filter(None, args.draft.split(","))]},
        "k": args.k,
        "max_k": DraftLength(args.k, args.max_k).most,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "peer": args.peer or None,
        "corpus": args.corpus or None,
        "rows": rows,
    }
    atomic.write_json(Path(args.out).with_suffix(".json"), result)
    atomic.write_text(Path(args.out).with_suffix(".md"), table(result))
    print(table(result))


def draft_threads(result: dict) -> str:
    """How the rows' drafts shared the cores with the target."""
    counts = {n for row in result["rows"] for n in row.get("draft_threads", {}).values()}
    one = "a one-thread draft runs beside the target's own pool (as a plain load runs it)"
    pooled = (
        "a draft with a thread pool and the target take turns on the cores (each one's "
        "threads stop spinning when its run returns; a second instance of the target)"
    )
    if not counts:  # results from before drafts had their own thread count
        return pooled
    return "; ".join(
        one if n == 1 else f"{pooled}, the draft on {n} threads" for n in sorted(counts)
    )


def draft_variants(result: dict) -> str:
    """The drafts' variant for the table's note ("; variant gqa-int4") when they all ran
    one, whatever the target's; "" otherwise."""
    seen = {v for r in result["rows"] for v in r.get("draft_variants", {}).values()}
    return f"; variant {seen.pop()}" if len(seen) == 1 else ""


def guesses(result: dict) -> str:
    """How many guesses a target call checked, as the table's note says it."""
    if "max_k" not in result:  # results from before the count adapted
        return f"{result['k']} guesses per target call"
    return (
        f"guesses per target call: {result['k']} at first, then 2 more after a call that kept "
        f'all, 1 fewer after a miss, at most {result["max_k"]} ("fixed": always {result["k"]})'
    )


def table(result: dict) -> str:
    peer_name = result.get("peer") or "peer"
    lines = [
        f"| variant | method | tokens/s | × target alone | × {peer_name} | acceptance | "
        "greedy text = target alone's |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        peer = r.get("peer", {})
        vs_peer = peer.get("vs_peer", {})
        for method, rate in r["tokens_per_s"].items():
            accepted = r["acceptance"].get(method)
            ratio = vs_peer.get(method)
            lines.append(
                f"| {r['variant']} | {method} | {rate:.0f} | {r['speedup'][method]:.2f}× | "
                f"{'-' if ratio is None else f'{ratio:.2f}×'} | "
                f"{'-' if accepted is None else f'{accepted:.0%}'} | "
                f"{r['identical_greedy_text'][method]} |"
            )
        if peer.get("tokens_per_s"):
            rate = peer["tokens_per_s"]
            alone = r["tokens_per_s"]["target alone"]
            lines.append(
                f"| {r['variant']} | {peer_name} (same weights) | {rate:.0f} | "
                f"{rate / alone:.2f}× | 1.00× | - | {peer['greedy_tokens_equal']} |"
            )
        elif peer.get("note"):
            lines.append(
                f"| {r['variant']} | {peer_name}: not run | - | - | - | - | {peer['note']} |"
            )
    losses = ", ".join(
        f"{Path(d).name} {loss:.3f}" for d, loss in result.get("val_loss", {}).items() if loss
    )
    lines.append(
        f"\nTarget {result['target']}, drafts {result['draft'] or 'none'} (same tokenizer"
        f"{draft_variants(result)}), "
        f"{guesses(result)}, {result['prompts']} held-out stdlib prompts × "
        f"{result['max_new_tokens']} greedy tokens, batch 1, {result['threads']} threads; medians "
        f"of {result['rounds']} interleaved rounds (each prompt starts at another method). "
        f"Held-out loss: {losses or 'not recorded'}."
    )
    lines.append(
        "Prompt lookup: what followed the latest earlier match of the text's last 1-3 tokens, "
        "copied on past the text's end as an LZ77 match is (a repeating stretch is proposed "
        "whole)."
    )
    if result.get("draft"):
        lines.append(
            "Draft rows: what followed an earlier match of the text's last 2-3 tokens is copied "
            "(as prompt lookup), and the draft model guesses only when there is none; "
            f"{draft_threads(result)}. The draft stops guessing after a "
            f"token it gives less than {MIN_CONFIDENCE:.0%}; each source of guesses (copy, "
            'corpus, draft) keeps its own count. "+ corpus": the corpus is tried before the '
            "draft model."
        )
    if result.get("corpus"):
        lines.append(
            f"Prompt + corpus lookup: prompt lookup, and when the text has no earlier match, up "
            f"to {CORPUS_GUESSES} tokens that most often followed its last {MIN_NGRAM}-4 tokens "
            f"in {result['corpus']} (the training split; the prompts are held out)."
        )
    if result.get("peer"):
        lines.append(
            f"{peer_name} decodes the same prompts on the same target weights (its own model "
            "builder, the row's precision) in a fresh process per prompt; its tokens/s is the "
            "prompt's time to first token plus its mean step time × the other tokens."
        )
    lines.extend(sources_table(result))
    return "\n".join(lines) + "\n"


def sources_table(result: dict) -> list[str]:
    """Where the guesses came from, per method, for the first variant: target calls that
    checked guesses of each source, guesses per such call, the share kept."""
    row = result["rows"][0]
    found = row.get("guess_sources", {})
    if not found:
        return []
    lines = [
        f"\nGuesses by source ({row['variant']}, all rounds):\n",
        "| method | source | calls | guesses per call | kept |",
        "|---|---|---|---|---|",
    ]
    for method, totals in found.items():
        for source in ("copy", "corpus", "draft"):
            calls = totals.get(f"{source} calls", 0)
            if calls:
                proposed, kept = totals[f"{source} proposed"], totals[f"{source} accepted"]
                lines.append(
                    f"| {method} | {source} | {calls} | {proposed / calls:.1f} | "
                    f"{kept / proposed:.0%} |"
                )
    return lines


if __name__ == "__main__":
    main()
