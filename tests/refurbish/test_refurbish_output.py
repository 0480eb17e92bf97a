"""Refurbish outputs load as they are: merged checkpoints in the engine, adapters in the engine and in peft."""
import json
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel

from d2f.engine.models.loader import load_model
from d2f.refurbish.cli import main
from d2f.refurbish.student import causal_lm, choose_mask_token
from d2f.refurbish.trainer import Refurbisher
from tests.support import checkpoints as ck
from tests.support.forward import block_mask, full_forward
from tests.support.refurbish import config, hf_model

IDS = [1, 17, 33, 5, 80, 41, 9, 12, 60, 3, 77, 24, 8]


@pytest.fixture(scope="module")
def trained(tiny):  # noqa: F811
    """One short run per family, its adapter made non-zero by a large learning rate."""
    out = {}
    for family in ("llada", "dream", "llama", "qwen2"):
        trainer = Refurbisher(config(tiny, family, tiny["root"] / f"out-{family}", steps=2, lr=5e-2))
        trainer.run()
        trainer.model.eval()
        out[family] = trainer
    return out


def _student_logits(trainer, mask):
    with torch.no_grad():
        return causal_lm(trainer.model)(torch.tensor([IDS]), attention_mask=mask[None, None]).logits[0]


@pytest.mark.parametrize("family", ["llada", "dream", "llama", "qwen2"])
def test_output_loads_in_the_engine_as_the_trained_student(tiny, trained, family):  # noqa: F811
    trainer = trained[family]
    out = tiny["root"] / f"out-{family}"
    ar = family in ("llama", "qwen2")
    if ar:  # no mask token in the teacher's config: a merged checkpoint that records its own
        assert trainer.save_mode == "merged" and (out / "model.safetensors").is_file()
        spec, model = load_model(out)
    else:  # the teacher already describes the D2F model: an adapter over it is enough
        assert trainer.save_mode == "adapter" and not (out / "model.safetensors").exists()
        spec, model = load_model(tiny[family], lora_dir=out)
    assert spec.is_d2f and spec.mask_token_id == trainer.mask_id and spec.train_block_size == 4
    assert spec.prompt_causal == ar
    mask = block_mask(len(IDS), 5, 4)
    if ar:
        mask[:5, :5] = torch.tril(mask[:5, :5])
    want = _student_logits(trainer, mask)
    base = hf_model(family)
    with torch.no_grad():
        untrained = base(torch.tensor([IDS]), attention_mask=mask[None, None]).logits[0]
    assert (want[:, :ck.VOCAB] - untrained).abs().max() > 1e-2  # training changed the model
    torch.testing.assert_close(full_forward(model, IDS, mask), want, rtol=1e-4, atol=1e-4)


def test_ar_output_records_the_d2f_section_and_the_added_mask_row(tiny, trained):  # noqa: F811
    cfg = json.loads((tiny["root"] / "out-llama" / "config.json").read_text())
    d2f = cfg["d2f"]
    assert d2f["mask_token_id"] == ck.VOCAB and cfg["vocab_size"] == ck.VOCAB + 1  # no tokenizer: a new row
    assert d2f["train_block_size"] == d2f["block_size"] == 4 and d2f["prompt_causal"] is True
    assert {"tau_add", "tau_act", "tau_conf"} <= set(d2f)


def test_dream_adapter_loads_in_peft(tiny, trained):  # noqa: F811
    out = tiny["root"] / "out-dream"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny["dream"].resolve())
    peft_model = PeftModel.from_pretrained(hf_model("dream"), str(out)).eval()
    mask = block_mask(len(IDS), 5, 4)
    with torch.no_grad():
        got = peft_model(torch.tensor([IDS]), attention_mask=mask[None, None]).logits[0]
    torch.testing.assert_close(got, _student_logits(trained["dream"], mask), rtol=1e-4, atol=1e-4)


def test_llada_adapter_uses_llada_module_names(tiny, trained):  # noqa: F811
    from safetensors import safe_open

    out = tiny["root"] / "out-llada"
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert any(".transformer.blocks.0.attn_out.lora_A" in k for k in keys)
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == [
        "q_proj", "k_proj", "v_proj", "attn_out"]


def test_mask_token_choice():
    spec = SimpleNamespace(vocab_size=100, mask_token_id=None, eos_token_ids=[2])
    tok = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=None,
                          added_tokens_decoder={0: "<|endoftext|>", 2: "<|im_end|>", 16: "<empty_output>"})
    assert choose_mask_token(spec, tok) == (16, False)  # SmolLM2's unused special token
    assert choose_mask_token(spec, None) == (100, True)  # nothing suitable: a new row
    assert choose_mask_token(spec, tok, "new") == (100, True)
    assert choose_mask_token(spec, tok, "7") == (7, False)
    with pytest.raises(ValueError):
        choose_mask_token(spec, tok, "100")
    spec.mask_token_id = 55  # an already refurbished model keeps its mask
    assert choose_mask_token(spec, tok) == (55, False)


def test_cli_trains_and_writes_a_loadable_full_checkpoint(tiny, tmp_path, capsys):  # noqa: F811
    code = main(["refurbish", "--teacher", str(tiny["qwen2"]), "--out", str(tmp_path / "o"), "--data",
                 str(tiny["pairs"]), "--block-size", "4", "--full", "--steps", "2", "--mask-ratio", "0.3,0.6",
                 "--mask-token", "90", "--no-optimizer-state"])
    assert code == 0
    assert "saved merged output at step 2" in capsys.readouterr().err
    spec, _ = load_model(tmp_path / "o")
    assert spec.mask_token_id == 90 and spec.vocab_size == ck.VOCAB
    state = json.loads((tmp_path / "o" / "training" / "state.json").read_text())
    assert state["args"]["mask_lo"] == 0.3 and state["args"]["lora_rank"] is None
    assert not (tmp_path / "o" / "training" / "optimizer.pt").exists()


def test_cli_reports_bad_input_in_one_line(tiny, tmp_path, capsys):  # noqa: F811
    assert main(["refurbish", "--teacher", str(tiny["llama"]), "--out", str(tmp_path / "o")]) == 2
    assert "--data required" in capsys.readouterr().err
    assert main(["refurbish", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                 "--data", str(tiny["pairs"])]) == 2
    assert "model directory not found" in capsys.readouterr().err
