"""`d2f eval --json` on a tiny refurbished model reports every field with sane values."""
import json
import math

import pytest

from d2f.refurbish.cli import main
from d2f.refurbish.eval import parse_knobs
from d2f.refurbish.metrics import agreement, distinct2
from d2f.refurbish.trainer import Refurbisher
from tests.support.refurbish import config

FIELDS = ("tokens_per_forward", "tokens_per_second", "reference_nll", "distinct2", "eos_rate", "agreement")


@pytest.fixture(scope="module")
def refurbished(tiny):  # noqa: F811
    out = tiny["root"] / "eval-model"
    Refurbisher(config(tiny, "llama", out, steps=2)).run()
    prompts = tiny["root"] / "heldout.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in ([5, 6, 7], [8, 9], [40, 41, 42, 43])))
    return out, prompts


def test_eval_json_reports_speed_and_quality_per_setting(refurbished, tmp_path, capsys):
    out, prompts = refurbished
    plot = tmp_path / "curve.png"
    args = ["eval", "--model", str(out), "--prompts", str(prompts), "--knobs", "0.9,fast,0.8/0.95/8",
            "--max-tokens", "12", "--json", "--kv-cache-mb", "8", "--single-stream", "2"]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(plot)]
    except ImportError:
        plot = None
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference_model"].endswith("llama")  # found from the checkpoint's record of its teacher
    assert report["num_prompts"] == 3
    ar = report["ar"]
    assert ar["knobs"] == {"block_size": 1} and ar["agreement"] == 1.0
    assert 0 < ar["tokens_per_forward"] <= 1.0  # AR commits at most one token per forward
    assert [s["knobs"]["block_size"] for s in report["settings"]] == [4, 4, 8]
    assert report["settings"][1]["knobs"]["tau_conf"] == pytest.approx(0.85)
    for row in [ar] + report["settings"]:
        for field in FIELDS:
            assert row[field] is not None, field
        assert row["tokens"] > 0 and row["tokens_per_second"] > 0 and row["tokens_per_forward"] > 0
        assert math.isfinite(row["reference_nll"]) and row["reference_nll"] > 0
        assert 0 <= row["distinct2"] <= 1 and 0 <= row["eos_rate"] <= 1 and 0 <= row["agreement"] <= 1
        assert row["tokens"] <= 3 * 12
        assert row["single_stream_tokens_per_second"] > 0
    assert all(s["single_stream_speedup_vs_ar"] > 0 for s in report["settings"])
    if plot is not None:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_needs_a_reference_it_can_run_as_ar(tiny, capsys):  # noqa: F811
    prompts = tiny["root"] / "p.jsonl"
    prompts.write_text('{"prompt_ids": [5, 6]}\n')
    assert main(["eval", "--model", str(tiny["dream"]), "--prompts", str(prompts)]) == 2
    assert "--reference-model is needed" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny["dream"]), "--prompts", str(prompts), "--reference-model",
                 str(tiny["llada"]), "--kv-cache-mb", "4"]) == 2
    assert "shifted-logit" in capsys.readouterr().err


def test_knob_and_metric_definitions():
    assert parse_knobs("0.9, quality,0.8/0.95/32") == [
        {"tau_conf": 0.9, "tau_act": 0.9}, {"tau_conf": 0.95, "tau_act": 0.95},
        {"tau_conf": 0.8, "tau_act": 0.95, "block_size": 32}]
    with pytest.raises(ValueError):
        parse_knobs("fastest")
    assert distinct2([[1, 2, 1, 2, 1]]) == 0.5  # bigrams 12 21 12 21: two distinct of four
    assert distinct2([[1], []]) is None
    assert agreement([[1, 2, 3], [4]], [[1, 9, 3, 5], [4]]) == (pytest.approx((2 / 4 + 1) / 2), 0.5)


def test_eval_puts_llama_cpp_on_the_same_single_stream_prompts(refurbished, tmp_path, capsys, monkeypatch):
    """--gguf with --single-stream N: the yardstick gets the same first N prompts (as token ids) and max
    tokens, and its point lands in the report and in the text table."""
    from d2f.refurbish import eval as eval_module

    out, prompts = refurbished
    calls = []

    def yardstick(gguf, prompt_ids, max_tokens, threads, runs=2):
        calls.append((gguf, prompt_ids, max_tokens, runs))
        return {"tok_s": 12.5, "decode_tok_s": 14.0, "tokens": 20, "prompts": len(prompt_ids)}

    monkeypatch.setattr(eval_module.llama_cpp, "tok_s", yardstick)
    base = ["eval", "--model", str(out), "--prompts", str(prompts), "--knobs", "0.9", "--max-tokens", "6",
            "--kv-cache-mb", "8", "--gguf", str(tmp_path / "m.gguf")]
    assert main(base + ["--json"]) == 0  # no single-stream timing: nothing to compare llama.cpp with
    assert "llama_cpp" not in json.loads(capsys.readouterr().out) and not calls
    assert main(base + ["--single-stream", "2"]) == 0
    assert "llama.cpp on the same prompts, single stream: 12.5 tokens/s" in capsys.readouterr().out
    assert calls == [(str(tmp_path / "m.gguf"), [[5, 6, 7], [8, 9]], 6, 1)]


def test_llama_cpp_yardstick_is_optional(monkeypatch):
    from d2f.engine import llama_cpp

    monkeypatch.setattr(llama_cpp.importlib.util, "find_spec", lambda name: None)
    assert llama_cpp.tok_s("m.gguf", [[1, 2]], 4, 1) is None


def test_a_plot_without_matplotlib_is_refused_before_the_run(refurbished, tmp_path, capsys, monkeypatch):
    from d2f.refurbish import eval as eval_module

    out, prompts = refurbished
    monkeypatch.setattr(eval_module.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(eval_module, "evaluate", lambda cfg: pytest.fail("evaluated before refusing"))
    assert main(["eval", "--model", str(out), "--prompts", str(prompts), "--plot", str(tmp_path / "c.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
