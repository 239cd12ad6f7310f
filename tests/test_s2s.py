"""The encoder–decoder family (T5): transformers parity, cache, presets."""

from __future__ import annotations

import pytest
import torch

from edgezoo.zoo.config import T5Config, config_from_hf_dict
from edgezoo.zoo.modeldir import build_model, load_model, save_model_dir
from edgezoo.zoo.presets import count_params, make_config, preset_names, summaries
from edgezoo.zoo.t5 import relative_position_bucket, shift_right

transformers = pytest.importorskip("transformers")


def _t5(ff: str = "gated-gelu", tied: bool = True, **kw) -> T5Config:
    return T5Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        feed_forward_proj=ff,
        tie_word_embeddings=tied,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=20,  # short, so the log-spaced buckets are used
        **kw,
    )


@pytest.mark.parametrize(
    ("ff", "tied", "extra"),
    [
        ("gated-gelu", True, {}),
        ("relu", False, {"explicit_head_dim": 8, "num_decoder_layers": 3}),
    ],
)
def test_t5_matches_transformers(tmp_path, ff, tied, extra):
    torch.manual_seed(0)
    model = build_model(_t5(ff, tied, **extra)).eval()
    save_model_dir(model, tmp_path)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(hf, transformers.T5ForConditionalGeneration)
    ids = torch.randint(4, 300, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # right-padded source
    dec = torch.randint(4, 300, (3, 33))
    with torch.no_grad():
        ours = model(ids, mask, dec)[0]
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        greedy = model.generate_greedy(ids, mask, max_new_tokens=10)
        hf_greedy = hf.generate(
            ids, attention_mask=mask, max_new_tokens=10, do_sample=False, use_cache=False
        )
    assert (ours - theirs).abs().max().item() <= 1e-4
    for row, hf_row in zip(greedy, hf_greedy.tolist(), strict=True):
        hf_row = hf_row[1:]  # drop the decoder start token
        if 2 in hf_row:
            hf_row = hf_row[: hf_row.index(2)]
        assert row == hf_row
    assert sum(p.numel() for p in model.parameters()) == count_params(model.config)


def test_cached_decoding_equals_teacher_forcing():
    torch.manual_seed(0)
    model = build_model(_t5()).eval()
    ids, dec = torch.randint(4, 300, (2, 15)), torch.randint(4, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 11:] = 0
    with torch.no_grad():
        full = model(ids, mask, dec)[0]
        hidden = model.encode(ids, mask)
        logits, past = model.decode(dec[:, :4], hidden, mask)
        steps = [logits]
        for t in range(4, 9):
            logits, past = model.decode(dec[:, t : t + 1], None, mask, past)
            steps.append(logits)
    assert past[0][0].shape == (2, 4, 9, 16) and past[0][2].shape == (2, 4, 15, 16)
    assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-5


def test_save_load_round_trip_and_config_json(tmp_path):
    model = build_model(make_config("s2s", "nano", vocab_size=512)).eval()
    save_model_dir(model, tmp_path)
    again = load_model(tmp_path)
    assert again.lm_head.weight is again.shared.weight  # still tied
    ids = torch.randint(4, 512, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids, None, ids)[0], again(ids, None, ids)[0])
    cfg = config_from_hf_dict(model.config.to_hf_dict())
    assert cfg == model.config and cfg.family == "s2s"


def test_relative_buckets_match_transformers():
    rel = torch.arange(-200, 200)[None]
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    for bidirectional in (True, False):
        ours = relative_position_bucket(rel, bidirectional, 32, 128)
        assert torch.equal(ours, ref(rel, bidirectional, 32, 128))


def test_shift_right_reads_ignored_labels_as_padding():
    labels = torch.tensor([[5, 6, 2, -100]])
    assert shift_right(labels, 0, 0).tolist() == [[0, 5, 6, 2]]


def test_s2s_presets_climb_the_ladder():
    s2s = {s.name: s.params for s in summaries() if s.family == "s2s"}
    assert {"nano", "micro", "mini", "small", "medium", "base"} <= set(s2s)
    assert list(s2s.values()) == sorted(s2s.values())
    assert 0.5e6 < s2s["nano"] < 3e6
    assert 200e6 < s2s["base"] < 300e6  # T5 v1.1 base: 248M
    for name in ("nano", "micro"):
        model = build_model(make_config("s2s", name))
        assert sum(p.numel() for p in model.parameters()) == count_params(model.config)
    assert preset_names("s2s")[0] == "nano"
