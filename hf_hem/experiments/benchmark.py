"""`hf-hem benchmark`: the paper's evaluation tasks (OOD, imbalance, continual, adversarial, corruptions), every
(loss, seed, margin) of a task, resumable, summarised with Welch's t-tests, a report and plots.

Results go to `output_dir/<task>/`: `runs/<loss>_seed<k>.json` (one record per finished run, written as soon as it
finishes), `results.json` (settings, every per-seed number, the summary, the convergence), `report.md` and PNG plots.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .records import RunSpec, write_json
from .report import BENCHMARK_SECTIONS, ReportContext, draw_plots, headline_table, write_report
from .runner import UntilConverged, check_losses, check_margins, check_seeds, plan_runs, run_plan
from .suite.settings import BenchmarkSettings
from .suite.training import run_options
from .summary import summarize_records
from .task import BENCHMARK, Task
from .tasks import get_task


__all__ = ["run_benchmark", "run_file_name"]


def run_file_name(loss_name: str, seed: int, margin: float | None = None) -> str:
    """`hem+` -> `hem-plus_seed0.json` (a sweep: `hem-m0.5_seed0.json`): file names stay portable."""
    return f"{RunSpec(loss_name, seed, margin).slug}_seed{seed}.json"


def run_benchmark(
    task: str | Task,
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
    margins: Sequence[float] | None = None,
    until_converged: UntilConverged | None = None,
) -> dict:
    """Run one task for every (loss, seed) pair (and margin, in a sweep) and write its report.

    A run whose record exists with the same task settings is not redone, so an interrupted benchmark resumes where
    it stopped; after changing `train_fn` or `model_fn` (which the settings do not describe) pass `rerun=True` or
    use a fresh `output_dir`.

    Args:
        task (`str` or `Task`): `ood`, `imbalance`, `continual`, `adversarial` or `corruptions`.
        losses (`Sequence[str]` or `str`, defaults to `("ce", "hem")`): Registry names, or a comma-separated string.
        seeds (`int` or `Sequence[int]`, defaults to 3): A count (`3` means seeds 0, 1, 2) or explicit seeds.
        output_dir (`str` or `os.PathLike`, defaults to `"hem_benchmark"`): Where results go.
        settings (`BenchmarkSettings` or `dict`, *optional*): Settings, or overrides of the defaults.
        baseline (`str`, *optional*, defaults to `"ce"`): Loss the others are tested against; ignored when absent.
        train_fn (*optional*): `train_fn(model, (images, labels), loss_name, seed, **training_kwargs) -> model`;
            defaults to the trainer backend `settings.trainer` names.
        model_fn (*optional*): `model_fn(num_labels, num_channels, seed) -> model`; defaults to the tiny ResNet.
        progress (`bool`, defaults to `True`): Progress bars.
        rerun (`bool`, defaults to `False`): Redo runs even when finished.
        command (`str`, *optional*): The command line, quoted in the report.
        num_threads (`int`, *optional*, defaults to 1): Torch intra-op threads while the benchmark runs (restored
            afterwards); the tiny default model is fastest on one. `None` keeps torch's setting.
        margins (`Sequence[float]`, *optional*): A margin sweep: every single-margin loss is trained once per margin
            and seed with that margin; the report adds the metrics against the margin.
        until_converged ([`~hf_hem.experiments.runner.UntilConverged`], *optional*): Rerun a run whose learning
            curve has not converged with more epochs, up to a cap.

    Returns:
        `dict`: the content of `results.json`, plus `"table"` (the headline markdown table) and `"output_dir"`.
    """
    task = get_task(task, BENCHMARK)
    losses, seeds = check_losses(losses), check_seeds(seeds)
    margins = check_margins(margins, losses)
    if not isinstance(settings, BenchmarkSettings):
        settings = BenchmarkSettings.from_overrides(settings)
    task_dir = Path(output_dir) / task.name
    runs_dir = task_dir / "runs"

    def locate(spec: RunSpec) -> tuple[None, Path]:
        return None, runs_dir / run_file_name(spec.loss, spec.seed, spec.margin)

    records, reused = run_plan(
        task,
        settings,
        plan_runs(losses, seeds, margins),
        task_dir,
        locate,
        progress=progress,
        rerun=rerun,
        options=run_options(settings, train_fn, model_fn),
        until_converged=until_converged,
        num_threads=num_threads,
        description=f"benchmark {task.name}",
    )
    summary = summarize_records(task, records, baseline)
    finished_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = {
        "task": task.name,
        "title": task.title,
        "losses": losses,
        "seeds": seeds,
        "margins": margins,
        "baseline": summary.baseline,
        "settings": settings.to_dict(),
        "hf_hem_version": __version__,
        "finished_at": finished_at,
        "num_runs": len(records),
        "num_reused": reused,
        "summary": summary.stats,
        "runs": [record.to_json() for record in records],
        "convergence": summary.convergence_json(),
    }
    plots, plot_error = [], None
    try:
        plots = draw_plots(
            task,
            records,
            summary,
            task_dir,
            settings,
            every_curve=True,
            curves_caption="Learning curves: every epoch of every run, mean over seeds, band ± one std",
        )
    except Exception as error:  # a failed plot must not lose the numbers, which are already on disk
        plot_error = f"{type(error).__name__}: {error}"
        warnings.warn(f"plotting the {task.name} results failed: {plot_error}", stacklevel=2)
    write_json(task_dir / "results.json", results)
    facts = {
        "hf_hem_version": __version__,
        "finished_at": finished_at,
        "losses": losses,
        "num_reused": reused,
        "plot_error": plot_error,
    }
    context = ReportContext(task, settings, records, summary, plots, task_dir, {}, command, facts)
    write_report(context, BENCHMARK_SECTIONS)
    return {**results, "table": headline_table(task, summary), "output_dir": str(task_dir)}
