"""`d2f serve`: flags (each also settable as D2F_<FLAG> in the environment), uvicorn, graceful drain."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time

from d2f.engine.cli_args import CAPACITY_FIELDS, MODEL_FIELDS, add_dataclass_arguments, flags
from d2f.engine.config import EngineConfig

from .settings import ServerSettings

log = logging.getLogger("d2f.server")

ENV_PREFIX = "D2F_"
GROUPS = [(EngineConfig, MODEL_FIELDS + CAPACITY_FIELDS), (ServerSettings, None)]


def serve_flags():
    """Every `d2f serve` flag, the engine's and the server's (each also D2F_<FLAG> in the environment)."""
    return [f for cls, include in GROUPS for f in flags(cls, include)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    for cls, include in GROUPS:
        add_dataclass_arguments(p, cls, include=include, env_prefix=ENV_PREFIX)


def run(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from d2f.engine.cli_args import engine_config, from_args
    from d2f.engine.models.families import CheckpointError
    from d2f.engine.models.registry import served_name

    from .app import build_app

    t0 = time.monotonic()
    try:
        settings = from_args(ServerSettings, args, engine=engine_config(args),
                             served_model_name=args.served_model_name or served_name(args.model))
        app = build_app(settings)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"d2f: error: {exc}", file=sys.stderr)
        return 2
    log.info("loading %s (health answers 503 until ready)", settings.engine.model)
    server = DrainingServer(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level.lower(), timeout_graceful_shutdown=5),
                            app.state.d2f)
    asyncio.run(server.serve())
    if server.engine_died:
        log.error("engine stopped: %s", app.state.d2f.engine.error)
        return 1
    log.info("stopped after %.0f s", time.monotonic() - t0)
    return 1 if server.undrained else 0


class DrainingServer:
    """uvicorn with a drain: the first SIGTERM/SIGINT turns /health to 503 and refuses new requests,
    lets in-flight ones finish up to drain_timeout, then stops; a second signal stops at once."""

    def __init__(self, config, state):
        import uvicorn

        outer = self

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                # Ours instead of uvicorn's: its handler stops at once and re-raises the signal on exit.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
                try:
                    yield
                finally:
                    for sig, handler in original.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig, frame):
                outer.loop.call_soon_threadsafe(outer._on_signal)

        self.server = _Server(config)
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.undrained = False
        self.engine_died = False

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(self._watch_engine())
        try:
            await self.server.serve()
        finally:
            watcher.cancel()

    def _on_signal(self) -> None:
        if self.stopping:
            log.warning("second signal: stopping now")
            self.server.force_exit = True
            self.server.should_exit = True
            return
        self.stopping = True
        self.state.draining = True
        log.info("draining: %d request(s) in flight, up to %.0f s", self.state.inflight,
                 self.state.settings.drain_timeout)
        self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.state.settings.drain_timeout
        while self.state.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.state.inflight:
            log.warning("drain timeout: aborting %d request(s)", self.state.engine.abort_all())
            grace = time.monotonic() + 5  # aborted streams send their final error event and end
            while self.state.inflight and time.monotonic() < grace:
                await asyncio.sleep(0.05)
            self.undrained = self.state.inflight > 0
        self.server.should_exit = True

    async def _watch_engine(self) -> None:
        """If the engine thread dies, stop serving so an orchestrator restarts the process."""
        while True:
            await asyncio.sleep(0.2)
            if self.state.engine.is_dead and not self.stopping:
                log.error("engine thread stopped; shutting down")
                self.stopping = self.engine_died = True
                self.server.should_exit = True
                return
