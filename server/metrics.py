"""Every Prometheus object lives here, in a registry per app (so tests can build several apps)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
RATIO_BUCKETS = (1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 6, 8, 12, 16)


class Metrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        r, label = self.registry, ["model_name"]

        def hist(name, doc, buckets):
            return Histogram(name, doc, label, buckets=buckets, registry=r).labels(model_name)

        def gauge(name, doc):
            return Gauge(name, doc, label, registry=r).labels(model_name)

        self.requests = Counter("d2f_requests", "Finished requests by outcome (stop, length, error, abort, "
                                "rejected)", ["model_name", "outcome"], registry=r)
        self.ttfb = hist("d2f_time_to_first_block_seconds", "Request arrival to its first committed block",
                         LATENCY_BUCKETS)
        self.inter_block = hist("d2f_inter_block_latency_seconds", "Time between consecutive committed blocks",
                                LATENCY_BUCKETS)
        self.e2e = hist("d2f_e2e_request_latency_seconds", "Request arrival to its last token", LATENCY_BUCKETS)
        self.queue = hist("d2f_queue_time_seconds", "Arrival to first scheduled forward", LATENCY_BUCKETS)
        self.forwards = hist("d2f_forwards_per_request", "Model forwards a request took part in", COUNT_BUCKETS)
        self.tokens_per_forward = hist("d2f_tokens_per_forward", "Generated tokens per forward, per request",
                                       RATIO_BUCKETS)
        self.prompt_tokens = Counter("d2f_prompt_tokens", "Prompt tokens processed", label, registry=r).labels(
            model_name)
        self.generation_tokens = Counter("d2f_generation_tokens", "Tokens generated", label,
                                         registry=r).labels(model_name)
        self.running = gauge("d2f_requests_running", "Requests with a sequence in the running batch")
        self.waiting = gauge("d2f_requests_waiting", "Requests queued for admission (the autoscaling signal)")
        self.pages_used = gauge("d2f_kv_pages_used", "KV cache pages in use")
        self.pages_total = gauge("d2f_kv_pages_capacity", "KV cache pages in the pool")
        self.kv_usage = gauge("d2f_kv_cache_usage_ratio", "Share of KV cache pages in use, 0 to 1")

    def outcome(self, outcome: str, n: int = 1) -> None:
        self.requests.labels(self.model_name, outcome).inc(n)

    def refresh(self, stats, pool, active: int) -> None:
        """At scrape time. KV from the pool itself: the engine thread publishes its step stats only after
        handing out that step's outputs, so a scrape right after a request ends could see its pages."""
        self.running.set(stats.running)
        self.waiting.set(max(stats.waiting, active - stats.running))
        used, total = pool.num_used, pool.num_pages
        self.pages_total.set(total)
        self.pages_used.set(used)
        self.kv_usage.set(used / total if total else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
