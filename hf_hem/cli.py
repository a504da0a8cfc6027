"""The `hf-hem` command."""

from __future__ import annotations

import argparse
import sys

from .demo import format_results, run_demo
from .experiments.cli import add_benchmark_parser, add_compare_parser


def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="Train a small MLP on scikit-learn's digits with CE and HEM (plain PyTorch)."
    )
    parser.add_argument("--losses", default="ce,hem", help="Comma-separated registry names (default: ce,hem).")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    print(format_results(run_demo(tuple(args.losses.split(",")), seed=args.seed)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-hem", description="HEM loss for the Hugging Face ecosystem.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(subparsers)
    add_compare_parser(subparsers)
    add_benchmark_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `compare` passes every flag it does not know itself on to the task's script parser.
    args, extra_args = parser.parse_known_args(argv)
    if extra_args and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra_args)}")
    args.extra_args = extra_args
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
