"""``edgezoo generate | classify | serve``: run an exported model through the runtime.

These work on the core install (numpy + onnxruntime + tokenizers); ``serve`` also needs
the ``serve`` extra (fastapi, uvicorn, prometheus-client).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from edgezoo import argtypes, manifest
from edgezoo.errors import ConfigError, EdgeZooError


def register(subparsers: Any) -> None:
    _register_generate(subparsers)
    _register_classify(subparsers)
    _register_serve(subparsers)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend / --variant / --threads, shared by `edgezoo generate | classify | serve`."""
    parser.add_argument(
        "--backend", default="auto", help="auto | ort-cpu | ort-cuda | ort-trt | tensorrt"
    )
    parser.add_argument(
        "--variant",
        default="auto",
        help="auto (the variant the quantize quality gate recommends for the backend, else "
        "fp32) | fp32 | fp16 | int8 (of two int8 graphs, the one the gate timed faster for "
        "the job) | int4 | a manifest name such as gqa-int8-dynamic",
    )
    parser.add_argument(
        "--threads",
        type=argtypes.at_least(0),
        default=0,
        help="intra-op threads (0 = ONNX Runtime's default)",
    )


def add_speculative_arguments(parser: argparse.ArgumentParser) -> None:
    """--draft / --prompt-lookup / --draft-variant / --draft-threads / --lookup-corpus /
    --draft-tokens / --max-draft-tokens, shared by generate and serve."""
    speculate = parser.add_mutually_exclusive_group()
    speculate.add_argument(
        "--draft",
        metavar="DIR",
        help="decode speculatively with this smaller exported LM (same tokenizer): it "
        "guesses, the model checks several guesses per call; greedy text is unchanged",
    )
    speculate.add_argument(
        "--prompt-lookup",
        action="store_true",
        help="decode speculatively with guesses copied from earlier in the text (no draft model)",
    )
    parser.add_argument(
        "--draft-variant",
        default="auto",
        metavar="VARIANT",
        help="the --draft model's variant, as --variant picks the model's (default: auto). "
        "--draft set to the model's own dir with --draft-variant int4 drafts with its int4 "
        "graph",
    )
    parser.add_argument(
        "--draft-threads",
        type=argtypes.at_least(0),
        default=None,
        metavar="N",
        help="the --draft model's intra-op threads (default: 1 for a draft of up to 16 MB, "
        "which then runs beside the model's own threads; else --threads, the two taking turns)",
    )
    parser.add_argument(
        "--lookup-corpus",
        metavar="PATH",
        help="a text file or folder (e.g. your codebase) to guess from when the text has "
        "nothing earlier to copy, before the --draft model's turn (without --draft: prompt "
        "lookup, implied); indexed once, then cached",
    )
    parser.add_argument(
        "--draft-tokens",
        type=argtypes.at_least(1),
        default=4,
        help="guesses checked per call when decoding speculatively, at first: the count "
        "grows by 2 after a call that kept every guess and drops by 1 after a miss",
    )
    parser.add_argument(
        "--max-draft-tokens",
        type=argtypes.at_least(1),
        default=None,
        metavar="N",
        help="the most guesses one call may check (default: 3 x --draft-tokens; "
        "equal to --draft-tokens: a fixed count)",
    )


def draft_of(args: argparse.Namespace) -> str | None:
    """The ``draft`` argument of ``runtime.load`` the flags ask for."""
    lookup = args.prompt_lookup or getattr(args, "lookup_corpus", None)
    return "prompt-lookup" if lookup and not args.draft else args.draft


def _register_generate(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "generate", help="generate text from an exported LM (streams to stdout)"
    )
    s.add_argument("model_dir", help="exported model dir (after `edgezoo export`)")
    s.add_argument("prompt", help="text to continue")
    add_runtime_arguments(s)
    add_speculative_arguments(s)
    s.add_argument(
        "--max-new-tokens", type=int, default=64, help="most tokens to generate after the prompt"
    )
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument(
        "--top-k", type=int, default=0, help="sample from the K most likely tokens (0 = all)"
    )
    s.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="sample from the smallest set of tokens with this much probability (1 = all)",
    )
    s.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="divide the scores of tokens already in the text by this (1 = off)",
    )
    s.add_argument("--stop", action="append", help="stop string (repeatable)")
    s.add_argument("--seed", type=int, help="sampling seed (default: a fresh one each run)")
    s.add_argument("--no-stream", action="store_true", help="print the whole text at the end")
    s.set_defaults(fn=cmd_generate, extras=())


def _register_classify(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "classify", help="classify texts with an exported classifier (args or stdin lines)"
    )
    s.add_argument("model_dir", help="exported classifier dir (after `edgezoo export`)")
    s.add_argument("text", nargs="*", help="texts; read lines from stdin when none")
    add_runtime_arguments(s)
    s.set_defaults(fn=cmd_classify, extras=())


