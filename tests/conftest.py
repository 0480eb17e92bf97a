"""Shared fixtures: tiny random checkpoints on disk, one per family, built once per session."""
from __future__ import annotations

import pytest
import torch

from tests.support import checkpoints as ck
from tests.support.engines import make_engine

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ckpt_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "llada": ck.write_llada(root / "llada", ck.hf_llama(seed=1), block=4),
        "dream": ck.write_dream(root / "dream", ck.hf_qwen2(seed=2), block=4),
        "llama": ck.write_llama(root / "llama", ck.hf_llama(seed=3, tie=True)),
        "qwen2": ck.write_qwen2(root / "qwen2", ck.hf_qwen2(seed=4)),
        "llama_d2f": ck.write_llama(root / "llama_d2f", ck.hf_llama(seed=5), mask_id=ck.MASK_ID,
                                    d2f={"train_block_size": 2}),
    }


@pytest.fixture(scope="session")
def engines(ckpt_dirs) -> dict:
    return {name: make_engine(path) for name, path in ckpt_dirs.items()}
