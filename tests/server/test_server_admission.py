"""The queue cap (429) under a burst, slots given back on every path, and client disconnects that abort at once.

Disconnects are driven through the raw ASGI interface: httpx's ASGITransport buffers the whole response
and never disconnects, so a test through it would pass even if nothing were aborted."""
import asyncio

from tests.support.server_fixtures import Client, asgi_call, metric_samples, run, spy_aborts

LONG = {"prompt": "a", "max_tokens": 480, "temperature": 0, "ignore_eos": True}


def test_burst_beyond_max_queue_gets_429(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], max_queue=2) as c:
            body = {"prompt": "b", "max_tokens": 60, "temperature": 0, "ignore_eos": True}
            # All six arrive together: the cap must hold although none has reached the engine yet.
            rs = await asyncio.gather(*[c.post("/v1/completions", json=body) for _ in range(6)])
            after = await c.post("/v1/completions", json=body | {"n": 2})
            too_many = await c.post("/v1/completions", json=body | {"n": 3})
            return rs, after, too_many, c._transport.app.state.d2f.admission
    rs, after, too_many, admission = run(main())
    assert sorted(r.status_code for r in rs) == [200, 200, 429, 429, 429, 429]
    refused = next(r for r in rs if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200  # the slots came back
    assert too_many.status_code == 429  # n choices are n engine requests
    assert admission.choices == 0 and admission.requests == 0


def test_refused_requests_give_their_slots_back(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], max_queue=1) as c:
            statuses = []
            for body in ({"prompt": [1, 10**6]}, {"prompt": "x", "max_tokens": 10**5}, {"prompt": ""},
                         {"prompt": "x", "max_tokens": 2, "stream": True}, {"prompt": "x", "max_tokens": 2}):
                statuses.append((await c.post("/v1/completions", json=body)).status_code)
            return statuses
    assert run(main()) == [400, 400, 400, 200, 200]


def _wait_until(predicate, seconds=30.0):
    async def poll():
        for _ in range(int(seconds / 0.01)):
            if predicate():
                return True
            await asyncio.sleep(0.01)
        return False
    return poll()


def _hang_up(model_dir, body, ready):
    """POST body, hang up once ready(engine, sent) holds; (sent messages, aborted outputs, KV freed,
    metric samples, admission slots still held)."""
    async def main():
        async with Client(model_dir) as c:
            state = c._transport.app.state.d2f
            engine = state.engine.engine
            aborted = spy_aborts(engine)
            hang_up, sent = asyncio.Event(), []
            call = asyncio.create_task(asgi_call(c._transport.app, "/v1/completions", body, hang_up, sent))
            assert await _wait_until(lambda: ready(engine, sent))
            hang_up.set()
            await call
            freed = await _wait_until(lambda: engine.pool.num_used == 0 and not engine.requests)
            return sent, aborted, freed, metric_samples((await c.get("/metrics")).text), state.admission.choices
    return run(main())


def test_stream_disconnect_aborts_and_frees_kv(model_dirs):
    # The first block is out: hang up.
    sent, aborted, freed, m, held = _hang_up(
        model_dirs["ar"], LONG | {"stream": True},
        lambda engine, sent: any(msg.get("body", b"").startswith(b"data: ") for msg in sent))
    assert sent[0]["status"] == 200
    assert len(aborted) == 1 and len(aborted[0].token_ids) < LONG["max_tokens"]  # cut short while decoding
    assert freed and held == 0
    assert m[("d2f_requests_total", (("model_name", "ar"), ("outcome", "abort")))] == 1
    assert m[("d2f_generation_tokens_total", (("model_name", "ar"),))] < LONG["max_tokens"]


def test_plain_request_disconnect_aborts_and_frees_kv(model_dirs):
    sent, aborted, freed, m, held = _hang_up(
        model_dirs["d2f"], LONG | {"n": 2},
        lambda engine, sent: len(engine.requests) == 2 and engine.pool.num_used > 0)
    assert len(aborted) == 2 and all(len(a.token_ids) < LONG["max_tokens"] for a in aborted)
    assert freed and held == 0
    assert m[("d2f_requests_total", (("model_name", "d2f"), ("outcome", "abort")))] == 2
    assert sent[0]["status"] == 499  # written to nobody


def test_stop_string_aborts_the_engine_request(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            aborted = spy_aborts(c._transport.app.state.d2f.engine.engine)
            body = LONG | {"prompt": "The quick"}
            free = (await c.post("/v1/completions", json=body | {"max_tokens": 20})).json()["choices"][0]["text"]
            r = await c.post("/v1/completions", json=body | {"stop": free[5:7]})
            return r.json(), aborted
    out, aborted = run(main())
    assert out["choices"][0]["finish_reason"] == "stop"
    assert len(aborted) == 1 and len(aborted[0].token_ids) < 20  # decoding stopped there, not 480 tokens later
