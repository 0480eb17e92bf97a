"""stream_options.include_steps: a step event per forward, as SSE comments beside an unchanged stream."""
import itertools
import json

from transformers import AutoTokenizer

from tests.support.server_fixtures import Client, run, sse_events, step_stream


def _same_chunks(a: list, b: list) -> None:
    strip = [{k: v for k, v in e.items() if k not in ("id", "created")} for e in a]
    assert strip == [{k: v for k, v in e.items() if k not in ("id", "created")} for e in b]


def _replay(steps: list) -> dict[int, int]:
    slots = {}
    for s in steps:
        for c in s["committed"]:
            assert c["pos"] not in slots
            slots[c["pos"]] = c["id"]
    return slots


def test_steps_ride_beside_the_same_chunks(model_dirs):
    body = {"prompt": [[5, 6, 7], [8, 9]], "n": 2, "max_tokens": 10, "temperature": 0, "ignore_eos": True,
            "block_size": 4, "tau_conf": 0.2, "stream": True, "stream_options": {"include_usage": True}}

    async def main():
        async with Client(model_dirs["d2f"]) as c:
            plain = await c.post("/v1/completions", json=body)
            asked = await c.post("/v1/completions", json=body | {
                "stream_options": {"include_usage": True, "include_steps": True}})
            full = await c.post("/v1/completions", json=body | {"stream": False})
            return plain.text, asked.text, full.json()
    plain, asked, full = run(main())
    assert ": step " not in plain
    events, steps = step_stream(asked)
    _same_chunks(events, sse_events(plain))
    tok = AutoTokenizer.from_pretrained(str(model_dirs["d2f"]))
    for i, choice in enumerate(full["choices"]):
        mine = [s for s in steps if s["index"] == i]
        assert [s["forward"] for s in mine] == list(range(1, len(mine) + 1))
        slots = _replay(mine)
        answer = [slots[p] for p in range(10)]
        assert tok.decode(answer, skip_special_tokens=True) == choice["text"]
        for s in mine:
            assert set(s) == {"index", "forward", "blocks", "masked", "committed"}  # no drafts in this mode
            assert all(c["text"] == tok.decode([c["id"]]) for c in s["committed"])
            assert len(s["masked"]) == len(s["blocks"])
    assert sum(len([s for s in steps if s["index"] == i]) for i in range(4)) == full["usage"]["forwards"]
    assert max(len(s["committed"]) for s in steps) > 1  # a low tau_conf commits several tokens at once


def test_each_chunk_comes_after_the_steps_that_committed_its_text(model_dirs):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_steps": True}}

    async def main():
        async with Client(model_dirs["d2f"]) as c:
            return (await c.post("/v1/chat/completions", json=body)).text
    frames = run(main()).split("\n\n")[:-1]
    assert frames[-1] == "data: [DONE]"
    tok = AutoTokenizer.from_pretrained(str(model_dirs["d2f"]))
    slots, text = {}, ""
    for f in frames[:-1]:
        if f.startswith(": step "):
            slots |= {c["pos"]: c["id"] for c in json.loads(f[len(": step "):])["committed"]}
            continue
        text += json.loads(f[len("data: "):])["choices"][0]["delta"]["content"]
        prefix = [slots[p] for p in itertools.takewhile(slots.__contains__, itertools.count())]
        assert tok.decode(prefix, skip_special_tokens=True).startswith(text)
    assert len(text) > 0


def test_steps_are_ignored_unless_streamed(model_dirs):
    body = {"prompt": "abc", "max_tokens": 6, "temperature": 0, "ignore_eos": True}

    async def main():
        async with Client(model_dirs["d2f"]) as c:
            a = (await c.post("/v1/completions", json=body)).json()
            b = (await c.post("/v1/completions", json=body | {"stream_options": {"include_steps": True}})).json()
            return a, b
    a, b = run(main())
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
