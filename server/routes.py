"""Thin handlers: check, tokenize off the loop, hand to serving."""
from __future__ import annotations

import asyncio
import hmac
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .errors import APIError
from .protocol import ChatCompletionRequest, CompletionRequest
from .serving import ChoiceRun, collect, stream_events, usage

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


def _ready(state, n: int) -> None:
    if state.draining:
        raise APIError(503, "server is shutting down")
    if not state.ready:
        raise APIError(503, "model is not ready" if not state.engine.is_dead else "the engine is not running")
    if state.engine.num_active + n > state.settings.max_queue:
        state.metrics.outcome("rejected", n)
        raise APIError(429, "server is at capacity, retry shortly", headers={"Retry-After": "1"})


def _model(state, name: str | None) -> None:
    if name is not None and name != state.model_name:
        raise APIError(404, f"model {name!r} does not exist; this server serves {state.model_name!r}",
                       param="model", code="model_not_found")


def _params(state, body, prompt_ids: list[int], max_tokens: int | None, index: int):
    """DecodeParams for one choice, checked against the model now so a bad value is a 400, not a stream."""
    params = body.decode_params(max_tokens)
    if body.seed is not None:
        params.seed = body.seed + index
    try:
        state.engine.engine.validate(prompt_ids, params)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    return params


async def _serve(request: Request, state, body, prompts: list[list[int]], max_tokens, chunk, full) -> Response:
    stop = body.stop_list()
    n = body.n
    arrival = time.monotonic()
    runs = []
    for p_idx, ids in enumerate(prompts):
        limit = max_tokens(ids)
        for j in range(n):
            params = _params(state, body, ids, limit, j)
            runs.append(ChoiceRun(state, p_idx * n + j, ids, params, stop, arrival))
    prompt_tokens = sum(len(p) for p in prompts)
    state.metrics.prompt_tokens.inc(prompt_tokens * n)
    rid = uuid.uuid4().hex
    created = int(time.time())
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)

        def final_usage():
            return {"id": rid, "object": chunk.object, "created": created, "model": state.model_name,
                    "choices": [], "usage": usage(runs, prompt_tokens * n)}

        events = stream_events(runs, lambda d: chunk(rid, created, d, include), final_usage if include else None,
                               state.settings.request_timeout)
        return StreamingResponse(_counted(state, events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    state.inflight += 1
    try:
        await asyncio.wait_for(collect(runs), timeout=state.settings.request_timeout)
    except TimeoutError:  # wait_for cancelled the choices: their engine requests are aborted
        raise APIError(503, "request timed out", code="timeout") from None
    finally:
        state.inflight -= 1
    return JSONResponse(full(rid, created, runs, usage(runs, prompt_tokens * n)))


async def _counted(state, events):
    state.inflight += 1
    try:
        async for e in events:
            yield e
    finally:
        state.inflight -= 1


def _completion_chunk(rid, created, d, include_usage, model_name):
    out = {"id": rid, "object": "text_completion", "created": created, "model": model_name,
           "choices": [{"index": d.index, "text": d.text, "logprobs": None, "finish_reason": d.finish_reason}]}
    if include_usage:
        out["usage"] = None
    return out


def _chat_chunk(rid, created, d, include_usage, model_name, started: set):
    delta = {"content": d.text}
    if d.index not in started:  # the first chunk of each choice names the role
        started.add(d.index)
        delta = {"role": "assistant", "content": d.text}
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
           "choices": [{"index": d.index, "delta": delta, "logprobs": None, "finish_reason": d.finish_reason}]}
    if include_usage:
        out["usage"] = None
    return out


async def _tokenize(state, fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception:  # noqa: BLE001 - a tokenizer failure on odd input is the client's 400
        raise APIError(400, "the prompt could not be tokenized") from None


@router.post("/v1/completions", dependencies=[Depends(require_key)])
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    _model(state, body.model)
    _ready(state, body.n * len(body.prompts()))
    tok = state.tokenizer
    prompts = []
    for p in body.prompts():
        ids = p if isinstance(p, list) else await _tokenize(state, tok.encode, p)
        if not ids:
            raise APIError(400, "prompt is empty after tokenization", param="prompt")
        prompts.append(list(ids))

    def chunk(rid, created, d, include):
        return _completion_chunk(rid, created, d, include, state.model_name)
    chunk.object = "text_completion"

    def full(rid, created, runs, use):
        return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                "choices": [{"index": r.index, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                            for r in sorted(runs, key=lambda r: r.index)], "usage": use}

    return await _serve(request, state, body, prompts, lambda ids: body.max_tokens, chunk, full)


@router.post("/v1/chat/completions", dependencies=[Depends(require_key)])
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = _state(request)
    _model(state, body.model)
    _ready(state, body.n)
    tok = state.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, "this model has no chat template; use /v1/completions")
    messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
    ids = await _tokenize(state, lambda: tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                                  return_dict=False))
    engine = state.engine.engine
    requested = body.requested_max_tokens()

    def max_tokens(prompt_ids):
        if requested is not None:
            return requested
        block = body.block_size or engine.spec.block_size
        room = engine.max_model_len - len(prompt_ids) - (block - 1)
        return max(1, min(state.settings.default_max_tokens, room))

    started: set = set()

    def chunk(rid, created, d, include):
        return _chat_chunk(rid, created, d, include, state.model_name, started)
    chunk.object = "chat.completion.chunk"

    def full(rid, created, runs, use):
        return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
                "choices": [{"index": r.index, "message": {"role": "assistant", "content": r.text},
                             "logprobs": None, "finish_reason": r.finish_reason}
                            for r in sorted(runs, key=lambda r: r.index)], "usage": use}

    return await _serve(request, state, body, [list(ids)], max_tokens, chunk, full)


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
    engine = state.engine.engine
    if engine is not None:
        state.metrics.refresh(state.engine.stats, engine.pool.num_pages, state.engine.num_active)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
