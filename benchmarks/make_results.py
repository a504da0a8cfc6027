"""Runs the task suite on the embedded digits and writes docs/RESULTS.md from its reports.

    python benchmarks/make_results.py [--seeds 3] [--output_dir hem-benchmark]
    python benchmarks/make_results.py --segmentation [--output_dir hem-benchmark] [--jobs 2]

Every number in docs/RESULTS.md comes from this script: it calls `hf-hem benchmark` once per task with the losses of
`TASK_LOSSES` and the training flags of `SUITE_FLAGS`, and once more with `LONGER_FLAGS` (the 1.5x check, one seed,
into `<output_dir>/longer`; both resumable: finished runs are reused), then reads each task's `results.json` and
`report.md` and copies its plots under docs/ (about 40 min of CPU for the whole suite with 3 seeds). With `--segmentation` it instead runs the
segmentation comparisons of docs/semantic_segmentation.md (benchmarks/segmentation_results.py: `hf-hem compare --task
segmentation` per seed in a setting the model fits, the same with 1.5x the epochs, and a margin sweep; finished runs
are reused) and rewrites the block between the `results` markers of that page from them.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the segmentation results beside this script
from segmentation_results import hf_hem_executable, write_segmentation_results  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
TASK_LOSSES = {
    "ood": "ce,hem,logitnorm",
    "imbalance": "ce,hem,hem+,la",
    "continual": "ce,hem",
    "adversarial": "ce,hem",
    "corruptions": "ce,hem",
}
#: `hf-hem benchmark` flags of the documentation runs, the same for every task and every loss (the rest keeps its
#: defaults). The quick defaults (30 epochs, 10x drops at 91% and 95.5%) leave most of the convergence window (the
#: last 25% of the epochs) at the high initial learning rate, where the test metric swings from epoch to epoch; with
#: drops at 50% and 75% of 40 epochs the schedule ends flat and the window (epochs 31-40) lies after the last drop.
SUITE_FLAGS = ("--epochs", "40", "--continual_epochs", "40", "--lr_decay_fractions", "0.5,0.75")
#: The 1.5x check, run with `LONGER_SEEDS` seeds into `<output_dir>/longer`: the same schedule over 1.5x the epochs. A
#: flat end can also be a learning rate too small to move a model that is still far from its optimum; when training
#: longer moves the checked metric by more than the criterion's tolerance, the shorter runs had not finished.
LONGER_FLAGS = ("--epochs", "60", "--continual_epochs", "60", "--lr_decay_fractions", "0.5,0.75")
LONGER_SEEDS = 1
#: Per task, the metric its claim is about, shown in the 1.5x check beside the checked metric: a flat test accuracy
#: does not make every metric flat, and these moving with the training length is worth knowing.
CLAIM_METRICS = {
    "ood": "far_mean/msp_auroc",
    "imbalance": "few_shot",
    "continual": "task_il/final_average_accuracy",
    "adversarial": "pgd_linf_accuracy",
    "corruptions": "mean_corruption_accuracy",
}
# The families of HEM, whose losses against the baseline are listed under "Where HEM loses".
_HEM_LOSSES = ("hem", "hem+")


def suite_command(task: str, seeds: int, output_dir, flags=SUITE_FLAGS) -> list[str]:
    """The `hf-hem benchmark` command line of one task's documentation runs (`flags`: the training flags)."""
    losses = TASK_LOSSES[task]
    return [
        "benchmark",
        "--task",
        task,
        "--losses",
        losses,
        "--seeds",
        str(seeds),
        *flags,
        "--output_dir",
        str(output_dir),
    ]


def _convergence_counts(results: dict) -> dict:
    """`{loss: (converged seeds, decided seeds, largest spread)}` from the `convergence` entry of a results.json."""
    counts = {}
    for loss, found in results.get("convergence", {}).get("losses", {}).items():
        decided = [entry for entry in found if entry["converged"] is not None]
        spreads = [
            entry["spread"] for entry in decided if entry["spread"] is not None and math.isfinite(entry["spread"])
        ]
        counts[loss] = (
            sum(bool(entry["converged"]) for entry in decided),
            len(decided),
            max(spreads) if spreads else float("nan"),
        )
    return counts


