"""The `hf-hem benchmark` subcommand: argparse wiring for [`run_benchmark`].

`add_benchmark_parser(subparsers)` adds the subcommand to the `hf-hem` parser; `main(argv)` runs it stand-alone
(`python -m hf_hem.evaluation.cli --task ood`). Every field of [`BenchmarkSettings`] is also a flag
(`--epochs 40`, `--unknown_classes 6,7,8,9`, `--imbalance_ratio 100`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from .tasks import TASKS, BenchmarkSettings


def _element_parser(field: dataclasses.Field):
    """The type that parses one value of a settings field, read from its default or its annotation."""
    default = field.default
    if isinstance(default, tuple) and default:
        return type(default[0])
    if default is not None and not isinstance(default, tuple):
        return type(default)
    annotation = str(field.type)
    return int if "int" in annotation else float if "float" in annotation else str


def _settings_flag_type(field: dataclasses.Field):
    parse_one = _element_parser(field)
    if not isinstance(field.default, tuple):
        return parse_one

    def parse_list(text: str):
        try:
            return tuple(parse_one(item.strip()) for item in text.split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {parse_one.__name__}, got {text!r}"
            ) from None

    parse_list.__name__ = f"list of {parse_one.__name__}"
    return parse_list


def _parse_seeds(text: str):
    """`3` -> 3 seeds (0, 1, 2); `0,5,7` -> those seeds."""
    try:
        if "," in text:
            return [int(item) for item in text.split(",") if item.strip()]
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count (3) or a list (0,1,2), got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be >= 1, got {count}")
    return count


def _parse_tasks(text: str) -> list[str]:
    names = list(TASKS) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown or text!r}; choose from {list(TASKS)} or 'all'")
    return names


def _configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--task",
        type=_parse_tasks,
        required=True,
        help=f"Task(s), comma-separated, or 'all': {', '.join(TASKS)}.",
    )
    parser.add_argument("--losses", default="ce,hem", help="Comma-separated loss names (default: ce,hem).")
    parser.add_argument("--seeds", type=_parse_seeds, default=3, help="Seed count (default 3) or a list: 0,1,2.")
    parser.add_argument("--output_dir", default="hem_benchmark", help="Results folder (default: hem_benchmark).")
    parser.add_argument("--baseline", default="ce", help="Loss the others are t-tested against (default: ce).")
    parser.add_argument("--rerun", action="store_true", help="Redo runs that already finished.")
    parser.add_argument("--no_progress", action="store_true", help="Hide progress bars.")
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch threads (default 1, fastest for the tiny default model; 0 keeps torch's default).",
    )
    group = parser.add_argument_group("benchmark settings (defaults: BenchmarkSettings)")
    for field in dataclasses.fields(BenchmarkSettings):
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        # `%` must be doubled: argparse formats help strings with it.
        help_text = f"{field.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        group.add_argument(f"--{field.name}", type=_settings_flag_type(field), default=None, help=help_text)
    parser.set_defaults(handler=run_benchmark_command)
    return parser


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `benchmark` subcommand to an `argparse` subparsers object; its handler is `args.handler(args)`.

    Example:

    ```python
    >>> parser = argparse.ArgumentParser(prog="hf-hem")
    >>> benchmark_parser = add_benchmark_parser(parser.add_subparsers(dest="command"))
    ```
    """
    parser = subparsers.add_parser(
        "benchmark",
        help="Compare losses on the paper's tasks (OOD, imbalance, continual, adversarial, corruptions).",
        description=(
            "Trains one model per (loss, seed) on each task, prints mean ± std per loss with Welch t-test p-values "
            "against the baseline, and writes report.md, results.json and plots to OUTPUT_DIR/<task>/. Finished "
            "runs are reused, so an interrupted benchmark resumes."
        ),
    )
    return _configure_parser(parser)


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    """The [`BenchmarkSettings`] given by the flags that were set."""
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(BenchmarkSettings)
        if getattr(args, field.name, None) is not None
    }
    return BenchmarkSettings.from_overrides(overrides)


def run_benchmark_command(args: argparse.Namespace) -> int:
    """Handler of `hf-hem benchmark`: runs each task, prints its table and where the report is."""
    from .runner import run_benchmark

    settings = settings_from_args(args)
    command = getattr(args, "command_line", None) or shlex.join(["hf-hem", *sys.argv[1:]])
    for task in args.task:
        results = run_benchmark(
            task,
            args.losses,
            args.seeds,
            args.output_dir,
            settings,
            baseline=args.baseline,
            progress=not args.no_progress,
            rerun=args.rerun,
            command=command,
            num_threads=args.num_threads or None,
        )
        print(f"\n## {results['title']} ({len(results['seeds'])} seeds, {results['num_reused']} runs reused)\n")
        print(results["table"])
        print(f"\nReport: {results['output_dir']}/report.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs `benchmark` stand-alone: `python -m hf_hem.evaluation.cli --task ood --losses ce,hem`."""
    parser = _configure_parser(argparse.ArgumentParser(prog="hf-hem benchmark"))
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["hf-hem", "benchmark", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
