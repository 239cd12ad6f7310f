"""``runtime.load``: one call from a model dir to something that generates or classifies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from edgezoo.chat_config import read_chat_config
from edgezoo.errors import CheckpointError, ConfigError
from edgezoo.runtime import backends
from edgezoo.runtime.classifier import Classifier
from edgezoo.runtime.language_model import LanguageModel
from edgezoo.runtime.model_files import BATCHED, MULTI_TOKEN, REQUESTS, locate
from edgezoo.runtime.session import make_session

if TYPE_CHECKING:
    from edgezoo.runtime.seq2seq import Seq2SeqModel
    from edgezoo.runtime.speculative import SpeculativeLM


def load(
    path: str | Path,
    backend: str = "auto",
    variant: str = "auto",
    threads: int = 0,
    *,
    graph: str = "auto",
    fp16: bool = False,
    max_batch: int = 8,
    verbose: bool = False,
    draft: str | Path | None = None,
    draft_variant: str = "auto",
    draft_tokens: int = 4,
    max_draft_tokens: int | None = None,
    draft_threads: int | None = None,
    lookup_corpus: str | Path | None = None,
    spin: bool = True,
    takes_turns: bool = False,
    expected_batch: int = 1,
) -> LanguageModel | Classifier | Seq2SeqModel | SpeculativeLM:
    """Load a model dir (or an .onnx file beside its tokenizer) for inference: a
    ``LanguageModel``, a ``Classifier`` or, for an encoder–decoder, a ``Seq2SeqModel``.

    ``backend``: auto | ort-cpu | ort-cuda | ort-trt | tensorrt. ``variant``: ``auto``
    (default: the fastest variant the quantize gate recommended for this backend, else
    the best fp32 graph — so a quantized dir is used at its best without knowing a flag),
    a precision (fp32, fp16, int8, int4) or an exact manifest name; ``graph`` restricts the kind of graph
    (portable | ort-optimized | gqa; default: the best for the backend). ``threads``: intra-op threads (0 = ORT's
    default). The returned object's ``backend``, ``variant`` and ``reason`` say what was
    chosen and why.

    ``draft``: decode speculatively, with a smaller model dir that has the same tokenizer
    (``draft_variant`` picks its variant as ``variant`` does; the target's own dir with
    ``draft_variant="int4"`` drafts with the target's int4 graph) or with
    ``"prompt-lookup"`` (guesses copied from earlier in the text, no second model);
    ``draft_tokens`` guesses are checked per target call at first; the count adapts
    (2 more after a call that kept every guess, 1 fewer after a miss) up to
    ``max_draft_tokens`` (default 3 × ``draft_tokens``; equal: fixed). Greedy output is
    the target's own (``runtime.speculative``). ``lookup_corpus`` (a text file or a folder
    of them; implies prompt lookup without a draft model): when the text has nothing
    earlier to copy, guess what most often followed its last tokens there, before any
    draft model's turn (``runtime.corpus_lookup``; indexed once, kept under the cache
    folder).

    ``draft_threads``: the draft model's intra-op threads. Default: one for a draft of up
    to ``ONE_THREAD_DRAFT_BYTES`` of weights (a call of a few-million-parameter model is
    mostly ONNX Runtime's per-operator overhead, which a pool only adds its wake-ups to),
    and the target then keeps its own loop's spinning pool (the draft, with no pool, takes
    no core that pool spins on); a bigger draft gets ``threads``, and both models then
    take turns (``takes_turns``).

    ``expected_batch``: how many prompts will usually decode together (a server's slots).
    Above 1, of rival graphs of the precision asked for (int8: weight-only and dynamic), the
    one the quality gate timed fastest at a batched decode step; a draft overrides it.

    ``spin=False``: ONNX Runtime's threads sleep whenever they wait for work.
    ``takes_turns=True``: they spin while a run lasts and stop as it returns — for models
    that run in turns in this process (a target and the draft you pass to ``SpeculativeLM``
    yourself: load both so; ``draft=`` does it for you), whose idle pools would otherwise
    take the cores the other is running on.
    """
    if lookup_corpus is not None and draft is None:
        draft = "prompt-lookup"
    # Speculative decoding checks several tokens per call: of rival graphs of the precision
    # asked for, the one the quality gate timed fastest at that.
    use = MULTI_TOKEN if draft is not None else BATCHED if expected_batch > 1 else REQUESTS
    if draft_variant != "auto" and draft in (None, "prompt-lookup"):
        raise ConfigError("draft_variant picks a draft model's variant: give draft=DIR too.")
    model_draft = draft not in (None, "prompt-lookup")
    if model_draft:
        draft_threads = one_thread_draft(draft, draft_variant, threads, draft_threads)
    # A target and a draft model with a pool run in turns: neither's threads spin once its
    # run is over. A one-thread draft runs on the calling thread, beside the target's pool.
    turns = takes_turns or (model_draft and draft_threads != 1)
    model = _load(
        path, backend, variant, threads, graph, fp16, max_batch, verbose, spin, use, turns
    )
    if draft is None:
        return model
    from edgezoo.runtime.speculative import SpeculativeLM

    if not isinstance(model, LanguageModel):
        raise ConfigError(
            f"{path} is not a decoder-only LM: speculative decoding is for language models."
        )
    corpus = None
    if lookup_corpus is not None:
        from edgezoo.runtime.corpus_lookup import load_index

        corpus = load_index(lookup_corpus, model.tokenizer, backends.cache_root())
    if str(draft) == "prompt-lookup":
        return SpeculativeLM(model, None, k=draft_tokens, max_k=max_draft_tokens, corpus=corpus)
    draft_lm = _load(
        draft,
        backend,
        draft_variant,
        draft_threads,
        "gqa",
        False,
        max_batch,
        False,
        takes_turns=draft_threads != 1,
    )
    if not isinstance(draft_lm, LanguageModel):
        raise ConfigError(f"draft {draft} is a classifier, not a language model.")
    return SpeculativeLM(model, draft_lm, k=draft_tokens, max_k=max_draft_tokens, corpus=corpus)


# Measured on 2 cores (AVX-512 host, `small` trained 500 steps, the demo `nano` as the 5 MB
# fp32 draft, 5 interleaved rounds): the draft on one thread beside the target's spinning
# pool 1.83x the target alone, both on two threads taking turns 1.70x. Larger drafts (the
# bound) are not measured yet: they keep the pooled, turn-taking setup.
ONE_THREAD_DRAFT_BYTES = 16_000_000


def one_thread_draft(draft: str | Path, draft_variant: str, threads: int, asked: int | None) -> int:
    """The draft's intra-op threads: ``asked``, else 1 for a draft graph of at most
    ``ONE_THREAD_DRAFT_BYTES`` (see ``load``), else ``threads``."""
    if asked is not None:
        if asked < 0:
            raise ConfigError(f"draft_threads={asked}: give 1 or more (0: ONNX Runtime's choice).")
        return asked
    entry = locate(draft, "ort-cpu", draft_variant, "gqa").entry
    return (
        1 if entry.get("bytes", ONE_THREAD_DRAFT_BYTES + 1) <= ONE_THREAD_DRAFT_BYTES else threads
    )


@dataclass(frozen=True)
class _Wanted:
    """What ``_load`` was asked for, beside the backend."""

    path: str | Path
    variant: str
    threads: int
    graph: str
    fp16: bool
    max_batch: int
    verbose: bool
    spin: bool
    use: str
    takes_turns: bool


def _load(
    path: str | Path,
    backend: str,
    variant: str,
    threads: int,
    graph: str,
    fp16: bool,
    max_batch: int,
    verbose: bool,
    spin: bool = True,
    use: str = REQUESTS,
    takes_turns: bool = False,
) -> LanguageModel | Classifier | Seq2SeqModel:
    """``load`` without a draft. ``spin``, ``takes_turns``: see ``make_session``; ``use``:
    see ``select_variant``. ``auto`` falls back to the CPU when ONNX Runtime has the CUDA
    provider but cannot start it (a GPU build on a machine without a usable GPU)."""
    chosen, why_backend = backends.resolve_backend(backend)
    wanted = _Wanted(
        path, variant, threads, graph, fp16, max_batch, verbose, spin, use, takes_turns
    )
    try:
        return _load_on(chosen, why_backend, wanted)
    except backends.ProviderNotStarted as e:
        if backend != "auto":
            raise
        return _load_on("ort-cpu", f"auto: {e.provider} could not start, using the CPU", wanted)


def _load_on(
    chosen: str, why_backend: str, wanted: _Wanted
) -> LanguageModel | Classifier | Seq2SeqModel:
    path, variant, threads, graph = wanted.path, wanted.variant, wanted.threads, wanted.graph
    fp16, max_batch, verbose, spin = wanted.fp16, wanted.max_batch, wanted.verbose, wanted.spin
    files = locate(path, chosen, variant, graph, wanted.use)
    tokenizer = load_tokenizer(files.model_dir)
    reason = f"{why_backend}; {files.reason}"
    if files.family == "s2s":
        return _load_seq2seq(files, tokenizer, chosen, threads, reason)
    if chosen == "tensorrt":
        from edgezoo.runtime.tensorrt_engine import load_tensorrt

        model = load_tensorrt(files, tokenizer, reason=reason, fp16=fp16, max_batch=max_batch)
        if isinstance(model, LanguageModel):
            model.chat_config = read_chat_config(files.model_dir)
        return model
    profile = None
    if chosen == "ort-trt":
        context = int(files.config.get("max_position_embeddings", 512))
        make = backends.decoder_profile if files.family == "lm" else backends.encoder_profile
        profile = make(files.entry.get("inputs", []), context, max_batch)
    session = make_session(
        files.onnx_path,
        chosen,
        threads,
        model_sha256=files.entry.get("sha256", ""),
        profile=profile,
        fp16=fp16,
        int8=files.entry.get("precision") == "int8",
        spin=spin,
        takes_turns=wanted.takes_turns,
    )
    if verbose:
        print(f"edgezoo runtime: {reason}")
    common = {"backend": chosen, "variant": files.variant, "reason": reason}
    if files.family == "lm":
        lm = LanguageModel(
            session,
            tokenizer,
            files.config,
            graph=files.entry.get("graph", "portable"),
            device=backends.device_type(chosen),
            decode_rows=int(files.entry.get("decode_rows", 1)),
            **common,
        )
        lm.chat_config = read_chat_config(files.model_dir)
        return lm
    if files.family == "cls":
        return Classifier(session, tokenizer, files.config, **common)
    raise ConfigError(f"unknown model family {files.family!r} in {files.model_dir}")


def _load_seq2seq(
    files, tokenizer: Tokenizer, backend: str, threads: int, reason: str
) -> Seq2SeqModel:
    """The encoder and both decoder graphs an s2s variant names (``graphs`` in its entry)."""
    from edgezoo.runtime.seq2seq import GRAPH_FILES, Seq2SeqModel

    graphs = files.entry.get("graphs") or {}
    names = {
        role: graphs.get(role, {}).get("file", default) for role, default in GRAPH_FILES.items()
    }
    if any(Path(n).name != n for n in names.values()):
        raise CheckpointError(
            f"{files.model_dir}: a seq2seq graph name leaves onnx/; re-run the export."
        )
    paths = {role: files.onnx_path.parent / name for role, name in names.items()}
    return Seq2SeqModel.from_files(
        paths, tokenizer, files.config, backend, threads, variant=files.variant, reason=reason
    )


def load_variant(
    model_dir: str | Path, name: str, backend: str = "ort-cpu", threads: int = 0
) -> LanguageModel | Classifier:
    """Load exactly the manifest entry ``name`` (no selection): for measuring variants."""
    from edgezoo import manifest

    info = manifest.read(model_dir)
    if name not in info["variants"]:
        raise ConfigError(
            f"{model_dir} has no variant {name!r}; available: {', '.join(info['variants'])}"
        )
    entry = info["variants"][name]
    return load(
        Path(model_dir) / manifest.ONNX_DIR / entry["file"], backend=backend, threads=threads
    )


def load_tokenizer(model_dir: Path) -> Tokenizer:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing; the runtime needs the model's tokenizer.json beside its ONNX files."
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"{path} is not a valid tokenizer file ({e}).") from e