def _converged_text(results: dict) -> str:
    """`ce 3/3, hem 2/3` from the `convergence` entry of a task's results.json (seeds whose curve levelled off)."""
    counts = _convergence_counts(results)
    return ", ".join(f"{loss} {passed}/{decided}" for loss, (passed, decided, _) in counts.items()) or "not recorded"


def _curve_end(results: dict, loss: str, key: str) -> float:
    """Mean over the seeds of `loss` of the last point of learning curve `key` (NaN when no run has it)."""
    ends = [
        curve["value"][-1]
        for run in results["runs"]
        if run["loss"] == loss
        for curve in [(run.get("details", {}).get("curves") or {}).get(key)]
        if curve and curve["value"] and curve["value"][-1] is not None
    ]
    return sum(ends) / len(ends) if ends else float("nan")


def _checked_end(results: dict, loss: str, seed: int) -> float:
    """The last point of the checked metric's learning curve (the criterion's metric) of one run; NaN if missing."""
    key = results["convergence"]["criterion"]["metric"]
    for run in results["runs"]:
        if run["loss"] == loss and run["seed"] == seed:
            curve = (run.get("details", {}).get("curves") or {}).get(key)
            if curve and curve["value"] and curve["value"][-1] is not None:
                return curve["value"][-1]
    return float("nan")


def _wrap(text: str, width: int = 119) -> str:
    """Fills the prose paragraphs of `text` to `width`; tables, lists and headings stay as they are."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        if paragraph.lstrip().startswith(("|", "* ", "#", "!")):
            paragraphs.append(paragraph)
        else:
            paragraphs.append(
                textwrap.fill(" ".join(paragraph.split()), width, break_long_words=False, break_on_hyphens=False)
            )
    return "\n\n".join(paragraphs)


def _window_text(epochs: int, fractions, criterion: dict) -> str:
    """Where the convergence window of an `epochs`-epoch training lies relative to its learning-rate drops."""
    # The suite's trainers drop the rate after epoch ceil(fraction * epochs), as `hf_hem`'s training loop does.
    drops = sorted({math.ceil(fraction * epochs) for fraction in fractions if fraction < 1})
    window = max(criterion["min_evaluations"], math.ceil(criterion["window_fraction"] * epochs))
    first = epochs - window + 1
    before = max(0, (drops[-1] if drops else 0) - first + 1)
    where = "all after the last drop" if not before else f"{before} of them before the last drop"
    return (
        f"{epochs} epochs, drops after epochs {', '.join(map(str, drops))}; window: epochs {first}-{epochs}, {where}"
    )


def _run_metric(results: dict, loss: str, seed: int, key: str) -> float:
    """The final metric `key` of one run (NaN when missing)."""
    for run in results["runs"]:
        if run["loss"] == loss and run["seed"] == seed:
            value = run["metrics"].get(key)
            return float("nan") if value is None else value
    return float("nan")


# One item of a verdict line of a report: `label (+0.028, p=0.004)` (or `p<0.001`, `p=n/a`).
_VERDICT_ITEM = re.compile(r"(.+?) \(([+-]\d+\.\d+), (p[=<][^)]+)\)(?:, |$)")


def _verdict(report: str, loss: str, baseline: str = "ce") -> dict | None:
    """`{"better": [...], "worse": [...], "unclear": [...]}` of `(label, difference, p)` from the verdict line of
    `loss` in a task report (`* **hem vs ce** — better (p < 0.05): ...; worse ...; no clear difference: ...`)."""
    line = re.search(rf"^\* \*\*{re.escape(loss)} vs {re.escape(baseline)}\*\* — (.+)$", report, flags=re.M)
    if line is None:
        return None
    parts = re.match(
        r"better \(p < [\d.]+\): (.*); worse \(p < [\d.]+\): (.*); no clear difference: (.*)\.$", line.group(1)
    )
    if parts is None:
        return None
    return {
        kind: [] if text == "none" else [(m[0], float(m[1]), m[2]) for m in _VERDICT_ITEM.findall(text)]
        for kind, text in zip(("better", "worse", "unclear"), parts.groups())
    }


def _worse_text(items) -> str:
    return ", ".join(f"{label} ({difference:+.3f}, {p})" for label, difference, p in items)


def _where_hem_loses(title: str, report: str, losses: list) -> list:
    """Bullets: the headline metrics on which a HEM loss is worse than CE, significantly or by its mean."""
    lines = []
    for loss in (loss for loss in losses if loss in _HEM_LOSSES):
        verdict = _verdict(report, loss)
        if verdict is None and "ce" in losses:
            # A silent skip would print "none" under "Where HEM loses": fail instead.
            raise SystemExit(
                f"the {title!r} report has no readable '* **{loss} vs ce** — better ...; worse ...; no clear "
                "difference ...' line; its format changed, so update `_verdict` in benchmarks/make_results.py."
            )
        if verdict is None:
            continue
        # A difference on a lower-is-better metric is reported as higher-is-worse.
        behind = [item for item in verdict["unclear"] if (item[1] > 0) == ("lower is better" in item[0]) and item[1]]
        significant = _worse_text(verdict["worse"]) or "none"
        lines.append(
            f"* **{title}**, `{loss}`: worse than `ce` (p < 0.05): {significant}; behind on the mean, not "
            f"significant: {_worse_text(behind) or 'none'}."
        )
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _run_suite_task(task: str, seeds: int, output_dir: Path, flags=SUITE_FLAGS) -> tuple[dict, str, str]:
    """Runs (or resumes) one task's `hf-hem benchmark`; returns its results.json, its report.md and the command."""
    command = suite_command(task, seeds, output_dir, flags)
    subprocess.run([hf_hem_executable(), *command], check=True)
    task_dir = output_dir / task
    results = json.loads((task_dir / "results.json").read_text())
    return results, (task_dir / "report.md").read_text(), shlex.join(["hf-hem", *command])


