"""`d2f bench ...`: benchmarks that print JSON (filled in below)."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("what", choices=["engine"], help="which benchmark")


def run(args) -> int:
    raise SystemExit("not yet")
