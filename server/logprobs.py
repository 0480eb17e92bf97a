"""Token log-probabilities in OpenAI's shapes.

Completions: {tokens, token_logprobs, top_logprobs, text_offset}, where top_logprobs[i] maps token text to
log-probability for the k best tokens and the chosen one, and text_offset is the character of the choice's
text where the token starts. Chat: {content: [{token, logprob, bytes, top_logprobs: [{token, logprob,
bytes}]}]}. A token whose bytes are not UTF-8 on their own (part of a character) is named "bytes:\\xNN...",
as OpenAI does. An entry whose logprob is None is the echoed prompt's first token, which nothing predicts.
"""
from __future__ import annotations

import codecs
import math
import re
from functools import lru_cache

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, read backwards: the character a byte is written as -> that byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_BYTE_LEVEL = _byte_level_alphabet()


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -Infinity


class TokenText:
    """Each token's exact bytes (from its vocabulary piece where the tokenizer says how: byte-level BPE and
    SentencePiece byte fallback; else its text alone) and its name: those bytes as text, or "bytes:\\xNN"."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.text = lru_cache(maxsize=1 << 16)(self._text)
        self.bytes = lru_cache(maxsize=1 << 16)(self._bytes)

    def _text(self, token: int) -> str:
        data = bytes(self.bytes(token))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    def _bytes(self, token: int) -> list[int]:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if isinstance(piece, str):
            if self.byte_level and piece and all(c in _BYTE_LEVEL for c in piece):
                return [_BYTE_LEVEL[c] for c in piece]
            m = _BYTE_TOKEN.fullmatch(piece)
            if m:
                return [int(m.group(1), 16)]
        return list(self.tokenizer.decode([token]).encode("utf-8"))


class TextOffsets:
    """Where each token starts in the text that the tokens' bytes spell, in characters: a token that
    continues a character starts at that character."""

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._chars = 0

    def next(self, data: list[int]) -> int:
        """The offset of the token with these bytes, the one after the tokens already seen."""
        if not data:
            return self._chars
        # The token starts in the character its first byte belongs to: the next one to come out while that
        # character is incomplete, else the last one out (bytes left pending before may have come out first).
        self._chars += len(self._utf8.decode(bytes(data[:1])))
        at = self._chars if self._utf8.getstate()[0] else self._chars - 1
        self._chars += len(self._utf8.decode(bytes(data[1:])))
        return at


def completion_logprobs(entries: list, names: TokenText, offsets: TextOffsets) -> dict:
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        text = names.text(e.token)
        out["tokens"].append(text)
        out["text_offset"].append(offsets.next(names.bytes(e.token)))
        if e.logprob is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(_finite(e.logprob))
        top: dict[str, float] = {}
        for token, logprob in e.top:  # best first: where two tokens read the same, the better one stays
            top.setdefault(names.text(token), _finite(logprob))
        top.setdefault(text, _finite(e.logprob))
        out["top_logprobs"].append(top)
    return out


def chat_logprobs(entries: list, names: TokenText) -> dict:
    def one(token: int, logprob: float) -> dict:
        return {"token": names.text(token), "logprob": _finite(logprob), "bytes": names.bytes(token)}

    return {"content": [one(e.token, e.logprob) | {"top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}
