"""Thin handlers: check, admit, tokenize off the loop, hand to serving."""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from d2f.engine.errors import RequestError

from .admission import AdmittedStream, Ticket
from .errors import APIError, internal_error
from .protocol import ChatCompletionRequest, CompletionRequest
from .serving import ChoiceRun, collect_unless_gone, stream_events, usage
from .shapes import ChatShape, CompletionShape

router = APIRouter()


def _state(request: Request):
    return request.app.state.d2f


def _check_key(request: Request, keys: list[str]) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    ok = scheme.lower() == "bearer" and any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)
    if not ok:
        raise APIError(401, "missing or invalid API key (Authorization: Bearer <key>)", code="invalid_api_key")


def require_key(request: Request) -> None:
    keys = _state(request).settings.api_keys
    if keys:
        _check_key(request, keys)


def _admit(state, model: str | None, n: int) -> Ticket:
    """Model name, readiness and the queue cap, in that order; no await until the slots are held."""
    if model is not None and model != state.model_name:
        raise APIError(404, f"model {model!r} does not exist; this server serves {state.model_name!r}",
                       param="model", code="model_not_found")
    if state.draining:
        raise APIError(503, "server is shutting down")
    if not state.ready:
        raise APIError(503, "model is not ready" if not state.engine.is_dead else "the engine is not running")
    ticket = state.admission.admit(n)
    if ticket is None:
        state.metrics.outcome("rejected", n)
        raise APIError(429, "server is at capacity, retry shortly", headers={"Retry-After": "1"})
    return ticket


def _params(state, body, prompt_ids: list[int], max_tokens: int | None, index: int):
    """DecodeParams for one choice, checked against the model now so a bad value is a 400, not a stream;
    None when the choice needs no model (echo with max_tokens 0 and no logprobs: the prompt is the answer)."""
    params = body.decode_params(max_tokens)
    echo_only = params.max_tokens == 0 and params.prompt_logprobs is None
    if body.seed is not None:
        params.seed = body.seed + index
    try:  # an echo alone still gets its prompt checked (token ids in the vocabulary, the context's length)
        state.engine.validate(prompt_ids, dataclasses.replace(params, max_tokens=1) if echo_only else params)
    except RequestError as exc:
        raise APIError(400, str(exc)) from None
    except Exception:  # noqa: BLE001 - our bug
        raise internal_error("request check failed") from None
    return None if echo_only else params


async def _tokenize(fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception:  # noqa: BLE001 - a tokenizer failure on odd input is the client's 400
        raise APIError(400, "the prompt could not be tokenized") from None


async def _serve(request: Request, state, ticket: Ticket, body, prompts: list[list[int]], max_tokens,
                 shape_cls, echo=None) -> Response:
    """echo: for a completion with echo, (prompt index) -> the text its choices send before the answer."""
    arrival = time.monotonic()
    runs = []
    for p_idx, ids in enumerate(prompts):
        limit = max_tokens(ids)
        params = [_params(state, body, ids, limit, j) for j in range(body.n)]
        text = await echo(p_idx) if echo else None  # once the prompt is known to be good
        for j in range(body.n):
            runs.append(ChoiceRun(state, p_idx * body.n + j, ids, params[j], body.stop_list(), arrival, echo=text))
    prompt_tokens = sum(len(p) for p in prompts) * body.n
    state.metrics.prompt_tokens.inc(prompt_tokens)
    include = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    shape = shape_cls(uuid.uuid4().hex, int(time.time()), state.model_name, include, state.token_text)
    timeout = state.settings.request_timeout
    if body.stream:
        final = (lambda: shape.usage_chunk(usage(runs, prompt_tokens))) if include else None
        events = stream_events(runs, shape.chunk, final, timeout)
        return AdmittedStream(events, ticket, media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    if not await collect_unless_gone(request, runs, timeout):
        return Response(status_code=499)  # nobody is listening; the choices were aborted
    return JSONResponse(shape.full(runs, usage(runs, prompt_tokens)))


@router.post("/v1/completions", dependencies=[Depends(require_key)])
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    raw = body.prompts()
    with _admit(state, body.model, body.n * len(raw)) as ticket:
        prompts = []
        for p in raw:
            ids = p if isinstance(p, list) else await _tokenize(state.tokenizer.encode, p)
            if not ids:
                raise APIError(400, "prompt is empty after tokenization", param="prompt")
            prompts.append(list(ids))

        async def echo(i: int) -> str:  # the prompt as sent; token ids as they decode
            return raw[i] if isinstance(raw[i], str) else await _tokenize(state.tokenizer.decode, prompts[i])

        return await _serve(request, state, ticket, body, prompts, lambda ids: body.max_tokens, CompletionShape,
                            echo if body.echo else None)


@router.post("/v1/chat/completions", dependencies=[Depends(require_key)])
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = _state(request)
    with _admit(state, body.model, body.n) as ticket:
        tok = state.tokenizer
        if not getattr(tok, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        ids = await _tokenize(lambda: tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                              return_dict=False))
        engine = state.engine
        requested = body.requested_max_tokens()

        def max_tokens(prompt_ids):
            if requested is not None:
                return requested
            # No limit named: what fits in the context, up to --default-max-tokens.
            block = body.block_size or engine.default_block_size
            room = engine.max_model_len - len(prompt_ids) - (block - 1)
            return max(1, min(state.settings.default_max_tokens, room))

        return await _serve(request, state, ticket, body, [list(ids)], max_tokens, ChatShape)


@router.get("/v1/models", dependencies=[Depends(require_key)])
async def models(request: Request):
    state = _state(request)
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                        "owned_by": "d2f-serve"}]}


@router.get("/health")
async def health(request: Request):
    state = _state(request)
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if state.engine.is_dead:
        return JSONResponse({"status": "engine stopped"}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(request: Request):
    state = _state(request)
    if state.settings.protect_metrics and state.settings.api_keys:
        _check_key(request, state.settings.api_keys)
    engine = state.engine
    pool = engine.pool
    if pool is not None:
        state.metrics.refresh(engine.stats, pool, engine.num_active)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
