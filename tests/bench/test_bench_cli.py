"""`d2f bench`: each benchmark takes only the flags it uses; the others are refused (exit 2)."""
import argparse

import pytest

from d2f.bench import batch, cli, serving
from d2f.cli import main


@pytest.mark.parametrize("args", [["engine", "--model", "x"], ["batch", "--model", "x"], ["engine", "--lora", "x"],
                                  ["engine", "--concurrency", "1,2"], ["speed", "--json"], ["engine", "--json"],
                                  ["speed", "--prompt-len", "4"], ["serving", "--cache-len", "4"],
                                  ["gpu", "--model", "x"], ["gpu", "--lora", "x"]])
def test_flags_a_benchmark_does_not_use_are_refused(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    assert exc.value.code == 2
    assert f"unrecognized arguments: {' '.join(args[1:])}" in capsys.readouterr().err


def _parse(*argv):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(argv)


def test_flags_reach_the_benchmark_config():
    cfg = batch.config(_parse("batch", "--dtype", "fp32", "--concurrency", "2,3", "--block-size", "4"),
                       batch.BatchBench)
    assert cfg.engine.dtype == "fp32" and cfg.concurrency == [2, 3] and cfg.block_size == 4
    assert cfg.max_tokens == 64 and cfg.prompt_len == 42
    cfg = serving.config(_parse("serving", "--model", "/m", "--lora", "/a", "--device", "cpu"))
    assert serving.serve_args(cfg.engine) == ["--model", "/m", "--dtype", "auto", "--device", "cpu",
                                             "--quantization", "none", "--lora", "/a"]
    assert cfg.concurrency == [1, 8, 32] and cfg.block_size is None


def test_bad_list_is_one_line(capsys):
    with pytest.raises(SystemExit):
        _parse("batch", "--concurrency", "1,x")
    assert "invalid comma-separated int value: '1,x'" in capsys.readouterr().err
