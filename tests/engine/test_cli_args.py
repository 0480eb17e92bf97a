"""Flags generated from dataclass fields: defaults, environment values, lists, and bad values refused."""
import argparse
from dataclasses import dataclass, field

import pytest

from d2f.engine.cli_args import add_dataclass_arguments, from_args


@dataclass
class Settings:
    name: str = field(metadata={"help": "a name"})
    port: int = field(default=8000, metadata={"help": "a port"})
    keys: list[str] = field(default_factory=list, metadata={"flag": "key", "help": "keys"})
    loud: bool = field(default=False, metadata={"help": "louder"})
    hidden: int = 7  # no help: no flag


def _parse(argv, **kw):
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Settings, env_prefix="T_", **kw)
    return p.parse_args(argv)


def test_defaults_flags_and_environment(monkeypatch):
    assert from_args(Settings, _parse([]), name="n") == Settings(name="n")
    monkeypatch.setenv("T_PORT", "9000")
    monkeypatch.setenv("T_KEY", "a, b")
    monkeypatch.setenv("T_LOUD", "yes")
    got = from_args(Settings, _parse(["--name", "x"]))
    assert got == Settings(name="x", port=9000, keys=["a", "b"], loud=True, hidden=7)
    assert _parse(["--port", "1", "--key", "c"]).port == 1  # a given flag beats the environment
    assert not hasattr(_parse([]), "hidden")


def test_bad_environment_value_is_one_argparse_error(monkeypatch, capsys):
    monkeypatch.setenv("T_PORT", "eighty")
    with pytest.raises(SystemExit) as exc:
        _parse([])
    assert exc.value.code == 2 and "invalid int value: 'eighty'" in capsys.readouterr().err


def test_command_defaults_and_required(capsys):
    assert _parse(["--name", "x"], defaults={"port": 1}).port == 1
    with pytest.raises(SystemExit):
        _parse([], required=("name",))
    assert "--name" in capsys.readouterr().err
