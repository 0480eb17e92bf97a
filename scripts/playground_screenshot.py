"""The README's playground screenshot: `d2f serve` on a model (default: the embedded D2F form), the page in
headless Chromium, one prompt side by side (D2F at a preset against AR, block size 1), saved as a PNG.

    python scripts/playground_screenshot.py [--model smollm2-d2f] [--out docs/playground.png]

Needs what the browser test needs: Debian's chromium and chromium-driver, and selenium (the test extra)."""
from __future__ import annotations

import argparse
import json

import httpx

from d2f.bench import browser
from d2f.bench.live import LiveServer

PROMPT = "Why is the sky blue? Answer in two sentences."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-d2f")
    p.add_argument("--preset", default="fast", choices=("quality", "balanced", "fast"))
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default="docs/playground.png")
    args = p.parse_args()
    with LiveServer("--model", args.model, ready_timeout=600) as server:
        # The first request pays one-time costs; the figures in the picture should be the steady ones.
        httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 8}, timeout=600)
        driver = browser.launch(width=1440, height=780)
        try:
            page = browser.PlaygroundPage(driver, server.url)
            page.side_by_side()
            page.knobs("a", args.preset, temperature=0, max_tokens=args.max_tokens)
            page.knobs("b", "ar", temperature=0, max_tokens=args.max_tokens)
            page.ask(PROMPT, timeout=600)
            driver.save_screenshot(args.out)
            print(json.dumps({p: page.pane(p)["figures"] for p in ("a", "b")}, indent=1))
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
