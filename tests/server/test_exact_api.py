"""speed "exact" over HTTP: the AR model's answer, streamed per forward, with stop strings, max_tokens and
seeds working as in every mode; refused with a 400 on a model without AR rows."""
import pytest

from tests.support.server_fixtures import Client, clean_error, run, sse_events, write_tiny_server_model

BODY = {"prompt": "The quick brown", "max_tokens": 24, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def arp_dir(tmp_path_factory):
    return write_tiny_server_model(tmp_path_factory.mktemp("arp") / "arp", ar_preserving=True)


def test_exact_is_the_ar_answer_streamed_with_stop_and_length(arp_dir):
    async def main():
        async with Client(arp_dir) as c:
            ar = (await c.post("/v1/completions", json=BODY | {"block_size": 1})).json()
            exact = (await c.post("/v1/completions", json=BODY | {"speed": "exact"})).json()
            streamed = await c.post("/v1/completions", json=BODY | {"speed": "exact", "stream": True,
                                                                     "stream_options": {"include_usage": True}})
            text = ar["choices"][0]["text"]
            stop = text[6:8]
            stopped = await c.post("/v1/completions", json=BODY | {"speed": "exact", "stop": stop, "stream": True})
            short = (await c.post("/v1/completions", json=BODY | {"speed": "exact", "max_tokens": 5,
                                                                  "block_size": 8})).json()
            chat = (await c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0,
                "ignore_eos": True, "speed": "exact"})).json()
            chat_ar = (await c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0,
                "ignore_eos": True, "block_size": 1})).json()
            tree = (await c.post("/v1/completions", json=BODY | {"speed": "exact", "draft_width": 3})).json()
            return ar, exact, streamed, stop, stopped, short, chat, chat_ar, tree
    ar, exact, streamed, stop, stopped, short, chat, chat_ar, tree = run(main())
    text = ar["choices"][0]["text"]
    assert exact["choices"][0]["text"] == text and exact["choices"][0]["finish_reason"] == "length"
    assert tree["choices"][0]["text"] == text
    assert exact["usage"]["completion_tokens"] == 24 and 1 <= exact["usage"]["forwards"] <= 24
    events = sse_events(streamed.text)
    chunks = [e["choices"][0] for e in events if e["choices"]]
    assert "".join(ch["text"] for ch in chunks) == text
    assert [ch["finish_reason"] for ch in chunks].count("length") == 1
    assert events[-1]["usage"] == exact["usage"]
    stop_events = sse_events(stopped.text)
    assert "".join(e["choices"][0]["text"] for e in stop_events) == text[:text.find(stop)]
    assert stop_events[-1]["choices"][0]["finish_reason"] == "stop"
    assert short["usage"]["completion_tokens"] == 5 and text.startswith(short["choices"][0]["text"])
    assert chat["choices"][0]["message"]["content"] == chat_ar["choices"][0]["message"]["content"]


def test_exact_sampling_reproduces_with_a_seed(arp_dir):
    async def main():
        async with Client(arp_dir) as c:
            body = BODY | {"speed": "exact", "temperature": 0.9, "seed": 11, "n": 2}
            return [(await c.post("/v1/completions", json=body)).json() for _ in range(2)]
    first, second = run(main())
    assert [ch["text"] for ch in first["choices"]] == [ch["text"] for ch in second["choices"]]


def test_exact_refusals_are_400(arp_dir, model_dirs):
    async def main():
        out = {}
        async with Client(model_dirs["d2f"]) as c:  # D2F without AR rows (as LLaDA and Dream)
            out["d2f"] = await c.post("/v1/completions", json=BODY | {"speed": "exact"})
        async with Client(arp_dir) as c:
            out["taus"] = await c.post("/v1/completions", json=BODY | {"speed": "exact", "tau_conf": 0.9})
            out["width0"] = await c.post("/v1/completions", json=BODY | {"speed": "exact", "draft_width": 0})
            out["width_not_exact"] = await c.post("/v1/completions", json=BODY | {"draft_width": 2})
        async with Client(model_dirs["ar"]) as c:  # a pure AR model: exact is its plain decoding
            out["ar"] = [(await c.post("/v1/completions", json=BODY | knob)).json()
                         for knob in ({"speed": "exact"}, {})]
        return out
    out = run(main())
    assert "AR-preserving" in clean_error(out["d2f"], 400)["message"]
    assert "exact mode" in clean_error(out["taus"], 400)["message"]
    assert "draft_width" in clean_error(out["width0"], 400)["message"]
    assert "exact mode only" in clean_error(out["width_not_exact"], 400)["message"]
    exact, plain = out["ar"]
    assert exact["choices"][0]["text"] == plain["choices"][0]["text"]
    assert exact["usage"]["forwards"] == plain["usage"]["forwards"] == 24


def test_exact_speed_maps_to_exact_params():
    from d2f.server.protocol import ChatCompletionRequest, CompletionRequest

    p = CompletionRequest(prompt="x", speed="exact", block_size=6).decode_params(16)
    assert p.exact and (p.tau_conf, p.tau_act, p.block_size) == (None, None, 6)
    assert not ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], speed="fast").decode_params(16).exact
