"""`d2f eval` on an AR-preserving model: exact mode by default, with its acceptance per offset and the check
that every exact answer is the model's own AR answer."""
import json

import pytest

from d2f.refurbish.cli import main
from d2f.refurbish.eval import parse_knobs
from tests.support import checkpoints as ck


@pytest.fixture(scope="module")
def arp(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-exact")
    _, base, model = ck.write_ar_preserving_pair(root, scale=0.1)
    prompts = root / "heldout.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in ([5, 6, 7], [8, 9], [40, 41, 42, 43])))
    return {"base": base, "model": model, "prompts": prompts}


def _eval(arp, *extra):
    return ["eval", "--model", str(arp["model"]), "--reference-model", str(arp["base"]), "--prompts",
            str(arp["prompts"]), "--max-tokens", "12", "--kv-cache-mb", "8", "--dtype", "fp32", *extra]


def test_eval_reports_exact_mode_by_default(arp, capsys):
    assert main(_eval(arp, "--json", "--single-stream", "1")) == 0
    report = json.loads(capsys.readouterr().out)
    exact = report["settings"][0]
    assert exact["knobs"] == {"exact": True, "block_size": 4, "draft_width": 1}
    assert [s["knobs"].get("tau_conf") for s in report["settings"][1:]] == [0.95, 0.9, 0.85]
    assert exact["ar_mismatches"] == 0 and exact["exact_match"] == 1.0  # the reference is the same base model
    assert [a["offset"] for a in exact["acceptance"]] == [1, 2, 3]
    assert all(0 <= a["accepted"] <= a["proposed"] for a in exact["acceptance"])
    assert 1 <= exact["tokens_per_forward"] <= 4 and exact["single_stream_tokens_per_second"] > 0
    assert all("acceptance" not in s for s in report["settings"][1:])


def test_eval_exact_block_sizes_and_the_text_table(arp, capsys):
    assert main(_eval(arp, "--knobs", "exact/2,exact/6,exact/2/3")) == 0
    out = capsys.readouterr().out
    assert "exact B2: drafts accepted per offset 1..1:" in out
    assert "exact B2 W3: drafts accepted per offset 1..1:" in out
    assert "exact B6: drafts accepted per offset 1..5:" in out and "answers differing from AR: 0" in out


def test_eval_refuses_exact_where_there_are_no_ar_rows(tmp_path, arp, capsys):
    d2f = ck.write_llama(tmp_path / "d2f", ck.hf_llama(seed=11), mask_id=ck.MASK_ID, d2f={"train_block_size": 2})
    args = _eval(arp, "--knobs", "exact")
    args[args.index(str(arp["model"]))] = str(d2f)
    assert main(args) == 2
    assert "AR-preserving" in capsys.readouterr().err
    assert parse_knobs("exact, exact/8,0.9,exact/2/4") == [
        {"exact": True}, {"exact": True, "block_size": 8}, {"tau_conf": 0.9, "tau_act": 0.9},
        {"exact": True, "block_size": 2, "draft_width": 4}]
    for bad in ("exact/0", "exact/x", "exact/4/0", "exact/4/2/1"):
        with pytest.raises(ValueError, match="exact, exact/block_size or exact/block_size/draft_width"):
            parse_knobs(bad)


def test_single_stream_times_the_settings_interleaved():
    """Prompt i runs under every setting before prompt i + 1 does, in a rotating order, so a slow phase of
    the machine is shared by all settings; each setting's rate is its own tokens over its own seconds."""
    from types import SimpleNamespace

    from d2f.refurbish.eval import single_stream

    calls = []

    class Fake:
        def __init__(self, name, tokens):
            self.name, self.tokens = name, tokens

        def generate(self, prompts, params):
            calls.append((self.name, prompts[0][0]))
            return [SimpleNamespace(token_ids=[0] * self.tokens, num_forwards=1)]

    runs = [(Fake("ar", 2), None), (Fake("a", 3), None), (Fake("b", 5), None)]
    rates = single_stream(runs, [[i] for i in range(4)])
    assert [p for _, p in calls] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert [n for n, _ in calls[:6]] == ["ar", "a", "b", "a", "b", "ar"]
    assert all(r > 0 for r in rates) and len(rates) == 3
