"""`run_benchmark`: every (loss, seed) of a task, resumable, summarised with statistics, a report and plots."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .curves import DEFAULT_CRITERION, convergence_cell, plot_learning_curves, run_convergence
from .stats import format_p_value, markdown_table, summarize
from .tasks import BenchmarkSettings, BenchmarkTask, RunContext, get_task, headline_table


# 2: runs record their learning curves (`details["curves"]`); runs of version 1 have none and are redone.
RUN_FORMAT_VERSION = 2
# Metrics where lower is better; every other metric is higher-is-better.
_LOWER_IS_BETTER = re.compile(r"(fpr\d*$|ece$|forgetting$)")


def _jsonable(value):
    """NaN/inf become `null` (strict JSON); NumPy scalars and arrays become Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_json(path: Path, payload) -> None:
    """Writes through a temporary file and a rename, so an interrupted run never leaves half a JSON file behind."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)


def run_file_name(loss_name: str, seed: int) -> str:
    """`hem+` -> `hem-plus_seed0.json`: loss names with `+` are spelled out so file names stay portable."""
    return f"{loss_name.replace('+', '-plus')}_seed{seed}.json"


def _resolve_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"`seeds` must be a positive count or a list of seeds, got {seeds!r}.")
        return list(range(int(seeds)))
    resolved = [int(seed) for seed in seeds]
    if not resolved or len(set(resolved)) != len(resolved):
        raise ValueError(f"`seeds` must be a non-empty list of distinct integers, got {list(seeds)!r}.")
    return resolved


def _resolve_losses(losses) -> list[str]:
    from ..losses.registry import LOSS_NAMES

    names = [name.strip().lower() for name in (losses.split(",") if isinstance(losses, str) else losses)]
    unknown = [name for name in names if name not in LOSS_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown losses {unknown or names}; valid names are: {', '.join(LOSS_NAMES)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"losses must not repeat, got {names}.")
    return names


def default_model_fn(settings: BenchmarkSettings):
    """`model_fn(num_labels, num_channels, seed)` building the tiny ResNet sized by `settings`."""
    from ..models import tiny_resnet

    return functools.partial(
        tiny_resnet,
        embedding_size=settings.embedding_size,
        hidden_sizes=settings.hidden_sizes,
        depths=settings.depths,
    )


def _load_finished_run(path: Path, fingerprint: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("format_version") != RUN_FORMAT_VERSION or record.get("settings") != _jsonable(fingerprint):
        return None
    return record


def _per_seed_values(runs: list, losses: list) -> dict:
    """`values[loss][metric]` = finite per-seed values (a metric that is NaN in one seed is left out there)."""
    values = {}
    for loss in losses:
        values[loss] = {}
        for run in (run for run in runs if run["loss"] == loss):
            for metric, value in run["metrics"].items():
                bucket = values[loss].setdefault(metric, [])
                if value is not None and math.isfinite(value):
                    bucket.append(float(value))
    return values


def _verdicts(task: BenchmarkTask, summary: dict, baseline: str | None, alpha: float = 0.05) -> list[str]:
    """One line per non-baseline loss: on which headline metrics it is better / worse than the baseline."""
    if baseline is None or baseline not in summary:
        return []
    lines = []
    for loss, entries in summary.items():
        if loss == baseline:
            continue
        better, worse, unclear = [], [], []
        for metric in task.headline_metrics:
            if metric not in entries or metric not in summary[baseline]:
                continue
            entry, reference = entries[metric], summary[baseline][metric]
            difference = entry["mean"] - reference["mean"]
            if _LOWER_IS_BETTER.search(metric):
                difference = -difference
            label = task.metric_labels.get(metric, metric)
            text = f"{label} ({entry['mean'] - reference['mean']:+.3f}, {format_p_value(entry['p_value'])})"
            significant = not math.isnan(entry["p_value"]) and entry["p_value"] < alpha
            (
                better if significant and difference > 0 else worse if significant and difference < 0 else unclear
            ).append(text)
        lines.append(
            f"* **{loss} vs {baseline}** — better (p < {alpha}): {', '.join(better) or 'none'}; "
            f"worse (p < {alpha}): {', '.join(worse) or 'none'}; no clear difference: {', '.join(unclear) or 'none'}."
        )
    return lines


def _statistics_note(num_seeds: int, baseline: str | None) -> str:
    note = f"Mean ± sample standard deviation over {num_seeds} seed(s)."
    if baseline is None:
        return note + " No baseline loss was run, so there are no significance tests."
    return note + (
        f" `(p=…)` is a two-sided Welch t-test of that loss against `{baseline}` on the same metric, not corrected "
        "for multiple comparisons. With a handful of seeds only large, consistent differences reach p < 0.05, and a "
        "p above it is no evidence that two losses are equal. `p=n/a`: the test could not run (fewer than 2 seeds, "
        "or zero variance in both groups)."
    )


def _convergence(task: BenchmarkTask, runs: list, losses: list) -> dict:
    """`{loss: [Convergence per seed]}` of the task's `curve_metric` (see `hf_hem.evaluation.curves`)."""
    return {
        loss: [
            run_convergence(
                run.get("details", {}).get("curves") or {},
                task.curve_metric,
                run.get("details", {}).get("curve_segments"),
            )
            for run in runs
            if run["loss"] == loss
        ]
        for loss in losses
    }


