"""Only a RequestError is the client's fault (400, its message); any other failure is our bug: a generic
500, the details in the server log only."""
import pytest

from d2f.engine.engine import Engine
from d2f.engine.errors import RequestError
from tests.support.server_fixtures import Client, clean_error, run, sse_events


BODY = {"prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0}
SECRET = "/secret/path internal state"


def _post_both(model_dir):
    async def main():
        async with Client(model_dir) as c:
            plain = await c.post("/v1/completions", json=BODY)
            streamed = await c.post("/v1/completions", json=BODY | {"stream": True})
            health = await c.get("/health")
            return plain, streamed, health
    return run(main())


def _raiser(exc):
    def boom(self, *a, **kw):
        raise exc
    return boom


@pytest.mark.parametrize("where", ["validate", "add_request"])
@pytest.mark.parametrize("exc", [ValueError(SECRET), RuntimeError(SECRET)])
def test_internal_error_is_a_generic_500(model_dirs, monkeypatch, caplog, where, exc):
    """validate fails in the route's check; add_request fails on the engine thread (the route's check
    still passes: it calls validate, not add_request)."""
    monkeypatch.setattr(Engine, where, _raiser(exc))
    plain, streamed, health = _post_both(model_dirs["ar"])
    assert clean_error(plain, 500)["message"] == "internal server error"
    if where == "validate":  # refused before any stream starts
        assert clean_error(streamed, 500)["message"] == "internal server error"
    else:
        assert streamed.status_code == 200 and SECRET not in streamed.text
        assert sse_events(streamed.text)[-1]["error"]["message"] == "internal server error"
    assert SECRET in caplog.text  # the details are in the server's log
    assert health.status_code == 200  # one request's failure, not the engine's


@pytest.mark.parametrize("where", ["validate", "add_request"])
def test_request_error_is_a_400_with_its_message(model_dirs, monkeypatch, where):
    monkeypatch.setattr(Engine, where, _raiser(RequestError("prompt is not acceptable here")))
    plain, streamed, health = _post_both(model_dirs["ar"])
    assert clean_error(plain, 400)["message"] == "prompt is not acceptable here"
    if where == "validate":
        assert clean_error(streamed, 400)["message"] == "prompt is not acceptable here"
    else:
        err = sse_events(streamed.text)[-1]["error"]
        assert err["message"] == "prompt is not acceptable here" and err["type"] == "invalid_request_error"
    assert health.status_code == 200
