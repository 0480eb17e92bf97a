"""OpenAI's response bodies: streamed chunks and whole responses, for completions and chat."""
from __future__ import annotations


class CompletionShape:
    object = "text_completion"

    def __init__(self, rid: str, created: int, model: str, include_usage: bool):
        self.head = {"id": rid, "object": self.object, "created": created, "model": model}
        self.include_usage = include_usage

    def chunk(self, d) -> dict:
        out = self.head | {"choices": [{"index": d.index, "text": d.text, "logprobs": None,
                                        "finish_reason": d.finish_reason}]}
        if self.include_usage:  # as OpenAI: every chunk has the key, only the last one a value
            out["usage"] = None
        return out

    def usage_chunk(self, usage: dict) -> dict:
        return self.head | {"choices": [], "usage": usage}

    def full(self, runs, usage: dict) -> dict:
        return self.head | {"choices": [{"index": r.index, "text": r.text, "logprobs": None,
                                         "finish_reason": r.finish_reason} for r in runs], "usage": usage}


class ChatShape(CompletionShape):
    object = "chat.completion.chunk"

    def __init__(self, *a):
        super().__init__(*a)
        self._started: set[int] = set()

    def chunk(self, d) -> dict:
        delta = {"content": d.text}
        if d.index not in self._started:  # the first chunk of each choice names the role
            self._started.add(d.index)
            delta = {"role": "assistant", "content": d.text}
        out = self.head | {"choices": [{"index": d.index, "delta": delta, "logprobs": None,
                                        "finish_reason": d.finish_reason}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def full(self, runs, usage: dict) -> dict:
        return self.head | {"object": "chat.completion",
                            "choices": [{"index": r.index, "message": {"role": "assistant", "content": r.text},
                                         "logprobs": None, "finish_reason": r.finish_reason} for r in runs],
                            "usage": usage}
