"""Headless Chromium on the playground page, for its browser test and the README's screenshot: Debian's
`chromium` and `chromium-driver` driven by selenium (the test extra). Nothing is downloaded: the browser
and its driver must be installed (.ci/run installs them)."""
from __future__ import annotations

import importlib.util
import shutil
import time

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find() -> tuple[str, str] | str:
    """(browser, driver) paths, or why there are none."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
    return browser, driver


def launch(width: int = 1440, height: int = 900):
    """A headless Chromium session (a selenium WebDriver) that keeps the page's console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


class PlaygroundPage:
    """The page, as a user drives it: knobs per run, a prompt, Send; and what it drew, read from the DOM."""

    def __init__(self, driver, url: str, key: str | None = None):
        self.driver = driver
        driver.get(url + "/playground")
        self._wait(lambda: self.driver.find_elements("css selector", "#pane-a"), 10, "the page to load")
        if key is not None:
            self._type("#api-key", key)

    def _wait(self, ready, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = ready()
            if got:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}")

    def _type(self, selector: str, text: str) -> None:
        box = self.driver.find_element("css selector", selector)
        box.clear()
        box.send_keys(text)

    def knobs(self, pane: str, preset: str | None = None, **values) -> None:
        """Click a preset, then set knobs by name (block_size, temperature, max_tokens)."""
        root = f"#pane-{pane}"
        if preset:
            self.driver.find_element("css selector", f'{root} [data-preset="{preset}"]').click()
        for name, value in values.items():
            self._type(f'{root} [data-knob="{name}"]', str(value))

    def side_by_side(self, on: bool = True) -> None:
        box = self.driver.find_element("css selector", "#compare")
        if box.is_selected() != on:
            box.click()

    def ask(self, prompt: str, timeout: float = 120) -> None:
        """Send a prompt and wait until every shown run has finished."""
        compare = self.driver.find_element("css selector", "#compare").is_selected()
        self._type("#prompt", prompt)
        self.driver.find_element("css selector", "#send").click()
        panes = ["a", "b"] if compare else ["a"]
        self._wait(lambda: all(self.pane(p)["status"] in ("done", "error") for p in panes), timeout,
                   "the answer")

    def pane(self, name: str) -> dict:
        """What one run drew: its status, figures, request, and every slot (pos, state, id, forward, text)."""
        return self.driver.execute_script("""
            const root = document.getElementById('pane-' + arguments[0]);
            const slots = [...root.querySelectorAll('.slot')].map(s => ({
                pos: Number(s.dataset.pos), state: s.dataset.state, forward: Number(s.dataset.forward || 0),
                id: s.dataset.id === undefined ? null : Number(s.dataset.id), text: s.dataset.text ?? null,
                shown: s.textContent, children: s.children.length}));
            const fig = n => root.querySelector('[data-figure="' + n + '"]').textContent;
            return {status: root.dataset.status, forwards: Number(root.dataset.forwards),
                    usage_forwards: Number(root.dataset.usageForwards),
                    completion_tokens: Number(root.dataset.completionTokens),
                    request: root.dataset.request ? JSON.parse(root.dataset.request) : null,
                    figures: {forwards: fig('forwards'), per_forward: fig('per_forward'), tok_s: fig('tok_s'),
                              first_block: fig('first_block'), status: fig('status')},
                    answer: root.querySelector('.answer').textContent, slots};
        """, name)

    def history(self) -> list[dict]:
        return self.driver.execute_script(
            "return [...document.querySelectorAll('#history li')].map("
            "li => ({role: li.className, text: li.textContent, children: li.children.length}))")

    def console_errors(self) -> list[str]:
        """Script errors and CSP violations; not the HTTP errors the page's own requests met (a 401, say)."""
        return [e["message"] for e in self.driver.get_log("browser")
                if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
