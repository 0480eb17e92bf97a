"""An engine over a tiny checkpoint with the suite's defaults: fp32 and a small KV pool."""
from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine


def make_engine(path, **kw) -> Engine:
    kw.setdefault("dtype", "fp32")
    kw.setdefault("kv_cache_memory", 1 << 24)
    return Engine(EngineConfig(model=str(path), **kw))
