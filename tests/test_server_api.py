"""In-process HTTP tests: httpx over ASGI with the lifespan started, a tiny model with a real tokenizer."""
import asyncio
import json
import shutil
import subprocess

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from server.app import ServerSettings, build_app
from tests.server_fixtures import write_tiny_server_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    return {"ar": write_tiny_server_model(root / "ar"), "d2f": write_tiny_server_model(root / "d2f", d2f=True)}


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed (.ci/run installs Debian's prometheus package)"
    return path


def run(coro):
    return asyncio.run(coro)


class Client:
    """An app with its lifespan running, and an httpx client bound to it."""

    def __init__(self, model_dir, **settings):
        settings.setdefault("dtype", "fp32")
        settings.setdefault("kv_cache_memory", 1 << 24)
        self.app = build_app(ServerSettings(model=str(model_dir), **settings))
        self.state = self.app.state.d2f

    async def __aenter__(self):
        self.lifespan = LifespanManager(self.app, startup_timeout=60)
        await self.lifespan.__aenter__()
        await self.state.engine.wait_ready()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test",
                                      timeout=60)
        return self.http

    async def __aexit__(self, *exc):
        await self.http.aclose()
        await self.lifespan.__aexit__(*exc)


def sse_events(text: str) -> list:
    assert text.endswith("data: [DONE]\n\n")
    frames = text.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames)
    return [json.loads(f[6:]) for f in frames[:-1]]


def test_completion_stream_equals_non_stream(model_dirs):
    async def main():
        async with Client(model_dirs["d2f"]) as c:
            body = {"model": "d2f", "prompt": "Hello there", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
            full = (await c.post("/v1/completions", json=body)).json()
            r = await c.post("/v1/completions", json=body | {"stream": True,
                                                              "stream_options": {"include_usage": True}})
            return full, r
    full, r = run(main())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert text == full["choices"][0]["text"]
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes.count("length") == 1 and finishes[-1] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"] == full["usage"]
    assert full["usage"]["completion_tokens"] == 12 and full["usage"]["forwards"] >= 1
    assert full["usage"]["total_tokens"] == full["usage"]["prompt_tokens"] + 12


def test_chat_and_models(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], served_model_name="tiny") as c:
            models = (await c.get("/v1/models")).json()
            chat = (await c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "temperature": 0, "n": 2, "seed": 3})).json()
            return models, chat
    models, chat = run(main())
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert chat["object"] == "chat.completion" and len(chat["choices"]) == 2
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["choices"][0]["message"]["content"] == chat["choices"][1]["message"]["content"]  # greedy


def test_speed_knob_reaches_the_engine(model_dirs):
    async def main():
        async with Client(model_dirs["d2f"]) as c:
            out = {}
            for speed in ("quality", "fast"):
                r = await c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 16, "temperature": 0,
                                                          "ignore_eos": True, "speed": speed, "tau_conf": 0.05
                                                          if speed == "fast" else None})
                out[speed] = r.json()["usage"]["forwards"]
            return out
    forwards = run(main())
    assert forwards["fast"] < forwards["quality"]


def test_stop_string_is_never_emitted(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            body = {"prompt": "The quick", "max_tokens": 20, "temperature": 0, "ignore_eos": True}
            free = (await c.post("/v1/completions", json=body)).json()["choices"][0]["text"]
            stop = free[5:7]
            first = free.find(stop)
            res = (await c.post("/v1/completions", json=body | {"stop": [stop]})).json()
            st = await c.post("/v1/completions", json=body | {"stop": stop, "stream": True})
            return free, stop, first, res, st
    free, stop, first, res, st = run(main())
    assert res["choices"][0]["text"] == free[:first]
    assert res["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(e["choices"][0]["text"] for e in sse_events(st.text))
    assert streamed == free[:first] and stop not in streamed


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "logprobs": 2}, 400, None),
    ({"prompt": "x", "block_size": 3}, 400, None),
    ({"prompt": "x", "speed": "warp"}, 400, "speed"),
    ({"prompt": [], "max_tokens": 2}, 400, None),
    ({"prompt": "x", "max_tokens": 100000}, 400, None),
    ({"prompt": [1, 2, 999999]}, 400, None),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"max_tokens": 2}, 400, "prompt"),
])
def test_errors_are_openai_shaped(model_dirs, body, status, param):
    async def main():
        async with Client(model_dirs["d2f"]) as c:
            return await c.post("/v1/completions", json=body)
    r = run(main())
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param:
        assert err["param"] == param
    assert "Traceback" not in r.text and "/" not in err["message"].replace("/v1", "")


def test_malformed_json_is_400(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            return await c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    r = run(main())
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_api_key(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], api_keys=["k1", "k2"]) as c:
            none = await c.get("/v1/models")
            bad = await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
            good = await c.get("/v1/models", headers={"Authorization": "Bearer k2"})
            health = await c.get("/health")
            return none, bad, good, health
    none, bad, good, health = run(main())
    assert none.status_code == 401 and bad.status_code == 401 and good.status_code == 200
    assert none.json()["error"]["type"] == "authentication_error"
    assert health.status_code == 200


def test_queue_full_is_429(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], max_queue=1) as c:
            long = asyncio.create_task(c.post("/v1/completions", json={"prompt": "a", "max_tokens": 200,
                                                                       "ignore_eos": True}))
            while c._transport.app.state.d2f.engine.num_active == 0:
                await asyncio.sleep(0.01)
            second = await c.post("/v1/completions", json={"prompt": "b", "max_tokens": 2})
            first = await long
            return first, second
    first, second = run(main())
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"


def test_metrics_move_with_requests(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            before = (await c.get("/metrics")).text
            await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "ignore_eos": True})
            after = (await c.get("/metrics")).text
            return before, after

    def samples(text):
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out
    before, after = run(main())
    b, a = samples(before), samples(after)
    key = ("d2f_generation_tokens_total", (("model_name", "ar"),))
    assert a[key] - b.get(key, 0) == 3
    assert a[("d2f_requests_total", (("model_name", "ar"), ("outcome", "length")))] == 1
    assert a[("d2f_time_to_first_block_seconds_count", (("model_name", "ar"),))] == 1
    assert a[("d2f_kv_pages_capacity", (("model_name", "ar"),))] > 0
    lint = subprocess.run([_promtool(), "check", "metrics"], input=after, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_disconnect_frees_kv(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            engine = c._transport.app.state.d2f.engine
            async with c.stream("POST", "/v1/completions", json={"prompt": "a", "max_tokens": 400, "stream": True,
                                                                 "ignore_eos": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break  # the first block arrived: now hang up
            for _ in range(300):
                if engine.engine.pool.num_free == engine.engine.pool.num_pages and not engine.engine.requests:
                    return True
                await asyncio.sleep(0.01)
            return False
    assert run(main())


def test_health_is_503_while_loading(tmp_path):
    async def main():
        app = build_app(ServerSettings(model=str(tmp_path / "missing")))
        async with LifespanManager(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                first = await c.get("/health")
                req = await c.post("/v1/completions", json={"prompt": "x"})
                return first, req
    first, req = run(main())
    assert first.status_code == 503 and req.status_code == 503
