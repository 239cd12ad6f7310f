"""Everything ``zoo.train`` settles before the first step, kept out of the loop's file.

Resume checks (``RUN_FILE`` and the settings a resume must not change), the tokenizer,
the data turned into a task, the model config and ``--init-from`` weights, and the
checkpoint a resume starts from. None of it touches torch's random state, so the seeded
part of a run (model init, sampling, optimizer steps) stays, in order, in ``train``.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer
from torch import nn

from edgezoo.errors import CheckpointError, ConfigError, DataError
from edgezoo.jsonfile import read_object
from edgezoo.zoo import checkpoint as ckpt
from edgezoo.zoo import data, s2s_data
from edgezoo.zoo.config import LlamaConfig, ModelConfig
from edgezoo.zoo.modeldir import load_config
from edgezoo.zoo.presets import make_config, resized
from edgezoo.zoo.tokenizer import (
    TOKENIZER_FILE,
    copy_tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from edgezoo.zoo.train_config import TrainConfig
from edgezoo.zoo.train_tasks import ClassifyTask, LMTask, Seq2SeqTask

if TYPE_CHECKING:
    from edgezoo.zoo.distributed import Dist

RUN_FILE = "run.json"  # the TrainConfig a run was started with, for resume checks
# Changing these mid-run would silently change what a resumed run computes.
RESUME_MUST_MATCH = (
    "family",
    "size",
    "data",
    "batch_size",
    "grad_accum",
    "seed",
    "context",
    "vocab_size",
    "tokenizer",
    "val_frac",
    "lr",
    "warmup_steps",
    "layers",
    "width",
    "distill_from",
    "distill_temperature",
    "distill_weight",
)


def check_resumable(out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """Refuse to overwrite a run, or to resume one with settings that change what it computes.

    Returns the run's previous ``run.json`` on resume, else None.
    """
    run_file = out / RUN_FILE
    has_ckpt = bool(ckpt.list_checkpoints(out))
    if not cfg.resume:
        if has_ckpt:
            raise ConfigError(
                f"{out} already holds a training run; pass --resume to continue it or pick a new --out."
            )
        return None
    if not run_file.is_file() or not has_ckpt:
        raise CheckpointError(
            f"--resume: {out} has no checkpoint to resume from; drop --resume to start fresh."
        )
    previous = read_object(
        run_file,
        "it records the settings a resume must keep: restore it, or start a new run with a "
        "new --out (the checkpoints' trainer.json hold the same settings).",
    )
    now = asdict(cfg)
    diffs = [
        f"{k}: {previous.get(k)!r} -> {now.get(k)!r}"
        for k in RESUME_MUST_MATCH
        if previous.get(k) != now.get(k)
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume {out}: its run was started with different settings ({'; '.join(diffs)}). "
            "Resume with the original settings or start a new --out."
        )
    return previous


def prepare_data(
    cfg: TrainConfig, dist: Dist, out: Path
) -> tuple[Tokenizer, int, LMTask | ClassifyTask | Seq2SeqTask, list[str] | None]:
    """Tokenizer, context length, task and (for a classifier) the sorted label names."""
    source = cfg.resolved_data()
    preset_vocab = make_config(cfg.family, cfg.size).vocab_size
    # Rank 0 trains (or loads) the tokenizer; the others receive it.
    tok_json = _tokenizer(cfg, out, preset_vocab).to_str() if dist.is_main else None
    tok = Tokenizer.from_str(dist.broadcast_object(tok_json))
    if cfg.family == "lm":
        context = cfg.context or make_config("lm", cfg.size).max_position_embeddings
        return tok, context, _lm_task(cfg, dist, source, tok, context), None
    if cfg.family == "s2s":  # context: the longest source, in tokens
        context = cfg.context or make_config("s2s", cfg.size).max_position_embeddings
        return tok, context, _s2s_task(cfg, source, tok, context), None
    context = cfg.context or 128
    task, labels = _classify_task(cfg, source, tok, context)
    return tok, context, task, labels


def _tokenizer(cfg: TrainConfig, out: Path, default_vocab: int) -> Tokenizer:
    """The run's own tokenizer on resume, the base model's on --init-from, a ready one on
    --tokenizer (models that must share token ids: a draft and its target), else a new one."""
    if cfg.resume:
        return load_tokenizer(out)
    if cfg.tokenizer:
        return ready_tokenizer(cfg)
    if cfg.init_from:
        copy_tokenizer(cfg.init_from, out)
        return load_tokenizer(out)
    if cfg.distill_from:  # the KL compares distributions over the teacher's token ids
        if cfg.vocab_size:
            raise ConfigError(
                "--vocab-size trains a new tokenizer, but --distill-from uses the teacher's: drop --vocab-size."
            )
        copy_tokenizer(cfg.distill_from, out)
        return load_tokenizer(out)
    source = cfg.resolved_data()
    if cfg.family == "lm":
        texts = (text for _, text in data.iter_documents(source, cfg.text_field))
    elif cfg.family == "s2s":
        pairs = s2s_data.read_pairs(source, cfg.source_field, cfg.target_field)
        texts = iter(s2s_data.training_texts(pairs))
    else:
        texts = (text for text, _ in data.read_labelled(source, cfg.text_field, cfg.label_field))
    return train_tokenizer(texts, cfg.vocab_size or default_vocab, cfg.tokenizer_chars)


def ready_tokenizer(cfg: TrainConfig) -> Tokenizer:
    """``--tokenizer PATH``: a model dir's tokenizer or a ``tokenizer.json`` file, as is."""
    if cfg.vocab_size:
        raise ConfigError(
            "--vocab-size trains a new tokenizer, but --tokenizer gives a ready one: drop one."
        )
    if cfg.init_from:
        raise ConfigError(
            "--init-from keeps its model's tokenizer (the embedding rows are its token ids): "
            "drop --tokenizer."
        )
    path = Path(cfg.tokenizer)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"--tokenizer {cfg.tokenizer}: no {TOKENIZER_FILE} there. Give a model dir "
            f"(e.g. a trained run) or the path of a {TOKENIZER_FILE} file."
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise ConfigError(
            f"--tokenizer {cfg.tokenizer}: {file} is not a tokenizer file ({e})."
        ) from e


