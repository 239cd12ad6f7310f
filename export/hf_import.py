"""Bring a local Hugging Face checkpoint into the model-dir layout and export it.

* Llama and BERT checkpoints load into the zoo's own classes (their names already match),
  so they get everything a zoo model gets: the validated portable graph, the ORT-optimized
  graph and, for decoders, the GroupQueryAttention graph.
* Any other architecture transformers and optimum know (GPT-2, Qwen2, ...) goes through
  optimum's ONNX exporter (``task="text-generation-with-past"`` or
  ``"text-classification"``); we then validate the result against transformers ourselves
  and record it in the same manifest, with the same I/O names.

Nothing is downloaded: the source must be a folder (``local_files_only=True``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgezoo import atomic, io_names, manifest
from edgezoo.dirlock import model_dir_lock
from edgezoo.errors import CheckpointError, ConfigError, ExportError
from edgezoo.export.onnx_export import ExportResult, to_onnx
from edgezoo.export.provenance import source_commit, versions
from edgezoo.jsonfile import read_object
from edgezoo.onnx_files import file_facts, io_signature
from edgezoo.zoo.config import config_from_hf_dict
from edgezoo.zoo.modeldir import build_model, save_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def import_hf(source: str | Path, out: str | Path, **export_kwargs) -> ExportResult:
    """Import ``source`` into the model dir ``out`` and export it, holding ``out``'s lock
    (taken after the source checked out, so a bad source leaves no ``out`` behind)."""
    source, out = Path(source), Path(out)
    hf_config = _checked_source(source)
    out.mkdir(parents=True, exist_ok=True)
    with model_dir_lock(out, "export --from-hf"):
        return _import_hf(source, out, hf_config, **export_kwargs)


def _checked_source(source: Path) -> dict:
    if not (source / "config.json").is_file():
        raise CheckpointError(
            f"{source} is not a Hugging Face model folder (no config.json). Pass a local checkpoint dir."
        )
    if not (source / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{source} has no tokenizer.json (a fast tokenizer); the runtime needs it to encode text."
        )
    return _read_hf_config(source)


def _import_hf(source: Path, out: Path, hf_config: dict, **export_kwargs) -> ExportResult:
    try:
        cfg = config_from_hf_dict(hf_config)
    except (ConfigError, KeyError):
        return _import_with_optimum(source, out, hf_config)
    model = build_model(cfg)
    state = _load_hf_state(source)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if not k.endswith(("rotary_emb.inv_freq", "position_ids"))]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit a {cfg.family} model (missing {missing[:4]}, unexpected {unexpected[:4]})."
        )
    save_model_dir(model.eval(), out)
    _copy_tokenizer(source, out)
    return to_onnx(out, **export_kwargs)


# What the zoo's own Llama and BERT classes cannot be built without.
ZOO_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)


def _read_hf_config(source: Path) -> dict:
    """The checkpoint's config.json: an object with a ``model_type`` and, for the zoo
    families, every size field (checked here so a broken file is not handed to optimum)."""
    fix = "restore config.json from the original checkpoint (save_pretrained writes it)."
    path = source / "config.json"
    hf_config = read_object(path, fix, required=("model_type",))
    kind = hf_config["model_type"]
    missing = [k for k in ZOO_REQUIRED if k not in hf_config] if kind in ("llama", "bert") else []
    if missing:
        raise CheckpointError(
            f"{path} (model_type {kind!r}) lacks {', '.join(map(repr, missing))}; {fix}"
        )
    return hf_config


def _load_hf_state(source: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(source.glob("model*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return {
            k.removeprefix("model.") if k.startswith("model.bert.") else k: v.float()
            for k, v in state.items()
        }
    bins = sorted(source.glob("pytorch_model*.bin"))
    if bins:  # never unpickle arbitrary objects from a user's folder
        state = {}
        for f in bins:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
        return {k: v.float() for k, v in state.items()}
    raise CheckpointError(f"{source} has no model.safetensors or pytorch_model.bin.")


def _copy_tokenizer(source: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            atomic.write_bytes(out / name, (source / name).read_bytes())


def _import_with_optimum(source: Path, out: Path, hf_config: dict) -> ExportResult:
    """Architectures without a zoo family: optimum exports, we validate and record."""
    import transformers
    from optimum.exporters.onnx import main_export

    archs = hf_config.get("architectures") or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    task = "text-classification" if is_classifier else "text-generation-with-past"
    out.mkdir(parents=True, exist_ok=True)
    onnx_dir = manifest.onnx_dir(out)
    onnx_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".optimum-", dir=onnx_dir) as tmp:
        t0 = time.perf_counter()
        try:
            main_export(
                str(source),
                output=tmp,
                task=task,
                opset=18,
                local_files_only=True,
                do_validation=False,
                library_name="transformers",
            )
        except Exception as e:  # optimum raises many types; the user needs one message
            first = str(e).splitlines()[0] if str(e) else ""
            raise ExportError(
                f"cannot export {source} (model_type {hf_config.get('model_type')!r}): optimum failed with "
                f"{type(e).__name__}: {first}. Supported: the zoo families (llama, bert) natively, and the "
                "architectures optimum's ONNX exporter supports (e.g. gpt2, mistral, qwen2, phi) for "
                "text-generation or text-classification."
            ) from e
        path = Path(tmp) / "model.onnx"
        if not path.is_file():
            raise ExportError(f"optimum produced no model.onnx for {source}.")
        auto = (
            transformers.AutoModelForSequenceClassification
            if is_classifier
            else transformers.AutoModelForCausalLM
        )
        reference = auto.from_pretrained(source, local_files_only=True).eval()
        max_diff = _validate_against_transformers(reference, path, is_classifier)
        entry = {
            "file": "model.onnx",
            "graph": "portable",
            "precision": "fp32",
            "max_abs_diff": max_diff,
            "exporter": f"optimum.exporters.onnx (task {task}) opset 18",
            "export_s": round(time.perf_counter() - t0, 2),
            "backends": ["ort-cpu", "ort-cuda", "ort-trt", "tensorrt"],
            **io_signature(path),
            **file_facts(path),
            "source_commit": source_commit(),
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for f in Path(tmp).iterdir():
            if f.name.startswith("model.onnx"):
                shutil.move(str(f), str(onnx_dir / f.name))
    atomic.write_json(out / "config.json", hf_config)
    _copy_tokenizer(source, out)
    manifest.add_variant(
        out,
        "fp32",
        entry,
        model_type=hf_config.get("model_type"),
        family="cls" if is_classifier else "lm",
        export_notes=["exported by optimum: no GroupQueryAttention graph for this architecture"],
    )
    return ExportResult(out, {"fp32": entry}, [])


@torch.no_grad()
def _validate_against_transformers(
    model, path: Path, is_classifier: bool, tolerance: float = 1e-4
) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name: i for i in sess.get_inputs()}
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch, seq in ((1, 5), (2, 9)):
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
        mask = torch.ones_like(ids)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        if "position_ids" in names:
            feeds["position_ids"] = torch.arange(seq)[None].expand(batch, seq).numpy()
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        for name, info in names.items():
            if io_names.is_past(name):
                shape = [
                    batch
                    if d in ("batch_size", "batch")
                    or (not isinstance(d, int) and "batch" in str(d))
                    else (0 if not isinstance(d, int) else d)
                    for d in info.shape
                ]
                feeds[name] = np.zeros(shape, np.float32)
        logits = sess.run(["logits"], feeds)[0]
        expected = model(input_ids=ids, attention_mask=mask).logits.numpy()
        diff = float(np.abs(logits - expected).max())
        worst = max(worst, diff)
        if diff > tolerance:
            raise ExportError(
                f"optimum's export differs from transformers by {diff:.2e} at batch {batch}, length {seq}."
            )
    return worst
