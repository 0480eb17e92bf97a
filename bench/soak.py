"""Bounded soak: hold a server at saturation with streamed and plain requests, random disconnects and
knobs, then check every completed answer against the same request run alone, the KV pool, lost
requests and RSS. Loopback only; stops by itself. Prints JSON.

    python -m d2f.bench.soak --seconds 600                  # starts its own server on the default model
    python -m d2f.bench.soak --url http://127.0.0.1:8000 --pid 1234 --seconds 60
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from urllib.parse import urlparse

import httpx

from d2f.engine.timing import rss_mb

from .live import LiveServer

KNOBS = [{}, {"speed": "fast"}, {"speed": "quality"}, {"speed": 0.3}, {"tau_conf": 0.5}]
PROMPTS = ["Tell me about the sea.", "List three fruits:", "Once upon a time", "def add(a, b):",
           "The weather today is", "Why is the sky blue?", "Write a haiku about snow.", "1, 2, 3,"]


def _loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1") and not (host or "").startswith("127."):
        raise SystemExit(f"soak only targets loopback addresses, not {host!r}")


def _rss_mb(pid: int | None) -> float | None:
    return None if pid is None else rss_mb(pid)


def _body(prompt: str, knob: dict, max_tokens: int) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **knob}


async def _reference(client, cases, max_tokens) -> dict:
    """Each case's answer with nothing else running: what every answer under load must equal."""
    ref = {}
    for prompt, k in cases:
        r = await client.post("/v1/completions", json=_body(prompt, KNOBS[k], max_tokens))
        r.raise_for_status()
        ref[(prompt, k)] = r.json()["choices"][0]["text"]
    return ref


async def _stream(client, body, disconnect: bool) -> tuple[str, str]:
    text, finish = "", None
    async with client.stream("POST", "/v1/completions", json=body | {"stream": True}) as r:
        if r.status_code != 200:
            return "status", str(r.status_code)
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return "error", event["error"]["message"]
            choice = event["choices"][0]
            text += choice["text"]
            finish = choice["finish_reason"] or finish
            if disconnect:
                return "disconnected", ""
    return ("ok", text) if finish else ("error", "stream ended without finish_reason")


async def _worker(client, cases, ref, max_tokens, deadline, rng, stats):
    while time.monotonic() < deadline:
        prompt, k = rng.choice(cases)
        body = _body(prompt, KNOBS[k], max_tokens)
        mode = rng.choices(["plain", "stream", "disconnect", "abort"], [4, 4, 1, 1])[0]
        stats["sent"] += 1
        t0 = time.monotonic()
        try:
            if mode == "plain":
                r = await client.post("/v1/completions", json=body)
                outcome = ("ok", r.json()["choices"][0]["text"]) if r.status_code == 200 else ("status",
                                                                                             str(r.status_code))
            elif mode == "abort":  # the client gives up mid-request
                try:
                    await asyncio.wait_for(client.post("/v1/completions", json=body), rng.uniform(0.01, 0.3))
                    outcome = ("disconnected", "")  # finished before the client gave up: not checked
                except asyncio.TimeoutError:
                    outcome = ("disconnected", "")
            else:
                outcome = await _stream(client, body, disconnect=mode == "disconnect")
        except httpx.HTTPError as exc:
            outcome = ("transport", type(exc).__name__)
        kind, value = outcome
        if kind == "ok":
            stats["latency"].append(time.monotonic() - t0)
            stats["completed"] += 1
            if value != ref[(prompt, k)]:
                stats["mismatches"] += 1
        elif kind == "disconnected":
            stats["disconnected"] += 1
        elif kind == "status" and value == "429":
            stats["rejected_429"] += 1
        else:
            stats["errors"] += 1
            stats["error_samples"] = (stats["error_samples"] + [f"{kind}: {value}"])[:5]


async def _metric(client, name: str) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def soak(url: str, seconds: float, concurrency: int, max_tokens: int, pid: int | None, seed: int) -> dict:
    _loopback(url)
    rng = random.Random(seed)
    cases = [(p, k) for p in PROMPTS for k in range(len(KNOBS))]
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        ref = await _reference(client, cases, max_tokens)
        rss_start = _rss_mb(pid)
        stats = {"sent": 0, "completed": 0, "mismatches": 0, "disconnected": 0, "rejected_429": 0, "errors": 0,
                 "latency": [], "error_samples": []}
        t0 = time.monotonic()
        deadline = t0 + seconds
        rss_curve = []

        async def sample_rss():
            while time.monotonic() < deadline:
                rss_curve.append(_rss_mb(pid))
                await asyncio.sleep(max(1.0, seconds / 20))
        await asyncio.gather(sample_rss(), *[_worker(client, cases, ref, max_tokens, deadline,
                                                     random.Random(rng.random()), stats) for _ in range(concurrency)])
        wall = time.monotonic() - t0
        for _ in range(200):  # aborted requests free their pages within a step or two
            if await _metric(client, "d2f_kv_pages_used") == 0 and await _metric(client, "d2f_requests_running") == 0:
                break
            await asyncio.sleep(0.05)
        pages_used = await _metric(client, "d2f_kv_pages_used")
        healthy = (await client.get("/health")).status_code == 200
    lat = sorted(stats.pop("latency"))
    accounted = stats["completed"] + stats["disconnected"] + stats["rejected_429"] + stats["errors"]
    return {"seconds": round(wall, 1), "concurrency": concurrency, "max_tokens": max_tokens, **stats,
            "lost": stats["sent"] - accounted,
            "requests_per_s": round(stats["completed"] / wall, 2),
            "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
            "latency_p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
            "kv_pages_used_after": pages_used, "healthy_after": healthy,
            "rss_start_mb": rss_start, "rss_end_mb": _rss_mb(pid), "rss_curve_mb": rss_curve,
            "rss_growth_mb": None if rss_start is None else round((_rss_mb(pid) or 0) - rss_start, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (loopback); default: start one")
    p.add_argument("--pid", type=int, help="its process id, for RSS")
    p.add_argument("--model", help="model for the server this script starts (default: the default model)")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.pid is not None and args.url is None:
        p.error("--pid names the process of --url; a server this script starts is measured by itself")
    if args.url is not None:
        result = asyncio.run(soak(args.url, args.seconds, args.concurrency, args.max_tokens, args.pid, args.seed))
    else:
        try:
            server = LiveServer("--dtype", "fp32", *(["--model", args.model] if args.model else []),
                                "--max-queue", str(4 * args.concurrency), ready_timeout=180, capture=False)
        except RuntimeError as exc:
            raise SystemExit(f"soak: {exc}") from None
        with server:
            result = asyncio.run(soak(server.url, args.seconds, args.concurrency, args.max_tokens, server.pid,
                                      args.seed))
            result["server_exit_code"] = server.drain()
    print(json.dumps(result, indent=1))
    return 0 if result["mismatches"] == 0 and result["lost"] == 0 and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
