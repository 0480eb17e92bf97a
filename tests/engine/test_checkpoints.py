"""Checkpoints load as users have them; broken ones fail with one line naming the file and problem."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from d2f.engine.models.checkpoint import read_spec
from d2f.engine.models.families import CheckpointError
from d2f.engine.models.loader import load_model
from tests.support import checkpoints as ck
from tests.support.forward import full_forward


def test_families_are_recognised_with_their_conventions(ckpt_dirs):
    expect = {  # family, shifted logits, causal prompt, qkv bias, mask id, training block
        "llada": ("llada", False, False, False, ck.MASK_ID, 4),
        "dream": ("dream", True, False, True, ck.MASK_ID, 4),
        "llama": ("llama", True, True, False, None, 1),
        "qwen2": ("qwen2", True, True, True, None, 1),
        "llama_d2f": ("llama", True, True, False, ck.MASK_ID, 2),
    }
    for name, (family, shift, causal, bias, mask, block) in expect.items():
        spec, _ = read_spec(ckpt_dirs[name])
        got = (spec.family, spec.shift_logits, spec.prompt_causal, spec.qkv_bias, spec.mask_token_id,
               spec.train_block_size)
        assert got == (family, shift, causal, bias, mask, block), name


def test_default_mask_ids_when_config_has_none(tmp_path):
    for writer, model, default in ((ck.write_llada, ck.hf_llama(seed=1), 126336),
                                   (ck.write_dream, ck.hf_qwen2(seed=2), 151666)):
        path = writer(tmp_path / writer.__name__, model)
        cfg = json.loads((path / "config.json").read_text())
        del cfg["mask_token_id"]
        (path / "config.json").write_text(json.dumps(cfg))
        assert read_spec(path)[0].mask_token_id == default


def test_sharded_equals_single_file(tmp_path):
    hf = ck.hf_llama(seed=41)
    _, one = load_model(ck.write_llada(tmp_path / "one", hf))
    _, three = load_model(ck.write_llada(tmp_path / "three", hf, shards=3))
    ids = [5, 9, 30, 2]
    mask = torch.ones(4, 4, dtype=torch.bool)
    assert torch.equal(full_forward(one, ids, mask), full_forward(three, ids, mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_is_applied(ckpt_dirs, dtype):
    _, model = load_model(ckpt_dirs["dream"], dtype)
    assert model.dtype == dtype and model.layers[0]["attn_norm"].dtype == dtype
    assert model.logits(model.embed[:2]).dtype == torch.float32


def _broken(tmp_path, edit):
    path = ck.write_llama(tmp_path / "m", ck.hf_llama(seed=42))
    edit(path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        load_model(tmp_path / "nope")


def test_missing_config(tmp_path):
    assert "config.json: file not found" in _broken(tmp_path, lambda p: (p / "config.json").unlink())


def test_malformed_config(tmp_path):
    assert "not valid JSON" in _broken(tmp_path, lambda p: (p / "config.json").write_text("{oops"))


def test_unknown_architecture(tmp_path):
    msg = _broken(tmp_path, lambda p: _edit_config(p, model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    assert "unsupported model_type 'gpt2'" in msg


def test_missing_config_key(tmp_path):
    assert "missing 'hidden_size'" in _broken(tmp_path, lambda p: _edit_config(p, hidden_size=None))


def test_no_weights(tmp_path):
    assert "no *.safetensors" in _broken(tmp_path, lambda p: (p / "model.safetensors").unlink())


def test_corrupt_weights(tmp_path):
    msg = _broken(tmp_path, lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 64))
    assert "model.safetensors: unreadable safetensors file" in msg


def test_missing_tensor(tmp_path):
    def drop(p):
        state = load_file(str(p / "model.safetensors"))
        del state["model.layers.1.mlp.up_proj.weight"]
        save_file(state, str(p / "model.safetensors"))
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in _broken(tmp_path, drop)


def test_shape_mismatch(tmp_path):
    assert "config implies" in _broken(tmp_path, lambda p: _edit_config(p, intermediate_size=100))


def test_missing_shard(tmp_path):
    path = ck.write_llama(tmp_path / "m", ck.hf_llama(seed=43), shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard listed in the index is missing"):
        load_model(path)
