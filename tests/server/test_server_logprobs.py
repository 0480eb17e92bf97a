"""logprobs, top_logprobs and echo over HTTP: OpenAI's shapes, streamed == whole, n > 1, stop strings cutting
logprobs with the text, prompt scoring equal to transformers, and the refusals."""
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from tests.support import checkpoints as ck
from tests.support.server_fixtures import Client, build_tokenizer, clean_error, run, sse_events


def _post_both(model_dir, path: str, body: dict) -> tuple[dict, list]:
    """The whole response and the streamed events of the same request."""
    async def main():
        async with Client(model_dir) as c:
            full = await c.post(path, json=body)
            streamed = await c.post(path, json=body | {"stream": True})
            return full, streamed
    full, streamed = run(main())
    assert full.status_code == 200 and streamed.status_code == 200, (full.text, streamed.text)
    return full.json(), sse_events(streamed.text)


def _joined(events: list, index: int) -> tuple[str, dict]:
    """One choice's streamed text and its completions logprobs, concatenated across chunks."""
    text, lp = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in events:
        for ch in e["choices"]:
            if ch["index"] == index:
                text += ch["text"]
                for key in lp:
                    lp[key] += ch["logprobs"][key]
    return text, lp


def test_completion_logprobs_streamed_equal_whole_for_every_choice(model_dirs):
    """D2F model (blocks of 4), two prompts x n=2: every choice has one logprob per token, its top-2 and the
    chosen token, offsets counting from the start of its text; the stream carries the same, block by block."""
    body = {"prompt": ["Hello", "abc"], "n": 2, "max_tokens": 7, "temperature": 0, "ignore_eos": True,
            "logprobs": 2}
    full, events = _post_both(model_dirs["d2f"], "/v1/completions", body)
    assert [c["index"] for c in full["choices"]] == [0, 1, 2, 3]
    for choice in full["choices"]:
        lp = choice["logprobs"]
        assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 7
        for tok, at, value, top in zip(lp["tokens"], lp["text_offset"], lp["token_logprobs"], lp["top_logprobs"]):
            assert 2 <= len(top) <= 3 and top[tok] == value and value <= 0
            # A whole-character token names its text at its offset; part of a character is named by its bytes.
            assert choice["text"][at:at + len(tok)] == tok or tok.startswith("bytes:\\x")
        assert _joined(events, choice["index"]) == (choice["text"], lp)
    assert full["choices"][0]["logprobs"] == full["choices"][1]["logprobs"]  # greedy: the same prompt, the same


def test_logprobs_do_not_change_the_answer(model_dirs):
    async def main():
        async with Client(model_dirs["d2f"]) as c:
            body = {"prompt": "Hello there", "max_tokens": 9, "temperature": 0, "ignore_eos": True}
            return [(await c.post("/v1/completions", json=body | extra)).json() for extra in ({}, {"logprobs": 5})]
    plain, with_lp = run(main())
    assert plain["choices"][0]["text"] == with_lp["choices"][0]["text"] and plain["choices"][0]["logprobs"] is None
    assert plain["usage"] == with_lp["usage"]


