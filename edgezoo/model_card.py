"""``README.md`` model cards: what a model dir holds, how it was made, how good it is.

A model dir is published as it is (to the Hugging Face Hub, a release, a colleague), so
it carries its own card, in the Hub's format (YAML front matter, then Markdown). The card
is built only from files already in the dir (config.json, model.safetensors' header,
run.json, training.jsonl, eval.json, onnx/manifest.json), so any stage can refresh it:
the zoo when it saves a model dir, export and quantize after they add variants. Core and
torch-free, because quantize (which has no torch) calls it too.

Training checkpoints live in ``checkpoints/`` inside the run dir (resume needs them
there); the card says to leave them out of an upload and a ``.gitignore`` excludes them
from a git push to the Hub.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from edgezoo import atomic, manifest

CARD_FILE = "README.md"
GITIGNORE = ".gitignore"
UNPUBLISHED = ("checkpoints/", ".*.tmp", ".export-*/", ".quantize-*/")
TEXT_CORPORA = {
    "builtin:stdlib": "the running Python's standard library source (PSF License)",
    "builtin:stdlib-cls": "functions of the Python standard library, labelled by package",
}


def write_card(model_dir: str | Path) -> Path | None:
    """(Re)write ``README.md`` from the dir's files, atomically; None if not a model dir."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        return None
    path = model_dir / CARD_FILE
    atomic.write_text(path, build_card(model_dir))
    if not (model_dir / GITIGNORE).exists():
        atomic.write_text(model_dir / GITIGNORE, "".join(f"{p}\n" for p in UNPUBLISHED))
    return path


def build_card(model_dir: str | Path) -> str:
    """The card's text; every section says only what the dir's files back up."""
    model_dir = Path(model_dir)
    facts = _Facts(model_dir)
    parts = [
        _front_matter(facts),
        _what_it_is(facts),
        _training(facts),
        _evaluation(facts),
        _variants(facts),
        _how_to_run(facts),
    ]
    return "\n".join(p for p in parts if p).rstrip() + "\n"


class _Facts:
    """Everything the card says, read once from the dir (missing files are just absent)."""

    def __init__(self, model_dir: Path) -> None:
        self.dir = model_dir
        self.name = model_dir.resolve().name
        self.config = _json(model_dir / "config.json")
        self.run = _json(model_dir / "run.json")
        self.eval = _json(model_dir / "eval.json")
        self.log = _jsonl(model_dir / "training.jsonl")
        try:
            self.manifest = manifest.read(model_dir)
        except Exception:  # a corrupt manifest must not stop the card; it just has no table
            self.manifest = {"variants": {}}
        self.params = parameter_count(model_dir / "model.safetensors")
        self.classifier = (
            bool(self.config.get("id2label")) or self.config.get("model_type") == "bert"
        )
        self.license = _existing_license(model_dir / CARD_FILE)


def parameter_count(weights: Path) -> int | None:
    """Parameters stored in a safetensors file, from its JSON header alone (no torch)."""
    try:
        with open(weights, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError):
        return None
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
    return total


def _front_matter(f: _Facts) -> str:
    tags = ["edgezoo", f.config.get("model_type", "transformer")]
    variants = f.manifest["variants"]
    if variants:
        tags.append("onnx")
    lines = ["---", "library_name: transformers"]
    if f.license:
        lines.append(f"license: {f.license}")
    pipeline = "text-classification" if f.classifier else "text-generation"
    lines += [f"pipeline_tag: {pipeline}", "tags:", *(f"- {t}" for t in tags), "---", ""]
    return "\n".join(lines)


def _what_it_is(f: _Facts) -> str:
    c = f.config
    if f.classifier:
        labels = list((c.get("id2label") or {}).values())
        kind = f"a text classifier ({len(labels)} labels: {', '.join(map(str, labels[:10]))})"
    else:
        kind = "a decoder-only language model"
    arch = ", ".join(c.get("architectures", [])) or c.get("model_type", "?")
    heads = f"{c.get('num_attention_heads', '?')} heads"
    if c.get("num_key_value_heads") not in (None, c.get("num_attention_heads")):
        heads += f" ({c['num_key_value_heads']} key/value heads)"
    rows = [
        ("family", f"{c.get('model_type', '?')} (`{arch}`)"),
        ("preset", c.get("edgezoo_preset") or "custom"),
        ("parameters", _count(f.params) if f.params is not None else "unknown"),
        (
            "layers × width",
            f"{c.get('num_hidden_layers', '?')} × {c.get('hidden_size', '?')}, {heads}",
        ),
        ("context", f"{c.get('max_position_embeddings', '?')} tokens"),
        ("vocabulary", f"{c.get('vocab_size', '?')} tokens (byte-level BPE, `tokenizer.json`)"),
    ]
    return "\n".join(
        [
            f"# {f.name}",
            "",
            f"{f.name} is {kind}, trained and packaged with edgezoo.",
            "",
            _table(("", ""), rows),
            "",
        ]
    )


