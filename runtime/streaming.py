"""Incremental detokenisation: turn a stream of token ids into safe-to-print text deltas.

Byte-level BPE splits one multi-byte character (é, 日, 🙂) over several tokens, and decoding
a prefix that stops mid-character yields U+FFFD. Decoding each token alone is wrong for the
same reason, and re-decoding everything each step is O(n^2). So, like vLLM's detokenizer
and HF's ``TextStreamer``, we decode a short window of recent tokens twice — with and
without the newest ones — emit only what the newest ones added, and wait while the text
ends in U+FFFD. The window starts with the last emitted chunk as left context, which keeps
decoders that treat the first token specially (SentencePiece's leading "▁") consistent.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders

REPLACEMENT = "\ufffd"  # what a lossy UTF-8 decode makes of an incomplete character


class TextStreamer:
    """``push`` ids one at a time, print what it returns, then print ``flush()``.

    The deltas joined equal ``tokenizer.decode(ids, skip_special_tokens=...)`` of all pushed
    ids, and no delta ends inside a character. ``prompt_ids`` (optional) only give the first
    generated tokens their left context, so e.g. "▁world" after a prompt streams as " world";
    the prompt's own text is never emitted.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        context_tokens: int = 5,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # The window: ids[:read_offset] were emitted already and are kept only as left
        # context; ids[read_offset:] are pending (pushed but not yet emitted).
        self.ids: list[int] = list(prompt_ids)[-context_tokens:] if context_tokens > 0 else []
        self.read_offset = len(self.ids)
        self.byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is now final (often "", never half a char)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[: self.read_offset])
        new_text = self._decode(self.ids)
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""  # nothing new yet, or the last character is still incomplete
        self._advance()
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Emit whatever is held back (at the end of generation, a trailing U+FFFD is real)."""
        if self.read_offset == len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[: self.read_offset])
        new_text = self._decode(self.ids)
        self._advance()
        return new_text[len(prefix_text) :]

    def push_all(self, ids: Sequence[int]) -> str:
        """``push`` every id then ``flush``, joined: for callers that want only the final
        text (a whole generation, not streamed).

        With a byte-level decoder (every zoo tokenizer) this takes two decodes instead of two
        per id — a byte-level decode of a window is the bytes of its tokens, so the stream
        joined is the decode of the whole (tested on random ids). Other decoders (byte
        fallback, "▁" spaces) can place U+FFFD differently on invalid byte runs, so they
        stream as usual."""
        if not self.byte_level:
            return "".join(self.push(i) for i in ids) + self.flush()
        self.ids.extend(int(i) for i in ids)
        return self.flush()

    def _advance(self) -> None:
        """Mark all ids emitted; the chunk just emitted becomes the next window's context."""
        del self.ids[: self.read_offset]  # older ids are never decoded again: O(1) memory
        self.read_offset = len(self.ids)
