"""build_app(): the lifespan starts and stops the async engine; routes and error handlers are attached."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from d2f.engine.async_engine import AsyncEngine
from d2f.engine.engine import Engine

from . import errors, playground, routes
from .admission import Admission
from .limits import BodyLimit
from .logprobs import TokenText
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger("d2f.server")


class ServerState:
    """What the routes share: settings, engine, tokenizer, metrics, the drain flag."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.model_name = settings.model_name
        self.metrics = Metrics(self.model_name)
        self.tokenizer = None
        self.token_text = None  # each token's text and bytes, for logprobs
        self.draining = False
        self.admission = Admission(settings.max_queue)

        def build() -> Engine:
            from d2f.engine.tokenizer import load_tokenizer

            engine = Engine(settings.engine)
            tokenizer = load_tokenizer(settings.engine.model)
            if tokenizer is None:
                raise ValueError(f"{settings.engine.model}: no tokenizer files; the HTTP API needs one")
            self.token_text = TokenText(tokenizer)
            self.tokenizer = tokenizer
            return engine

        self.engine = AsyncEngine(build)

    @property
    def inflight(self) -> int:
        """HTTP requests being served: what a drain waits for."""
        return self.admission.requests

    @property
    def ready(self) -> bool:
        return self.engine.is_ready and self.tokenizer is not None and not self.draining


def build_app(settings: ServerSettings) -> FastAPI:
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.engine.start()
        waiter = asyncio.create_task(_announce_ready(state))
        try:
            yield
        finally:
            waiter.cancel()
            await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="d2f-serve", version="0.1.0", lifespan=lifespan)
    app.state.d2f = state
    errors.install(app)
    if settings.allowed_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.include_router(routes.router)
    if not settings.no_playground:
        app.include_router(playground.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


async def _announce_ready(state: ServerState) -> None:
    try:
        await state.engine.wait_ready()
    except Exception as exc:  # noqa: BLE001 - reported in the log and by /health
        log.error("model failed to load: %s", exc)
        return
    log.info("model %s ready: serving as %r", state.settings.engine.model, state.model_name)
