"""In-process HTTP tests: httpx over ASGI with the lifespan started, a tiny model with a real tokenizer."""
import asyncio
import shutil
import subprocess

import httpx
import pytest
from asgi_lifespan import LifespanManager

from d2f.engine.config import EngineConfig
from d2f.server.app import ServerSettings, build_app
from d2f.server.protocol import ChatCompletionRequest, CompletionRequest
from tests.support.server_fixtures import Client, metric_samples, run, sse_events


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed (.ci/run installs Debian's prometheus package)"
    return path


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
    assert all("usage" in e and e["usage"] is None for e in events[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"] == full["usage"]
    assert full["usage"]["completion_tokens"] == 12 and full["usage"]["forwards"] >= 1
    assert full["usage"]["total_tokens"] == full["usage"]["prompt_tokens"] + 12


def test_many_prompts_and_choices_stream_one_finish_each(model_dirs):
    async def main():
        async with Client(model_dirs["d2f"]) as c:
            body = {"prompt": [[5, 6, 7], [8, 9]], "n": 2, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
            full = (await c.post("/v1/completions", json=body)).json()
            streamed = await c.post("/v1/completions", json=body | {"stream": True})
            return full, streamed
    full, streamed = run(main())
    assert [ch["index"] for ch in full["choices"]] == [0, 1, 2, 3]
    assert full["usage"]["prompt_tokens"] == (3 + 2) * 2
    events = sse_events(streamed.text)
    for i in range(4):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == i]
        assert sum(ch["finish_reason"] is not None for ch in mine) == 1 and mine[-1]["finish_reason"] == "length"
        assert "".join(ch["text"] for ch in mine) == full["choices"][i]["text"]
    assert full["choices"][0]["text"] == full["choices"][1]["text"]  # greedy: the same prompt, the same answer


def test_chat_and_models(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], served_model_name="tiny") as c:
            models = (await c.get("/v1/models")).json()
            msgs = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]
            chat = (await c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": msgs, "max_completion_tokens": 5, "temperature": 0, "n": 2,
                "seed": 3, "ignore_eos": True})).json()
            streamed = await c.post("/v1/chat/completions", json={
                "messages": msgs, "max_tokens": 5, "temperature": 0, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}})
            return models, chat, streamed
    models, chat, streamed = run(main())
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert chat["object"] == "chat.completion" and len(chat["choices"]) == 2
    assert chat["usage"]["completion_tokens"] == 10  # max_completion_tokens, for each of the n choices
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["choices"][0]["message"]["content"] == chat["choices"][1]["message"]["content"]  # greedy
    events = sse_events(streamed.text)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in e["choices"][0]["delta"] for e in events[1:-1])
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[:-1]) == chat["choices"][0]["message"]["content"]
    assert events[-1]["usage"]["completion_tokens"] == 5


def test_speed_presets_map_onto_the_taus():
    taus = {}
    for speed in ("quality", "balanced", "fast", 0.0, 0.3, 0.7, 1.0):
        p = CompletionRequest(prompt="x", speed=speed).decode_params(16)
        assert p.tau_conf == p.tau_act
        taus[speed] = p.tau_conf
    assert (taus["quality"], taus["balanced"], taus["fast"]) == pytest.approx((0.95, 0.9, 0.85))
    assert taus[0.0] > taus[0.3] > taus[0.7] > taus[1.0]  # monotone: faster means lower thresholds
    explicit = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], speed="fast", tau_conf=0.5,
                                     block_size=8, tau_add=0.2).decode_params(16)
    assert (explicit.tau_conf, explicit.tau_act, explicit.block_size, explicit.tau_add) == (0.5, pytest.approx(0.85),
                                                                                           8, 0.2)
    assert CompletionRequest(prompt="x").decode_params(16).tau_conf is None  # no knob: the model's own values


def test_speed_knob_reaches_the_engine(model_dirs):
    async def main(model):
        async with Client(model_dirs[model]) as c:
            out = {}
            for knob in ({"speed": "quality"}, {"speed": "fast", "tau_conf": 0.05}):
                r = await c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 16, "temperature": 0,
                                                          "ignore_eos": True, **knob})
                out[knob["speed"]] = (r.json()["usage"]["forwards"], r.json()["choices"][0]["text"])
            return out
    d2f = run(main("d2f"))
    assert d2f["fast"][0] < d2f["quality"][0]
    ar = run(main("ar"))  # an AR model ignores the knob: one forward per token, the same answer
    assert ar["fast"] == ar["quality"] and ar["fast"][0] == 16


