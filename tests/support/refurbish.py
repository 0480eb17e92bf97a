"""Tiny training data, the teachers of each family and a training config over them: the refurbish tests' helpers."""
import json
import random

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


def config(tiny, family, out, **kw):
    kw = {"block_size": 4, "lora_rank": 8, "lora_dropout": 0.0, "batch_size": 4, "steps": 3, "lr": 1e-2,
          "save_every": 0, **kw}
    return TrainConfig(teacher=str(tiny[family]), out=str(out), data=str(tiny["pairs"]), **kw)
