"""The OpenAI surface as clients call it: the official ``openai`` package against a real
uvicorn server on 127.0.0.1 (chat, completions with n / echo / logprobs / penalties /
token-id prompts, models.retrieve, /tokenize and /detokenize).

Answers are checked against the Python API on the same tiny exported model.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from conftest import make_model_dir, tiny_llama
from test_server import CONTEXT, local_client

from edgezoo import runtime
from edgezoo.chat_config import DEFAULT_CHAT_TEMPLATE, ChatConfig, read_chat_config
from edgezoo.export.onnx_export import to_onnx
from edgezoo.runtime.chat_template import ChatTemplateError, render_chat
from edgezoo.runtime.load_test import running_server
from edgezoo.runtime.sampling import SamplingParams, log_softmax
from edgezoo.runtime.server import create_app

openai = pytest.importorskip("openai")

MESSAGES = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "def main(args):"},
]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("oai-lm")
    make_model_dir(path, tiny_llama(max_position_embeddings=CONTEXT), tokenizer)
    to_onnx(path, greedy_steps=16, fast=False, optimize=False)
    return path


@pytest.fixture(scope="module")
def lm(lm_dir):
    return runtime.load(lm_dir, backend="ort-cpu")


@pytest.fixture(scope="module")
def url(lm):
    with running_server(create_app(lm, model_name="tiny", max_tokens_limit=64)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def chat_ids(lm, messages=MESSAGES) -> list[int]:
    prompt = render_chat(lm.chat_config, messages)
    return lm.tokenizer.encode(prompt, add_special_tokens=False).ids


# ---------------------------------------------------------------------- chat ---------------


def test_export_writes_the_default_chat_template_and_it_renders_chatml(lm, lm_dir):
    assert read_chat_config(lm_dir).template == DEFAULT_CHAT_TEMPLATE
    prompt = render_chat(lm.chat_config, MESSAGES)
    assert prompt == (
        "<s><|system|>\nYou write Python.</s>\n<|user|>\ndef main(args):</s>\n<|assistant|>\n"
    )
    with pytest.raises(ChatTemplateError, match="roles must be"):
        render_chat(lm.chat_config, [{"role": "tool", "content": "x"}])


def test_training_writes_the_template_and_export_adds_it_only_when_missing(tmp_path, tokenizer):
    from edgezoo.chat_config import add_default_chat_template
    from edgezoo.zoo.tokenizer import save_tokenizer

    save_tokenizer(tokenizer, tmp_path / "lm", 64, chat_template=DEFAULT_CHAT_TEMPLATE)
    chat = read_chat_config(tmp_path / "lm")
    assert (chat.template, chat.bos_token, chat.eos_token) == (DEFAULT_CHAT_TEMPLATE, "<s>", "</s>")
    assert not add_default_chat_template(tmp_path / "lm")  # a template is never replaced
    save_tokenizer(tokenizer, tmp_path / "cls", 64)
    assert read_chat_config(tmp_path / "cls") is None
    assert add_default_chat_template(tmp_path / "cls")
    assert read_chat_config(tmp_path / "cls").template == DEFAULT_CHAT_TEMPLATE


def test_templates_render_like_transformers(lm, lm_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(lm_dir))
    want = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert render_chat(lm.chat_config, MESSAGES) == want
    assert tok.apply_chat_template(MESSAGES, add_generation_prompt=True) == chat_ids(lm)
    refuse = ChatConfig("{% if messages|length > 1 %}{{ raise_exception('one only') }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="one only"):
        render_chat(refuse, MESSAGES)
    # trim_blocks / lstrip_blocks, as transformers: block tags leave no blank lines behind
    template = "{% for m in messages %}\n  {% if m.role == 'user' %}\n{{ m.content }}\n  {% endif %}\n{% endfor %}"
    assert render_chat(ChatConfig(template), MESSAGES) == "def main(args):\n"


def test_chat_equals_generate_on_the_rendered_prompt(client, lm):
    want = lm.generate_ids([chat_ids(lm)], SamplingParams(temperature=0, max_new_tokens=12))[0]
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=12
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == {"eos": "stop"}.get(want.finish_reason, want.finish_reason)
    assert r.usage.prompt_tokens == len(chat_ids(lm))
    assert r.usage.completion_tokens == len(want.token_ids)


def test_chat_stream_joins_to_the_same_text_and_ends_with_usage(client, lm):
    want = lm.generate_ids([chat_ids(lm)], SamplingParams(temperature=0, max_new_tokens=12))[0]
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_chat_logprobs_and_n(client, lm):
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        temperature=0,
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
        n=2,
    )
    assert len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content
    content = r.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)  # greedy


def test_chat_without_a_template_is_a_400_saying_how_to_add_one(lm):
    class NoTemplate:
        def __init__(self, inner):
            self.inner = inner
            self.chat_config = None

        def __getattr__(self, name):
            return getattr(self.inner, name)

    body = {"messages": MESSAGES, "max_tokens": 2}
    with local_client(create_app(NoTemplate(lm), model_name="bare")) as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert "chat_template" in r.json()["error"]["message"]
    assert "tokenizer_config.json" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role must be one of"),
        ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools is not supported"),
        ({"messages": MESSAGES, "top_logprobs": 2}, "needs logprobs=true"),
        ({"messages": MESSAGES, "logprobs": True, "stream": True}, "not streamed"),
        ({"messages": MESSAGES, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
    ],
)
def test_bad_chat_requests_are_400(url, body, says):
    r = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]


# ---------------------------------------------------------------------- completions --------


def test_n_copies_with_a_seed_differ_and_repeat(client):
    def ask():
        r = client.completions.create(
            model="tiny", prompt="import os", n=2, seed=7, temperature=1.5, max_tokens=8
        )
        return [c.text for c in r.choices], r.usage

    first, usage = ask()
    assert len(first) == 2 and first[0] != first[1]
    assert ask()[0] == first
    assert usage.completion_tokens > 0


def test_logprobs_equal_a_log_softmax_of_the_onnx_logits(client, lm):
    prompt = "def main(args):\n    return"
    r = client.completions.create(
        model="tiny", prompt=prompt, logprobs=2, temperature=0, max_tokens=5
    )
    lp = r.choices[0].logprobs
    ids = lm.encode([prompt])[0]
    generated = lm.generate_ids([ids], SamplingParams(max_new_tokens=5))[0].token_ids
    assert len(lp.tokens) == len(generated)
    for step, token in enumerate(generated):
        logits = lm._prefill_logits(np.array([ids + generated[:step]], np.int64))[0, -1]
        ref = log_softmax(logits[None])[0]
        assert lp.token_logprobs[step] == pytest.approx(ref[token], abs=1e-4)
        best = np.argsort(-ref)[:2]
        assert list(lp.top_logprobs[step].values()) == pytest.approx(ref[best].tolist(), abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens) == r.choices[0].text


def test_echo_prepends_the_prompt_plain_and_streamed(client):
    plain = client.completions.create(
        model="tiny", prompt="import os", echo=True, max_tokens=4, temperature=0
    )
    bare = client.completions.create(model="tiny", prompt="import os", max_tokens=4, temperature=0)
    assert plain.choices[0].text == "import os" + bare.choices[0].text
    stream = client.completions.create(
        model="tiny", prompt="import os", echo=True, max_tokens=4, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == plain.choices[0].text


def test_frequency_penalty_breaks_a_greedy_loop(client, lm):
    prompt = "x = 1\n" * 8
    plain = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=24)
    penalised = client.completions.create(
        model="tiny", prompt=prompt, temperature=0, max_tokens=24, frequency_penalty=2.0
    )
    assert penalised.choices[0].text != plain.choices[0].text
    want = lm.generate(prompt, SamplingParams(max_new_tokens=24, frequency_penalty=2.0))
    assert penalised.choices[0].text == want.text
    # a heavy penalty makes the greedy run use more distinct tokens than the plain one
    repeats = lm.generate(prompt, max_new_tokens=24).token_ids
    assert len(set(want.token_ids)) >= len(set(repeats))


def test_token_id_prompts_equal_text_prompts(client, lm):
    prompts = ["import os", "def main(args):\n    return"]
    ids = lm.encode(prompts)
    by_text = client.completions.create(model="tiny", prompt=prompts, temperature=0, max_tokens=6)
    by_ids = client.completions.create(model="tiny", prompt=ids, temperature=0, max_tokens=6)
    one = client.completions.create(model="tiny", prompt=ids[0], temperature=0, max_tokens=6)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    assert one.choices[0].text == by_text.choices[0].text
    with pytest.raises(openai.BadRequestError, match="token ids must be in"):
        client.completions.create(model="tiny", prompt=[1, 10**6], max_tokens=2)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompt": "hi", "echo": True, "logprobs": 1}, "echo with logprobs"),
        ({"prompt": "hi", "logprobs": 6}, "logprobs must be an integer from 0 to 5"),
        ({"prompt": "hi", "n": 9}, "1 <= n <= 8"),
        ({"prompt": ["a"] * 4, "n": 3}, "at most 8 per request"),
        ({"prompt": "hi", "presence_penalty": 3}, "presence_penalty=3"),
        ({"prompt": "hi", "best_of": 2}, "best_of is not supported"),
        ({"prompt": [[1, 2], []]}, "prompt must be"),
    ],
)
def test_bad_completion_fields_are_400(url, body, says):
    r = httpx.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]


# ---------------------------------------------------------------------- models, tokens -----


def test_models_retrieve(client):
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"


def test_tokenize_and_detokenize_round_trip(url, lm):
    text = "def main(args):\n    return 42"
    r = httpx.post(f"{url}/tokenize", json={"prompt": text}).json()
    assert r["tokens"] == lm.encode([text])[0] and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == CONTEXT
    back = httpx.post(f"{url}/detokenize", json={"tokens": r["tokens"]}).json()
    assert back == {"prompt": text}
    bad = httpx.post(f"{url}/detokenize", json={"tokens": [10**6]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]


def test_tokenize_needs_the_api_key_when_there_is_one(lm):
    with local_client(create_app(lm, model_name="tiny", api_key="k")) as c:
        assert c.post("/tokenize", json={"prompt": "hi"}).status_code == 401
        assert c.post("/detokenize", json={"tokens": [5]}).status_code == 401
        assert c.post("/v1/chat/completions", json={"messages": MESSAGES}).status_code == 401
        ok = c.post("/tokenize", json={"prompt": "hi"}, headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200, ok.text


def test_raw_chat_stream_has_openai_framing(url):
    body = {"messages": MESSAGES, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"


# ---------------------------------------------------------------------- embeddings ---------


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tokenizer):
    from conftest import tiny_bert

    path = tmp_path_factory.mktemp("oai-enc")
    cfg = tiny_bert(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=CONTEXT,
    )
    make_model_dir(path, cfg, tokenizer)
    to_onnx(path, fast=False, optimize=False)
    return path


def test_encoder_export_validates_its_hidden_states(encoder_dir):
    from edgezoo import manifest

    entry = manifest.read(encoder_dir)["variants"]["fp32"]
    assert [o["name"] for o in entry["outputs"]] == ["logits", "last_hidden_state"]
    assert entry["max_abs_diff_by_output"]["last_hidden_state"] < 1e-4


def test_embed_is_a_masked_mean_of_the_hidden_states(encoder_dir, tokenizer):
    import torch

    from edgezoo.zoo.modeldir import load_model

    enc = runtime.load(encoder_dir, backend="ort-cpu")
    texts = ["import os", "def main(args):\n    return 42"]
    got = enc.embed(texts)  # padded together in one batch
    model = load_model(encoder_dir).eval()
    for text, vector in zip(texts, got, strict=True):
        ids = torch.tensor([tokenizer.encode(text).ids])
        with torch.no_grad():
            mean = model.hidden_states(ids)[0].mean(0).numpy()
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)


def test_embeddings_through_the_openai_client(encoder_dir, lm):
    enc = runtime.load(encoder_dir, backend="ort-cpu")
    with running_server(create_app(enc, model_name="enc")) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        r = client.embeddings.create(model="enc", input=["import os", "import os", "x = 1"])
        plain = client.embeddings.create(model="enc", input="import os", encoding_format="float")
    vectors = np.array([d.embedding for d in r.data])
    assert r.object == "list" and [d.index for d in r.data] == [0, 1, 2]
    assert vectors.shape == (3, 32)  # the hidden size
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-6)
    assert float(vectors[0] @ vectors[2]) < 0.9999
    np.testing.assert_allclose(plain.data[0].embedding, vectors[0], atol=1e-6)
    assert r.usage.prompt_tokens == sum(
        len(ids) for ids in enc.encode(["import os", "import os", "x = 1"])
    )
    with local_client(create_app(lm, model_name="tiny")) as c:
        refused = c.post("/v1/embeddings", json={"input": "hi"})
    assert refused.status_code == 400 and "encoder model" in refused.json()["error"]["message"]
