"""One full-sequence forward of our decoder with an explicit mask: the shape the model tests compare."""
import torch

from d2f.engine.models.decoder import AttnBatch, KVCache, SeqWindow


def full_forward(model, ids: list[int], mask: torch.Tensor) -> torch.Tensor:
    """fp32 logits [len(ids), V] on the model's device."""
    n, dev = len(ids), model.device
    kv = KVCache(model.spec, n, model.dtype, dev)
    ar = torch.arange(n, device=dev)
    batch = AttnBatch(positions=ar, write_slots=ar, windows=[SeqWindow(n, ar, mask.to(dev)[None, None])])
    return model.logits(model(torch.tensor(ids, device=dev), batch, kv))


def block_mask(n: int, prompt: int, block: int) -> torch.Tensor:
    bid = torch.tensor([-1 if p < prompt else (p - prompt) // block for p in range(n)])
    return bid[None, :] <= bid[:, None]


def causal_mask(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


IDS = [1, 17, 33, 5, 80, 41, 9, 12, 60, 3, 77, 24, 8]
