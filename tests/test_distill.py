"""``edgezoo train --distill-from``: the loss, the checks, and that a distilled student
ends closer to its teacher than the same student trained alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import lm_train_config, loss_curve

from edgezoo.errors import ConfigError
from edgezoo.zoo.distill import distillation_loss
from edgezoo.zoo.train import train


def test_loss_is_cross_entropy_at_weight_zero_and_zero_against_itself():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    ce = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    assert torch.allclose(distillation_loss(logits, logits * 3, targets, 2.0, 0.0), ce)
    assert distillation_loss(logits, logits, targets, 2.0, 1.0).abs() < 1e-6


def test_loss_is_t_squared_kl_per_token():
    torch.manual_seed(1)
    s, t, y = torch.randn(3, 7), torch.randn(3, 7), torch.zeros(3, dtype=torch.long)
    temperature = 4.0
    p = F.softmax(t / temperature, -1)
    kl = (p * (p.log() - F.log_softmax(s / temperature, -1))).sum(-1).mean()
    got = distillation_loss(s, t, y, temperature, 1.0)
    assert torch.allclose(got, temperature**2 * kl, atol=1e-6)


@pytest.fixture(scope="module")
def teacher(text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "t"
    train(lm_train_config(text_corpus, out, steps=60, checkpoint_every=1000))
    return out


def _kl_to_teacher(student_dir, teacher_dir, windows: np.ndarray) -> float:
    from edgezoo.zoo.modeldir import build_model, load_config, load_weights

    models = []
    for d in (student_dir, teacher_dir):
        m = build_model(load_config(d)).eval()
        load_weights(m, d / "model.safetensors")
        models.append(m)
    x = torch.from_numpy(windows)
    with torch.no_grad():
        s, t = (m(x)[0].float() for m in models)
    return F.kl_div(
        F.log_softmax(s, -1).reshape(-1, s.shape[-1]),
        F.log_softmax(t, -1).reshape(-1, t.shape[-1]),
        log_target=True,
        reduction="batchmean",
    ).item()


def test_distilled_student_is_closer_to_its_teacher(teacher, text_corpus, tmp_path):
    # Same student, same teacher tokenizer and steps; only the loss differs (weight 0: the
    # corpus alone, which trains exactly like a run without a teacher — tested below).
    student = dict(steps=40, layers=1, width=32, checkpoint_every=1000, vocab_size=None)
    runs = {}
    for name, weight in (("alone", 0.0), ("distilled", 1.0)):
        runs[name] = tmp_path / name
        train(
            lm_train_config(
                text_corpus,
                runs[name],
                **student,
                distill_from=str(teacher),
                distill_temperature=1.0,
                distill_weight=weight,
            )
        )
    distilled = runs["distilled"]
    assert (distilled / "tokenizer.json").read_bytes() == (teacher / "tokenizer.json").read_bytes()
    assert json.loads((distilled / "run.json").read_text())["distill_from"] == str(teacher)
    from edgezoo.zoo.tokenizer import load_tokenizer

    text = "".join(p.read_text() for p in sorted(text_corpus.iterdir())[-3:])
    ids = load_tokenizer(teacher).encode(text).ids[: 4 * 48]
    windows = np.array(ids, dtype=np.int64).reshape(4, 48)
    kl_distilled = _kl_to_teacher(distilled, teacher, windows)
    kl_alone = _kl_to_teacher(runs["alone"], teacher, windows)
    assert kl_distilled < 0.8 * kl_alone, (kl_distilled, kl_alone)


def test_weight_zero_trains_exactly_like_no_teacher(teacher, text_corpus, tmp_path):
    plain = tmp_path / "plain"
    train(lm_train_config(text_corpus, plain, steps=6, vocab_size=None, init_from=str(teacher)))
    ce_only = tmp_path / "ce"
    train(
        lm_train_config(
            text_corpus,
            ce_only,
            steps=6,
            vocab_size=None,
            init_from=str(teacher),
            distill_from=str(teacher),
            distill_weight=0.0,
        )
    )
    a, b = loss_curve(plain), loss_curve(ce_only)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_refuses_a_teacher_it_cannot_learn_from(teacher, text_corpus, tmp_path):
    from conftest import make_model_dir, tiny_bert, tiny_llama

    from edgezoo.zoo.modeldir import load_config
    from edgezoo.zoo.tokenizer import train_tokenizer

    def student(name, **kw):
        return lm_train_config(text_corpus, tmp_path / name, **{"vocab_size": None, **kw})

    with pytest.raises(ConfigError, match="drop --vocab-size"):
        train(student("a", vocab_size=600, distill_from=str(teacher)))
    too_long = load_config(teacher).max_position_embeddings + 1
    with pytest.raises(ConfigError, match="--context"):
        train(student("b", context=too_long, distill_from=str(teacher)))
    other_tok = train_tokenizer(iter(["completely different text " * 200]), vocab_size=300)
    other = tmp_path / "other-teacher"
    make_model_dir(other, tiny_llama(vocab_size=300), other_tok)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        train(student("c", init_from=str(teacher), distill_from=str(other)))
    classifier = tmp_path / "cls-teacher"
    make_model_dir(classifier, tiny_bert(), load_tokenizer_of(teacher))
    with pytest.raises(ConfigError, match="decoder LM"):
        train(student("d", distill_from=str(classifier)))


def load_tokenizer_of(model_dir):
    from edgezoo.zoo.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


def test_tokenizer_flag_trains_on_a_ready_tokenizer(teacher, text_corpus, tmp_path, monkeypatch):
    """``--tokenizer`` (a draft trained alone, but on its target's token ids): no tokenizer
    is trained, the model's vocabulary is the given one's, and bad paths say what to do."""
    import json

    from edgezoo.zoo import train_setup
    from edgezoo.zoo.modeldir import load_config
    from edgezoo.zoo.tokenizer import tokenizer_fingerprint

    def no_training(texts, vocab_size, max_chars=0):
        raise AssertionError("--tokenizer trained a tokenizer of its own")

    monkeypatch.setattr(train_setup, "train_tokenizer", no_training)
    wanted = load_tokenizer_of(teacher)
    for name, path in (("from-dir", teacher), ("from-file", teacher / "tokenizer.json")):
        out = tmp_path / name
        train(lm_train_config(text_corpus, out, steps=2, vocab_size=None, tokenizer=str(path)))
        assert tokenizer_fingerprint(load_tokenizer_of(out)) == tokenizer_fingerprint(wanted)
        assert load_config(out).vocab_size == wanted.get_vocab_size()
        assert json.loads((out / "run.json").read_text())["tokenizer"] == str(path)

    def run(name, **kw):
        train(lm_train_config(text_corpus, tmp_path / name, steps=2, **kw))

    with pytest.raises(ConfigError, match="drop one"):
        run("a", tokenizer=str(teacher))  # with the base config's --vocab-size 600
    with pytest.raises(ConfigError, match="drop --tokenizer"):
        run("b", vocab_size=None, tokenizer=str(teacher), init_from=str(teacher))
    with pytest.raises(ConfigError, match=r"no tokenizer\.json there"):
        run("c", vocab_size=None, tokenizer=str(tmp_path / "nowhere"))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"model": ')
    with pytest.raises(ConfigError, match="not a tokenizer file"):
        run("d", vocab_size=None, tokenizer=str(corrupt))
