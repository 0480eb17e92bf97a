"""Attention and paged-KV gather cost per layer call, SmolLM2-135M shapes. Prints JSON.

    python -m d2f.bench.attention [--repeat 200] [--threads N]

attention: microseconds per call (median) of torch's SDPA as the decoder calls it vs the engine's decode
call (attention.decode_attention: up to ROWS single-query rows in one fixed-shape call), per dtype, cache
length, rows and batch (a batch is one call per sequence, as the decoder makes them). gather: the
decoder's index_select of each sequence's keys out of the paged cache vs a gather of whole pages and,
where a sequence's pages are consecutive (a lone sequence on a pool that handed out its pages in order),
a plain slice.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from d2f.engine.models.attention import ROWS, bucket, decode_attention
from d2f.engine.timing import median_ms

HEADS, KV_HEADS, HEAD_DIM, PAGE = 9, 3, 64, 16
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def median_us(fn, repeat: int) -> float:
    return round(1000 * median_ms(fn, repeat), 1)


def sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask, enable_gqa=True).transpose(1, 2)


def attention_rows(repeat: int) -> list[dict]:
    rows = []
    for name, dtype in DTYPES.items():
        for cache in (300, 1000):
            for lq in sorted({1, 2, 4, ROWS}):
                for b in (1, 8):
                    lk = cache + lq
                    q = torch.randn(b, lq, HEADS, HEAD_DIM).to(dtype)
                    kv = torch.randn(b, bucket(lk), 2 * KV_HEADS, HEAD_DIM).to(dtype)
                    k, v = kv[:, :lk, :KV_HEADS], kv[:, :lk, KV_HEADS:]
                    # Every query sees the cache and its whole window.
                    mask = torch.ones(b, 1, lq, lk, dtype=torch.bool)
                    mask[..., -1] = False  # keep a mask: the engine passes one whenever any key is hidden
                    bias = torch.zeros(ROWS, bucket(lk))
                    bias[:, lk - 1:] = float("-inf")
                    place = torch.arange(lq)

                    def decode():
                        for i in range(b):
                            decode_attention(q[i], kv[i], lk, place, bias)
                    reps = max(20, repeat // b)
                    rows.append({"dtype": name, "cache": cache, "q_len": lq, "batch": b,
                                 "sdpa_us": median_us(lambda: sdpa(q, k, v, mask), reps),
                                 "decode_us": median_us(decode, reps)})
    return rows


def gather_rows(repeat: int) -> list[dict]:
    rows = []
    num_pages = 1024
    for name, dtype in DTYPES.items():
        layer_kv = torch.randn(num_pages * PAGE + 1, 2 * KV_HEADS, HEAD_DIM).to(dtype)
        paged = layer_kv[:-1].view(num_pages, PAGE, 2 * KV_HEADS, HEAD_DIM)
        for cache in (300, 1000):
            for b in (1, 8):
                n_pages = -(-cache // PAGE)
                pages = torch.randperm(num_pages)[:b * n_pages].view(b, n_pages)
                slots = (pages[:, :, None] * PAGE + torch.arange(PAGE)).flatten(1)[:, :cache].flatten()
                flat_pages = pages.flatten()
                row = {"dtype": name, "cache": cache, "batch": b,
                       "index_select_us": median_us(lambda: layer_kv.index_select(0, slots), repeat),
                       "page_gather_us": median_us(lambda: paged.index_select(0, flat_pages), repeat)}
                if b == 1:
                    row["slice_us"] = median_us(lambda: layer_kv[PAGE:PAGE + cache], repeat)
                rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        out = {"threads": torch.get_num_threads(), "torch": torch.__version__,
               "attention": attention_rows(args.repeat), "gather": gather_rows(args.repeat)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
