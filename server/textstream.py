"""Token ids -> text deltas: incremental detokenization that never splits a UTF-8 character, with stop
strings held back until resolved and never emitted."""
from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.sent = ""  # text already handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def update(self, ids: list[int], final: bool) -> tuple[str, bool]:
        """All answer ids so far -> (new text to send, whether a stop string ended the answer)."""
        text = self._decode(ids)
        if not final and text.endswith("\ufffd"):
            text = text[:-1]  # an incomplete UTF-8 character: wait for its next bytes
        if not text.startswith(self.sent):
            # A tokenizer may re-render earlier text once more tokens arrive; never retract sent text.
            return "", False
        hit = self._first_stop(text)
        if hit is not None:
            delta = text[len(self.sent):hit]
            self.sent = text[:hit]
            return delta, True
        end = len(text) if final else len(text) - self._holdback(text)
        end = max(end, len(self.sent))
        delta = text[len(self.sent):end]
        self.sent = text[:end]
        return delta, False

    def covering(self, ids: list[int], start: int) -> int:
        """The fewest answer tokens (at least start) whose text covers all the text sent so far: the tokens
        whose logprobs go out with it, so a stop string cuts the logprobs where it cuts the text."""
        k = start
        while k < len(ids) and len(self._decode(ids[:k])) < len(self.sent):
            k += 1
        return k

    def _first_stop(self, text: str) -> int | None:
        """Earliest start of a stop string; none can start inside sent text (its tail was held back)."""
        best = None
        for s in self.stop:
            i = text.find(s, len(self.sent))
            if i != -1 and (best is None or i < best):
                best = i
        return best

    def _holdback(self, text: str) -> int:
        """Length of the longest tail of text that could still grow into a stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    longest = max(longest, k)
                    break
        return longest