def suite_results(seeds: int, output_dir: Path, tasks: list, docs: Path, invocation: str) -> None:
    """Runs the task suite and its 1.5x check and writes docs/RESULTS.md (and the plots under docs/results/<task>/)
    from their reports."""
    figures = docs / "results"
    sections, glance, losing, commands, longer_commands = [], [], [], [], []
    fit_rows = [
        "| task | loss | converged | largest spread in the window | training loss, last epoch | "
        "violating fraction, last epoch |",
        "|---|---|---|---:|---:|---:|",
    ]
    wall_rows = [
        "| task | runs | wall time (sum of the runs) | metric checked | schedule and window of the check | the same in "
        "the 1.5x check |",
        "|---|---:|---:|---|---|---|",
    ]
    longer_rows = None
    settings, criterion, not_converged, moved, claim_moved = None, None, [], [], []
    total_seconds, longer_seconds = 0.0, 0.0
    for task in tasks:
        results, report, command = _run_suite_task(task, seeds, output_dir)
        commands.append(f"* `{command.replace(str(output_dir), '<out>')}`")
        settings = settings or results["settings"]
        criterion = criterion or results["convergence"]["criterion"]
        (figures / task).mkdir(parents=True, exist_ok=True)
        for png in (output_dir / task).glob("*.png"):
            shutil.copy(png, figures / task / png.name)
        # One level deeper under RESULTS.md's own title; plots are linked from docs/results/<task>/.
        report = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", report, flags=re.M)
        report = re.sub(r"\]\((?!https?:)([^)/]+\.png)\)", rf"](results/{task}/\1)", report)
        counts = _convergence_counts(results)
        # Undecided seeds (too short a curve) count as unconverged: the page claims convergence for every seed.
        num_seeds = len(results["seeds"])
        short = {loss: f"{passed}/{num_seeds}" for loss, (passed, _, _) in counts.items() if passed < num_seeds}
        if short or not counts:
            not_converged.append(results["title"])
            note = (
                "**Not every run converged**: "
                + ", ".join(f"`{loss}` {text} seeds" for loss, text in short.items())
                + " passed the check (see its column); the comparison of those losses uses unfinished runs."
                if short
                else "**Not checked for convergence**: no run recorded a learning curve."
            )
            title_line = re.search(r"^## .+\n", report, flags=re.M)
            report = report[: title_line.end()] + "\n" + note + "\n" + report[title_line.end() :]
        sections.append(report.strip())
        title = results["title"]
        verdict = re.search(r"^\* \*\*hem vs ce\*\* — (.+)$", report, flags=re.M)
        if verdict:
            glance.append(f"* **{title}** — {verdict.group(1)} Converged: {_converged_text(results)}.")
        losing += _where_hem_loses(title, report, results["losses"])
        for loss, (passed, _, spread) in counts.items():
            # The Trainer logs the share inside HEM's margin for every loss; it is HEM's own measure of fit only.
            violating = _curve_end(results, loss, "hem/violating_fraction") if loss in _HEM_LOSSES else math.nan
            fit_rows.append(
                f"| {title} | `{loss}` | {'yes' if passed == num_seeds else 'no'} ({passed}/{num_seeds}) | "
                f"{spread:.4f} | {_curve_end(results, loss, 'loss'):.4f} | "
                f"{'' if math.isnan(violating) else f'{violating:.4f}'} |"
            )
        seconds = sum(run["elapsed_seconds"] for run in results["runs"])
        total_seconds += seconds
        metric = re.search(r"^`converged`: a run has converged when (.+?) varies by", report, flags=re.M)
        metric = metric.group(1) if metric else f"`{results['convergence']['criterion']['metric']}`"
        windows = []
        for flags in (SUITE_FLAGS, LONGER_FLAGS):
            epochs = _flag_value(flags, "--continual_epochs" if task == "continual" else "--epochs")
            windows.append(_window_text(int(epochs), results["settings"]["lr_decay_fractions"], criterion))
        wall_rows.append(
            f"| {title} | {results['num_runs']} | {_minutes(seconds)} | {metric} | {windows[0]} | {windows[1]} |"
        )

        longer, _, longer_command = _run_suite_task(task, LONGER_SEEDS, output_dir / "longer", LONGER_FLAGS)
        longer_commands.append(f"* `{longer_command.replace(str(output_dir), '<out>')}`")
        longer_seconds += sum(run["elapsed_seconds"] for run in longer["runs"])
        if longer_rows is None:
            short_run, long_run = _flag_value(SUITE_FLAGS, "--epochs"), _flag_value(LONGER_FLAGS, "--epochs")
            longer_rows = [
                f"| task | loss | seed | checked metric: {short_run} → {long_run} epochs | change | claim metric | "
                f"{short_run} → {long_run} epochs | change | its std over the {seeds} seeds |",
                "|---|---|---:|---:|---:|---|---:|---:|---:|",
            ]
        claim = CLAIM_METRICS.get(task)
        for loss in longer["losses"]:
            for seed in longer["seeds"]:
                before, after = _checked_end(results, loss, seed), _checked_end(longer, loss, seed)
                change = after - before
                if not abs(change) <= criterion["tolerance"] + 1e-12:
                    moved.append(f"{title} `{loss}` (seed {seed}: {change:+.4f})")
                claim_before, claim_after = (
                    _run_metric(results, loss, seed, claim),
                    _run_metric(longer, loss, seed, claim),
                )
                claim_change = claim_after - claim_before
                std = (results["summary"].get(loss, {}).get(claim) or {}).get("std")
                std = float("nan") if std is None else std
                if not abs(claim_change) <= std:
                    claim_moved.append(f"{title} `{loss}` {claim} ({claim_change:+.3f} against {std:.3f})")
                longer_rows.append(
                    f"| {title} | `{loss}` | {seed} | {before:.4f} → {after:.4f} | {change:+.4f} | `{claim}` | "
                    f"{claim_before:.3f} → {claim_after:.3f} | {claim_change:+.3f} | {std:.3f} |"
                )

    fractions = " and ".join(f"{fraction:.0%}" for fraction in settings["lr_decay_fractions"])
    final_rate = settings["learning_rate"] * 0.1 ** len(settings["lr_decay_fractions"])
    verdict_text = (
        f"**{len(not_converged)} of the {len(tasks)} tasks have runs that failed the check**: "
        + ", ".join(not_converged)
        + "; their sections say which, and their comparisons use unfinished runs."
        if not_converged
        else f"**Every loss converged in every seed in all {len(tasks)} tasks** (the `converged` column of each "
        "section, and the table below)."
    )
    tolerance = f"{criterion['tolerance']:g}"
    longer_text = (
        f"**Moved by more than {tolerance}**: {', '.join(moved)}; those runs had not finished at "
        f"{_flag_value(SUITE_FLAGS, '--epochs')} epochs, whatever the check says."
        if moved
        else f"No checked metric moved by more than the tolerance ({tolerance})."
    )
    longer_text += (
        " Claim metrics that moved by more than their standard deviation over the seeds: "
        + (", ".join(claim_moved) or "none")
        + (
            "; those numbers depend on the training length as well as on the loss, even where the checked metric "
            "has settled."
            if claim_moved
            else "."
        )
    )
    intro = f"""# Results of the task suite on the embedded digits

Produced by `{invocation.replace(str(output_dir), "<out>")}` (`<out>` below is its `--output_dir`), on {platform.machine()}, torch {torch.__version__}, CPU only, one torch thread per run
and one run at a time, on a 2-core machine shared with other jobs. The {seeds}-seed comparison took
{_minutes(total_seconds)} of training and evaluation, the 1.5x check {_minutes(longer_seconds)} more (the sums of the
runs' wall times in the tasks' `results.json`). The script runs `hf-hem benchmark` twice per task (the commands are
at the end of this introduction; finished runs are reused, so it resumes) and builds this page from the tasks'
`results.json` and `report.md`.

**Setting.** Each run trains the tiny ResNet of `hf-hem benchmark` (stem {settings["embedding_size"]} channels,
stages {", ".join(map(str, settings["hidden_sizes"]))}, blocks {", ".join(map(str, settings["depths"]))}) from
scratch on scikit-learn's 8×8 digits upscaled to {settings["image_size"]}×{settings["image_size"]}, with
`HEMTrainer` (`--trainer {settings["trainer"]}`, the default): SGD at learning rate {settings["learning_rate"]:g},
momentum {settings["momentum"]:g}, weight decay {settings["weight_decay"]:g}, batch {settings["batch_size"]}, for
{settings["epochs"]} epochs ({settings["continual_epochs"]} per task in continual learning); the learning rate drops
10x after {fractions} of the epochs. The flags, the same for every task and every loss (`SUITE_FLAGS` in the script;
everything else is the default): `{shlex.join(SUITE_FLAGS)}`. HEM's margin is the paper's rule μ = sqrt(M / S) with
M = {settings["margin_scale"]:g}, capped by `HEMConfig`'s `max_margin` (default 1.0; every task here trains on
fewer than M images); HEM+ derives one margin per class from the label counts. The adversarial and corruption tasks
train the same models (the whole training split, the same settings and seeds) and differ only in their test images.
This is a toy problem, far from the paper's 110-epoch CIFAR/ImageNet protocols: read it as a check of the claims at
small scale, including where HEM does not win.

**Why these runs converge.** The quick defaults (30 epochs, drops at 91% and 95.5%) keep the high initial learning
rate over most of the convergence check's window, the last quarter of the epochs, where the test metric swings from
epoch to epoch, HEM's most: the pages made with them could not call a single HEM run converged. Here the schedule
ends flat: the last drop comes before the window, so every evaluation the check looks at follows training at the
final rate ({final_rate:g}) and the check judges the settled end of the curve (the learning curves of each section
show it).

**How convergence was checked.** Every run records its learning curve: the task's test metric after every epoch
(the table names it), the training loss and the share of training samples inside HEM's margin (the violating
fraction). A run has converged when the metric varies by at most {tolerance} (max − min) over its last
{criterion["window_fraction"]:.0%} of evaluations (at least {criterion["min_evaluations"]}); continual learning
checks each task's training on its own, and every task must pass. The check is the library's `DEFAULT_CRITERION`,
unchanged.

{chr(10).join(wall_rows)}

{verdict_text}

{chr(10).join(fit_rows)}

**Not just a small learning rate.** A curve can also end flat because the rate became too small to move a model
that is still far from its optimum. Two checks rule that out here. At the last epoch the training loss is close to
zero and HEM's violating fraction too (the table above): the models fit their training sets. And the 1.5x check
trains {LONGER_SEEDS} seed(s) of every loss again with the same schedule over 1.5x the epochs
(`{shlex.join(LONGER_FLAGS)}`). At the end of each run, before and after: the checked metric, and the metric the
task's claim is about (`CLAIM_METRICS` in the script), whose change is set against its standard deviation over the
{seeds} seeds of the comparison:

{chr(10).join(longer_rows or [])}

{longer_text}

Commands (one per task, run by the script), the comparison:

{chr(10).join(commands)}

and the 1.5x check:

{chr(10).join(longer_commands)}

## At a glance: HEM against cross-entropy

Welch t-tests over {seeds} seeds per task, not corrected for multiple comparisons (details in each section);
"Converged" counts the seeds whose learning curve levelled off.

{chr(10).join(glance)}

## Where HEM loses

The headline metrics on which a HEM loss ends below cross-entropy (for "lower is better" metrics: above it), from
the same reports; with {seeds} seeds, a difference without p < 0.05 may well be noise.

{chr(10).join(losing) or "* none"}
"""
    (docs / "RESULTS.md").write_text(_wrap(intro) + "\n\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {docs / 'RESULTS.md'}")


