"""The two front doors of the experiments layer on the command line: `hf-hem compare` and `hf-hem benchmark`.

Both take losses, seeds, margin sweeps (`--margins 0.5,1,2`), resume finished runs (`--rerun` to redo them), test
every loss against the baseline with Welch's t-test, and can continue unconverged runs with more epochs
(`--until_converged --max_epochs N`). Compare passes every flag it does not know to the task's pipeline script;
benchmark has one flag per field of `BenchmarkSettings` (`--epochs 40`, `--unknown_classes 6,7,8,9`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from .benchmark import run_benchmark
from .compare import DEFAULT_TASK, run_compare
from .convergence import DEFAULT_CRITERION
from .runner import UntilConverged
from .suite.settings import BenchmarkSettings
from .task import BENCHMARK, COMPARE
from .tasks import task_names


__all__ = [
    "add_benchmark_parser",
    "add_compare_parser",
    "run_benchmark_command",
    "run_compare_command",
    "settings_from_args",
]


# --------------------------------------------------------------------------------------------------------------------
# What both commands share


def _parse_margins(text: str) -> list[float]:
    try:
        return [float(margin) for margin in text.split(",") if margin.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--margins must be comma-separated numbers, got {text!r}") from None


def _add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--margins",
        type=_parse_margins,
        default=None,
        help="A margin sweep, e.g. 0.5,1,2: every margin loss of --losses is trained once per margin and seed with "
        "that margin, and the report plots the metrics against the margin (the paper's Fig. 10).",
    )
    parser.add_argument("--rerun", action="store_true", help="Redo runs that already finished (default: reuse them).")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    parser.add_argument(
        "--until_converged",
        action="store_true",
        help="Rerun every run whose learning curve has not converged (see the report's criterion) with --growth "
        "times the epochs, until it converges or reaches --max_epochs.",
    )
    parser.add_argument(
        "--max_epochs", type=float, default=None, help="The cap of --until_converged (required with it)."
    )
    parser.add_argument(
        "--growth", type=float, default=1.5, help="Epoch factor between attempts of --until_converged (1.5)."
    )


def _until_converged(args: argparse.Namespace) -> UntilConverged | None:
    if not args.until_converged:
        if args.max_epochs is not None:
            raise ValueError("--max_epochs is the cap of --until_converged; add --until_converged or drop it.")
        return None
    if args.max_epochs is None:
        raise ValueError("--until_converged needs --max_epochs, the most epochs a run may train.")
    return UntilConverged(args.max_epochs, args.growth, DEFAULT_CRITERION)


# --------------------------------------------------------------------------------------------------------------------
# hf-hem compare


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Register `hf-hem compare` on an `argparse` sub-parser collection.

    The handler is stored as the `handler` default; `accepts_extra_args=True` tells `hf_hem.cli` to pass unknown
    flags on (as `args.extra_args`), since every flag of the task's script is valid here.

    Args:
        subparsers: What `ArgumentParser.add_subparsers()` returned.

    Returns:
        `argparse.ArgumentParser`: the `compare` parser.
    """
    parser = subparsers.add_parser(
        "compare",
        help="Train the same model with CE and HEM (or other losses) and write a side-by-side report.",
        description="Train one model per loss and seed on the same data (image classification by default; "
        "--task segmentation, text or token), then write report.md with a side-by-side table, Welch t-tests against "
        "CE, learning curves with their convergence, and plots. Finished runs are reused, so an interrupted "
        "comparison resumes. Without a dataset: scikit-learn's digits, a small ResNet, digits 8 and 9 held out as "
        "unknown (segmentation: synthetic digit scenes and a tiny SegFormer), offline.",
        epilog="Every other flag of the task's script (scripts/run_image_classification.py, e.g. --dataset_name, "
        "--model_type, --num_train_epochs, --unknown_classes; scripts/run_semantic_segmentation.py with --task "
        "segmentation) is passed on to every run.",
        allow_abbrev=False,  # `--seed` must reach the error of the reserved flags, not silently become `--seeds`
    )
    parser.add_argument(
        "--task",
        default=DEFAULT_TASK,
        choices=sorted(task_names(COMPARE)),
        help="classification (default: scripts/run_image_classification.py), segmentation "
        "(scripts/run_semantic_segmentation.py, CE vs HEM vs HEM+ vs Dice), text or token.",
    )
    parser.add_argument(
        "--losses",
        default=None,
        help="Comma-separated registry names (default: ce,hem; ce,hem,hem+,dice for segmentation).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated seeds; every loss is trained once per seed (default: 0,1,2 on the embedded digits, "
        "0,1 on the embedded scenes, else 0).",
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="PyTorch CPU threads (default: 1 for the embedded data without GPU, else PyTorch's default).",
    )
    parser.add_argument("--output_dir", default="hem-compare", help="Folder of the report and runs (hem-compare).")
    parser.add_argument("--config", default=None, help="A .yaml/.json config of the script applied to every run.")
    _add_shared_arguments(parser)
    parser.set_defaults(handler=run_compare_command, accepts_extra_args=True)
    return parser


