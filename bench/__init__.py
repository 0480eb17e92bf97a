"""Benchmarks and the soak: they print JSON and never assert speed. Imports engine, server and refurbish;
nothing imports this package except the CLI root and the tests (its live-server launcher)."""
