"""OpenAI's response bodies: streamed chunks and whole responses, for completions and chat."""
from __future__ import annotations

from .logprobs import TextOffsets, TokenText, chat_logprobs, completion_logprobs


class CompletionShape:
    object = "text_completion"

    def __init__(self, rid: str, created: int, model: str, include_usage: bool, names: TokenText | None = None):
        self.head = {"id": rid, "object": self.object, "created": created, "model": model}
        self.include_usage = include_usage
        self.names = names  # renders logprobs; only requests that ask for them need it
        self._offsets: dict[int, TextOffsets] = {}  # per choice, across its chunks

    def logprobs(self, index: int, entries: list | None) -> dict | None:
        if entries is None:
            return None
        return completion_logprobs(entries, self.names, self._offsets.setdefault(index, TextOffsets()))

    def chunk(self, d) -> dict:
        out = self.head | {"choices": [{"index": d.index, "text": d.text,
                                        "logprobs": self.logprobs(d.index, d.logprobs),
                                        "finish_reason": d.finish_reason}]}
        if self.include_usage:  # as OpenAI: every chunk has the key, only the last one a value
            out["usage"] = None
        return out

    def usage_chunk(self, usage: dict) -> dict:
        return self.head | {"choices": [], "usage": usage}

    def full(self, runs, usage: dict) -> dict:
        return self.head | {"choices": [{"index": r.index, "text": r.text, "logprobs": self._whole(r),
                                         "finish_reason": r.finish_reason} for r in runs], "usage": usage}

    def _whole(self, run) -> dict | None:
        return self.logprobs(run.index, run.logprobs) if run.wants_logprobs else None


class ChatShape(CompletionShape):
    object = "chat.completion.chunk"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._started: set[int] = set()

    def logprobs(self, index: int, entries: list | None) -> dict | None:
        return None if entries is None else chat_logprobs(entries, self.names)

    def chunk(self, d) -> dict:
        delta = {"content": d.text}
        if d.index not in self._started:  # the first chunk of each choice names the role
            self._started.add(d.index)
            delta = {"role": "assistant", "content": d.text}
        out = self.head | {"choices": [{"index": d.index, "delta": delta,
                                        "logprobs": self.logprobs(d.index, d.logprobs),
                                        "finish_reason": d.finish_reason}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def full(self, runs, usage: dict) -> dict:
        return self.head | {"object": "chat.completion",
                            "choices": [{"index": r.index, "message": {"role": "assistant", "content": r.text},
                                         "logprobs": self._whole(r), "finish_reason": r.finish_reason}
                                        for r in runs],
                            "usage": usage}
