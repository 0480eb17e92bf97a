"""KV memory: a pool of fixed-size pages; a sequence owns the pages covering [0, its window end)."""
from __future__ import annotations

import torch

from .models.spec import ModelSpec


def bytes_per_token(spec: ModelSpec, dtype: torch.dtype) -> int:
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * torch.empty((), dtype=dtype).element_size()


def pages_for_budget(spec: ModelSpec, dtype: torch.dtype, budget_bytes: int, page_size: int) -> int:
    return max(0, budget_bytes // (bytes_per_token(spec, dtype) * page_size))


class PagePool:
    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"KV pool needs at least one page of at least one token, got {num_pages} x {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        # LIFO free list: recently freed pages are reused first (warm in cache).
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def pages_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def grow(self, pages: list[int], num_tokens: int) -> bool:
        """Extend a page list to cover num_tokens; all-or-nothing."""
        need = self.pages_needed(num_tokens) - len(pages)
        if need > len(self._free):
            return False
        for _ in range(need):
            pages.append(self._free.pop())
        return True

    def shrink(self, pages: list[int], num_tokens: int) -> None:
        """Give back the pages past those covering num_tokens."""
        keep = self.pages_needed(num_tokens)
        if len(pages) > keep:
            self._free.extend(reversed(pages[keep:]))
            del pages[keep:]

    def release(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))
        pages.clear()
