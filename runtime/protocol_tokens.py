"""The token-level side of the wire format: prompts to checked token ids (text or ids),
echoed prompt text, OpenAI's ``logprobs`` objects (completions and chat), and the bodies of
``/tokenize`` and ``/detokenize`` (vLLM's shapes). Plain functions over a model's tokenizer.

Token strings are each token decoded alone: a byte-level token that holds part of a
multi-byte character reads as U+FFFD, as in OpenAI's own ``tokens`` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgezoo.runtime.protocol import ApiError, _text


def _check_chars(model: Any, prompts: Sequence[str], limit: int) -> None:
    """No prompt longer than ``limit`` times the longest token can fit: refuse a megabyte
    prompt without the tokenizer ever reading it."""
    max_chars = limit * model.max_token_chars
    longest_chars = max(len(p) for p in prompts)
    if longest_chars > max_chars:
        raise ApiError(
            400,
            f"prompt is {longest_chars} characters; this server accepts at most {limit} tokens "
            f"(at most {max_chars} characters) per prompt: shorten the prompt.",
            param="prompt",
        )


def encode_prompts(
    model: Any,
    prompts: list[str],
    max_prompt_tokens: int | None,
    *,
    special_tokens: bool = True,
) -> list[list[int]]:
    """Each prompt's token ids, checked before queueing so one bad prompt never fails a batch.

    ``special_tokens=False`` leaves out the tokenizer's ``<s>``: a rendered chat prompt
    carries its own (``bos_token`` in the template), as with transformers'
    ``apply_chat_template``. Slow for long prompts: call it off the event loop.
    """
    longest = getattr(model, "max_prompt_len", model.context - 1)  # what check_ids accepts
    _check_chars(model, prompts, min(max_prompt_tokens or longest, longest))
    if special_tokens:
        return _within_limit(model.encode(prompts), max_prompt_tokens)  # InputError: context
    ids = [model.tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    return check_prompt_ids(model, ids, max_prompt_tokens)


def check_prompt_ids(
    model: Any, prompt_ids: Sequence[Sequence[int]], max_prompt_tokens: int | None
) -> list[list[int]]:
    """Token-id prompts checked like text ones: in the vocabulary, under the context
    (``LanguageModel.check_ids``: an ``InputError``, so a 400) and under the server's limit."""
    return _within_limit(model.check_ids(prompt_ids), max_prompt_tokens)


def _within_limit(encoded: list[list[int]], max_prompt_tokens: int | None) -> list[list[int]]:
    longest = max(len(ids) for ids in encoded)
    if max_prompt_tokens is not None and longest > max_prompt_tokens:
        raise ApiError(
            400,
            f"prompt is {longest} tokens but this server accepts at most {max_prompt_tokens}; "
            "shorten the prompt.",
            param="prompt",
        )
    return encoded


def echo_texts(tokenizer: Any, texts: list[str], prompt_ids: list[list[int]], n: int) -> list[str]:
    """Each row's echoed prompt: the text as sent, or the decoded ids of an id prompt."""
    prompts = texts or [tokenizer.decode(ids, skip_special_tokens=True) for ids in prompt_ids]
    return [p for p in prompts for _ in range(n)]


def token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([int(token_id)], skip_special_tokens=False)


def _kept(tokenizer: Any, generation: Any) -> list[tuple[str, Any]]:
    """(token text, logprob entry) for the tokens that made the choice's text: a stop
    string cuts the text, and the tokens that start after the cut are dropped."""
    kept, offset = [], 0
    for entry in generation.logprobs or []:
        if generation.finish_reason == "stop" and offset >= len(generation.text):
            break
        text = token_text(tokenizer, entry.token_id)
        kept.append((text, entry))
        offset += len(text)
    return kept


def completion_logprobs(tokenizer: Any, generation: Any) -> dict[str, Any]:
    """``/v1/completions``' ``logprobs`` object: tokens, token_logprobs, top_logprobs
    (dicts token text -> logprob, best first) and each token's offset in the choice text."""
    tokens, lps, tops, offsets, offset = [], [], [], [], 0
    for text, entry in _kept(tokenizer, generation):
        tokens.append(text)
        lps.append(entry.logprob)
        tops.append({token_text(tokenizer, t): lp for t, lp in entry.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _chat_token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer: Any, generation: Any) -> dict[str, Any]:
    """``/v1/chat/completions``' ``logprobs`` object: ``content`` lists each token with its
    ``top_logprobs`` (as many as the request's ``top_logprobs``)."""
    content = [
        {
            **_chat_token(text, entry.logprob),
            "top_logprobs": [_chat_token(token_text(tokenizer, t), lp) for t, lp in entry.top],
        }
        for text, entry in _kept(tokenizer, generation)
    ]
    return {"content": content, "refusal": None}


# ---------------------------------------------------------------------- /tokenize ----------


def parse_tokenize(body: dict[str, Any]) -> tuple[str, bool]:
    """``{"prompt": str, "add_special_tokens": bool = true}`` (vLLM's request)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, f"prompt must be a string, got {prompt!r:.80}.", param="prompt")
    special = body.get("add_special_tokens", True)
    if not isinstance(special, bool):
        raise ApiError(
            400,
            f"add_special_tokens must be true or false, got {special!r:.80}.",
            param="add_special_tokens",
        )
    return _text(prompt, "prompt"), special


def tokenize_body(model: Any, prompt: str, special_tokens: bool, max_chars: int) -> dict:
    """``{"tokens", "count", "max_model_len"}``; ``max_chars`` bounds the work of one call."""
    if len(prompt) > max_chars:
        raise ApiError(
            400,
            f"prompt is {len(prompt)} characters; /tokenize takes at most {max_chars}.",
            param="prompt",
        )
    ids = model.tokenizer.encode(prompt, add_special_tokens=special_tokens).ids
    return {"tokens": ids, "count": len(ids), "max_model_len": model.context}


def detokenize_body(model: Any, body: dict[str, Any]) -> dict[str, str]:
    """``{"tokens": [int, ...]}`` -> ``{"prompt": str}``; ids outside the vocabulary are a 400."""
    tokens = body.get("tokens")
    vocab = getattr(model, "vocab_size", None) or model.tokenizer.get_vocab_size()
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise ApiError(
            400, f"tokens must be a list of token ids, got {tokens!r:.80}.", param="tokens"
        )
    if tokens and (min(tokens) < 0 or max(tokens) >= vocab):
        raise ApiError(
            400, f"token ids must be in [0, {vocab}) for this model's vocabulary.", param="tokens"
        )
    return {"prompt": model.tokenizer.decode(tokens, skip_special_tokens=True)}
