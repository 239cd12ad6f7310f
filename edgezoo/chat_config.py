"""The chat template a model dir carries, in ``tokenizer_config.json`` as transformers keeps it.

Training writes the zoo's default template for language models, and export adds it when a
model dir has none, so every zoo LM can answer chat requests (``edgezoo serve``'s
``/v1/chat/completions``) and ``tokenizer.apply_chat_template`` in transformers gives the
same prompt. Torch-free and jinja-free: rendering lives in ``runtime.chat_template``.

The default is ChatML-like with plain-text role markers, ending every message with the
tokenizer's ``</s>``, so a model fine-tuned on it learns to stop after its turn::

    <s><|system|>
    You are terse.</s>
    <|user|>
    Hi!</s>
    <|assistant|>
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgezoo import atomic

TOKENIZER_CONFIG = "tokenizer_config.json"

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatConfig:
    """What rendering a chat prompt needs: the Jinja template and the special tokens it uses."""

    template: str
    bos_token: str = ""
    eos_token: str = ""


def _token(value: Any) -> str:
    """A special token as transformers saves it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _template(value: Any) -> str | None:
    """``chat_template`` is a string, or a list of ``{"name", "template"}`` (use "default")."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        found = named.get("default")
        return found if isinstance(found, str) and found.strip() else None
    return None


def read_chat_config(model_dir: str | Path) -> ChatConfig | None:
    """The model dir's chat template, or None when it has none (or no readable config)."""
    path = Path(model_dir) / TOKENIZER_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    template = _template(data.get("chat_template"))
    if template is None:  # transformers >= 4.43 may keep it in its own file
        jinja = Path(model_dir) / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8") if jinja.is_file() else None
    if template is None:
        return None
    return ChatConfig(template, _token(data.get("bos_token")), _token(data.get("eos_token")))


def add_default_chat_template(model_dir: str | Path) -> bool:
    """Write ``DEFAULT_CHAT_TEMPLATE`` into the dir's tokenizer config if it has no template.

    Returns True when it wrote one. A dir without a tokenizer config is left alone (the
    runtime needs ``tokenizer.json`` only; chat then answers 400 saying how to add one).
    """
    path = Path(model_dir) / TOKENIZER_CONFIG
    if not path.is_file() or read_chat_config(model_dir) is not None:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    data["chat_template"] = DEFAULT_CHAT_TEMPLATE
    atomic.write_json(path, data)
    return True
