"""Request -> engine streams -> OpenAI JSON or SSE. One ChoiceRun per choice; n choices run concurrently."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from d2f.engine.async_engine import EngineDeadError
from d2f.engine.errors import RequestError
from d2f.engine.logprobs import TokenLogprob
from d2f.engine.params import DecodeParams

from .errors import INTERNAL, APIError, error_body, internal_error
from .steps import StepEvents, step_frame
from .textstream import TextStream

log = logging.getLogger("d2f.requests")


@dataclass
class Delta:
    index: int
    text: str
    finish_reason: str | None = None  # set on exactly one delta per choice
    error: str | None = None
    logprobs: list | None = None  # TokenLogprob of each token this delta's text came from, when asked
    steps: list[dict] | None = None  # step events since the previous delta (include_steps only)


@dataclass
class ChoiceRun:
    """One engine request, turned into text deltas."""
    state: object
    index: int
    prompt_ids: list[int]
    params: DecodeParams | None  # None: echo with max_tokens 0 and no logprobs, which needs no model
    stop: list[str]
    arrival: float
    echo: str | None = None  # the prompt's text, sent before the answer
    echoed: bool = False
    text: str = ""
    logprobs: list = field(default_factory=list)  # what the deltas carried: the echoed prompt's, then the answer's
    finish_reason: str | None = None
    completion_tokens: int = 0
    forwards: int = 0
    error: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def wants_logprobs(self) -> bool:
        return self.params is not None and self.params.logprobs is not None

    def _delta(self, text: str, finish_reason: str | None = None, logprobs: list | None = None,
               prompt_logprobs: list | None = None, steps: list[dict] | None = None) -> Delta:
        """A delta of this choice; the first one carries the echoed prompt (and its logprobs) before the answer."""
        if self.echo is not None and not self.echoed:
            self.echoed = True
            text = self.echo + text
            if prompt_logprobs is not None:  # the first prompt token has no log-probability: nothing predicts it
                logprobs = [TokenLogprob(self.prompt_ids[0], None, None)] + prompt_logprobs + (logprobs or [])
        self.text += text
        if logprobs is not None:
            self.logprobs.extend(logprobs)
        return Delta(self.index, text, finish_reason, logprobs=logprobs, steps=steps)

    async def deltas(self) -> AsyncIterator[Delta]:
        if self.params is None:
            self.finish_reason = "length"
            yield self._delta("", "length")
            self._record()
            return
        st = self.state
        stream = TextStream(st.tokenizer, self.stop)
        step_events = StepEvents(st.tokenizer, self.index)
        last = None
        sent = 0  # answer tokens whose logprobs were sent
        agen = st.engine.generate(self.prompt_ids, self.params, self.request_id)
        try:
            async for out in agen:
                steps = [step_events.event(r) for r in out.steps] if out.steps else None
                if out.new_token_ids or out.finished:  # a block (or the end), not just a step record
                    now = time.monotonic()
                    st.metrics.ttfb.observe(now - self.arrival) if last is None else st.metrics.inter_block.observe(
                        now - last)
                    if last is None and out.queue_seconds is not None:
                        st.metrics.queue.observe(out.queue_seconds)
                    last = now
                self.forwards = out.num_forwards
                if out.finish_reason == "error":
                    self.finish_reason, self.error = "error", out.error or "internal error"
                    yield Delta(self.index, "", "error", self.error)
                    return
                if out.finish_reason == "abort":  # the server aborted it: drain timeout
                    self.finish_reason, self.error = "abort", "request aborted: the server is shutting down"
                    yield Delta(self.index, "", "error", self.error)
                    return
                delta, stopped = stream.update(out.token_ids, out.finished)
                self.completion_tokens = len(out.token_ids)
                lps = None
                if out.logprobs is not None:
                    # The tokens behind the text sent so far: a stop string cuts logprobs where it cuts text.
                    # At the end, all of them, with a stop token's last (vLLM lists it; the text has none).
                    upto = len(out.logprobs) if out.finished and not stopped else stream.covering(out.token_ids, sent)
                    lps, sent = out.logprobs[sent:upto], upto
                first = self.echo is not None and not self.echoed
                if stopped:
                    self.finish_reason = "stop"
                    yield self._delta(delta, "stop", lps, out.prompt_logprobs, steps)
                    return  # leaving the engine stream aborts the request and frees its KV
                if out.finished:
                    self.finish_reason = out.finish_reason
                    yield self._delta(delta, out.finish_reason, lps, out.prompt_logprobs, steps)
                    return
                if delta or lps or first or steps:
                    yield self._delta(delta, None, lps, out.prompt_logprobs, steps)
        finally:
            await agen.aclose()
            self._record()

    def _record(self) -> None:
        if self.state.settings.log_requests:  # off by default: prompts and answers are the users' data
            log.info("request %s choice %d prompt_ids=%s finish=%s text=%r", self.request_id, self.index,
                     self.prompt_ids, self.finish_reason, self.text)
        m = self.state.metrics
        m.outcome(self.finish_reason or "abort")
        if self.finish_reason in ("stop", "length"):
            m.e2e.observe(time.monotonic() - self.arrival)
            m.forwards.observe(self.forwards)
            if self.forwards:
                m.tokens_per_forward.observe(self.completion_tokens / self.forwards)
        m.generation_tokens.inc(self.completion_tokens)


async def merged(runs: list[ChoiceRun]) -> AsyncIterator[Delta]:
    """Interleave the deltas of several choices as they arrive; cancelling stops every choice."""
    if len(runs) == 1:
        async with contextlib.aclosing(runs[0].deltas()) as deltas:  # closed, so aborted, the moment we stop
            async for d in deltas:
                yield d
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(run: ChoiceRun):
        try:
            async for d in run.deltas():
                await queue.put(d)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put(exc)
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(r)) for r in runs]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def usage(runs: list[ChoiceRun], prompt_tokens: int) -> dict:
    completion = sum(r.completion_tokens for r in runs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "forwards": sum(r.forwards for r in runs)}


def sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def collect(runs: list[ChoiceRun]) -> None:
    """Non-streamed: run every choice to the end; an engine failure becomes an error response."""
    try:
        async for _ in merged(runs):
            pass
    except EngineDeadError:
        raise APIError(503, "the engine is not running") from None
    except RequestError as exc:  # the engine refused a request (its messages are written for clients)
        raise APIError(400, str(exc)) from None
    except Exception:  # noqa: BLE001 - our bug
        raise internal_error("request failed") from None
    for r in runs:
        if r.finish_reason == "abort":
            raise APIError(503, r.error)
        if r.finish_reason == "error":
            raise APIError(500, r.error or "internal error")


async def _hung_up(request) -> None:
    """Returns when the client disconnects (the body is already read, so the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect_unless_gone(request, runs: list[ChoiceRun], timeout: float) -> bool:
    """collect() with a time limit; False if the client hung up first, whose choices are then aborted
    at once instead of decoding on for nobody."""
    work = asyncio.ensure_future(asyncio.wait_for(collect(runs), timeout))
    gone = asyncio.ensure_future(_hung_up(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()  # cancelling leaves every engine stream, which aborts its request
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():
        return False
    try:
        work.result()
    except TimeoutError:  # wait_for cancelled the choices: their engine requests are aborted
        raise APIError(503, "request timed out", code="timeout") from None
    return True


async def stream_events(runs: list[ChoiceRun], chunk, final_usage, timeout: float) -> AsyncIterator[str]:
    """SSE frames: chunk(delta) per block (step events before it if asked), an error event if a choice fails,
    usage, then [DONE]."""
    deltas = merged(runs)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                d = await asyncio.wait_for(deltas.__anext__(), max(0.0, deadline - time.monotonic()))
            except StopAsyncIteration:
                break
            except TimeoutError:  # cancelling the pending step aborts every choice and frees its KV
                yield sse(error_body(503, "request timed out", code="timeout"))
                break
            if d.error is not None:
                status = 503 if runs[0].state.draining else 500
                yield sse(error_body(status, d.error))
                continue
            for event in d.steps or ():  # before the chunk that carries their text
                yield step_frame(event)
            if d.text or d.finish_reason is not None:
                yield sse(chunk(d))
    except EngineDeadError:
        yield sse(error_body(503, "the engine is not running"))
    except RequestError as exc:  # the engine refused a request after all: the client's error
        yield sse(error_body(400, str(exc)))
    except Exception:  # noqa: BLE001 - our bug; the stream still ends in a well-formed way
        log.exception("stream failed")
        yield sse(error_body(500, INTERNAL))
    finally:
        await deltas.aclose()
    if final_usage is not None:
        yield sse(final_usage())
    yield "data: [DONE]\n\n"
