"""The default model as D2F: the cached AR checkpoint + the adapter shipped in the package, assembled once
and rebuilt when the shipped adapter changes; names pick AR or D2F."""
import json

import pytest

from d2f.engine.models import registry
from d2f.engine.models import default_d2f
from d2f.engine.models.checkpoint import read_spec
from tests.support import checkpoints as ck
from tests.support.engines import make_engine


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    base = ck.write_llama(tmp_path / "base", ck.hf_llama(seed=31))
    ship = tmp_path / "ship"
    ship.mkdir()
    ck.write_mask_adapter(ship, seed=1)
    (ship / "d2f.json").write_text(json.dumps({"mask_token_id": ck.MASK_ID, "ar_preserving": True,
                                               "block_size": 4, "tau_conf": 0.9}))
    monkeypatch.setattr(default_d2f, "SHIPPED", ship)
    monkeypatch.setattr(default_d2f, "ensure_default_model", lambda progress=None: base)
    monkeypatch.setenv("D2F_CACHE_DIR", str(tmp_path / "cache"))
    return base, ship


def test_assembled_once_loads_as_ar_preserving_and_follows_the_shipped_adapter(shipped):
    base, ship = shipped
    path = default_d2f.ensure_default_d2f_model(progress=lambda m: None)
    spec, _ = read_spec(path)
    assert spec.ar_preserving and spec.mask_token_id == ck.MASK_ID and spec.block_size == 4
    assert (path / "model.safetensors").stat().st_ino == (base / "model.safetensors").stat().st_ino  # linked
    eng = make_engine(path)
    assert eng.model.adapter is not None
    stamp = (path / "config.json").stat().st_mtime_ns
    assert default_d2f.ensure_default_d2f_model(progress=lambda m: None) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp  # nothing rebuilt
    (ship / "d2f.json").write_text(json.dumps({"mask_token_id": ck.MASK_ID, "ar_preserving": True, "block_size": 8}))
    default_d2f.ensure_default_d2f_model(progress=lambda m: None)
    assert read_spec(path)[0].block_size == 8


def test_missing_adapter_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(default_d2f, "SHIPPED", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="D2F adapter"):
        default_d2f.ensure_default_d2f_model(progress=lambda m: None)


def test_names(monkeypatch, shipped):
    assert registry.served_name("smollm2") == "smollm2-135m-instruct"
    assert registry.served_name("smollm2-d2f") == "smollm2-135m-instruct-d2f"
    assert registry.served_name("/some/dir") is None
    assert registry.resolve_model("/some/dir") == "/some/dir"
    assert registry.resolve_model("smollm2-d2f").endswith(default_d2f.DIR_NAME)
    monkeypatch.setattr(registry, "DEFAULT_IS_D2F", True)
    assert registry.default_name() == "smollm2-d2f"
    monkeypatch.setattr(registry, "DEFAULT_IS_D2F", False)
    assert registry.default_name() == "smollm2"
