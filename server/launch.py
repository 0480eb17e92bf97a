"""`d2f serve`: flags (each also settable as D2F_<FLAG> in the environment), uvicorn, graceful drain."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("d2f.server")

# (flag, type, default, help); booleans are store_true flags.
FLAGS = [
    ("model", str, None, "checkpoint directory, or smollm2 / smollm2-d2f: the embedded model as AR / as D2F (default: the embedded default)"),
    ("lora", str, None, "PEFT LoRA adapter directory, merged at load"),
    ("host", str, "127.0.0.1", "address to bind (default loopback only)"),
    ("port", int, 8000, "port"),
    ("served-model-name", str, None, "model name clients use (default: the directory name)"),
    ("api-key", str, None, "require 'Authorization: Bearer KEY' on /v1 (comma-separated for several keys)"),
    ("dtype", str, "auto", "auto | fp32 | bf16 | fp16"),
    ("device", str, "cpu", "cpu | cuda | cuda:N"),
    ("kv-cache-memory", int, None, "KV cache budget in bytes (default 1 GiB on CPU, half the free GPU memory)"),
    ("max-num-seqs", int, 64, "sequences decoded together"),
    ("max-num-batched-tokens", int, 2048, "tokens per forward (long causal prompts are chunked to this)"),
    ("max-model-len", int, None, "context limit (default: the model's)"),
    ("max-queue", int, 256, "running plus waiting requests before new ones get 429"),
    ("max-body-bytes", int, 4 << 20, "largest request body; larger ones get 413"),
    ("default-max-tokens", int, 1024, "chat completions that name no max_tokens"),
    ("request-timeout", float, 600.0, "seconds before a non-streamed request is aborted"),
    ("drain-timeout", float, 30.0, "seconds in-flight requests may finish after SIGTERM"),
    ("allowed-origins", str, None, "comma-separated CORS origins (default: CORS off)"),
    ("protect-metrics", bool, False, "require the API key on /metrics too"),
    ("log-requests", bool, False, "log prompts and outputs (off by default)"),
    ("log-level", str, "info", "debug | info | warning | error"),
]


def _env_name(flag: str) -> str:
    return "D2F_" + flag.upper().replace("-", "_")


def add_arguments(p: argparse.ArgumentParser) -> None:
    for flag, kind, default, help_text in FLAGS:
        env = os.environ.get(_env_name(flag))
        if kind is bool:
            on = default or (env is not None and env.lower() in ("1", "true", "yes", "on"))
            p.add_argument(f"--{flag}", action="store_true", default=on, help=f"{help_text} [{_env_name(flag)}]")
            continue
        p.add_argument(f"--{flag}", type=kind, default=kind(env) if env is not None else default,
                       help=f"{help_text} [{_env_name(flag)}]")


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from d2f.engine.models.registry import resolve_model, served_name
    from d2f.engine.models.families import CheckpointError

    from .app import ServerSettings, build_app

    t0 = time.monotonic()
    try:
        model = resolve_model(args.model)
        settings = ServerSettings(
            model=model, lora=args.lora,
            served_model_name=args.served_model_name or served_name(args.model),
            api_keys=_split(args.api_key), dtype=args.dtype, device=args.device,
            kv_cache_memory=args.kv_cache_memory, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
            max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
            default_max_tokens=args.default_max_tokens,
            request_timeout=args.request_timeout, drain_timeout=args.drain_timeout,
            protect_metrics=args.protect_metrics, allowed_origins=_split(args.allowed_origins),
            log_requests=args.log_requests)
        app = build_app(settings)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"d2f: error: {exc}", file=sys.stderr)
        return 2
    log.info("loading %s (health answers 503 until ready)", model)
    server = DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                                           timeout_graceful_shutdown=5), app.state.d2f)
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
