"""Tiny checkpoints of each family and a training config over them, shared by the refurbish tests."""
import json
import random

import pytest

from d2f.refurbish.trainer import TrainConfig
from tests.support import checkpoints as ck

SEEDS = {"llada": 41, "dream": 42, "llama": 43, "qwen2": 44}


def write_pairs(path, n=16, seed=0):
    r = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            prompt = [r.randrange(3, 90) for _ in range(r.randrange(2, 6))]
            answer = [r.randrange(3, 90) for _ in range(r.randrange(3, 12))] + [ck.EOS_ID]
            f.write(json.dumps({"prompt_ids": prompt, "answer_ids": answer}) + "\n")
    return path


def hf_model(family):
    return (ck.hf_llama if family in ("llada", "llama") else ck.hf_qwen2)(seed=SEEDS[family])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("refurbish")
    return {"llada": ck.write_llada(root / "llada", hf_model("llada"), block=4),
            "dream": ck.write_dream(root / "dream", hf_model("dream"), block=4),
            "llama": ck.write_llama(root / "llama", hf_model("llama")),
            "qwen2": ck.write_qwen2(root / "qwen2", hf_model("qwen2")),
            "pairs": write_pairs(root / "pairs.jsonl"), "root": root}


def config(tiny, family, out, **kw):
    kw = {"block_size": 4, "lora_rank": 8, "lora_dropout": 0.0, "batch_size": 4, "steps": 3, "lr": 1e-2,
          "save_every": 0, **kw}
    return TrainConfig(teacher=str(tiny[family]), out=str(out), data=str(tiny["pairs"]), **kw)