def run_compare_command(args: argparse.Namespace) -> int:
    """Handler of `hf-hem compare`: runs [`~hf_hem.experiments.compare.run_compare`] and prints where the report is."""
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    margins = getattr(args, "margins", None)
    if isinstance(margins, str):  # a namespace built by hand, not by the parser
        margins = _parse_margins(margins)
    report = run_compare(
        losses=args.losses.split(",") if args.losses is not None else None,
        seeds=seeds,
        output_dir=args.output_dir,
        script_args=getattr(args, "extra_args", []) or [],
        config_file=args.config,
        progress=not args.no_progress,
        num_threads=args.num_threads,
        task=args.task,
        margins=margins,
        rerun=getattr(args, "rerun", False),
        until_converged=_until_converged(args),
    )
    print(f"Report written to {report}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# hf-hem benchmark


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
    names = task_names(BENCHMARK)
    canonical = list(dict.fromkeys(names.values()))
    requested = canonical if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in requested if name not in names]
    if unknown or not requested:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown or text!r}; choose from {canonical} or 'all'")
    return [names[name] for name in requested]


def _configure_benchmark_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--task",
        type=_parse_tasks,
        required=True,
        help=f"Task(s), comma-separated, or 'all': {', '.join(dict.fromkeys(task_names(BENCHMARK).values()))}.",
    )
    parser.add_argument("--losses", default="ce,hem", help="Comma-separated loss names (default: ce,hem).")
    parser.add_argument("--seeds", type=_parse_seeds, default=3, help="Seed count (default 3) or a list: 0,1,2.")
    parser.add_argument("--output_dir", default="hem_benchmark", help="Results folder (default: hem_benchmark).")
    parser.add_argument("--baseline", default="ce", help="Loss the others are t-tested against (default: ce).")
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch threads (default 1, fastest for the tiny default model; 0 keeps torch's default).",
    )
    _add_shared_arguments(parser)
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
    """Add the `benchmark` subcommand to an `argparse` subparsers object; its handler is `args.handler(args)`.

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
    return _configure_benchmark_parser(parser)


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    """The `BenchmarkSettings` given by the flags that were set."""
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(BenchmarkSettings)
        if getattr(args, field.name, None) is not None
    }
    return BenchmarkSettings.from_overrides(overrides)


def run_benchmark_command(args: argparse.Namespace) -> int:
    """Handler of `hf-hem benchmark`: runs each task, prints its table and where the report is."""
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
            margins=args.margins,
            until_converged=_until_converged(args),
        )
        print(f"\n## {results['title']} ({len(results['seeds'])} seeds, {results['num_reused']} runs reused)\n")
        print(results["table"])
        print(f"\nReport: {results['output_dir']}/report.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `benchmark` stand-alone: `python -m hf_hem.experiments.cli --task ood --losses ce,hem`."""
    parser = _configure_benchmark_parser(argparse.ArgumentParser(prog="hf-hem benchmark"))
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["hf-hem", "benchmark", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