@pytest.mark.parametrize("tokens", [1, 2])
def test_stop_string_cuts_logprobs_with_the_text(model_dirs, tokens):
    """The logprobs cover exactly the tokens whose text is returned, streamed or not. The stop string is a
    run of whole tokens that first occurs where they start; of two tokens, the first one's text is held back
    in the stream until the second decides."""
    base = {"prompt": "x", "max_tokens": 16, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    free, _ = _post_both(model_dirs["ar"], "/v1/completions", base)
    text, lp = free["choices"][0]["text"], free["choices"][0]["logprobs"]
    at = lp["text_offset"]
    cut, stop = next((i, text[at[i]:at[i + tokens]]) for i in range(2, 16 - tokens)
                     if text.find(text[at[i]:at[i + tokens]]) == at[i] and len(text[at[i]:at[i + tokens]]) == tokens)
    full, events = _post_both(model_dirs["ar"], "/v1/completions", base | {"stop": [stop]})
    choice = full["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == text[:lp["text_offset"][cut]]
    assert choice["logprobs"] == {key: value[:cut] for key, value in lp.items()}
    assert _joined(events, 0) == (choice["text"], choice["logprobs"])


@pytest.mark.parametrize("prompt", ["Hello there", [40, 77, 78, 79, 32, 80]])
def test_echo_returns_the_prompt_before_the_answer(model_dirs, prompt):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            body = {"prompt": prompt, "max_tokens": 5, "temperature": 0, "ignore_eos": True}
            plain = (await c.post("/v1/completions", json=body)).json()
            echoed = (await c.post("/v1/completions", json=body | {"echo": True})).json()
            alone = (await c.post("/v1/completions", json=body | {"echo": True, "max_tokens": 0})).json()
            streamed = await c.post("/v1/completions", json=body | {"echo": True, "stream": True})
            return plain, echoed, alone, sse_events(streamed.text)
    plain, echoed, alone, events = run(main())
    text = prompt if isinstance(prompt, str) else AutoTokenizer.from_pretrained(str(model_dirs["ar"])).decode(prompt)
    assert echoed["choices"][0]["text"] == text + plain["choices"][0]["text"]
    assert echoed["usage"] == plain["usage"]
    assert alone["choices"][0] | {"index": 0} == {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
    assert alone["usage"]["completion_tokens"] == 0 and alone["usage"]["forwards"] == 0  # no model needed
    assert events[0]["choices"][0]["text"].startswith(text)
    assert "".join(e["choices"][0]["text"] for e in events) == echoed["choices"][0]["text"]


def test_prompt_scoring_equals_transformers(model_dirs):
    """echo + logprobs scores each prompt token under the causal model: the loglikelihood harnesses sum.
    max_tokens 0 scores the prompt alone; max_tokens 1 (what lm-eval sends) adds one generated token."""
    prompts = ["The capital of France is Paris", "2 + 2 = 4"]
    body = {"prompt": prompts, "echo": True, "logprobs": 1, "temperature": 0}
    full, events = _post_both(model_dirs["ar"], "/v1/completions", body | {"max_tokens": 0})
    one, _ = _post_both(model_dirs["ar"], "/v1/completions", body | {"max_tokens": 1})
    tok = AutoTokenizer.from_pretrained(str(model_dirs["ar"]))
    hf = LlamaForCausalLM.from_pretrained(str(model_dirs["ar"]), torch_dtype=torch.float32).eval()
    for i, prompt in enumerate(prompts):
        ids = tok.encode(prompt)
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
        want = ref[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
        choice = full["choices"][i]
        lp = choice["logprobs"]
        assert choice["text"] == prompt and choice["finish_reason"] == "length"
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and len(lp["tokens"]) == len(ids)
        torch.testing.assert_close(torch.tensor(lp["token_logprobs"][1:]), want, rtol=0, atol=1e-4)
        assert all(max(top.values()) == pytest.approx(ref[j].max().item(), abs=1e-4)
                   for j, top in enumerate(lp["top_logprobs"][1:]))
        assert _joined(events, i) == (prompt, lp)
        scored = one["choices"][i]["logprobs"]
        assert len(scored["tokens"]) == len(ids) + 1 and scored["token_logprobs"][:-1] == lp["token_logprobs"]


def test_chat_logprobs_streamed_equal_whole(model_dirs):
    body = {"messages": [{"role": "user", "content": "hé"}], "max_tokens": 6, "temperature": 0, "ignore_eos": True,
            "logprobs": True, "top_logprobs": 3, "n": 2}
    full, events = _post_both(model_dirs["ar"], "/v1/chat/completions", body)
    for choice in full["choices"]:
        content = choice["logprobs"]["content"]
        assert len(content) == 6
        for item in content:
            assert set(item) == {"token", "logprob", "bytes", "top_logprobs"} and len(item["top_logprobs"]) == 3
            assert item["logprob"] <= item["top_logprobs"][0]["logprob"] + 1e-6
            assert all(0 <= b < 256 for b in item["bytes"])
        # The answer's bytes, token by token, are the text's (a token may hold part of a character).
        raw = bytes(b for item in content for b in item["bytes"])
        assert raw.decode("utf-8", errors="replace") == choice["message"]["content"]
        streamed = [item for e in events for ch in e["choices"] if ch["index"] == choice["index"]
                    for item in ch["logprobs"]["content"]]
        assert streamed == content
    plain, _ = _post_both(model_dirs["ar"], "/v1/chat/completions", body | {"logprobs": False, "top_logprobs": None})
    assert plain["choices"][0]["logprobs"] is None
    only, _ = _post_both(model_dirs["ar"], "/v1/chat/completions", body | {"top_logprobs": None})
    assert all(item["top_logprobs"] == [] for item in only["choices"][0]["logprobs"]["content"])


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    """A LLaDA-format model (bidirectional prompt) with the tiny tokenizer."""
    out = tmp_path_factory.mktemp("llada-srv")
    vocab = build_tokenizer(out)
    return ck.write_llada(out, ck.hf_llama(seed=9, vocab=vocab), block=4)


def test_bidirectional_prompt_scoring_is_refused(llada_dir):
    async def main():
        async with Client(llada_dir) as c:
            body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
            scored = await c.post("/v1/completions", json=body | {"echo": True, "logprobs": 1, "max_tokens": 0})
            echoed = await c.post("/v1/completions", json=body | {"echo": True})
            confidences = await c.post("/v1/completions", json=body | {"logprobs": 1})
            return scored, echoed, confidences
    scored, echoed, confidences = run(main())
    assert "bidirectional" in clean_error(scored, 400)["message"]
    assert echoed.status_code == 200 and echoed.json()["choices"][0]["text"].startswith("Hello")
    assert len(confidences.json()["choices"][0]["logprobs"]["token_logprobs"]) == 4  # answers' confidences: fine


@pytest.mark.parametrize("body,fragment", [
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ({"prompt": "x", "logprobs": 1.5}, "logprobs"),
    ({"prompt": "x", "max_tokens": 0, "logprobs": 1}, "max_tokens 0 is only valid with echo"),
    ({"prompt": "x", "max_tokens": -1, "echo": True}, "max_tokens"),
    ({"prompt": [1, 2, 999999], "max_tokens": 0, "echo": True}, "outside the vocabulary"),  # checked, if unused
    ({"prompt": [1, -2], "max_tokens": 0, "echo": True}, "outside the vocabulary"),
])
def test_bad_logprob_requests_are_400(model_dirs, body, fragment):
    async def main():
        async with Client(model_dirs["ar"]) as c:
            return await c.post("/v1/completions", json=body)
    assert fragment in clean_error(run(main()), 400)["message"]
