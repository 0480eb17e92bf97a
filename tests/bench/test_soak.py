"""A 25-second soak at saturation: streamed and plain requests, disconnects and aborts, mixed knobs.
Every completed answer equals the same request run alone (fp32 greedy), nothing is lost, the KV pool
is fully free afterwards, RSS levels off. The 10-minute run for reports: python -m d2f.bench.soak --seconds 600
"""
import pytest

from d2f.bench import soak
from d2f.bench.live import LiveServer
from tests.support.server_fixtures import write_tiny_server_model

pytestmark = [pytest.mark.live, pytest.mark.slow]


def test_soak_keeps_every_answer_exact(tmp_path):
    model = write_tiny_server_model(tmp_path / "m", d2f=True)
    srv = LiveServer("--model", str(model), "--dtype", "fp32", "--max-queue", "64")
    try:
        import asyncio

        result = asyncio.run(soak.soak(srv.url, seconds=25, concurrency=16, max_tokens=24, pid=srv.proc.pid,
                                       seed=1))
    finally:
        srv.stop()
    assert result["completed"] > 100 and result["disconnected"] > 10
    assert result["mismatches"] == 0
    assert result["errors"] == 0, result["error_samples"]
    assert result["lost"] == 0
    assert result["kv_pages_used_after"] == 0 and result["healthy_after"]
    curve = result["rss_curve_mb"]
    half = len(curve) // 2
    # Early growth is caches warming (oneDNN keeps a primitive per shape, up to 1024); afterwards it levels off.
    assert curve[-1] - curve[half] < 64, curve