def test_stop_string_is_never_emitted(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            body = {"prompt": "The quick", "max_tokens": 20, "temperature": 0, "ignore_eos": True}
            free = (await c.post("/v1/completions", json=body)).json()["choices"][0]["text"]
            stop = free[5:7]
            res = (await c.post("/v1/completions", json=body | {"stop": ["never-there", stop]})).json()
            st = await c.post("/v1/completions", json=body | {"stop": stop, "stream": True})
            return free, stop, res, st
    free, stop, res, st = run(main())
    first = free.find(stop)
    assert res["choices"][0]["text"] == free[:first]
    assert res["choices"][0]["finish_reason"] == "stop"
    events = sse_events(st.text)
    streamed = "".join(e["choices"][0]["text"] for e in events)
    assert streamed == free[:first] and stop not in streamed
    assert [e["choices"][0]["finish_reason"] for e in events].count("stop") == 1


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "n": True}, 400, "n"),
    ({"prompt": "x", "logprobs": 6}, 400, "logprobs"),  # logprobs and echo work now: their bad values are 400s
    ({"prompt": "x", "logprobs": True}, 400, "logprobs"),
    ({"prompt": "x", "max_tokens": 0}, 400, None),  # 0 only with echo
    ({"prompt": "x", "presence_penalty": 1}, 400, None),
    ({"prompt": "x", "block_size": 3}, 400, None),
    ({"prompt": "x", "speed": "warp"}, 400, "speed"),
    ({"prompt": "x", "speed": 1.5}, 400, "speed"),
    ({"prompt": "x", "speed": True}, 400, "speed"),
    ({"prompt": "x", "tau_conf": 2}, 400, "tau_conf"),
    ({"prompt": "x", "stop": ""}, 400, "stop"),
    ({"prompt": [], "max_tokens": 2}, 400, None),
    ({"prompt": "", "max_tokens": 2}, 400, "prompt"),
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


@pytest.mark.parametrize("body,fragment", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "only text content parts"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, "response_format"),
])
def test_chat_errors(model_dirs, body, fragment):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            return await c.post("/v1/chat/completions", json=body)
    r = run(main())
    assert r.status_code == 400 and fragment in r.json()["error"]["message"]


def test_unknown_fields_are_ignored(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            body = {"prompt": "hi", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
            plain = await c.post("/v1/completions", json=body)
            extra = await c.post("/v1/completions", json=body | {"user": "u-1", "metadata": {"a": 1},
                                                                  "store": False, "frobnicate": [1, 2]})
            return plain, extra
    plain, extra = run(main())
    assert extra.status_code == 200
    assert extra.json()["choices"] == plain.json()["choices"]


def test_malformed_json_and_routes_are_openai_shaped(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            bad = await c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
            return bad, await c.get("/v1/nothing"), await c.get("/v1/completions")
    bad, missing, method = run(main())
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert method.status_code == 405 and method.json()["error"]["message"]


def test_api_key(model_dirs):
    async def main():
        async with Client(model_dirs["ar"], api_keys=["k1", "k2"]) as c:
            none = await c.get("/v1/models")
            bad = await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
            good = await c.get("/v1/models", headers={"Authorization": "Bearer k2"})
            post = await c.post("/v1/completions", json={"prompt": "x"})
            health = await c.get("/health")
            return none, bad, good, post, health
    none, bad, good, post, health = run(main())
    assert none.status_code == 401 and bad.status_code == 401 and good.status_code == 200
    assert post.status_code == 401
    assert none.json()["error"]["type"] == "authentication_error"
    assert health.status_code == 200


def test_metrics_move_with_requests(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            before = (await c.get("/metrics")).text
            await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "ignore_eos": True})
            await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, "ignore_eos": True,
                                                  "stream": True})
            for _ in range(500):  # running is the engine's step stats, published just after the last block
                after = (await c.get("/metrics")).text
                if metric_samples(after)[("d2f_requests_running", (("model_name", "ar"),))] == 0:
                    break
                await asyncio.sleep(0.01)
            return before, after
    before, after = run(main())
    b, a = metric_samples(before), metric_samples(after)
    label = (("model_name", "ar"),)

    def moved(name, lab=label):
        return a[(name, lab)] - b.get((name, lab), 0)
    assert moved("d2f_generation_tokens_total") == 7
    assert moved("d2f_prompt_tokens_total") == 4  # "hi" is two byte tokens, twice
    assert moved("d2f_requests_total", (("model_name", "ar"), ("outcome", "length"))) == 2
    for hist in ("d2f_time_to_first_block_seconds", "d2f_e2e_request_latency_seconds", "d2f_queue_time_seconds",
                 "d2f_forwards_per_request", "d2f_tokens_per_forward"):
        assert moved(hist + "_count") == 2, hist
    assert moved("d2f_forwards_per_request_sum") == 7  # AR: one forward per token
    assert moved("d2f_inter_block_latency_seconds_count") == (3 - 1) + (4 - 1)  # every block after the first
    assert a[("d2f_kv_pages_capacity", label)] > 0
    assert a[("d2f_kv_pages_used", label)] == 0 and a[("d2f_requests_running", label)] == 0
    lint = subprocess.run([_promtool(), "check", "metrics"], input=after, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_health_is_503_while_loading(tmp_path):
    async def main():
        app = build_app(ServerSettings(EngineConfig(model=str(tmp_path / "missing"))))
        async with LifespanManager(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                first = await c.get("/health")
                req = await c.post("/v1/completions", json={"prompt": "x"})
                return first, req
    first, req = run(main())
    assert first.status_code == 503 and req.status_code == 503
    assert req.json()["error"]["type"] == "service_unavailable"


def test_draining_refuses_new_work(model_dirs):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            ok = await c.get("/health")
            c._transport.app.state.d2f.draining = True
            return ok, await c.get("/health"), await c.post("/v1/completions", json={"prompt": "x"})
    ok, health, new = run(main())
    assert ok.status_code == 200 and health.status_code == 503 and new.status_code == 503
