"""Refurbish training on tiny random checkpoints of each family: the loss by hand, learning, resuming."""
import json

import pytest
import torch
import torch.nn.functional as F

from d2f.refurbish.data import Batch
from d2f.refurbish.trainer import Refurbisher
from tests.support import checkpoints as ck
from tests.support.refurbish import config, hf_model

# ---- the loss, computed here from the definitions, with transformers as the model ---------------------------
PROMPT, BLOCK, LENGTH = 3, 4, 11
IDS = [7, 30, 12, 44, 5, 61, 19, 23, 70, 8, 2]
MASKED = [4, 6, 7, 9]            # answer positions (the answer starts at 3)
RATIO = {0: 0.25, 1: 0.5}        # block of positions 3-6, block of 7-10


def _hand_mask(kind):
    """True = may attend, from the D2F definition, one query at a time."""
    m = torch.zeros(LENGTH, LENGTH, dtype=torch.bool)
    for q in range(LENGTH):
        for k in range(LENGTH):
            if kind == "full":
                m[q, k] = True
            elif kind == "causal":
                m[q, k] = k <= q
            else:  # block-causal; kind "block-causal-prompt" reads the prompt causally (AR students)
                if q < PROMPT:
                    m[q, k] = k <= q if kind.endswith("prompt") else k < PROMPT
                else:
                    m[q, k] = k < PROMPT + ((q - PROMPT) // BLOCK + 1) * BLOCK
    return m


def _fixed_batch(mask_id, student_kind, teacher_kind):
    ids = torch.tensor([IDS])
    masked = torch.zeros(1, LENGTH, dtype=torch.bool)
    masked[0, MASKED] = True
    noisy = torch.where(masked, torch.tensor(mask_id), ids)
    ratio = torch.ones(1, LENGTH)
    for t in range(PROMPT, LENGTH):
        ratio[0, t] = RATIO[(t - PROMPT) // BLOCK]
    return Batch(ids, noisy, masked, ratio, _hand_mask(student_kind)[None, None], _hand_mask(teacher_kind)[None, None],
                 LENGTH)


def _expected(family, mask_id, hard_weight=0.0):
    hf = hf_model(family)
    ar = family in ("llama", "qwen2")
    shift = family != "llada"
    noisy = [mask_id if i in MASKED else t for i, t in enumerate(IDS)]
    with torch.no_grad():
        student = hf(torch.tensor([noisy]), attention_mask=_hand_mask(
            "block-causal-prompt" if ar else "block-causal")[None, None]).logits[0]
        teacher_ids = IDS if ar else noisy  # an AR teacher reads the clean text, a dLLM the noisy one
        teacher = hf(torch.tensor([teacher_ids]), attention_mask=_hand_mask("causal" if ar else "full")[None, None]).logits[0]
    soft, hard = 0.0, 0.0
    for t in MASKED:
        row = t - 1 if shift else t
        p = torch.softmax(teacher[row].double(), -1)
        p[mask_id] = 0.0  # the mask token is never a target
        p = p / p.sum()
        logq = torch.log_softmax(student[row].double(), -1)
        ratio = RATIO[(t - PROMPT) // BLOCK]
        soft += float(-(p * logq).sum()) / ratio
        hard += float(-logq[IDS[t]]) / ratio
    return ((1 - hard_weight) * soft + hard_weight * hard) / len(MASKED)


@pytest.mark.parametrize("family,hard_weight", [("llada", 0.0), ("dream", 0.0), ("llama", 0.5), ("qwen2", 0.0)])
def test_loss_equals_hand_computed_value(tiny, tmp_path, family, hard_weight):
    ar = family in ("llama", "qwen2")
    # A fresh LoRA adapter is zero, so the student is exactly the teacher's weights under a different mask.
    trainer = Refurbisher(config(tiny, family, tmp_path / "o", hard_weight=hard_weight,
                                 mask_token="94" if ar else "auto"))
    mask_id = 94 if ar else ck.MASK_ID
    assert trainer.mask_id == mask_id
    batch = _fixed_batch(mask_id, "block-causal-prompt" if ar else "block-causal", "causal" if ar else "full")
    with torch.no_grad():
        got = float(trainer.loss(batch))
    assert got == pytest.approx(_expected(family, mask_id, hard_weight), rel=1e-4)


@pytest.mark.parametrize("family", ["llada", "dream", "llama", "qwen2"])
def test_a_few_steps_lower_the_loss(tiny, tmp_path, family):
    trainer = Refurbisher(config(tiny, family, tmp_path / "o", steps=16, lr=5e-3))
    batch = trainer.make_batch(0)
    with torch.no_grad():
        before = float(trainer.loss(batch))
    assert trainer.run() == 0
    with torch.no_grad():
        after = float(trainer.loss(batch))
    # The soft target's own entropy is a floor the loss cannot pass, so a few steps buy a few percent.
    assert after < 0.95 * before
    assert trainer.step == 16


@pytest.mark.parametrize("family,lora", [("llama", True), ("dream", False)])
def test_init_from_continues_exactly(tiny, tmp_path, family, lora):
    rank = 8 if lora else None
    whole = Refurbisher(config(tiny, family, tmp_path / "whole", steps=4, lora_rank=rank))
    whole.run()
    first = Refurbisher(config(tiny, family, tmp_path / "first", steps=2, lora_rank=rank))
    first.run()
    second = Refurbisher(config(tiny, family, tmp_path / "second", steps=2, lora_rank=rank,
                                init_from=str(tmp_path / "first")))
    assert second.step == 2
    second.run()
    state = json.loads((tmp_path / "second" / "training" / "state.json").read_text())
    assert state["step"] == 4
    got, want = [loss for _, loss in state["log"]], [loss for _, loss in whole.cfg.log]
    assert got[:2] == want[:2]  # the history carries over
    assert got[2:] == pytest.approx(want[2:], rel=1e-4)  # and the continuation is the same training


def test_resuming_without_optimizer_state_differs(tiny, tmp_path):
    first = Refurbisher(config(tiny, "llama", tmp_path / "first", steps=2))
    first.run()
    fresh = Refurbisher(config(tiny, "llama", tmp_path / "fresh", steps=1, init_from=str(tmp_path / "first"),
                               load_optimizer=False))
    kept = Refurbisher(config(tiny, "llama", tmp_path / "kept", steps=1, init_from=str(tmp_path / "first")))
    fresh.run(), kept.run()
    assert fresh.cfg.log[-1][1] == kept.cfg.log[-1][1]  # same weights, same batch: same loss at step 3
    a = [p for p in fresh.model.parameters() if p.requires_grad]
    b = [p for p in kept.model.parameters() if p.requires_grad]
    assert any(not torch.allclose(x, y) for x, y in zip(a, b))  # but Adam's moments made different updates


def test_ctrl_c_saves_what_was_trained(tiny, tmp_path, monkeypatch):
    trainer = Refurbisher(config(tiny, "qwen2", tmp_path / "o", steps=10))
    real = trainer.train_step

    def interrupted():
        if trainer.step == 2:
            raise KeyboardInterrupt
        return real()

    monkeypatch.setattr(trainer, "train_step", interrupted)
    assert trainer.run() == 130
    state = json.loads((tmp_path / "o" / "training" / "state.json").read_text())
    assert state["step"] == 2 and (tmp_path / "o" / "model.safetensors").is_file()


def test_losses_are_finite_in_soft_ce_with_an_excluded_token():
    """A -inf teacher logit (the mask token) must not turn the loss into NaN."""
    from d2f.refurbish.losses import distill_loss

    t = torch.tensor([[1.0, float("-inf"), 0.0]])
    s = torch.tensor([[0.5, 2.0, -1.0]], requires_grad=True)
    loss = distill_loss(s, t, torch.tensor([0.5]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    p = F.softmax(torch.tensor([1.0, 0.0]), -1)
    want = -(p * F.log_softmax(s.detach(), -1)[0, [0, 2]]).sum() / 0.5
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
