"""On the tier's device: the async engine streams what the sync engine computes, and a live `d2f serve --device`
answers a streamed completion over HTTP."""
import httpx
import pytest

from d2f.bench.live import LiveServer
from d2f.engine.params import DecodeParams
from tests.support.server_fixtures import sse_events, write_tiny_server_model
from tests.support.streams import assert_streams_equal_sync

pytestmark = pytest.mark.gpu


def test_async_engine_streams_equal_sync(ckpt_dirs, device):
    params = DecodeParams(max_tokens=12, block_size=4, tau_conf=0.5, ignore_eos=True)
    assert_streams_equal_sync(ckpt_dirs["dream"], [[5, 9, 13], [7, 7, 21, 40, 2, 11], [30]], params, device=device)


@pytest.mark.live
def test_live_server_streams_a_completion(tmp_path, device):
    """Started with --device, the server cannot become ready anywhere else: EngineConfig refuses a CUDA device
    torch cannot see. Default dtype (bf16 on CUDA) and a small KV pool."""
    model = write_tiny_server_model(tmp_path / "tiny-d2f", d2f=True)
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    with LiveServer("--model", str(model), "--device", device, "--served-model-name", "tiny",
                    "--kv-cache-memory", str(1 << 26)) as srv:
        whole = httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()
        streamed = httpx.post(srv.url + "/v1/completions", timeout=60,
                              json=body | {"stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    chunks = [e for e in events if e["choices"]]
    assert len(chunks) >= 2  # one chunk per committed block
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["length"]
    assert events[-1]["usage"]["completion_tokens"] == 8 == whole["usage"]["completion_tokens"]
