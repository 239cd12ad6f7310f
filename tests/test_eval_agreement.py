"""One perplexity: training's eval.json, `edgezoo eval` and the quantize table agree.

All three measure the model's held-out split through ``edgezoo.heldout`` (same documents,
tokens, windows and cap); PyTorch and the fp32 ONNX graph then differ by float error only.
"""

from __future__ import annotations

import json

import pytest
from conftest import lm_train_config

from edgezoo import cli
from edgezoo.export.onnx_export import to_onnx
from edgezoo.quantize.evaluate import eval_data, measure
from edgezoo.quantize.report import variants_table
from edgezoo.zoo.train import train


@pytest.fixture(scope="module")
def trained_dir(text_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("agree") / "run"
    train(lm_train_config(text_corpus, run, steps=16))
    to_onnx(run, greedy_steps=8)
    return run


def test_train_eval_and_quantize_measure_the_same_perplexity(trained_dir, capsys):
    saved = json.loads((trained_dir / "eval.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(trained_dir)]) == 0
    printed = json.loads(capsys.readouterr().out)
    onnx = measure(trained_dir, "fp32", eval_data(trained_dir), runs=1)["quality"]
    assert saved["val_tokens"] == printed["tokens"] == onnx["tokens"] > 0
    for other in (printed["perplexity"], onnx["perplexity"]):
        assert other == pytest.approx(saved["val_ppl"], rel=1e-3)


def test_quantize_table_says_how_many_tokens(trained_dir):
    entry = {
        "graph": "gqa",
        "precision": "fp32",
        "bytes": 1e6,
        **measure(trained_dir, "fp32", eval_data(trained_dir), runs=1),
    }
    table = variants_table({"fp32": entry})
    assert f"{entry['quality']['tokens']:,} held-out tokens" in table
