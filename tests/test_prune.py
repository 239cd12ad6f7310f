"""Pruning: real shrinkage, the right channels removed, loadable dirs, sparsity, bad input."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from edgezoo.errors import ConfigError
from edgezoo.quantize import prune
from edgezoo.quantize.prune import (
    activation_importance,
    count_parameters,
    kept_count,
    linear_sparsity,
    low_rank_factorize,
    magnitude_prune,
    prune_dir,
    structured_prune,
)
from edgezoo.zoo.config import BertConfig, LlamaConfig
from edgezoo.zoo.modeldir import build_model, load_model, save_model_dir
from edgezoo.zoo.tokenizer import save_tokenizer

transformers = pytest.importorskip("transformers")

VOCAB = 600  # the shared test tokenizer's size (conftest.tokenizer)
TINY_LM = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
TINY_CLS = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    num_labels=3,
)
HEADS = 0.5


def lm(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(LlamaConfig(**TINY_LM)).eval()


def cls(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(BertConfig(**TINY_CLS)).eval()


def inputs(family: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (2, 13), generator=g)
    if family == "lm":
        return (ids,)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return ids, mask


@torch.no_grad()
def logits(model, family):
    out = model(*inputs(family))
    return out[0] if family == "lm" else out


def model_dir(path, model, tokenizer):
    save_model_dir(model, path)
    save_tokenizer(tokenizer, path, model.config.max_position_embeddings)
    return path


@pytest.mark.parametrize("family", ["lm", "cls"])
def test_pruning_nothing_changes_nothing(family):
    model = lm() if family == "lm" else cls()
    same, plans = structured_prune(model, heads=0.0, mlp=0.0)
    assert count_parameters(same) == count_parameters(model)
    assert torch.equal(logits(same, family), logits(model, family))
    assert all(p.units_kept == list(range(p.units_total)) for p in plans)


def test_llama_parameter_counts_shrink_by_the_expected_amounts():
    model = lm()
    pruned, plans = structured_prune(model, heads=HEADS, mlp=0.25)
    d, hd, layers = 64, 16, 2
    ch_removed = 32  # 0.25 of 128 channels, each a gate row, an up row and a down column
    per_layer = 3 * d * ch_removed
    if HEADS:  # one KV group of two: 2 query heads (q rows, o columns) and 1 k and 1 v head
        per_layer += 2 * (2 * hd * d) + 2 * (hd * d)
        cfg = pruned.config
        assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, hd)
        assert pruned.model.layers[0].self_attn.o_proj.weight.shape == (d, 2 * hd)
    assert count_parameters(model) - count_parameters(pruned) == layers * per_layer
    assert pruned.config.intermediate_size == 96
    assert pruned.model.layers[1].mlp.down_proj.weight.shape == (d, 96)
    assert [len(p.channels_kept) for p in plans] == [96, 96]
    from edgezoo.zoo.presets import count_params

    assert count_params(pruned.config) == count_parameters(pruned)


def test_bert_parameter_counts_shrink_by_the_expected_amounts():
    model = cls()
    pruned, _ = structured_prune(model, heads=HEADS, mlp=0.5)
    d, hd, layers = 64, 16, 2
    per_layer = 64 * (d + 1) + d * 64  # intermediate rows (+bias), output columns
    if HEADS:  # two heads of four: q/k/v rows (+bias) and attention-output columns
        per_layer += 3 * 2 * hd * (d + 1) + d * 2 * hd
        assert pruned.config.num_attention_heads == 4  # transformers' pruned_heads layout
        assert all(len(h) == 2 for h in pruned.config.pruned_heads.values())
        assert pruned.bert.encoder.layer[0].attention.self.query.weight.shape == (2 * hd, d)
    assert count_parameters(model) - count_parameters(pruned) == layers * per_layer
    from edgezoo.zoo.presets import count_params

    assert count_params(pruned.config) == count_parameters(pruned)


def _zero_lm_parts(model):
    """Make KV group 1 (layer 0), group 0 (layer 1) and 32 MLP channels contribute nothing."""
    dead_units = {0: [1], 1: [0]}
    dead_channels = {0: list(range(0, 64, 2)), 1: list(range(96, 128))}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for g in dead_units[i]:
                layer.self_attn.v_proj.weight[g * 16 : (g + 1) * 16] = 0
            if i == 0:
                layer.mlp.gate_proj.weight[dead_channels[0]] = 0
            else:
                layer.mlp.down_proj.weight[:, dead_channels[1]] = 0
    return dead_units, dead_channels


def _zero_cls_parts(model):
    dead_units = {0: [0, 3], 1: [1, 2]}
    dead_channels = {0: list(range(64)), 1: list(range(1, 128, 2))}
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            value = layer.attention.self.value
            for h in dead_units[i]:
                value.weight[h * 16 : (h + 1) * 16] = 0
                value.bias[h * 16 : (h + 1) * 16] = 0
            layer.intermediate.dense.weight[dead_channels[i]] = 0
            layer.intermediate.dense.bias[dead_channels[i]] = -30.0  # GELU(-30) = 0
    return dead_units, dead_channels


@pytest.mark.parametrize("importance", ["weight", "activation"])
@pytest.mark.parametrize("family", ["lm", "cls"])
def test_the_least_important_heads_and_channels_are_the_ones_removed(family, importance):
    model = lm() if family == "lm" else cls()
    dead_units, dead_channels = (_zero_lm_parts if family == "lm" else _zero_cls_parts)(model)
    if family == "cls" and importance == "weight":
        # weight importance cannot see a bias that switches a channel off: zero the output too
        with torch.no_grad():
            for i, layer in enumerate(model.bert.encoder.layer):
                layer.output.dense.weight[:, dead_channels[i]] = 0
    scores = activation_importance(model, [inputs(family)]) if importance == "activation" else None
    mlp = 32 / 128 if family == "lm" else 0.5
    pruned, plans = structured_prune(model, heads=HEADS, mlp=mlp, importance=scores)
    for p in plans:
        assert not set(p.channels_kept) & set(dead_channels[p.index])
        if HEADS:
            assert not set(p.units_kept) & set(dead_units[p.index])
    # what was removed contributed nothing, so the output is unchanged
    assert (logits(pruned, family) - logits(model, family)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["lm", "cls"])
def test_pruned_dir_loads_in_the_zoo_and_transformers_with_identical_logits(
    tmp_path, tokenizer, family
):
    model = lm() if family == "lm" else cls()
    src = model_dir(tmp_path / "src", model, tokenizer)
    report = prune_dir(src, tmp_path / "out", heads=HEADS, mlp=0.25, sparsity=0.2)
    out = tmp_path / "out"
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert json.loads((out / "prune.json").read_text())["params_after"] == report.params_after
    ours = load_model(out)
    assert count_parameters(ours) == report.params_after < report.params_before
    assert abs(linear_sparsity(ours) - report.sparsity) < 1e-9 and report.sparsity >= 0.19
    if family == "lm":
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        theirs = hf(input_ids=inputs("lm")[0]).logits
    else:
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
        ids, mask = inputs("cls")
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert count_parameters(hf) == count_parameters(ours)
    assert (logits(ours, family) - theirs.detach()).abs().max().item() <= 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_pruned_lm_exports_to_validated_onnx(tmp_path, tokenizer):
    from edgezoo.export.onnx_export import to_onnx

    src = model_dir(tmp_path / "src", lm(), tokenizer)
    prune_dir(src, tmp_path / "out", heads=HEADS, mlp=0.25)
    result = to_onnx(tmp_path / "out", greedy_steps=8, optimize=False)
    assert "fp32" in result.variants and result.variants["fp32"]["max_abs_diff"] <= 1e-4
    assert result.variants["fp32"]["greedy_steps"] == 8
    kv_heads = 1 if HEADS else 2
    assert result.variants["fp32"]["inputs"][3]["shape"][1:] == [
        kv_heads,
        "past_sequence_length",
        16,
    ]


@pytest.mark.parametrize("target", [0.3, 0.75])
def test_unstructured_sparsity_is_reached_within_one_percent(target):
    model = lm()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    reached = magnitude_prune(model, target)
    assert abs(reached - target) <= 0.01
    assert set(model.state_dict()) == set(dense)  # prune.remove: plain weights, same names
    assert torch.equal(model.model.embed_tokens.weight, dense["model.embed_tokens.weight"])
    # the smallest weights went: every surviving weight is at least every removed one
    w = torch.cat([m.weight.flatten() for _, m in prune.block_linears(model)])
    d = torch.cat([dense[f"{n}.weight"].flatten() for n, _ in prune.block_linears(model)])
    assert d[w == 0].abs().max() <= d[w != 0].abs().min()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan])
@pytest.mark.parametrize("name", ["heads", "mlp", "sparsity"])
def test_fractions_outside_zero_to_one_are_rejected(tmp_path, name, bad):
    with pytest.raises(ConfigError, match=rf"--{name} .*\[0, 1\)"):
        prune_dir(tmp_path / "missing", tmp_path / "out", **{name: bad})


def test_existing_output_dir_needs_force(tmp_path, tokenizer):
    src = model_dir(tmp_path / "src", lm(), tokenizer)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--force"):
        prune_dir(src, tmp_path / "out", mlp=0.5)
    with pytest.raises(ConfigError, match="new dir"):
        prune_dir(src, src, mlp=0.5)
    with pytest.raises(ConfigError, match="contains the model being pruned"):
        prune_dir(src, tmp_path, mlp=0.5, force=True)  # would delete src and every sibling
    assert (src / "model.safetensors").is_file()
    prune_dir(src, tmp_path / "out", mlp=0.5, force=True)
    assert not (tmp_path / "out" / "keep.txt").exists()
    assert load_model(tmp_path / "out").config.intermediate_size == 64


def test_config_json_describes_the_pruned_heads_the_way_transformers_reads_it(tmp_path):
    lm_pruned, _ = structured_prune(lm(), heads=0.5)
    cls_pruned, plans = structured_prune(cls(), heads=0.5)
    save_model_dir(lm_pruned, tmp_path / "lm")
    save_model_dir(cls_pruned, tmp_path / "cls")
    lm_json = json.loads((tmp_path / "lm" / "config.json").read_text())
    cls_json = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert (lm_json["num_attention_heads"], lm_json["num_key_value_heads"]) == (2, 1)
    assert lm_json["head_dim"] == 16 and lm_json["hidden_size"] == 64
    removed = {str(p.index): sorted(set(range(4)) - set(p.units_kept)) for p in plans}
    assert cls_json["pruned_heads"] == removed and cls_json["num_attention_heads"] == 4
    # pruning a pruned BERT again numbers heads as transformers does: by original index
    again, _ = structured_prune(cls_pruned, heads=0.5)
    assert all(len(h) == 3 for h in again.config.pruned_heads.values())
    assert all(set(removed[str(i)]) < set(h) for i, h in again.config.pruned_heads.items())


def test_rounding_keeps_at_least_one_unit():
    assert kept_count(2, 0.25) == 2  # half a KV group rounds to none
    assert kept_count(2, 0.5) == 1
    assert kept_count(2, 0.99) == 1
    assert kept_count(128, 0.3) == 90


def test_cli_prunes_finetunes_and_prints_the_table(tmp_path, tokenizer, text_corpus, capsys):
    src = model_dir(tmp_path / "src", lm(), tokenizer)
    parser = argparse.ArgumentParser()
    prune.add_prune_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "prune",
            str(src),
            "--heads",
            str(HEADS),
            "--mlp",
            "0.5",
            "--sparsity",
            "0.3",
            "--finetune-steps",
            "2",
            "--batch-size",
            "4",
            "--data",
            str(text_corpus),
            "--no-progress",
        ]
    )
    assert args.fn(args) == 0
    table = capsys.readouterr().out
    assert "params" in table and "perplexity" in table and "sparsity" in table
    out = tmp_path / "src-pruned"
    cfg = load_model(out).config
    assert cfg.intermediate_size == 64 and cfg.num_key_value_heads == (1 if HEADS else 2)
    assert linear_sparsity(load_model(out)) >= 0.29  # sparsified after the fine-tune
    assert (out / "training.jsonl").is_file() and not (out / "checkpoints").exists()
    record = json.loads((out / "prune.json").read_text())
    assert record["finetune_steps"] == 2 and record["metrics_after"]["perplexity"] > 1


@pytest.fixture
def one_thread():
    """64×64 SVDs gain nothing from threads; on a busy 2-core box they only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_low_rank_factorisation_reports_error_and_savings(one_thread):
    model = lm()
    with torch.no_grad():  # make one matrix exactly rank 4: its error must vanish
        q = model.model.layers[0].self_attn.q_proj.weight
        q.copy_(torch.randn(64, 4) @ torch.randn(4, 64))
    report = low_rank_factorize(model, 0.25)
    by_name = {r.name: r for r in report.layers}
    assert by_name["model.layers.0.self_attn.q_proj"].rel_error < 1e-5
    assert all(0 <= r.rel_error <= 1 and r.params_after < r.params_before for r in report.layers)
    assert report.params_after == count_parameters(model) < report.params_before
    assert logits(model, "lm").shape == (2, 13, VOCAB)  # still runs in PyTorch
    assert low_rank_factorize(lm(), 1.0).layers == []  # full rank saves nothing
    with pytest.raises(ConfigError):
        low_rank_factorize(lm(), 0.0)


def test_cli_rank_ratio_only_reports(tmp_path, tokenizer, capsys, one_thread):
    src = model_dir(tmp_path / "src", cls(), tokenizer)
    parser = argparse.ArgumentParser()
    prune.add_prune_parser(parser.add_subparsers())
    args = parser.parse_args(["prune", str(src), "--rank-ratio", "0.25", "--json"])
    assert args.fn(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params_after"] < report["params_before"] and len(report["layers"]) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written
