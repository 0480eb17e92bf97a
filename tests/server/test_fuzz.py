"""Schemathesis against our own OpenAPI schema, on a live server: zero 5xx, every error OpenAI-shaped.

Quick seeded subset by default; nightly: D2F_FUZZ_EXAMPLES=1000 bash .ci/run tests/server/test_fuzz.py
"""
import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from d2f.engine.config import EngineConfig
from d2f.server.app import ServerSettings, build_app
from d2f.bench.live import LiveServer
from tests.support.server_fixtures import write_tiny_server_model

pytestmark = pytest.mark.live

EXAMPLES = int(os.environ.get("D2F_FUZZ_EXAMPLES", "25"))
KEY = "fuzz-key"

# The OpenAPI document comes from the app object itself; this instance is never started.
schema = schemathesis.openapi.from_dict(build_app(ServerSettings(EngineConfig(model="schema-only"))).openapi())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    model = write_tiny_server_model(tmp_path_factory.mktemp("fuzz") / "m", d2f=True)
    # A short context keeps fuzzed generations small: longer asks are refused with a 400 (also checked).
    srv = LiveServer("--model", str(model), "--dtype", "fp32", "--api-key", KEY, "--max-queue", "4096",
                     "--request-timeout", "20", "--max-model-len", "96", "--default-max-tokens", "16")
    yield srv
    srv.stop()


@schema.include(path_regex="^/v1/").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_openai_errors(case, live):
    response = case.call(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code < 500, (case.path, case.body)
    if response.status_code >= 400:
        err = response.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert "Traceback" not in response.text


def test_server_is_healthy_after_fuzzing(live):
    assert httpx.get(live.url + "/health", timeout=5).status_code == 200
    ok = httpx.post(live.url + "/v1/completions", json={"prompt": "still here", "max_tokens": 3},
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert ok.status_code == 200
