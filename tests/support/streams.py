"""The async engine over a tiny checkpoint: started on its own thread, and what it streams per request."""
import asyncio

from d2f.engine.async_engine import AsyncEngine
from tests.support.engines import make_engine


def started(path, **engine_kw) -> AsyncEngine:
    eng = AsyncEngine(lambda: make_engine(path, **engine_kw))
    eng.start()
    return eng


async def collect(aeng, prompt, rid, params) -> list:
    return [o async for o in aeng.generate(prompt, params, rid)]


def assert_streams_equal_sync(path, prompts, params, **engine_kw) -> None:
    """Concurrent streams carry exactly the sync engine's tokens, one chunk per committed block, and end once."""
    expected = [o.token_ids for o in make_engine(path, **engine_kw).generate(prompts, params)]
    aeng = started(path, **engine_kw)

    async def main():
        await aeng.wait_ready()
        return await asyncio.gather(*[collect(aeng, p, f"a{i}", params) for i, p in enumerate(prompts)])

    try:
        results = asyncio.run(main())
    finally:
        aeng.shutdown()
    for outs, want in zip(results, expected):
        assert [t for o in outs for t in o.new_token_ids] == want
        assert outs[-1].finished and outs[-1].token_ids == want
        assert sum(o.finished for o in outs) == 1
        assert len(outs) >= 2  # several committed blocks, streamed one by one
