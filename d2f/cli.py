"""`d2f` console script: the one root that hands each subcommand to the package that owns it."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from d2f.bench import cli as bench_cli
    from d2f.engine import cli as generate_cli
    from d2f.refurbish import cli as refurbish_cli
    from d2f.server import launch

    parser = argparse.ArgumentParser(prog="d2f", description="D2F diffusion-LLM inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "generate": (generate_cli, "decode one prompt and print the answer"),
        "serve": (launch, "run the OpenAI-compatible HTTP server"),
        "bench": (bench_cli, "benchmarks that print JSON"),
    }
    for name, (module, help_text) in commands.items():
        module.add_arguments(sub.add_parser(name, help=help_text))
    refurbish_cli.add_refurbish_arguments(sub.add_parser("refurbish", help="train a D2F model from a checkpoint"))
    refurbish_cli.add_eval_arguments(sub.add_parser("eval", help="speed/quality curve of a D2F model"))
    args = parser.parse_args(argv)
    if args.command in ("refurbish", "eval"):
        return refurbish_cli.run(args)
    return commands[args.command][0].run(args)


if __name__ == "__main__":
    sys.exit(main())
