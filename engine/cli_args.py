"""Command-line flags generated from dataclass fields, so each setting's name, default and help are written
once, on the dataclass that owns it: field(metadata={"help": ...}), optionally "flag" (a flag name other
than the field's), "choices" and "metavar". Lists are given comma-separated."""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import NamedTuple

TRUE_WORDS = ("1", "true", "yes", "on")


class Flag(NamedTuple):
    flag: str      # without the leading dashes
    dest: str      # the dataclass field
    kind: type     # str, int, float, bool, or list (given comma-separated)
    default: object
    help: str


def split_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _unwrap(hint):
    """X for X | None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _converter(hint):
    hint = _unwrap(hint)
    if typing.get_origin(hint) is not list:
        return hint
    item = typing.get_args(hint)[0]

    def comma_list(text: str) -> list:
        return [item(v) for v in split_list(text)]
    comma_list.__name__ = f"comma-separated {item.__name__}"  # argparse names it in its error message
    return comma_list


def flags(cls, include=None) -> list[Flag]:
    """The flags of cls's fields that carry help (or exactly those named in include, in that order)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = include if include is not None else [n for n, f in by_name.items() if "help" in f.metadata]
    out = []
    for name in names:
        f = by_name[name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        hint = _unwrap(hints[name])
        kind = list if typing.get_origin(hint) is list else hint
        out.append(Flag(f.metadata.get("flag", name.replace("_", "-")), name, kind, default, f.metadata["help"]))
    return out


def env_name(prefix: str, flag: str) -> str:
    return prefix + flag.upper().replace("-", "_")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, include=None, env_prefix: str | None = None,
                            defaults: dict | None = None, required=()) -> None:
    """Add a --flag per field. env_prefix: each flag's default may come from <prefix><FLAG> in the
    environment (named in the help). defaults: this command's own defaults for some fields. required:
    fields the command must be given."""
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for fl in flags(cls, include):
        default = (defaults or {}).get(fl.dest, fl.default)
        help_text = fl.help
        env = None
        if env_prefix:
            env = os.environ.get(env_name(env_prefix, fl.flag))
            help_text += f" [{env_name(env_prefix, fl.flag)}]"
        kw = {"dest": fl.dest, "help": help_text}
        if fl.kind is bool:
            on = default or (env is not None and env.lower() in TRUE_WORDS)
            parser.add_argument(f"--{fl.flag}", action="store_true", default=on, **kw)
            continue
        if fl.dest in required:
            kw["required"] = True
        if "choices" in meta[fl.dest]:
            kw["choices"] = meta[fl.dest]["choices"]
        if "metavar" in meta[fl.dest]:
            kw["metavar"] = meta[fl.dest]["metavar"]
        if isinstance(default, list):
            kw.setdefault("metavar", f"{fl.flag.upper().replace('-', '_')}[,...]")
        # A string default is converted by type= as a given value would be, so a bad environment value
        # is refused with argparse's one-line error instead of a traceback.
        parser.add_argument(f"--{fl.flag}", type=_converter(hints[fl.dest]),
                            default=env if env is not None else default, **kw)


def from_args(cls, args: argparse.Namespace, **overrides):
    """cls built from the parsed flags of its fields (fields without a flag keep their default)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(given | overrides))


# The engine's flags every command that loads a model offers, and those only the server needs.
MODEL_FIELDS = ("model", "lora", "dtype", "device", "quantization")
CAPACITY_FIELDS = ("kv_cache_memory", "max_num_seqs", "max_num_batched_tokens", "max_model_len")


def engine_config(args: argparse.Namespace, **overrides):
    """EngineConfig from the engine flags, the model name (smollm2, smollm2-d2f, none) resolved to a directory."""
    from .config import EngineConfig
    from .models.registry import resolve_model

    if "model" not in overrides:
        overrides["model"] = resolve_model(args.model)
    return from_args(EngineConfig, args, **overrides)
