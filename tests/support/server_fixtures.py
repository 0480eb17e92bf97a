"""A tiny checkpoint with a real (tiny) tokenizer, so the HTTP layer runs end to end in seconds."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.support import checkpoints as ck

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<unk>", "<s>", "<|end|>", "<|mask|>", "<|user|>", "<|assistant|>", "<|system|>"]


def build_tokenizer(out: Path) -> int:
    """Byte-level tokenizer: every UTF-8 string round-trips; returns the vocabulary size."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return _save(tok, out, len(vocab))


def _save(tok: Tokenizer, out: Path, size: int) -> int:
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", bos_token="<s>", unk_token="<unk>",
                                   mask_token="<|mask|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return size


# Every word of the HTML tokenizer is markup, so whatever a random model says is HTML a page must show as text.
HTML_WORDS = [w for i in range(20) for w in (f"<script>window.__pwned='s{i}'</script>",
                                             f"<img src=x onerror=\"window.__pwned='i{i}'\">", f"<b>b{i}</b>")]


def build_html_tokenizer(out: Path) -> int:
    """A word-level tokenizer whose every word is HTML (a test-only tokenizer); returns the vocabulary size."""
    vocab = {t: i for i, t in enumerate(SPECIALS + HTML_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _save(tok, out, len(vocab))


def write_tiny_server_model(out: Path, d2f: bool = False, seed: int = 7, html: bool = False,
                            ar_preserving: bool = False) -> Path:
    """ar_preserving: a D2F model whose clean positions are the AR model's, with a random mask adapter."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_html_tokenizer(out) if html else build_tokenizer(out)
    model = ck.hf_llama(seed=seed, tie=True, vocab=vocab)
    model.config.eos_token_id = SPECIALS.index("<|end|>")
    section = {"ar_preserving": True, "block_size": 4} if ar_preserving else {"train_block_size": 2, "block_size": 4}
    ck.write_llama(out, model, mask_id=SPECIALS.index("<|mask|>") if d2f or ar_preserving else None,
                   d2f=section if d2f or ar_preserving else None)
    if ar_preserving:
        ck.write_mask_adapter(out, seed=seed, scale=0.1)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == vocab
    return out


# ---- in-process serving helpers -------------------------------------------------------------------------

def run(coro):
    import asyncio

    return asyncio.run(coro)


class Client:
    """An app with its lifespan running and the model loaded, and an httpx client bound to it.

    httpx's ASGITransport buffers a whole response before the caller sees it and never disconnects;
    tests of disconnects drive the app with `asgi_call` instead."""

    def __init__(self, model_dir, **settings):
        from dataclasses import fields

        from d2f.engine.config import EngineConfig
        from d2f.server.app import ServerSettings, build_app

        engine = {"dtype": "fp32", "kv_cache_memory": 1 << 24}  # settings name engine and server fields alike
        engine |= {k: settings.pop(k) for k in [f.name for f in fields(EngineConfig)] if k in settings}
        self.app = build_app(ServerSettings(EngineConfig(model=str(model_dir), **engine), **settings))
        self.state = self.app.state.d2f

    async def __aenter__(self):
        import httpx
        from asgi_lifespan import LifespanManager

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
    """The JSON events of a complete SSE body, checking its framing on the way."""
    assert text.endswith("data: [DONE]\n\n")
    frames = text.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames)
    return [json.loads(f[6:]) for f in frames[:-1]]


def step_stream(text: str) -> tuple[list, list]:
    """(the JSON events, the step events) of a complete SSE body sent with include_steps."""
    steps = []
    data = []
    for frame in text.split("\n\n")[:-1]:
        if frame.startswith(": step "):
            steps.append(json.loads(frame[len(": step "):]))
        else:
            data.append(frame)
    return sse_events("".join(f + "\n\n" for f in data)), steps


def metric_samples(text: str) -> dict:
    """(name, sorted labels) -> value, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def asgi_call(app, path: str, body: dict, hang_up, sent: list) -> None:
    """POST body to app as an ASGI server would, for a client that disconnects once hang_up is set;
    every message the app sends is appended to sent as it comes."""
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("test", 80)}
    await app(scope, receive, send)


def spy_aborts(engine) -> list:
    """Record the engine's aborts that caught a live request (the engine thread calls engine.abort)."""
    caught: list = []
    real = engine.abort

    def abort(request_id):
        out = real(request_id)
        if out is not None:
            caught.append(out)
        return out
    engine.abort = abort
    return caught


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """The tiny model with a tokenizer, autoregressive and D2F (block size 4)."""
    root = tmp_path_factory.mktemp("srv")
    return {"ar": write_tiny_server_model(root / "ar"), "d2f": write_tiny_server_model(root / "d2f", d2f=True)}


# What an error body must never show a client: stack traces, paths, library and module names.
LEAKS = ("Traceback", 'File "', "/work", "site-packages", "torch", "engine.", "Error:")


def clean_error(r: httpx.Response, status: int) -> dict:
    """The OpenAI error object of a response with this status, checked to leak no internals."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert not any(s in r.text for s in LEAKS), r.text
    return err
