"""`d2f generate` as users call it."""
import pytest
import json
import subprocess
import sys

from d2f.engine.params import DecodeParams
from tests.support.engines import make_engine

pytestmark = pytest.mark.live


def _d2f(*args):
    return subprocess.run([sys.executable, "-m", "d2f", *args], capture_output=True, text=True, timeout=120)


def test_generate_json_matches_engine(ckpt_dirs):
    res = _d2f("generate", "--model", str(ckpt_dirs["dream"]), "--prompt-ids", "5,9,13,2", "--block-size", "4",
               "--tau-conf", "0.5", "--max-tokens", "10", "--dtype", "fp32", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    want = make_engine(ckpt_dirs["dream"]).generate([[5, 9, 13, 2]], DecodeParams(max_tokens=10, block_size=4,
                                                                                  tau_conf=0.5))[0]
    assert got["token_ids"] == want.token_ids
    assert got["finish_reason"] == want.finish_reason
    assert got["forwards"] == want.num_forwards
    assert got["seconds"] > 0 and got["text"] is None


def test_bad_checkpoint_is_one_clear_line(tmp_path):
    (tmp_path / "config.json").write_text("{broken")
    res = _d2f("generate", "--model", str(tmp_path), "--prompt-ids", "1,2")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.json: not valid JSON" in lines[0]


def test_text_prompt_without_tokenizer_is_refused(ckpt_dirs):
    res = _d2f("generate", "--model", str(ckpt_dirs["llama"]), "--prompt", "hello")
    assert res.returncode == 2 and "has no tokenizer; use --prompt-ids" in res.stderr


def test_bad_knob_is_refused(ckpt_dirs):
    res = _d2f("generate", "--model", str(ckpt_dirs["llada"]), "--prompt-ids", "1,2", "--block-size", "3")
    assert res.returncode == 2 and "block_size must be a multiple" in res.stderr