def _curves_plot(task: BenchmarkTask, runs: list, losses: list, output_dir: Path) -> list:
    """The learning-curve PNG of the task (`[(caption, file name)]`, or `[]` when no run recorded curves)."""
    curves = {
        loss: [run.get("details", {}).get("curves") or {} for run in runs if run["loss"] == loss] for loss in losses
    }
    metrics = [
        ("loss", "training loss"),
        ("hem/violating_fraction", "violating fraction (training)"),
        (task.curve_metric, task.curve_label),
    ]
    # Further evaluated metrics (e.g. the held-out AUROC of `ood`) get a panel too.
    for run_curves in (c for group in curves.values() for c in group):
        for key in run_curves:
            if key not in {metric for metric, _ in metrics}:
                metrics.append((key, task.metric_labels.get(key, key)))
    name = "learning_curves.png"
    if plot_learning_curves(curves, metrics, output_dir / name) is None:
        return []
    return [("Learning curves: every epoch of every run, mean over seeds, band ± one std", name)]


def _curves_note(task: BenchmarkTask, convergence: dict) -> str:
    text = (
        f"`converged`: {DEFAULT_CRITERION.describe(f'the {task.curve_label}')} (evaluated after every epoch; the "
        "spread is the largest over seeds)."
    )
    if task.name == "continual":
        text += " Each task's training is checked on its own, and every task must pass."
    unconverged = [loss for loss, results in convergence.items() if any(r.converged is False for r in results)]
    if unconverged:
        text += (
            " **Not converged**: " + ", ".join(f"`{loss}`" for loss in unconverged) + "; their numbers compare "
            "unfinished runs."
        )
    return text


