"""Admission: the --max-queue cap (429) and the in-flight count the drain waits on.

A request takes its slots before its first await (tokenizing, the engine), so a burst of
concurrent requests cannot all pass the check before any of them reaches the engine.
"""
from __future__ import annotations

from starlette.responses import StreamingResponse


class Admission:
    def __init__(self, cap: int):
        self.cap = cap
        self.choices = 0   # engine requests admitted and not yet finished
        self.requests = 0  # HTTP requests holding them (what a drain waits for)

    def admit(self, n: int) -> Ticket | None:
        if self.choices + n > self.cap:
            return None
        self.choices += n
        self.requests += 1
        return Ticket(self, n)


class Ticket:
    """Held slots: released once, by the handler or, for a stream, by the response when it ends."""

    def __init__(self, admission: Admission, n: int):
        self._admission, self._n = admission, n
        self._held = True
        self.handed_off = False

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.choices -= self._n
            self._admission.requests -= 1

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        if not self.handed_off:
            self.release()


class AdmittedStream(StreamingResponse):
    """Releases its ticket however the stream ends: finished, failed, or the client gone before the
    first byte (then the body generator never starts, so its own finally would never run)."""

    def __init__(self, content, ticket: Ticket, **kw):
        super().__init__(content, **kw)
        ticket.handed_off = True
        self._ticket = ticket

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ticket.release()