def _training(f: _Facts) -> str:
    if not f.run and not f.log:
        return ""
    steps = [r for r in f.log if "loss" in r and "event" not in r]
    last = steps[-1] if steps else {}
    step = last.get("step") or f.eval.get("step") or f.run.get("steps")
    data = f.run.get("data") or f.eval.get("data") or ""
    rows = [("data", f"`{data}` ({TEXT_CORPORA[data]})" if data in TEXT_CORPORA else f"`{data}`")]
    if step:
        rows.append(("steps", f"{step:,}"))
        batch, context = f.run.get("batch_size"), f.run.get("context")
        if batch and context and not f.classifier:
            rows.append(("tokens", f"{step * batch * context:,} ({batch} × {context} per step)"))
        elif batch:
            rows.append(("examples seen", f"{step * batch:,} ({batch} per step)"))
    if "loss" in last:
        rows.append(("final training loss", f"{last['loss']:.4f} (step {last.get('step')})"))
    speed = next((r["train_tokens_per_s"] for r in f.log if "train_tokens_per_s" in r), None)
    if speed:
        rows.append(("training speed", f"{speed:,.0f} tokens/s"))
    for key in ("lr", "warmup_steps", "weight_decay", "seed", "init_from"):
        if f.run.get(key) is not None:
            rows.append((key.replace("_", " "), f"{f.run[key]}"))
    return "\n".join(
        [
            "## Training",
            "",
            _table(("", ""), rows),
            "",
            "`training.jsonl` has the loss curve, `run.json` every setting. Resumable training "
            "state lives in `checkpoints/`: it is not part of the model, leave it out when you "
            "publish (`.gitignore` here excludes it; with `huggingface-cli upload` pass "
            '`--exclude "checkpoints/*"`).',
            "",
        ]
    )


def _evaluation(f: _Facts) -> str:
    metrics = {k: v for k, v in f.eval.items() if isinstance(v, int | float) and k != "step"}
    if not metrics:
        return ""
    names = {"ppl": "perplexity", "acc": "accuracy"}
    rows = [
        (names.get(k.removeprefix("val_"), k.removeprefix("val_")), _num(v))
        for k, v in metrics.items()
    ]
    where = f"held-out split of `{f.eval.get('data', '?')}`"
    if f.run.get("val_frac"):
        where += f" ({f.run['val_frac']:.0%} of it)"
    at = f", after step {f.eval['step']}" if "step" in f.eval else ""
    return "\n".join(
        [
            "## Evaluation",
            "",
            f"PyTorch weights on the {where}{at} (`eval.json`):",
            "",
            _table(("metric", "value"), rows),
            "",
        ]
    )


def _variants(f: _Facts) -> str:
    variants = f.manifest["variants"]
    if not variants:
        return ""
    rows = []
    for name, e in variants.items():
        files = ", ".join(f"`{a}`" for a in [e.get("file", "?"), *e.get("aliases", [])])
        quality = e.get("quality", {})
        score = (
            f"ppl {quality['perplexity']:.3f}"
            if "perplexity" in quality
            else f"chrF {quality['chrf']:.2f}"
            if "chrf" in quality
            else (f"acc {quality['accuracy']:.3f}" if "accuracy" in quality else "")
        )
        rows.append(
            (
                name,
                files,
                e.get("graph", ""),
                e.get("precision", ""),
                f"{e.get('bytes', 0) / 1e6:.2f}",
                score,
                _gate_text(e),
            )
        )
    head = (
        "variant",
        "files in onnx/",
        "graph",
        "precision",
        "MB",
        "quality",
        "quality gate (ort-cpu)",
    )
    return "\n".join(
        [
            "## ONNX variants",
            "",
            "From `onnx/manifest.json` (sizes include the weights file; quality on the held-out "
            "split; speed measured on CPU, batch 1). `model_quantized.onnx`, `model_q4.onnx`, "
            "`model_fp16.onnx` … are second names (hard links) of Optimum-layout variants, the "
            "file names Optimum and transformers.js look for.",
            "",
            _table(head, rows),
            "",
        ]
    )


def _gate_text(e: dict[str, Any]) -> str:
    gate = e.get("gate", {}).get("ort-cpu")
    if not gate:
        return "baseline" if e.get("precision") == "fp32" else ""
    verdict = "**recommended**" if e.get("recommended", {}).get("ort-cpu") else "not recommended"
    speed = gate.get("speed_verdict") or ("faster" if gate.get("faster") else "not faster")
    return f"{verdict}: {gate['speedup']:.2f}× fp32 ({speed}), {gate.get('quality_change', '')}"


def _how_to_run(f: _Facts) -> str:
    name = f.name
    if f.classifier:
        cli = f'edgezoo classify {name} "def add(a, b): return a + b"'
        api = f'clf = edgezoo.load("{name}")\nprint(clf.classify(["def add(a, b): return a + b"]))'
        hf = "AutoModelForSequenceClassification"
        hf_use = 'print(model(**tok("def add(a, b): return a + b", return_tensors="pt")).logits)'
    else:
        cli = f'edgezoo generate {name} "def parse_args("'
        api = f'lm = edgezoo.load("{name}")  # variant="auto": what the quality gate recommends\nprint(lm.variant, lm.generate("def parse_args(", max_new_tokens=40).text)'
        hf = "AutoModelForCausalLM"
        hf_use = 'ids = tok("def parse_args(", return_tensors="pt").input_ids\nprint(tok.decode(model.generate(ids, max_new_tokens=40)[0]))'
    onnx_note = "" if f.manifest["variants"] else f"\nExport it first: `edgezoo export {name}`.\n"
    return "\n".join(
        [
            "## How to run",
            onnx_note,
            "```bash",
            "pip install edgezoo",
            cli,
            "```",
            "",
            "```python",
            "import edgezoo",
            api,
            "```",
            "",
            "With transformers (the dir is a Hugging Face model dir):",
            "",
            "```python",
            f"from transformers import AutoTokenizer, {hf}",
            f'tok = AutoTokenizer.from_pretrained("{name}")',
            f'model = {hf}.from_pretrained("{name}")',
            hf_use,
            "```",
            "",
        ]
    )


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(v: float) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _existing_license(card: Path) -> str | None:
    """Keep a license someone wrote into the card's front matter across refreshes."""
    try:
        text = card.read_text()
    except OSError:
        return None
    if not text.startswith("---\n"):
        return None
    for line in text.split("\n---", 1)[0].splitlines():
        if line.startswith("license:"):
            return line.split(":", 1)[1].strip() or None
    return None
