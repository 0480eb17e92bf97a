"""`d2f refurbish --ar-preserving`: what training computes is what the engine serves, the base stays
untouched, the loss goes down, and the output directory is an AR-preserving D2F model."""
import json
import random

import pytest
import torch

from d2f.engine.models.checkpoint import load_weights, read_spec
from d2f.engine.params import DecodeParams
from d2f.refurbish import arpreserve
from d2f.refurbish.cli import main
from tests.support import checkpoints as ck
from tests.support.engines import make_engine
from tests.support.reference_d2f import full_logits

MASK = 7  # an ordinary token id: its input vector is learned


def _data(path, n=12, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            prompt = [rng.randrange(3, 60) for _ in range(rng.randrange(3, 7))]
            answer = [(prompt[-1] + 3 * i) % 50 + 10 for i in range(rng.randrange(6, 14))] + [ck.EOS_ID]
            fh.write(json.dumps({"prompt_ids": prompt, "answer_ids": answer, "finish_reason": "stop"}) + "\n")
    return path


def _student(base, rank=4, seed=0):
    spec, _ = read_spec(base)
    student = arpreserve.Student(spec, load_weights(base, spec, torch.float32, "cpu"), rank, MASK, seed)
    with torch.no_grad():  # a trained-looking adapter: B away from zero
        for p in student.b.values():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
    return spec, student


def test_mask_rows_see_only_their_anchor_prefix_and_span(tmp_path):
    cfg = arpreserve.Config(teacher="-", data="-", out="-", anchors=5, block_sizes=(2, 4))
    pairs = [([5, 6, 7], list(range(10, 22))), ([8, 9], list(range(30, 40)))]
    b = arpreserve.build_batch(pairs, random.Random(3), cfg)
    n = b.ids.shape[0]
    row = 0
    for s, span in enumerate(b.spans):
        for j, blk in span.rows:
            clean = b.mask_mask[row, :n].nonzero().flatten().tolist()
            assert clean == list(range(span.offset, span.offset + span.anchor + 1))
            assert b.targets[row] == span.offset + j and b.mask_positions[row] == j
            assert b.mask_mask[row, n + row]  # itself
            row += 1
    assert row == b.mask_positions.shape[0] > 0
    assert b.clean_mask[3, 2] and not b.clean_mask[2, 3]  # causal
    assert not b.clean_mask[15, 14] and b.clean_mask[16, 15]  # nothing across examples (the second starts at 15)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_training_forward_equals_the_engine(tmp_path, family):
    """Logits the trainer optimises at a mask row == the served model's logits at that row (fp32); Qwen2
    has a q/k/v bias."""
    base = (ck.write_llama(tmp_path / "base", ck.hf_llama(seed=21)) if family == "llama"
            else ck.write_qwen2(tmp_path / "base", ck.hf_qwen2(seed=21)))
    spec, student = _student(base)
    out = tmp_path / "out"
    cfg = arpreserve.Config(teacher=str(base), data="-", out=str(out), mask_token=MASK, rank=4)
    arpreserve.save(student, cfg, 0, spec, read_spec(base)[1], [])
    with torch.no_grad():  # the saved adapter is bf16: serve the same numbers the trainer then holds
        student.load_adapter_state({k: v.float() for k, v in
                                    arpreserve.load_file(str(out / "mask_adapter.safetensors")).items()})
    served = make_engine(out).model
    pairs = [([5, 6, 7, 8], list(range(10, 26)))]
    batch = arpreserve.build_batch(pairs, random.Random(1), arpreserve.Config("-", "-", "-", anchors=6))
    with torch.no_grad():
        logits, _ = arpreserve.mask_logits(student, batch)
    seq = pairs[0][0] + pairs[0][1]
    row = 0
    for span in batch.spans:
        length = len(span.rows)
        tokens = seq[:span.anchor + 1] + [MASK] * length
        masked = [False] * (span.anchor + 1) + [True] * length
        block_start = span.anchor + 1 - span.first  # the engine's blocks start at the prompt's end
        ref = full_logits(served, tokens, block_start, span.block_size, True, masked)
        torch.testing.assert_close(logits[row:row + length], ref[span.anchor + 1:], rtol=1e-4, atol=1e-4)
        row += length


def test_cli_trains_saves_resumes_and_the_output_is_ar_preserving(tmp_path):
    base = ck.write_llama(tmp_path / "base", ck.hf_llama(seed=22))
    data = _data(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    before = load_weights(base, read_spec(base)[0], torch.float32, "cpu")
    args = ["refurbish", "--ar-preserving", "--teacher", str(base), "--data", str(data), "--out", str(out),
            "--mask-token", str(MASK), "--block-size", "4", "--lora-rank", "4", "--lr", "1e-2", "--batch-size", "4",
            "--anchors", "8", "--save-every", "1000", "--seed", "0"]
    assert main(args + ["--steps", "30"]) == 0
    log = json.loads((out / "d2f.json").read_text())["log"]
    first, last = sum(r["loss"] for r in log[:5]) / 5, sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert main(args + ["--steps", "2", "--init-from", str(out)]) == 0
    assert json.loads((out / "d2f.json").read_text())["step"] == 32
    after = load_weights(out, read_spec(out)[0], torch.float32, "cpu")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base is never trained
    spec = read_spec(out)[0]
    assert spec.ar_preserving and spec.mask_token_id == MASK and spec.block_size == 4
    d2f, ar = make_engine(out), make_engine(base)
    prompt = [5, 9, 13, 4]
    want = ar.generate([prompt], DecodeParams(max_tokens=16, ignore_eos=True))[0].token_ids
    got = d2f.generate([prompt], DecodeParams(max_tokens=16, tau_conf=1.0, ignore_eos=True))[0]
    assert got.token_ids == want


def _adapter(out):
    return arpreserve.load_file(str(out / "mask_adapter.safetensors"))


def test_a_resumed_run_is_the_uninterrupted_run(tmp_path):
    """Saved every few steps and continued with --init-from, a run ends where one run would: same steps,
    same adapter bits (AdamW's moments and the fp32 adapter travel in the optimizer file)."""
    base = ck.write_llama(tmp_path / "base", ck.hf_llama(seed=23))
    data = _data(tmp_path / "d.jsonl")
    args = ["refurbish", "--ar-preserving", "--teacher", str(base), "--data", str(data), "--mask-token", str(MASK),
            "--block-size", "4", "--lora-rank", "4", "--lr", "1e-2", "--batch-size", "3", "--anchors", "6",
            "--save-every", "1000", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "whole"), "--steps", "6"]) == 0
    assert main(args + ["--out", str(tmp_path / "part"), "--steps", "4"]) == 0
    assert main(args + ["--out", str(tmp_path / "part"), "--steps", "2", "--init-from", str(tmp_path / "part")]) == 0
    whole, part = _adapter(tmp_path / "whole"), _adapter(tmp_path / "part")
    assert json.loads((tmp_path / "part" / "d2f.json").read_text())["step"] == 6
    assert whole.keys() == part.keys() and all(torch.equal(whole[k], part[k]) for k in whole)
    # Without the optimizer state the continuation is another run: the check above can fail.
    assert main(args + ["--out", str(tmp_path / "cold"), "--steps", "2", "--init-from", str(tmp_path / "part"),
                        "--fresh-optimizer"]) == 0
    cold = _adapter(tmp_path / "cold")
    assert any(not torch.equal(cold[k], _adapter(tmp_path / "part")[k]) for k in cold)