def _register_serve(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI-compatible /v1/completions, /v1/classify, /metrics)",
        description="Serve an exported model over HTTP: OpenAI-compatible POST /v1/completions "
        "(streaming too) for LMs, POST /v1/classify for classifiers, GET /v1/models, /health "
        "and Prometheus /metrics. Concurrent requests are batched dynamically.",
    )
    s.add_argument("model_dir", help="exported model dir (after `edgezoo export`)")
    add_runtime_arguments(s)
    add_speculative_arguments(s)
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; any other address needs --api-key)",
    )
    s.add_argument("--port", type=argtypes.port, default=8000, help="port, 1-65535 (default 8000)")
    s.add_argument(
        "--api-key",
        default=os.environ.get("EDGEZOO_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every endpoint but /health "
        "(default: $EDGEZOO_API_KEY; prefer the variable, flags show up in `ps`)",
    )
    s.add_argument(
        "--model-name", help="model id clients send and /v1/models lists (default: the dir's name)"
    )
    s.add_argument(
        "--max-batch",
        type=argtypes.at_least(1),
        default=8,
        help="most prompts per batched model call (default 8)",
    )
    s.add_argument(
        "--batching",
        choices=["auto", "continuous", "static"],
        default="auto",
        help="continuous: every decode step runs all live requests and a new one joins at "
        "once, each with its own sampling settings (needs the gqa graph on ort-cpu); static: "
        "requests with equal settings that arrive together run as one batch to its end; "
        "auto: continuous where the model allows it (static with --draft/--prompt-lookup, "
        "which decode one request at a time)",
    )
    s.add_argument(
        "--parallel",
        type=argtypes.at_least(1),
        help="continuous batching's slots: requests decoding at once (default: --max-batch); "
        "with --variant int8, of the two int8 graphs the one the quality gate timed fastest "
        "at a batched decode step",
    )
    s.add_argument(
        "--prefill-chunk",
        type=argtypes.at_least(1),
        default=128,
        help="continuous batching prefills long prompts this many tokens per step, so "
        "running streams keep decoding in between",
    )
    s.add_argument(
        "--max-queue",
        type=argtypes.at_least(1),
        default=64,
        help="prompts that may wait; beyond this the server answers 503 + Retry-After (default 64)",
    )
    s.add_argument(
        "--max-tokens-limit",
        type=argtypes.at_least(1),
        help="largest max_tokens a request may ask for (default: the model's context, at most 1024)",
    )
    s.add_argument(
        "--max-prompt-tokens",
        type=argtypes.at_least(1),
        help="longest prompt in tokens; longer ones are refused by their length in characters "
        "before they are tokenized (default: the model's context - 1)",
    )
    s.add_argument(
        "--timeout",
        type=argtypes.positive,
        default=60.0,
        help="seconds a request may take, queueing included, before a 504 (default 60)",
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info: one line per request)",
    )
    _add_ray_arguments(s)
    s.set_defaults(fn=cmd_serve, extras=("serve",))


def _add_ray_arguments(s: argparse.ArgumentParser) -> None:
    """Scale-out on Ray Serve (runtime.ray_serve): the same app as N replicas."""
    ray = s.add_argument_group(
        "replicas on Ray Serve (the cluster extra)",
        "Run the same app as Ray Serve replicas, each with its own model worker; Ray routes "
        "requests and replaces replicas that die. Put --ray after DIR (or write --ray=ADDRESS).",
    )
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="serve on Ray Serve: no ADDRESS starts a private local Ray instance (stopped on "
        "exit); 'auto' joins the cluster `ray start` runs on this machine; ray://HOST:10001 "
        "joins a remote one",
    )
    ray.add_argument(
        "--replicas",
        type=argtypes.at_least(1),
        default=1,
        help="replicas to run, default 1 (with --max-replicas: how many autoscaling starts with)",
    )
    ray.add_argument(
        "--min-replicas",
        type=argtypes.at_least(0),
        help="autoscaling: fewest replicas (default 1)",
    )
    ray.add_argument(
        "--max-replicas",
        type=argtypes.at_least(1),
        help="switch autoscaling on: Ray adds replicas up to this many under load",
    )
    ray.add_argument(
        "--target-ongoing-requests",
        type=argtypes.positive,
        help="autoscaling: requests per replica Ray aims at (default: the requests one "
        "replica decodes at once, --parallel or --max-batch)",
    )
    ray.add_argument(
        "--cpus-per-replica",
        type=argtypes.positive,
        default=1.0,
        help="CPUs Ray reserves for each replica; with --threads 0 each replica runs this "
        "many threads (default 1)",
    )


