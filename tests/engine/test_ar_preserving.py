"""AR-preserving D2F models (a refurbished AR model with an adapter acting only at mask positions).

The properties that make the design worth having: whatever the adapter says, the leftmost mask is the AR
model's own greedy token, so with nothing confident enough the output is exactly AR; cached decoding equals
the recompute-from-scratch reference with the same attention rule; a request's tokens do not depend on its batch.
"""

import pytest
import torch
from safetensors.torch import save_file

from d2f.engine.models.families import CheckpointError
from d2f.engine.params import DecodeParams
from tests.support import checkpoints as ck
from tests.support.engines import make_engine
from tests.support.reference_d2f import reference_decode


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("arp")
    _, base, d2f = ck.write_ar_preserving_pair(root)
    return {"base": make_engine(base), "d2f": make_engine(d2f), "dir": d2f}



@pytest.mark.parametrize("block,tau_add", [(1, 0.1), (2, 0.0), (4, 0.1), (8, 0.5)])
def test_nothing_confident_is_exactly_ar(models, block, tau_add):
    """tau_conf 1.0: only the forced leftmost commits, each read from a clean row: the base model's greedy AR."""
    for seed in range(3):
        prompt = ck.random_prompt(seed, 4 + 3 * seed)
        ar = models["base"].generate([prompt], DecodeParams(max_tokens=20, ignore_eos=True))[0]
        out = models["d2f"].generate([prompt], DecodeParams(max_tokens=20, block_size=block, tau_add=tau_add,
                                                            tau_act=0.5, tau_conf=1.0, ignore_eos=True))[0]
        assert out.token_ids == ar.token_ids
        assert out.num_forwards <= ar.num_forwards


@pytest.mark.parametrize("knobs", [(4, 0.1, 0.9, 0.3), (4, 0.0, 0.5, 0.1), (8, 0.25, 0.7, 0.2), (2, 0.5, 0.9, 0.15)])
def test_cached_equals_recompute(models, knobs):
    block, tau_add, tau_act, tau_conf = knobs
    eng = models["d2f"]
    parallel = 0
    for seed in range(3):
        prompt = ck.random_prompt(50 + seed, 3 + 4 * seed)
        params = DecodeParams(max_tokens=3 * block + 2, block_size=block, tau_add=tau_add, tau_act=tau_act,
                              tau_conf=tau_conf, ignore_eos=True)
        out = eng.generate([prompt], params)[0]
        ref, ref_forwards = reference_decode(eng.model, prompt, block=block, tau_add=tau_add, tau_act=tau_act,
                                             tau_conf=tau_conf, max_tokens=params.max_tokens, mask_id=ck.MASK_ID,
                                             stop_ids=set())
        assert out.token_ids == ref
        assert out.num_forwards <= ref_forwards
        parallel += len(out.token_ids) - out.num_forwards
    assert parallel > 0, "no forward committed more than one token: the adapter path went untested"


def test_adapter_changes_mask_rows_only(models, tmp_path):
    """The same checkpoint without its adapter gives the same logits at clean rows, different ones at masks."""
    from tests.support.reference_d2f import full_logits

    with_adapter = models["d2f"].model
    plain_dir = tmp_path / "plain"
    ck.write_llama(plain_dir, ck.hf_llama(seed=11), mask_id=ck.MASK_ID, d2f={"ar_preserving": True})
    plain = make_engine(plain_dir).model
    tokens = ck.random_prompt(7, 6) + [ck.MASK_ID] * 3 + [5] + [ck.MASK_ID] * 2
    masked = [False] * 6 + [True] * 3 + [False] + [True] * 2
    a = full_logits(with_adapter, tokens, 6, 4, True, masked)
    b = full_logits(plain, tokens, 6, 4, True, masked)
    clean = [i for i, m in enumerate(masked) if not m]
    assert torch.equal(a[clean], b[clean])
    assert not torch.allclose(a[[6, 7, 8, 10, 11]], b[[6, 7, 8, 10, 11]])


def test_batched_equals_alone(models):
    eng = models["d2f"]
    reqs = [(ck.random_prompt(90 + i, 3 + 2 * i), DecodeParams(max_tokens=10 + i, block_size=[2, 4, 8][i % 3],
                                                      tau_conf=[0.2, 0.5, 0.9][i % 3], tau_add=0.1 * (i % 3),
                                                      ignore_eos=True)) for i in range(6)]
    alone = [eng.generate([p], k)[0].token_ids for p, k in reqs]
    for i, (p, k) in enumerate(reqs):
        eng.add_request(f"r{i}", p, k)
    got = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                got[o.request_id] = o.token_ids
    assert [got[f"r{i}"] for i in range(6)] == alone


def test_bad_adapter_is_a_clear_error(tmp_path):
    d = ck.write_llama(tmp_path / "m", ck.hf_llama(seed=1), mask_id=ck.MASK_ID, d2f={"ar_preserving": True})
    save_file({"layers.0.q.lora_A": torch.zeros(4, 63), "layers.0.q.lora_B": torch.zeros(64, 4)},
              str(d / "mask_adapter.safetensors"))
    with pytest.raises(CheckpointError, match="mask_adapter.safetensors: layers.0.q"):
        make_engine(d)


def test_ar_preserving_needs_a_causal_shifted_model(tmp_path):
    d = ck.write_llada(tmp_path / "l", ck.hf_llama(seed=1))
    import json
    cfg = json.loads((d / "config.json").read_text())
    cfg["d2f"]["ar_preserving"] = True
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="ar_preserving"):
        make_engine(d)