def test_an_adapter_on_fewer_projections_trains_loads_and_keeps_ar(tmp_path):
    """--adapt q,k,v,gate,up (the cheap drafter): only those projections are saved, an earlier adapter on
    every projection is a valid start, bf16 training works, and the served model's clean rows stay AR."""
    base = ck.write_llama(tmp_path / "base", ck.hf_llama(seed=24))
    data = _data(tmp_path / "d.jsonl")
    common = ["refurbish", "--ar-preserving", "--teacher", str(base), "--data", str(data), "--mask-token", str(MASK),
              "--block-size", "4", "--lora-rank", "4", "--lr", "1e-2", "--batch-size", "3", "--anchors", "6",
              "--save-every", "1000"]
    assert main(common + ["--out", str(tmp_path / "all"), "--steps", "3"]) == 0
    out = tmp_path / "cut"
    assert main(common + ["--out", str(out), "--steps", "3", "--init-from", str(tmp_path / "all"),
                          "--adapt", "q,k,v,gate,up", "--dtype", "bf16"]) == 0
    names = {k.split(".")[2] for k in _adapter(out) if k.startswith("layers.")}
    assert names == {"q", "k", "v", "gate", "up"}
    assert json.loads((out / "d2f.json").read_text())["step"] == 6
    d2f, ar = make_engine(out), make_engine(base)
    assert all(set(layer) == {"qkv", "gate_up"} for layer in d2f.model.adapter.layers)
    prompt = [5, 9, 13, 4]
    want = ar.generate([prompt], DecodeParams(max_tokens=12, ignore_eos=True))[0].token_ids
    exact = DecodeParams(max_tokens=12, ignore_eos=True, exact=True, block_size=3)
    assert d2f.generate([prompt], exact)[0].token_ids == want
    assert main(common + ["--out", str(tmp_path / "bad"), "--steps", "1", "--adapt", "q,nope"]) == 2
    assert main(common[:1] + common[2:] + ["--out", str(tmp_path / "bad"), "--adapt", "q"]) == 2  # not plain mode