def _lm_task(cfg: TrainConfig, dist: Dist, source: str, tok: Tokenizer, context: int) -> LMTask:
    """Rank 0 builds the token cache first, so the others read it instead of racing to write it."""
    if dist.is_main:
        splits = data.token_cache(source, tok, cfg.val_frac, cfg.text_field)
    dist.barrier()
    if not dist.is_main:
        splits = data.token_cache(source, tok, cfg.val_frac, cfg.text_field)
    return LMTask(splits, context, cfg.seed)


def _s2s_task(cfg: TrainConfig, source: str, tok: Tokenizer, context: int) -> Seq2SeqTask:
    pairs = s2s_data.read_pairs(source, cfg.source_field, cfg.target_field)
    train_pairs, val_pairs = s2s_data.split_pairs(pairs, cfg.val_frac)
    return Seq2SeqTask(
        s2s_data.encode_pairs(train_pairs, tok, context),
        s2s_data.encode_pairs(val_pairs, tok, context),
        tok,
        cfg.seed,
    )


def _classify_task(
    cfg: TrainConfig, source: str, tok: Tokenizer, context: int
) -> tuple[ClassifyTask, list[str]]:
    rows = data.read_labelled(source, cfg.text_field, cfg.label_field)
    labels = sorted({label for _, label in rows})
    if len(labels) < 2:
        raise DataError(
            f"{source} has a single label {labels}; a classifier needs at least two classes."
        )
    train_rows, val_rows = data.split_labelled(rows, cfg.val_frac)
    task = ClassifyTask(
        data.encode_labelled(train_rows, tok, context, labels),
        data.encode_labelled(val_rows, tok, context, labels),
        len(labels),
        cfg.seed,
    )
    return task, labels


def model_config(cfg: TrainConfig, vocab: int, labels: list[str] | None) -> ModelConfig:
    """The --init-from model's config (relabelled for a classifier), else the size preset's."""
    if cfg.init_from:
        if cfg.layers or cfg.width:
            raise ConfigError(
                "--layers/--width reshape a preset; --init-from keeps its model's shape: drop one."
            )
        base = load_config(cfg.init_from)
        if base.family != cfg.family and not (cfg.family == "cls" and base.family == "lm"):
            raise ConfigError(
                f"--init-from {cfg.init_from} is a {base.family} model; a {cfg.family} model "
                f"starts from a {cfg.family} model{' (or an LM)' if cfg.family == 'cls' else ''}."
            )
        if labels is not None:
            # A classifier from a classifier (new head if the labels changed) or from a
            # pre-trained LM: the decoder gets a classification head on its last token.
            if isinstance(base, LlamaConfig):
                base = replace(base, id2label=dict(enumerate(labels)), tie_word_embeddings=False)
            else:
                base.num_labels, base.id2label = len(labels), dict(enumerate(labels))
        return base
    extra = {"num_labels": len(labels)} if labels is not None else {}
    model_cfg = resized(
        make_config(cfg.family, cfg.size, vocab_size=vocab, **extra), cfg.layers, cfg.width
    )
    if labels is not None:
        model_cfg.id2label = dict(enumerate(labels))
    if cfg.context:
        model_cfg.max_position_embeddings = max(model_cfg.max_position_embeddings, cfg.context)
    return model_cfg


def init_weights_from(model: nn.Module, source: str) -> None:
    """Load every tensor whose name and shape match (a new label set re-initialises the head)."""
    from safetensors.torch import load_file

    src = load_file(str(Path(source) / "model.safetensors"))
    own = model.state_dict()
    loadable = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if len(loadable) < len(own) // 2:
        raise ConfigError(
            f"--init-from {source}: only {len(loadable)} of {len(own)} tensors fit this model."
        )
    model.load_state_dict(loadable, strict=False)


def resume_point(
    cfg: TrainConfig, dist: Dist, out: Path, model_cfg: ModelConfig
) -> tuple[int, tuple[dict, dict] | None]:
    """The step to start at and, on resume, the newest intact checkpoint's (weights, state)."""
    if not cfg.resume:
        return 0, None
    if dist.is_main:
        ckpt.remove_partial(out)
    dist.barrier()
    found = ckpt.latest_valid(out)
    if found is None:
        raise CheckpointError(f"--resume: every checkpoint in {out} is corrupt; start a new run.")
    if found.meta.get("model_config") != model_cfg.to_hf_dict():
        raise ConfigError(
            f"cannot resume {out}: the checkpoint's model config differs from this run's."
        )
    return found.step, ckpt.load_checkpoint(found)
