"""The thread boundary: one engine thread owns the model; asyncio callers get per-request streams.

Commands reach the thread through a queue.Queue; outputs come back only through
loop.call_soon_threadsafe, so the engine thread never touches an asyncio object itself.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from typing import AsyncIterator, Callable

from .engine import Engine
from .errors import RequestError
from .kv_cache import PagePool
from .outputs import RequestOutput, StepStats
from .params import DecodeParams

log = logging.getLogger("d2f.engine")


class EngineDeadError(RuntimeError):
    """The engine thread has stopped; no request can be served."""


class AsyncEngine:
    def __init__(self, engine_factory: Callable[[], Engine]):
        self._factory = engine_factory
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self.engine: Engine | None = None
        self.error: BaseException | None = None
        self.stats = StepStats()

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="d2f-engine", daemon=True)
        self._thread.start()

    async def wait_ready(self) -> None:
        while not self._ready.is_set():
            if self._stopped.is_set():
                raise EngineDeadError(f"engine failed to start: {self.error}")
            await asyncio.sleep(0.05)

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set() and not self._stopped.is_set()

    @property
    def is_dead(self) -> bool:
        return self._stopped.is_set()

    def shutdown(self, timeout: float | None = 30.0) -> None:
        self._commands.put(("stop", None, None, None))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def num_active(self) -> int:
        with self._lock:
            return len(self._streams)

    # ---- what callers on other threads may read or check (once ready) ---------------------
    def validate(self, prompt_ids: list[int], params: DecodeParams) -> None:
        """Every check generate() will make; RequestError if the engine would refuse the request."""
        self.engine.validate(prompt_ids, params)

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def default_block_size(self) -> int:
        return self.engine.spec.block_size

    @property
    def pool(self) -> PagePool | None:
        """The KV page pool, for its counters; None until the engine has loaded."""
        engine = self.engine
        return None if engine is None else engine.pool

    # ---- requests -------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: DecodeParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """Per-block outputs until finished. Raises RequestError for a request the engine refuses."""
        if self._stopped.is_set():
            raise EngineDeadError("engine is not running")
        loop = asyncio.get_running_loop()
        stream: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if request_id in self._streams:
                raise RequestError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = (loop, stream)
        self._commands.put(("add", request_id, list(prompt_ids), params))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:  # the consumer went away: free the request's KV at once
                self._commands.put(("abort", request_id, None, None))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None, None))

    def abort_all(self) -> int:
        """Abort every request with a listener (the drain deadline passed); returns how many."""
        with self._lock:
            ids = list(self._streams)
        for rid in ids:
            self.abort(rid)
        return len(ids)

    # ---- the engine thread ----------------------------------------------------------------
    def _deliver(self, request_id: str, item) -> None:
        with self._lock:
            target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            try:
                loop.call_soon_threadsafe(stream.put_nowait, item)
            except RuntimeError:  # that caller's loop has closed; nobody is listening
                pass

    def _handle(self, cmd) -> bool:
        kind, request_id, prompt, params = cmd
        engine = self.engine
        if kind == "stop":
            return False
        if kind == "add":
            try:
                engine.add_request(request_id, prompt, params)
            except Exception as exc:  # refused (RequestError) or our bug: that request alone fails
                self._deliver(request_id, exc)
        elif kind == "abort":
            out = engine.abort(request_id)
            if out is not None:
                self._deliver(request_id, out)
        return True

    def _run(self) -> None:
        try:
            self.engine = self._factory()
            self._ready.set()
            running = True
            while running:
                block = not self.engine.has_unfinished()
                while running:
                    try:
                        cmd = self._commands.get(block=block)
                    except queue.Empty:
                        break
                    running = self._handle(cmd)
                    block = False
                if not running:
                    break
                for out in self.engine.step():
                    self._deliver(out.request_id, out)
                self.stats = dataclasses.replace(self.engine.stats)
        except BaseException as exc:  # the engine itself broke: fail every waiter, report dead
            self.error = exc
            log.exception("engine thread died")
        finally:
            self._stopped.set()
            with self._lock:
                ids = list(self._streams)
            for rid in ids:
                self._deliver(rid, EngineDeadError("engine stopped"))
