"""Limits, faults and security defaults: every refusal is an OpenAI error with the right status and no internals."""
import asyncio
import json

import pytest

from d2f.engine.decoding import Algorithm
from tests.support.server_fixtures import Client, clean_error, run

def test_body_size_cap(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], max_body_bytes=2000) as c:
            declared = await c.post("/v1/completions", json={"prompt": "x" * 5000})

            async def chunks():
                for _ in range(10):
                    yield b'{"prompt": "' + b"y" * 300
            chunked = await c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
            ok = await c.post("/v1/completions", json={"prompt": "fine", "max_tokens": 2})
            return declared, chunked, ok
    declared, chunked, ok = run(main())
    assert "exceeds 2000 bytes" in clean_error(declared, 413)["message"]
    clean_error(chunked, 413)
    assert ok.status_code == 200


@pytest.mark.parametrize("raw", [
    b'{"prompt": "\xff\xfe bad utf8"}',
    b'{"prompt": "x", "temperature": NaN}',
    b'{"prompt": "x", "max_tokens": 1e30}',
    b'{"prompt": "x", "top_p": Infinity}',
    b'{"prompt": "x", "max_tokens": 99999999999999999999999999}',
    b'{"prompt": {"nested": 1}}',
    b'[1, 2, 3]',
    b'',
])
def test_garbage_bodies_are_400(model_dirs, raw):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            return await c.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    clean_error(run(main()), 400)


@pytest.mark.parametrize("body,fragment", [
    ({"prompt": "word " * 600, "max_tokens": 4}, "the model's context is 512"),
    ({"prompt": "x", "max_tokens": 600}, "the model's context is 512"),
    ({"prompt": ["a"] * 65}, "at most 64 prompts"),
    ({"prompt": "x", "n": 17}, "n"),
    ({"prompt": "x", "n": 2, "best_of": 3}, "best_of"),
])
def test_caps(model_dirs, body, fragment):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            return await c.post("/v1/completions", json=body)
    assert fragment in clean_error(run(main()), 400)["message"]


def test_too_many_messages(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            return await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}] * 1025})
    clean_error(run(main()), 400)


def test_kv_pool_too_small_names_both_numbers(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], kv_cache_memory=64 * 1024) as c:
            return await c.post("/v1/completions", json={"prompt": "word " * 60, "max_tokens": 50})
    msg = clean_error(run(main()), 400)["message"]
    assert "KV pool holds" in msg and "needs" in msg


def test_request_timeout_aborts_and_frees_kv(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], request_timeout=0.3) as c:
            engine = c._transport.app.state.d2f.engine
            body = {"prompt": "a", "max_tokens": 480, "ignore_eos": True}
            plain = await c.post("/v1/completions", json=body)
            streamed = await c.post("/v1/completions", json=body | {"stream": True})
            for _ in range(300):
                if not engine.engine.requests and engine.engine.pool.num_free == engine.engine.pool.num_pages:
                    break
                await asyncio.sleep(0.01)
            return plain, streamed, engine.engine.pool.num_free == engine.engine.pool.num_pages
    # The tiny model is fast: slow it down so the timeout certainly fires first.
    real = Algorithm.commit

    def slow(*a):
        import time
        time.sleep(0.01)
        return real(*a)
    Algorithm.commit = slow
    try:
        plain, streamed, freed = run(main())
    finally:
        Algorithm.commit = real
    assert clean_error(plain, 503)["code"] == "timeout"
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    frames = [json.loads(f[6:]) for f in streamed.text.split("\n\n")[:-2]]
    assert frames[-1]["error"]["code"] == "timeout"
    assert freed


def test_one_failing_request_does_not_touch_others(model_dirs, monkeypatch):
    real = Algorithm.commit

    def flaky(self, seq, *a):
        if seq.prompt_ids[:1] == [9]:  # the poisoned prompt
            raise IndexError("/secret/path torch internals")
        return real(self, seq, *a)
    monkeypatch.setattr(Algorithm, "commit", flaky)

    async def main():
        async with Client(model_dirs["ar"]) as c:
            good = {"prompt": [5, 6, 7], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
            alone = await c.post("/v1/completions", json=good)
            results = await asyncio.gather(
                c.post("/v1/completions", json=good),
                c.post("/v1/completions", json=good | {"prompt": [9, 9]}),
                c.post("/v1/completions", json=good | {"prompt": [9, 9], "stream": True}))
            health = await c.get("/health")
            return alone, results, health
    alone, (ok, bad, bad_stream), health = run(main())
    assert ok.json()["choices"][0]["text"] == alone.json()["choices"][0]["text"]
    clean_error(bad, 500)
    assert "error" in bad_stream.text and "secret" not in bad_stream.text and bad_stream.text.endswith("[DONE]\n\n")
    assert health.status_code == 200


def test_dead_engine_fails_waiters_and_health(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            state = c._transport.app.state.d2f
            engine = state.engine.engine

            def die():
                raise SystemExit("engine thread killed")
            engine.step = die  # the thread's next step kills it
            r = await asyncio.wait_for(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 4}), 30)
            after = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
            return r, after, await c.get("/health")
    r, after, health = run(main())
    assert r.status_code == 503 and after.status_code == 503
    assert health.status_code == 503


def test_cors_off_by_default_and_on_when_asked(model_dirs):
    async def main(**kw):
        async with Client(model_dirs["ar"], **kw) as c:
            return await c.options("/v1/models", headers={"Origin": "https://a.example",
                                                          "Access-Control-Request-Method": "GET"})
    off = run(main())
    on = run(main(allowed_origins=["https://a.example"]))
    assert "access-control-allow-origin" not in off.headers
    assert on.headers["access-control-allow-origin"] == "https://a.example"


def test_protect_metrics(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], api_keys=["k"], protect_metrics=True) as c:
            return await c.get("/metrics"), await c.get("/metrics", headers={"Authorization": "Bearer k"})
    denied, allowed = run(main())
    clean_error(denied, 401)
    assert allowed.status_code == 200 and "d2f_requests_running" in allowed.text
