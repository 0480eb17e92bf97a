"""`d2f bench gpu` on CPU with tiny shapes: the JSON scripts/gpu_check.sh brings back from a GPU has every field,
consistently (no timing asserted), and the --out file holds the same object; the check itself stops on a
machine without CUDA."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d2f.cli import main

ROOT = Path(__file__).resolve().parents[2]

TINY = ["--device", "cpu", "--dtype", "fp32", "--shapes", "tiny", "--cache-len", "40", "--windows", "1,4",
        "--max-tokens", "6", "--concurrency", "1,3", "--copy-mib", "4", "--kv-cache-memory", str(1 << 24)]


def test_json_shape(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", *TINY, "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == r
    assert r["benchmark"] == "gpu" and r["device"] == "cpu" and r["dtype"] == "float32" and r["cuda"] is None
    assert r["copy_bandwidth_gb_s"] > 0 and list(r["shapes"]) == ["tiny"]
    s = r["shapes"]["tiny"]
    assert s["weight_bytes"] == 4 * (512 * 64 + 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 128))
    assert s["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4
    assert set(s["row_drift"]) == {"qkv", "head"}
    assert all(d["bitwise"] == (d["max_abs"] == 0) and d["relative"] >= 0 for d in s["row_drift"].values())
    for key in ("fwd_ms", "roofline_ms", "fwd_over_roofline"):
        assert list(s[key]) == ["1", "4"], key
    bandwidth = r["copy_bandwidth_gb_s"] * 1e6  # bytes per ms
    for w in ("1", "4"):
        roofline = (s["weight_bytes"] + s["kv_bytes_per_token"] * (40 + int(w))) / bandwidth  # weights + cached K/V
        assert s["roofline_ms"][w] == round(roofline, 4)
        assert s["fwd_over_roofline"][w] == round(s["fwd_ms"][w] / roofline, 2)
    assert set(s["decode"]) == {"ar", "quality", "balanced", "fast"}
    assert all(d["tokens"] == 6 and d["tok_s"] > 0 for d in s["decode"].values())
    assert s["decode"]["ar"]["forwards"] == 6
    assert set(s["batch"]) == {"ar", "balanced"}
    for mode in s["batch"].values():
        assert list(mode) == ["1", "3"]
        assert mode["1"]["tokens"] == 6 and mode["3"]["tokens"] == 18 and mode["3"]["tokens_per_s"] > 0
    assert r["seconds"] > 0 and "peak_memory_gib" not in r and "over_budget" not in s  # peak memory: CUDA only


@pytest.mark.parametrize("args, message", [
    (["--shapes", "tiny,13b"], "shapes must be distinct ones of smollm2, 7b, tiny"),
    (["--concurrency", "0"], "concurrency must be integers >= 1"),
    (["--device", "cuda"], "torch sees no CUDA device"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert main(["bench", "gpu", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check would run in full")
def test_gpu_check_stops_where_there_is_no_gpu(tmp_path):
    """A GPU check must fail, not pass by skipping: without CUDA it stops before installing anything."""
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)})
    assert res.returncode == 3, res.stderr
    assert "sees no CUDA device" in res.stderr
    assert "torch" in (tmp_path / "gpu_env.txt").read_text() and not (tmp_path / "gpu_install.log").exists()


def test_a_spent_budget_lists_what_it_skipped(capsys):
    assert main(["bench", "gpu", *TINY, "--budget-s", "1e-9"]) == 0
    s = json.loads(capsys.readouterr().out)["shapes"]["tiny"]
    assert s["over_budget"] == ["forwards", "decode ar", "decode quality", "decode balanced", "decode fast",
                                "batch ar 1", "batch ar 3", "batch balanced 1", "batch balanced 3"]
    assert "fwd_ms" not in s and "decode" not in s