def _flag_value(flags, name: str) -> str:
    """The value after `name` in a flat flag tuple such as `SUITE_FLAGS`."""
    return flags[flags.index(name) + 1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output_dir", default="hem-benchmark")
    parser.add_argument("--tasks", default=",".join(TASK_LOSSES))
    parser.add_argument("--docs_dir", default=str(REPO / "docs"))
    parser.add_argument(
        "--segmentation",
        action="store_true",
        help="Run the segmentation comparisons of docs/semantic_segmentation.md (benchmarks/segmentation_results.py).",
    )
    parser.add_argument(
        "--reuse_only",
        action="store_true",
        help="With --segmentation: start no run; write the block from the finished ones, naming those not run.",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="With --segmentation: comparisons of this many seeds run side by side (each one thread).",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}.")
    if args.segmentation:
        write_segmentation_results(
            Path(args.output_dir) / "segmentation", Path(args.docs_dir), args.reuse_only, jobs=args.jobs
        )
        return
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in TASK_LOSSES]
    if unknown or not tasks:
        parser.error(f"--tasks: unknown task(s) {unknown or args.tasks!r}; choose from {', '.join(TASK_LOSSES)}.")
    invocation = shlex.join(["python", "benchmarks/make_results.py", *(sys.argv[1:] if argv is None else argv)])
    suite_results(args.seeds, Path(args.output_dir), tasks, Path(args.docs_dir), invocation)


if __name__ == "__main__":
    main()
