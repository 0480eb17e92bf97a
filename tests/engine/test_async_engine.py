"""The async engine streams what the sync engine computes, and cancelling a consumer frees its KV."""
import asyncio

import pytest

from d2f.engine.async_engine import AsyncEngine, EngineDeadError
from d2f.engine.params import DecodeParams
from tests.support.engines import make_engine
from tests.support.streams import assert_streams_equal_sync, collect, started

PARAMS = DecodeParams(max_tokens=12, block_size=4, tau_conf=0.5, ignore_eos=True)
PROMPTS = [[5, 9, 13], [7, 7, 21, 40, 2, 11], [30]]


def test_streams_equal_sync_engine(ckpt_dirs):
    assert_streams_equal_sync(ckpt_dirs["dream"], PROMPTS, PARAMS)


def test_cancel_aborts_and_frees_pages(ckpt_dirs):
    aeng = started(ckpt_dirs["llama"])

    async def main():
        await aeng.wait_ready()
        stream = aeng.generate([5, 6, 7], DecodeParams(max_tokens=200, ignore_eos=True), "long")
        first = await stream.__anext__()
        assert not first.finished
        await stream.aclose()  # what a disconnecting HTTP client does
        for _ in range(200):
            if not aeng.engine.requests and aeng.engine.pool.num_free == aeng.engine.pool.num_pages:
                return True
            await asyncio.sleep(0.01)
        return False

    try:
        assert asyncio.run(main())
    finally:
        aeng.shutdown()


def test_refused_request_raises_value_error(ckpt_dirs):
    aeng = started(ckpt_dirs["llada"])

    async def main():
        await aeng.wait_ready()
        with pytest.raises(ValueError, match="block_size"):
            await collect(aeng, [5, 6], "bad", DecodeParams(block_size=3))
        return await collect(aeng, [5, 6], "good", PARAMS)  # the engine goes on serving

    try:
        assert asyncio.run(main())[-1].finished
    finally:
        aeng.shutdown()


def test_failed_start_is_reported(tmp_path):
    aeng = AsyncEngine(lambda: make_engine(tmp_path / "missing"))
    aeng.start()

    async def main():
        with pytest.raises(EngineDeadError, match="model directory not found"):
            await aeng.wait_ready()

    asyncio.run(main())
    assert aeng.is_dead and not aeng.is_ready
