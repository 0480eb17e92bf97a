"""The step stream (stream_options.include_steps): one event per forward that touched a choice, built from
the engine's StepRecord, and its SSE framing.

Each event is an SSE comment line, `: step {json}`. The SSE format has every client skip comment lines,
and the official openai clients do (a named `event:` would not do: openai-python parses any event's data
as one more chunk). So a client that asked for steps but does not read them still sees exactly the
chunks it would have seen without them."""
from __future__ import annotations

import json

DRAFTS = ("proposed", "accepted", "rejected")


class StepEvents:
    """Step records of one choice -> event dicts, with each token's text piece."""

    def __init__(self, tokenizer, index: int):
        self.tokenizer = tokenizer
        self.index = index
        self._pieces: dict[int, str] = {}

    def _slot(self, pos: int, token: int) -> dict:
        piece = self._pieces.get(token)
        if piece is None:  # special tokens too: an EOS the model commits is drawn like any token
            piece = self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return {"pos": pos, "id": token, "text": piece}

    def event(self, record) -> dict:
        out = {"index": self.index, "forward": record.forward, "blocks": [list(b) for b in record.blocks],
               "masked": record.masked, "committed": [self._slot(p, t) for p, t in record.committed]}
        for name in DRAFTS:  # only an algorithm that drafts fills these; absent means none
            items = getattr(record, name)
            if items:
                out[name] = [self._slot(p, t) for p, t in items]
        return out


def step_frame(event: dict) -> str:
    # ASCII JSON: every line break a token may hold (U+2028 and NEL too, which some line splitters honour)
    # is escaped, so the frame stays one comment line and no token can start a line of its own.
    return f": step {json.dumps(event, separators=(',', ':'))}\n\n"