def _sampling_args(args: argparse.Namespace) -> dict:
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "stop": tuple(args.stop or ()),
        "seed": args.seed,
    }


def cmd_generate(args: argparse.Namespace) -> int:
    from edgezoo import runtime

    draft = draft_of(args)
    lm = runtime.load(
        args.model_dir,
        backend=args.backend,
        variant=args.variant,
        threads=args.threads,
        draft=draft,
        draft_variant=args.draft_variant,
        draft_threads=args.draft_threads,
        draft_tokens=args.draft_tokens,
        max_draft_tokens=args.max_draft_tokens,
        lookup_corpus=args.lookup_corpus,
    )
    if not hasattr(lm, "generate"):
        raise ConfigError(f"{args.model_dir} is a classifier: use `edgezoo classify` on it.")
    print(variant_note(args.model_dir, lm.backend, lm.variant, args.variant), file=sys.stderr)
    s2s = getattr(lm, "family", "") == "s2s"  # the prompt is the source: print the target alone
    shown = "" if s2s else args.prompt
    if args.no_stream:
        print(shown + lm.generate(args.prompt, **_sampling_args(args)).text)
        return 0
    print(shown, end="", flush=True)
    for delta in lm.stream(args.prompt, **_sampling_args(args)):
        print(delta, end="", flush=True)
    g = lm.last
    print(
        f"\n[{len(g.token_ids)} tokens, {g.finish_reason}; first token {g.time_to_first_token_s * 1000:.1f} ms, "
        f"{len(g.token_ids) / max(g.decode_s, 1e-9):.1f} tokens/s]",
        file=sys.stderr,
    )
    if draft is not None:
        stats = lm.last_stats
        print(
            f"[{lm.proposer_name}: {stats.accepted} of {stats.proposed} guesses accepted "
            f"({stats.acceptance:.0%}), {stats.target_calls} calls of the model]",
            file=sys.stderr,
        )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from edgezoo import runtime

    clf = runtime.load(
        args.model_dir, backend=args.backend, variant=args.variant, threads=args.threads
    )
    if not hasattr(clf, "classify"):
        raise ConfigError(f"{args.model_dir} is a language model: use `edgezoo generate` on it.")
    print(variant_note(args.model_dir, clf.backend, clf.variant, args.variant), file=sys.stderr)
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    results = clf.classify(texts)
    for text, r in zip(texts, results, strict=True):
        print(json.dumps({"label": r["label"], "score": round(r["score"], 4), "text": text[:60]}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from edgezoo.runtime.server import cmd_serve as serve_from_args

    ray_flags = [f for f in _RAY_ONLY_FLAGS if getattr(args, f) != _RAY_ONLY_DEFAULTS.get(f)]
    if args.ray is None and ray_flags:
        flag = "--" + ray_flags[0].replace("_", "-")
        raise ConfigError(f"{flag} scales out on Ray Serve: add --ray (after the model dir).")
    _announce_variant(args)
    if args.ray is not None:
        from edgezoo.runtime.ray_serve import cmd_serve_ray

        return cmd_serve_ray(args)
    return serve_from_args(args)


_RAY_ONLY_FLAGS = (
    "replicas",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "cpus_per_replica",
)
_RAY_ONLY_DEFAULTS = {"replicas": 1, "cpus_per_replica": 1.0}


def _announce_variant(args: argparse.Namespace) -> None:
    """Say which variant `serve` will load before it loads it (the same deterministic
    choice its own ``load`` makes from the manifest)."""
    from edgezoo.runtime.backends import resolve_backend
    from edgezoo.runtime.model_files import locate

    try:
        backend, _ = resolve_backend(args.backend)
        files = locate(args.model_dir, backend, args.variant)
    except EdgeZooError:
        return  # the server's own load reports it, after its bind checks
    print(variant_note(args.model_dir, backend, files.variant, args.variant), file=sys.stderr)


def variant_note(model_dir: str, backend: str, chosen: str, asked: str) -> str:
    """One line for stderr: which variant runs, and whether the quality gate chose it."""
    try:
        entry = (
            manifest.read(model_dir)["variants"].get(chosen, {}) if os.path.isdir(model_dir) else {}
        )
    except EdgeZooError:
        entry = {}
    why = entry.get("recommended", {}).get(backend)
    if why:
        return (
            f"using variant {chosen} on {backend} (recommended by the quality gate: "
            f"{why['speedup']:.2f}× fp32 speed, {why['quality_change']})"
        )
    if asked == "auto":
        return (
            f"using variant {chosen} on {backend} (auto: no quantized variant passed the quality "
            f"gate for {backend}; `edgezoo quantize` makes and measures some)"
        )
    return f"using variant {chosen} on {backend} (--variant {asked})"
