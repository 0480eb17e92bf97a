"""`d2f bench speed` on tiny checkpoints: the JSON the issue names is there and consistent (no timing asserted)."""
import json

import pytest

from d2f.cli import main
from tests.support import checkpoints as ck

WINDOWS = ["1", "4", "8", "16", "32"]


def _bench(model_dir, capsys, *extra) -> dict:
    assert main(["bench", "speed", "--model", str(model_dir), "--dtype", "fp32", "--max-tokens", "6",
                 "--cache-len", "40", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _check_common(r: dict) -> None:
    assert r["benchmark"] == "speed" and r["dtype"] == "float32"
    assert r["gemv_floor_ms"] > 0 and isinstance(r["native_bf16"], bool)
    assert sorted(r["fwd_ms"], key=int) == WINDOWS and all(v > 0 for v in r["fwd_ms"].values())
    assert r["ar_tok_s"]["tokens"] == 6 and r["ar_tok_s"]["forwards"] == 6 and r["ar_tok_s"]["tok_s"] > 0
    assert r["llama_cpp_tok_s"] is None  # no GGUF for a checkpoint directory
    assert r["ratios"]["fwd1_over_floor"] == round(r["fwd_ms"]["1"] / r["gemv_floor_ms"], 2)
    assert r["ratios"]["fwd16_over_fwd1"] == round(r["fwd_ms"]["16"] / r["fwd_ms"]["1"], 2)
    assert r["ratios"]["fwd4_over_fwd1"] == round(r["fwd_ms"]["4"] / r["fwd_ms"]["1"], 2)
    assert set(r["isa"]) <= {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}
    assert r["rss_mb"] > 0 and r["rss_mb_after_load"] > 0 and r["kv_cache_mb"] == 1024  # RSS may shrink: no order


def test_ar_checkpoint(tmp_path, capsys):
    r = _bench(ck.write_llama(tmp_path / "ar", ck.hf_llama(seed=3)), capsys)
    _check_common(r)
    assert r["d2f_tok_s"] is None and "fwd_ms_without_adapter" not in r
    assert r["quantization"] == "none"


def test_quantized_checkpoint(tmp_path, capsys):
    r = _bench(ck.write_llama(tmp_path / "ar", ck.hf_llama(seed=3)), capsys, "--quantization", "int8")
    _check_common(r)
    assert r["quantization"] == "int8"


@pytest.mark.parametrize("ar_preserving", [False, True])
def test_d2f_checkpoint_reports_every_preset(tmp_path, capsys, ar_preserving):
    d = ck.write_llama(tmp_path / "d2f", ck.hf_llama(seed=3), mask_id=ck.MASK_ID,
                       d2f={"ar_preserving": ar_preserving, "block_size": 4})
    if ar_preserving:
        ck.write_mask_adapter(d, seed=1)
    r = _bench(d, capsys)
    _check_common(r)
    # exact mode exists on AR-preserving models
    exact = {"exact/2", "exact/3", "exact/2/2", "exact/2/3", "exact/2/4"} if ar_preserving else set()
    assert set(r["d2f_tok_s"]) == {"quality", "balanced", "fast"} | exact
    for preset in r["d2f_tok_s"].values():
        assert preset["tokens"] == 6 and 1 <= preset["forwards"]
        assert preset["tokens_per_forward"] == round(6 / preset["forwards"], 3)
    assert ("fwd_ms_without_adapter" in r) == ar_preserving
    if ar_preserving:
        assert sorted(r["fwd_ms_without_adapter"], key=int) == WINDOWS
