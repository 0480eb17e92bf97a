"""The GPU tier: the engine's correctness checks on a CUDA device. CI has none, so every test here is skipped
there, at collection (no fixture is built), with the reason. scripts/gpu_check.sh runs it on a GPU machine;
D2F_TEST_DEVICE=cpu runs it here, to prove the tests themselves."""
from __future__ import annotations

import os

import pytest
import torch

ENV = "D2F_TEST_DEVICE"


def tier_device() -> str | None:
    """The device the tier runs on; None (skip it) where none was asked for and torch sees no CUDA device. A
    device asked for that cannot be had stops the run: a GPU check must not pass by skipping."""
    wanted = os.environ.get(ENV, "")
    if wanted == "cpu":
        return "cpu"
    if wanted and not (wanted == "cuda" or wanted.startswith("cuda:")):
        raise pytest.UsageError(f"{ENV}={wanted!r}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        if wanted:
            raise pytest.UsageError(f"{ENV}={wanted}: torch {torch.__version__} sees no CUDA device")
        return None
    return wanted or "cuda"


SKIP_REASON = f"no CUDA device (the GPU tier runs on a GPU machine: scripts/gpu_check.sh; {ENV}=cpu runs it on CPU)"


def pytest_collection_modifyitems(config, items):
    if tier_device() is not None:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> str:
    return tier_device()
