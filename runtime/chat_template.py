"""Render a chat prompt from messages with the model's Jinja template, as transformers does.

Same environment as ``PreTrainedTokenizerBase.apply_chat_template``: a sandboxed, immutable
Jinja environment (a template from a downloaded model dir cannot touch Python objects),
``trim_blocks`` / ``lstrip_blocks``, a ``raise_exception`` global and the variables
``messages``, ``add_generation_prompt``, ``bos_token`` and ``eos_token``. So the prompt
the server builds is the one transformers would build for the same dir.

jinja2 comes with the ``serve`` extra and is imported only when a prompt is rendered.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from edgezoo.chat_config import ChatConfig
from edgezoo.errors import InputError


class ChatTemplateError(InputError):
    """The template refused the messages (``raise_exception``) or could not be rendered."""


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    """Compile once per template: a server renders the same one for every request."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def render_chat(
    chat: ChatConfig,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` (dicts with ``role`` and ``content``).

    Raises ``ChatTemplateError`` (an ``InputError``: a 400 in the server) with the
    template's own message when it refuses the conversation or fails to render.
    """
    from jinja2 import TemplateError

    try:
        return _compiled(chat.template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=chat.bos_token,
            eos_token=chat.eos_token,
        )
    except TemplateError as e:
        raise ChatTemplateError(f"the model's chat template refused the messages: {e}") from None
    except Exception as e:  # a template bug (bad index, wrong type): the request cannot pass
        raise ChatTemplateError(
            f"the model's chat template failed on these messages ({type(e).__name__}: {e})."
        ) from None
