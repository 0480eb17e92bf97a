"""Errors the engine raises at its callers."""
from __future__ import annotations


class RequestError(ValueError):
    """A request this engine cannot run (a bad knob, prompt or id): the client's fault, with a message
    written for the client. Any other exception from the engine is a bug, never shown to a client."""
