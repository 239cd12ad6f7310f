"""The zoo families match transformers exactly, and the KV cache gives the same logits."""

from __future__ import annotations

import pytest
import torch

from edgezoo.zoo.config import BertConfig, LlamaConfig
from edgezoo.zoo.modeldir import build_model, load_model, save_model_dir
from edgezoo.zoo.presets import count_params, make_config, preset_names, summaries

transformers = pytest.importorskip("transformers")


def _llama(tied: bool, kv_heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )


@pytest.mark.parametrize(("tied", "kv_heads"), [(True, 2), (False, 4), (False, 1)])
def test_llama_matches_transformers(tmp_path, tied, kv_heads):
    torch.manual_seed(0)
    model = build_model(_llama(tied, kv_heads)).eval()
    save_model_dir(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="sdpa"
    ).eval()
    ids = torch.randint(4, 300, (3, 19))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, mask, pos)[0]
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert (ours - theirs)[mask.bool()].abs().max().item() <= 1e-4
    assert isinstance(hf, transformers.LlamaForCausalLM)
    assert sum(p.numel() for p in model.parameters()) == count_params(model.config)


def test_bert_matches_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        num_labels=5,
    )
    model = build_model(cfg).eval()
    save_model_dir(model, tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(4, 300, (3, 21))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0  # right padding
    with torch.no_grad():
        delta = (
            (model(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits).abs().max().item()
        )
    assert delta <= 1e-4
    assert hf.config.num_labels == 5
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg)


def test_kv_cache_prefill_then_decode_equals_full_forward():
    torch.manual_seed(0)
    model = build_model(_llama(True, 2)).eval()
    ids = torch.randint(4, 300, (2, 12))
    with torch.no_grad():
        full = model(ids)[0]
        logits, past = model(ids[:, :7], torch.ones(2, 7, dtype=torch.long))
        steps = [logits]
        for t in range(7, 12):
            mask = torch.ones(2, t + 1, dtype=torch.long)
            pos = torch.full((2, 1), t)
            logits, past = model(ids[:, t : t + 1], mask, pos, past)
            steps.append(logits)
    assert past[0][0].shape == (2, 2, 12, 16)
    assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-5


def test_save_and_load_round_trip(tmp_path):
    model = build_model(make_config("lm", "nano", vocab_size=512)).eval()
    save_model_dir(model, tmp_path)
    again = load_model(tmp_path)
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], again(ids)[0])
    assert again.lm_head.weight is again.model.embed_tokens.weight  # still tied


def test_preset_ladder_spans_1m_to_1b():
    lm = {s.name: s.params for s in summaries() if s.family == "lm"}
    assert len(lm) >= 7
    assert 0.5e6 < lm["nano"] < 2e6
    assert 0.9e9 < lm["xl"] < 1.5e9
    assert list(lm.values()) == sorted(lm.values())
    assert len(preset_names("cls")) >= 7


def test_llama_classifier_matches_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = _llama(True, 2)
    cfg.id2label = {0: "neg", 1: "pos", 2: "mixed"}
    cfg.__post_init__()
    model = build_model(cfg).eval()
    save_model_dir(model, tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 3
    ids = torch.randint(4, 300, (3, 15))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding, pad id 0 as transformers expects
    ids[1, 9:] = 0
    with torch.no_grad():
        delta = (
            (model(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits).abs().max().item()
        )
    assert delta <= 1e-4
    assert load_model(tmp_path).config.id2label == {0: "neg", 1: "pos", 2: "mixed"}


def test_a_saved_model_dir_has_the_usual_file_modes(tmp_path, tokenizer):
    import os

    from conftest import make_model_dir, tiny_llama

    umask = os.umask(0)
    os.umask(umask)
    make_model_dir(tmp_path, tiny_llama(), tokenizer)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_transformers_tokenizes_and_generates_from_a_model_dir_as_is(tmp_path, tokenizer):
    from conftest import make_model_dir, tiny_llama

    model = make_model_dir(tmp_path, tiny_llama(), tokenizer)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs = tok("def main():", return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}  # no token_type_ids for a Llama
    assert hf.generation_config.eos_token_id == model.config.eos_token_id
    out = hf.generate(**inputs, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
