"""One full-sequence forward of our decoder with an explicit mask: the shape the model tests compare."""
import torch

from d2f.engine.models.decoder import AttnBatch, KVCache, SeqWindow


def full_forward(model, ids: list[int], mask: torch.Tensor) -> torch.Tensor:
    n = len(ids)
    kv = KVCache(model.spec, n, model.dtype, "cpu")
    ar = torch.arange(n)
    batch = AttnBatch(positions=ar, write_slots=ar, windows=[SeqWindow(n, ar, mask[None, None])])
    return model.logits(model(torch.tensor(ids), batch, kv))


def block_mask(n: int, prompt: int, block: int) -> torch.Tensor:
    bid = torch.tensor([-1 if p < prompt else (p - prompt) // block for p in range(n)])
    return bid[None, :] <= bid[:, None]


IDS = [1, 17, 33, 5, 80, 41, 9, 12, 60, 3, 77, 24, 8]
