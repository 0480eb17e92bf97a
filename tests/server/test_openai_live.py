"""Against a live `d2f serve` subprocess: the official openai client, raw SSE framing, concurrency,
disconnects over real sockets, and SIGTERM drain on the default model."""
import concurrent.futures
import json
import signal
import socket
import threading
import time

import httpx
import openai
import pytest

from d2f.bench.live import LiveServer
from tests.support.server_fixtures import metric_samples, write_tiny_server_model

pytestmark = pytest.mark.live

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_server_model(tmp_path_factory.mktemp("live") / "tiny-d2f", d2f=True)


@pytest.fixture(scope="module")
def server(model_dir):
    srv = LiveServer("--model", str(model_dir), "--dtype", "fp32", "--served-model-name", "tiny",
                     env={"D2F_API_KEY": KEY})
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def test_openai_completion_and_chat(client):
    comp = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 8
    assert comp.usage.forwards >= 2  # our extension arrives through the official client
    stream = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == comp.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.forwards == comp.usage.forwards
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hey"}], max_tokens=6,
                                          temperature=0, n=3)
    assert len(chat.choices) == 3 and len({c.message.content for c in chat.choices}) == 1
    streamed = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hey"}],
                                              max_tokens=6, temperature=0, stream=True)
    parts = list(streamed)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    assert sum(p.choices[0].finish_reason is not None for p in parts) == 1
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_openai_n_streamed(client):
    stream = client.completions.create(model="tiny", prompt="abc", max_tokens=6, temperature=0, n=3, stream=True,
                                       extra_body={"ignore_eos": True})
    texts, finishes = {}, {}
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            finishes.setdefault(ch.index, []).append(ch.finish_reason)
    assert sorted(texts) == [0, 1, 2] and len(set(texts.values())) == 1  # greedy: three equal answers
    assert all([f for f in fs if f] == ["length"] for fs in finishes.values())


def test_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=6)  # OpenAI's limit is 5
    assert "logprobs" in e.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "x"}).status_code == 401


# vLLM's test_echo_stream_completion and test_echo_logprob_completion (tests/entrypoints/openai), against
# our server: text and token-id prompts, echo streamed and not, with logprobs 0 and 1.
ECHO_PROMPTS = ["Hello, my name is", [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("prompt", ECHO_PROMPTS)
def test_echo_stream_completion(client, model_dir, prompt):
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(str(model_dir)).decode(prompt) if isinstance(prompt, list) else prompt
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, echo=True)
    assert whole.choices[0].text.startswith(text) and len(whole.choices[0].text) > len(text)
    stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, echo=True,
                                       stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].text.startswith(text)  # the prompt comes first, in the first chunk
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert sum(c.choices[0].finish_reason is not None for c in chunks) == 1
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("logprobs_arg", [1, 0])
@pytest.mark.parametrize("prompt", ECHO_PROMPTS)
def test_echo_logprob_completion(client, model_dir, prompt, logprobs_arg):
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(str(model_dir)).decode(prompt) if isinstance(prompt, list) else prompt
    completion = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, echo=True,
                                           logprobs=logprobs_arg)
    assert completion.choices[0].text.startswith(text)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert len(logprobs.text_offset) > 5
    assert len(logprobs.token_logprobs) > 5 and logprobs.token_logprobs[0] is None
    assert len(logprobs.top_logprobs) > 5 and logprobs.top_logprobs[0] is None
    for top_logprobs in logprobs.top_logprobs[1:]:
        assert max(logprobs_arg, 1) <= len(top_logprobs) <= logprobs_arg + 1
    assert len(logprobs.tokens) > 5
    streamed = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, echo=True,
                                              logprobs=logprobs_arg, stream=True))
    assert [t for c in streamed for t in c.choices[0].logprobs.tokens] == logprobs.tokens
    assert [t for c in streamed for t in c.choices[0].logprobs.token_logprobs] == logprobs.token_logprobs
    assert [t for c in streamed for t in c.choices[0].logprobs.text_offset] == logprobs.text_offset


def test_chat_logprobs_through_the_client(client):
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hey"}], max_tokens=6,
                                          temperature=0, logprobs=True, top_logprobs=2,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 6 and all(len(c.top_logprobs) == 2 and c.bytes is not None for c in content)
    assert content[0].logprob <= content[0].top_logprobs[0].logprob


def test_stop_strings_and_seeded_sampling(client):
    free = client.completions.create(model="tiny", prompt="abc", max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = free[3:5]
    out = client.completions.create(model="tiny", prompt="abc", max_tokens=16, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text == free[:free.find(stop)] and out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="abc", max_tokens=16, temperature=0, stop=stop,
                                         stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text
    a = client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1, seed=11, n=2)
    b = client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1, seed=11, n=2)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]


