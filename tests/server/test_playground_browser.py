"""The playground in a real headless Chromium against a live `d2f serve`: the page draws exactly the tokens
the API returns for the same request, shows usage.forwards, and shows model output that is HTML as text."""
import httpx
import pytest
from transformers import AutoTokenizer

from d2f.bench import browser as chromium
from d2f.bench.live import LiveServer
from tests.support.server_fixtures import write_tiny_server_model

pytestmark = pytest.mark.live

KEY = "page-key"
# Every word of this model's tokenizer is markup (<script>, <img onerror>, <b>); seed 8 answers the prompt
# below with <script> tags and commits several tokens in one forward.
PROMPT = "Say something in HTML"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_server_model(tmp_path_factory.mktemp("page") / "html-d2f", d2f=True, seed=8, html=True)


@pytest.fixture(scope="module")
def server(model):
    srv = LiveServer("--model", str(model), "--dtype", "fp32", "--served-model-name", "tiny",
                     env={"D2F_API_KEY": KEY})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def driver():
    found = chromium.find()
    if isinstance(found, str):
        pytest.skip(f"no headless browser to drive: {found}")
    d = chromium.launch()
    yield d
    d.quit()


def _api(server, request: dict) -> dict:
    body = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def _check_pane(pane: dict, api: dict, tok) -> None:
    """The pane drew the API's answer token for token, and counted its forwards."""
    assert pane["status"] == "done", pane["figures"]["status"]
    text, n = api["choices"][0]["message"]["content"], api["usage"]["completion_tokens"]
    slots = sorted(pane["slots"], key=lambda s: s["pos"])
    assert [s["pos"] for s in slots] == list(range(len(slots))) and len(slots) >= n
    assert all(s["state"] == "committed" for s in slots[:n])
    assert tok.decode([s["id"] for s in slots[:n]], skip_special_tokens=True) == text
    assert all(s["text"] == tok.decode([s["id"]]) and s["children"] == 0 for s in slots[:n])
    forwards = api["usage"]["forwards"]
    assert pane["forwards"] == pane["usage_forwards"] == forwards and pane["figures"]["forwards"] == str(forwards)
    assert {s["forward"] for s in slots[:n]} <= set(range(1, forwards + 1))
    assert pane["answer"] == text


def test_the_page_draws_what_the_api_returns_and_shows_html_as_text(server, driver, model):
    page = chromium.PlaygroundPage(driver, server.url, key=KEY)
    page.knobs("a", "balanced", temperature=0, max_tokens=16)
    page.ask(PROMPT)
    pane = page.pane("a")
    api = _api(server, pane["request"])
    tok = AutoTokenizer.from_pretrained(str(model))
    _check_pane(pane, api, tok)
    text = api["choices"][0]["message"]["content"]
    assert "<script>" in text and pane["forwards"] < api["usage"]["completion_tokens"]  # a parallel commit
    assert page.history()[-2:] == [{"role": "user", "text": PROMPT, "children": 0},
                                   {"role": "assistant", "text": text, "children": 0}]
    # The markup stayed text: no script ran, no element was made from it.
    assert driver.execute_script("return [window.__pwned === undefined, document.scripts.length, "
                                 "document.images.length]") == [True, 1, 0]
    assert page.console_errors() == []  # a CSP violation would show here


def test_side_by_side_runs_both_knob_settings_at_once(server, driver, model):
    page = chromium.PlaygroundPage(driver, server.url, key=KEY)
    page.side_by_side()
    page.knobs("a", "fast", temperature=0, max_tokens=12)
    page.knobs("b", "ar", temperature=0, max_tokens=12)
    page.ask(PROMPT)
    tok = AutoTokenizer.from_pretrained(str(model))
    a, b = page.pane("a"), page.pane("b")
    assert b["request"]["block_size"] == 1 and "block_size" not in a["request"]
    for pane in (a, b):
        _check_pane(pane, _api(server, pane["request"]), tok)
    # Block size 1: one token per forward, so every slot has a forward of its own.
    committed = [s["forward"] for s in b["slots"] if s["state"] == "committed"]
    assert len(set(committed)) == len(committed)


def test_a_missing_key_is_an_error_on_the_page(server, driver):
    page = chromium.PlaygroundPage(driver, server.url)
    page.ask(PROMPT)
    pane = page.pane("a")
    assert pane["status"] == "error" and "API key" in pane["figures"]["status"]


def test_drafts_are_drawn_and_rejected_ones_struck_through(server, driver):
    """No algorithm drafts yet: a canned step stream (fetch replaced in the page) shows how drafts look."""
    page = chromium.PlaygroundPage(driver, server.url, key=KEY)
    driver.execute_script("""
        const frames = [
          ': step {"index":0,"forward":1,"blocks":[[0,4]],"masked":[[1,2,3]],' +
            '"committed":[{"pos":0,"id":5,"text":"A"}],' +
            '"proposed":[{"pos":1,"id":6,"text":"<b>x</b>"},{"pos":2,"id":7,"text":"y"}]}',
          ': step {"index":0,"forward":2,"blocks":[[0,4]],"masked":[[2,3]],' +
            '"committed":[{"pos":1,"id":6,"text":"<b>x</b>"}],"accepted":[{"pos":1,"id":6,"text":"<b>x</b>"}],' +
            '"rejected":[{"pos":2,"id":7,"text":"<i>y</i>"}]}',
          'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"A<b>x</b>"},' +
            '"finish_reason":"length"}]}',
          'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"forwards":2}}',
          'data: [DONE]'];
        window.fetch = async () => new Response(frames.map(f => f + '\\n\\n').join(''), {status: 200});
    """)
    page.ask("draft")
    slots = page.pane("a")["slots"]
    assert [(s["state"], s["forward"], s["shown"]) for s in slots[:2]] == [
        ("committed", 1, "A"), ("committed", 2, "<b>x</b>")]
    assert slots[2]["state"] == "masked" and slots[2]["children"] == 1
    assert driver.execute_script(
        "return [...document.querySelectorAll('#pane-a .slot s.rejected')].map(s => s.textContent)") == ["<i>y</i>"]
