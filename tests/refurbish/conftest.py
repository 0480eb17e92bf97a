"""Tiny checkpoints of each family and training pairs, built once per refurbish test module."""
import pytest

from tests.support import checkpoints as ck
from tests.support.refurbish import hf_model, write_pairs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("refurbish")
    return {"llada": ck.write_llada(root / "llada", hf_model("llada"), block=4),
            "dream": ck.write_dream(root / "dream", hf_model("dream"), block=4),
            "llama": ck.write_llama(root / "llama", hf_model("llama")),
            "qwen2": ck.write_qwen2(root / "qwen2", hf_model("qwen2")),
            "pairs": write_pairs(root / "pairs.jsonl"), "root": root}