def test_raw_sse_framing(server):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 10, "temperature": 0, "stream": True,
            "ignore_eos": True, "block_size": 4, "tau_conf": 0.99, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=60) as r:
        raw = "".join(r.iter_text())
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    assert all(f.startswith("data: ") and "\n" not in f for f in frames[:-1])
    events = [json.loads(f[len("data: "):]) for f in frames[:-2]]
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1]]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 10
    assert len(events) - 1 >= 3  # 10 tokens in blocks of 4: one chunk per committed block, not one at the end


@pytest.mark.parametrize("chat", [False, True])
def test_openai_client_streams_the_same_with_steps(client, chat):
    """The step events are SSE comments, which openai-python skips (a named event it would hand out as a
    chunk): asked for steps, the official client sees the same chunks, so the same text."""
    def chunks(options):
        kw = dict(model="tiny", max_tokens=12, temperature=0, stream=True, stream_options=options,
                  extra_body={"ignore_eos": True, "tau_conf": 0.3})
        if chat:
            out = client.chat.completions.create(messages=[{"role": "user", "content": "hey"}], **kw)
        else:
            out = client.completions.create(prompt="Hello", **kw)
        return [c.model_dump(exclude={"id", "created"}) for c in out]

    plain = chunks({"include_usage": True})
    asked = chunks({"include_usage": True, "include_steps": True})
    assert asked == plain and len(plain) >= 3
    text = [(c["choices"][0]["delta"]["content"] if chat else c["choices"][0]["text"]) for c in plain if c["choices"]]
    assert len("".join(text)) > 0


def test_concurrent_clients_get_their_own_answers(client):
    prompts = [f"prompt number {i}" for i in range(8)]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0).choices[0].text
             for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=6,
                                                                     temperature=0).choices[0].text, prompts))
    assert together == alone


# Long enough (480 tokens at one token per forward) that only an abort ends it early.
LONG = {"model": "tiny", "prompt": "a", "max_tokens": 480, "temperature": 0, "ignore_eos": True, "tau_conf": 1.0,
        "tau_act": 1.0}


def _metrics(server) -> dict:
    return metric_samples(httpx.get(server.url + "/metrics", timeout=10).text)


def _aborted(m) -> float:
    return m.get(("d2f_requests_total", (("model_name", "tiny"), ("outcome", "abort"))), 0.0)


def _wait_for(server, predicate, seconds=60.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        m = _metrics(server)
        if predicate(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.02)


def _raw_post(server, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_at_once_and_frees_kv(server, stream):
    gauge = ("d2f_kv_pages_used", (("model_name", "tiny"),))
    running = ("d2f_requests_running", (("model_name", "tiny"),))
    tokens = ("d2f_generation_tokens_total", (("model_name", "tiny"),))
    before = _wait_for(server, lambda m: m[running] == 0)
    sock = _raw_post(server, LONG | {"stream": stream, "n": 2})
    if stream:
        got = b""
        while b"data: " not in got:  # headers first, then the first block
            got += sock.recv(65536)
    else:
        assert _wait_for(server, lambda m: m[gauge] > 0)[gauge] > 0  # decoding, nothing sent yet
    sock.close()
    after = _wait_for(server, lambda m: _aborted(m) - _aborted(before) == 2 and m[gauge] == 0)
    assert _aborted(after) - _aborted(before) == 2
    assert after[gauge] == 0
    assert after[tokens] - before[tokens] < 2 * LONG["max_tokens"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_default_model_answers_then_drains_on_sigterm():
    """`d2f serve` with no --model serves SmolLM2-135M-Instruct (an AR model); then SIGTERM mid-stream:
    /health and new requests get 503 at once, the stream finishes, the process exits 0."""
    srv = LiveServer("--drain-timeout", "60")
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["smollm2-135m-instruct"]
        out = c.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=30,
                                        messages=[{"role": "user", "content": "What is the capital of France?"}])
        lines, status = [], {}

        def consume():
            body = {"prompt": "go", "max_tokens": 40, "temperature": 0, "stream": True, "ignore_eos": True,
                    "stream_options": {"include_usage": True}}
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
        t = threading.Thread(target=consume)
        t.start()
        while not lines and t.is_alive():
            time.sleep(0.01)
        srv.signal(signal.SIGTERM)
        for _ in range(500):  # the signal is handled on the server's loop: wait for it to show
            status["health"] = httpx.get(srv.url + "/health", timeout=5).status_code
            if status["health"] == 503:
                break
            time.sleep(0.01)
        status["new"] = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                                   timeout=5).status_code
        t.join(120)
        code = srv.wait(60)
    finally:
        srv.stop()
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.forwards == out.usage.completion_tokens + 1  # AR: one forward per token, one for EOS
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]][-1] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 40
    assert status == {"health": 503, "new": 503}  # draining: refuse new work, finish what is in flight
    assert code == 0
