"""Model cards: every saved, exported and quantized model dir describes itself in README.md."""

from __future__ import annotations

import json

import pytest
from conftest import make_model_dir, tiny_bert, tiny_llama

from edgezoo import manifest
from edgezoo.model_card import build_card, parameter_count, write_card


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_corpus):
    """`edgezoo train` itself: its card must include what train() writes after the save."""
    from edgezoo.cli import main

    out = tmp_path_factory.mktemp("card-lm")
    flags = "--steps 8 --batch-size 8 --context 64 --vocab-size 600 --warmup-steps 4 "
    flags += "--checkpoint-every 4 --log-every 1 --eval-every 1000 --no-progress"
    assert main(["train", "--data", str(text_corpus), "--out", str(out), *flags.split()]) == 0
    return out


def _front_matter(text: str) -> dict[str, str]:
    assert text.startswith("---\n")
    head = text.split("\n---\n", 1)[0].splitlines()[1:]
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in head if ":" in line)}


def test_trained_lm_dir_has_a_card_with_training_and_eval(trained):
    text = (trained / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert "- edgezoo" in text and "- llama" in text
    config = json.loads((trained / "config.json").read_text())
    params = parameter_count(trained / "model.safetensors")
    assert params and f"| parameters | {params:,} |" in text
    assert "| preset | nano |" in text
    assert f"| context | {config['max_position_embeddings']} tokens |" in text
    assert "| steps | 8 |" in text and "final training loss" in text
    assert "| tokens | 4,096 (8 × 64 per step) |" in text
    evals = json.loads((trained / "eval.json").read_text())
    assert f"| perplexity | {evals['val_ppl']:.4f} |" in text
    assert "edgezoo generate" in text and "edgezoo.load(" in text and "AutoModelForCausalLM" in text
    # checkpoints are inside the run dir: the card says so and .gitignore keeps them out
    assert (trained / "checkpoints").is_dir()
    assert "checkpoints/" in (trained / ".gitignore").read_text()
    assert '--exclude "checkpoints/*"' in text


def test_export_refreshes_the_card_with_the_variants_table(tmp_path, tokenizer):
    from edgezoo.export.onnx_export import to_onnx

    make_model_dir(tmp_path, tiny_bert(id2label={0: "a", 1: "b", 2: "c"}), tokenizer)
    assert "## ONNX variants" not in (tmp_path / "README.md").read_text()
    to_onnx(tmp_path, greedy_steps=0)
    text = (tmp_path / "README.md").read_text()
    assert _front_matter(text)["pipeline_tag"] == "text-classification"
    assert "## ONNX variants" in text and "| fp32 | `model.onnx` | portable | fp32 |" in text
    assert "edgezoo classify" in text and "AutoModelForSequenceClassification" in text


def test_card_keeps_a_license_written_by_hand_and_survives_missing_files(tmp_path, tokenizer):
    make_model_dir(tmp_path, tiny_llama(), tokenizer)
    card = tmp_path / "README.md"
    card.write_text(card.read_text().replace("library_name:", "license: mit\nlibrary_name:", 1))
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "manifest.json").write_text("{not json")
    write_card(tmp_path)
    assert _front_matter(card.read_text())["license"] == "mit"
    assert "## Training" not in build_card(tmp_path)  # no run.json / training.jsonl: no claims
    assert manifest.MANIFEST == "manifest.json"