def _write_report(path, task, settings, results, plots, plot_error, command, convergence=None):
    seeds = results["seeds"]
    convergence = convergence or {}
    cells = {loss: convergence_cell(found) for loss, found in convergence.items()} if convergence else None
    lines = [
        f"# HEM benchmark — {task.title}",
        "",
        task.description,
        "",
        f"Produced by `{command}`" if command else "Produced by `hf_hem.evaluation.run_benchmark`",
        f"with hf_hem {results['hf_hem_version']} on {results['finished_at']}: losses {', '.join(results['losses'])}; "
        f"seeds {', '.join(map(str, seeds))}; {results['num_runs']} runs, {results['num_reused']} reused from an "
        "earlier invocation.",
        "",
        "## Results",
        "",
        _statistics_note(len(seeds), results["baseline"]),
        "",
        headline_table(task, results["summary"], cells),
        "",
    ]
    if convergence:
        lines += [_curves_note(task, convergence), ""]
    verdicts = _verdicts(task, results["summary"], results["baseline"])
    if verdicts:
        lines += ["### Summary against the baseline", "", *verdicts, ""]
    for title, table in task.extra_tables(results["summary"], settings):
        lines += [f"### {title}", "", table, ""]
    if plots or plot_error:
        lines += ["## Plots", ""]
        lines += [f"![{caption}]({file_name})\n\n*{caption}.*\n" for caption, file_name in plots]
        if plot_error:
            lines += [f"Plotting failed: `{plot_error}`.", ""]
    setting_rows = [
        [f"`{name}`", ", ".join(map(str, value)) if isinstance(value, list) else str(value)]
        for name, value in _jsonable(task.fingerprint_settings(settings)).items()
    ]
    lines += [
        "## Settings",
        "",
        "The settings that affect this task's numbers (a finished run is reused only when all of them match):",
        "",
        markdown_table(["setting", "value"], setting_rows),
        "",
        "Every per-seed number is in `results.json`; each run's metrics and details are in `runs/`.",
        "",
    ]
    path.write_text("\n".join(lines))


def run_benchmark(
    task: str | BenchmarkTask,
    losses: Sequence[str] | str = ("ce", "hem"),
    seeds: int | Sequence[int] = 3,
    output_dir: str | os.PathLike = "hem_benchmark",
    settings: BenchmarkSettings | dict | None = None,
    *,
    baseline: str | None = "ce",
    train_fn=None,
    model_fn=None,
    progress: bool = True,
    rerun: bool = False,
    command: str | None = None,
    num_threads: int | None = 1,
) -> dict:
    """Runs one task for every (loss, seed) pair and writes its report.

    Results go to `output_dir/<task>/`: `runs/<loss>_seed<k>.json` (one per finished run, written as soon as it
    finishes), `results.json` (settings, every per-seed number, the summary), `report.md` (tables of mean ± std with
    Welch p-values against `baseline`, a better/worse summary, plots) and PNG plots. A run whose JSON exists with the
    same task settings is not redone, so an interrupted benchmark resumes where it stopped; after changing `train_fn`
    or `model_fn` (which the settings do not describe) pass `rerun=True` or use a fresh `output_dir`.

    Args:
        task (`str` or `BenchmarkTask`): `ood`, `imbalance`, `continual`, `adversarial` or `corruptions`.
        losses (`Sequence[str]` or `str`, defaults to `("ce", "hem")`): registry names, or a comma-separated string.
        seeds (`int` or `Sequence[int]`, defaults to 3): a count (`3` means seeds 0, 1, 2) or explicit seeds.
        output_dir (`str` or `os.PathLike`, defaults to `"hem_benchmark"`): where results go.
        settings ([`BenchmarkSettings`] or `dict`, *optional*): settings, or overrides of the defaults.
        baseline (`str`, *optional*, defaults to `"ce"`): loss the others are tested against; ignored when absent.
        train_fn (*optional*): `train_fn(model, (images, labels), loss_name, seed, **training_kwargs) -> model`;
            defaults to [`train_model`] with the backend `settings.trainer` names: `"hf"`, the `HEMTrainer`
            ([`train_with_hem_trainer`]), or `"torch"`, the plain loop.
        model_fn (*optional*): `model_fn(num_labels, num_channels, seed) -> model`; defaults to the tiny ResNet.
        progress (`bool`, defaults to `True`): tqdm progress bars.
        rerun (`bool`, defaults to `False`): redo runs even when finished.
        command (`str`, *optional*): the command line, quoted in the report.
        num_threads (`int`, *optional*, defaults to 1): torch intra-op threads while the benchmark runs (restored
            afterwards). The tiny default model is fastest on one thread, and several times faster than on two when
            other processes share the cores; `None` keeps torch's setting (use it for bigger models).

    Returns:
        `dict`: the content of `results.json`, plus `"table"` (the headline markdown table) and `"output_dir"`.
    """
    import torch

    if num_threads is None:
        return _run_benchmark(
            task, losses, seeds, output_dir, settings, baseline, train_fn, model_fn, progress, rerun, command
        )
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"`num_threads` must be an integer >= 1 or None, got {num_threads!r}.")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _run_benchmark(
            task, losses, seeds, output_dir, settings, baseline, train_fn, model_fn, progress, rerun, command
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run_benchmark(task, losses, seeds, output_dir, settings, baseline, train_fn, model_fn, progress, rerun, command):
    from tqdm.auto import tqdm

    from .. import __version__
    from ..experiments.suite.training import get_train_fn

    task = get_task(task) if isinstance(task, str) else task
    losses, seeds = _resolve_losses(losses), _resolve_seeds(seeds)
    if not isinstance(settings, BenchmarkSettings):
        settings = BenchmarkSettings.from_overrides(settings)
    baseline = baseline if baseline in losses else None
    context = RunContext(
        settings, train_fn or get_train_fn(settings.trainer), model_fn or default_model_fn(settings), progress
    )
    task_dir = Path(output_dir) / task.name
    runs_dir = task_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = task.fingerprint_settings(settings)

    runs, reused = [], 0
    pairs = [(loss, seed) for loss in losses for seed in seeds]
    bar = tqdm(pairs, desc=f"benchmark {task.name}", unit="run", disable=not progress)
    for loss, seed in bar:
        path = runs_dir / run_file_name(loss, seed)
        record = None if rerun else _load_finished_run(path, fingerprint)
        bar.set_postfix_str(f"{loss} seed {seed}" + (" (reused)" if record else ""))
        if record is None:
            started = time.perf_counter()
            outcome = task.run(loss, seed, context)
            record = {
                "format_version": RUN_FORMAT_VERSION,
                "task": task.name,
                "loss": loss,
                "seed": seed,
                "settings": fingerprint,
                "metrics": outcome["metrics"],
                "details": outcome.get("details", {}),
                "elapsed_seconds": time.perf_counter() - started,
                "hf_hem_version": __version__,
                "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            _write_json(path, record)
            record = json.loads(path.read_text())  # the same form as a reused run (NaN -> None)
        else:
            reused += 1
        runs.append(record)

    summary = summarize(_per_seed_values(runs, losses), baseline=baseline)
    results = {
        "task": task.name,
        "title": task.title,
        "losses": losses,
        "seeds": seeds,
        "baseline": baseline,
        "settings": settings.to_dict(),
        "hf_hem_version": __version__,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "num_runs": len(runs),
        "num_reused": reused,
        "summary": summary,
        "runs": runs,
    }
    convergence = _convergence(task, runs, losses)
    results["convergence"] = {
        "criterion": {**dataclasses.asdict(DEFAULT_CRITERION), "metric": task.curve_metric},
        "losses": {loss: [found._asdict() for found in found_list] for loss, found_list in convergence.items()},
    }
    plots, plot_error = [], None
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        plots = _curves_plot(task, runs, losses, task_dir) + task.plots(summary, runs, task_dir, settings)
    except Exception as error:  # a failed plot must not lose the numbers, which are already on disk
        plot_error = f"{type(error).__name__}: {error}"
        warnings.warn(f"plotting the {task.name} results failed: {plot_error}", stacklevel=2)
    _write_json(task_dir / "results.json", results)
    _write_report(task_dir / "report.md", task, settings, results, plots, plot_error, command, convergence)
    cells = {loss: convergence_cell(found) for loss, found in convergence.items()}
    return {**results, "table": headline_table(task, summary, cells), "output_dir": str(task_dir)}
