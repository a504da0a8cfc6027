"""One runner for every experiment: the plan (losses x seeds x margins), resume by fingerprint, training until the
learning curve converges, threads and progress.

[`run_plan`] runs each [`~hf_hem.experiments.records.RunSpec`] of a plan through its task and writes the record as
soon as the run finishes. A cell whose record exists with the same fingerprint is read back instead (an interrupted
`hf-hem compare` or `hf-hem benchmark` resumes where it stopped). With [`UntilConverged`], a run whose learning curve
fails the convergence criterion is rerun with `growth` times the epochs until it converges or reaches the cap; the
record lists every attempt.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..losses.registry import LOSS_NAMES, MARGIN_LOSS_NAMES
from .convergence import DEFAULT_CRITERION, ConvergenceCriterion, run_convergence
from .records import RunRecord, RunSpec, load_record
from .task import RunContext, Task


__all__ = ["UntilConverged", "check_losses", "check_margins", "check_seeds", "plan_runs", "run_plan"]


@dataclass(frozen=True)
class UntilConverged:
    """`--until_converged`: rerun an unconverged cell with `growth` x its epochs, up to `max_epochs`.

    Attributes:
        max_epochs (`float`): The cap; an attempt never trains longer, and the last one trains exactly this long.
        growth (`float`, defaults to 1.5): Factor of the epochs from one attempt to the next (> 1).
        criterion ([`~hf_hem.experiments.convergence.ConvergenceCriterion`]): When a curve counts as converged.
    """

    max_epochs: float
    growth: float = 1.5
    criterion: ConvergenceCriterion = DEFAULT_CRITERION

    def __post_init__(self):
        if not (isinstance(self.growth, (int, float)) and math.isfinite(self.growth) and self.growth > 1):
            raise ValueError(f"growth must be a number > 1, got {self.growth!r}.")
        if not (isinstance(self.max_epochs, (int, float)) and math.isfinite(self.max_epochs) and self.max_epochs > 0):
            raise ValueError(f"max_epochs must be a positive number, got {self.max_epochs!r}.")

    def fingerprint(self) -> dict:
        """What a resumed record must have been run with (the cap and the growth change the final numbers)."""
        return {"max_epochs": self.max_epochs, "growth": self.growth, "tolerance": self.criterion.tolerance}


def check_losses(losses: Sequence[str] | str) -> list[str]:
    """Registry names, lower-cased, from a list or a comma-separated string; unknown, repeated or no names raise."""
    names = [name.strip().lower() for name in (losses.split(",") if isinstance(losses, str) else losses)]
    names = [name for name in names if name]
    if not names:
        raise ValueError("losses is empty; expected registry names such as 'ce,hem'.")
    unknown = [name for name in names if name not in LOSS_NAMES]
    if unknown:
        raise ValueError(f"unknown losses {unknown}; valid names are: {', '.join(LOSS_NAMES)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"losses {names} name a loss twice; each loss is trained once per seed.")
    return names


def check_seeds(seeds) -> list[int]:
    """A non-empty list of distinct integer seeds (a count `n` means seeds `0..n-1`)."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds!r}.")
        return list(range(seeds))
    seeds = list(seeds)
    if not seeds or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed; a repeated run would only duplicate results.")
    return seeds


def check_margins(margins: Sequence[float] | None, losses: Sequence[str]) -> list[float]:
    """The margins of a sweep, checked: positive finite numbers, no repeats, and a loss that can be swept."""
    if margins is None:
        return []
    margins = [float(margin) for margin in margins]
    if not margins or any(not math.isfinite(margin) or margin <= 0 for margin in margins):
        raise ValueError(f"margins must be positive numbers, got {margins!r}.")
    if len(set(margins)) != len(margins):
        raise ValueError(f"margins {margins} repeat a margin.")
    if "hem+" in losses:
        raise ValueError("hem+ takes its per-class margins from the class counts and cannot be swept; leave it out.")
    if not any(loss in MARGIN_LOSS_NAMES for loss in losses):
        raise ValueError(f"--margins needs a margin loss among the losses (e.g. hem), got {list(losses)}.")
    return margins


def plan_runs(losses: Sequence[str], seeds: Sequence[int], margins: Sequence[float] = ()) -> list[RunSpec]:
    """Every cell, seed by seed: margin losses once per margin of a sweep, the other losses once."""
    return [
        RunSpec(loss, seed, margin)
        for seed in seeds
        for loss in losses
        for margin in (margins if margins and loss in MARGIN_LOSS_NAMES else [None])
    ]


def _train_cell(
    task: Task,
    spec: RunSpec,
    settings,
    context: RunContext,
    until: UntilConverged | None,
    fingerprint: dict,
    own_folder: bool,
) -> RunRecord:
    """One cell, once or (with `until`) until its curve converges or the epochs reach the cap."""
    attempts, elapsed = [], 0.0
    current = settings
    while True:
        if own_folder:
            if context.run_dir.exists():
                shutil.rmtree(context.run_dir)  # a fresh folder: no checkpoint or prediction of an earlier attempt
            context.run_dir.mkdir(parents=True)
        started = time.perf_counter()
        record = task.run(spec, current, context)
        elapsed += time.perf_counter() - started
        criterion = until.criterion if until else DEFAULT_CRITERION
        found = run_convergence(record.curves, task.curve_key, record.extras.get("curve_segments"), criterion)
        epochs = task.epochs(current)
        attempts.append({"epochs": epochs, "converged": found.converged, "spread": found.spread})
        if until is None or found.converged or epochs >= until.max_epochs:
            break
        grown = task.with_epochs(current, min(until.max_epochs, epochs * until.growth))
        if task.epochs(grown) <= epochs:
            break  # the task cannot train longer in steps this small
        current = grown
    record.fingerprint = fingerprint
    record.attempts = attempts
    record.wall_time_s = elapsed
    record.hf_hem_version = __version__
    return record


def run_plan(
    task: Task,
    settings,
    plan: Sequence[RunSpec],
    output_dir: str | Path,
    locate: Callable[[RunSpec], tuple[Path | None, Path]],
    *,
    progress: bool = True,
    rerun: bool = False,
    options: dict | None = None,
    until_converged: UntilConverged | None = None,
    num_threads: int | None = None,
    description: str | None = None,
) -> tuple[list[RunRecord], int]:
    """Run (or read back) every cell of `plan`; returns the records in plan order and how many were read back.

    Args:
        task ([`~hf_hem.experiments.task.Task`]): The task.
        settings: The task's settings.
        plan (`Sequence[RunSpec]`): The cells (see [`plan_runs`]).
        output_dir (`str` or `Path`): The experiment's folder (`RunContext.output_dir`).
        locate (`Callable[[RunSpec], tuple[Path | None, Path]]`): `(run folder, record file)` of a cell; the front
            door chooses its layout (compare: one folder per run with `run_record.json` in it; benchmark: no run
            folder (`None`: `RunContext.run_dir` is `output_dir`) and `runs/<loss>_seed<k>.json`). A run folder is
            emptied before each training, so nothing of an earlier attempt survives in it.
        progress (`bool`, defaults to `True`): A progress bar over the plan (and the task's own bars).
        rerun (`bool`, defaults to `False`): Run every cell, even when a finished record matches.
        options (`dict`, *optional*): `RunContext.options` for the task.
        until_converged ([`UntilConverged`], *optional*): Continue unconverged runs with more epochs.
        num_threads (`int`, *optional*): PyTorch CPU threads while the plan runs (restored afterwards).
        description (`str`, *optional*): The progress bar's title (defaults to the task's name).
    """
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = dict(task.fingerprint(settings))
    if until_converged is not None:
        fingerprint["until_converged"] = until_converged.fingerprint()
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    records, reused = [], 0
    try:
        with tqdm(plan, desc=description or task.name, unit="run", disable=not progress, dynamic_ncols=True) as bar:
            for spec in bar:
                run_dir, record_file = locate(spec)
                own_folder = run_dir is not None
                context = RunContext(
                    output_dir, Path(run_dir) if own_folder else output_dir, progress, dict(options or {})
                )
                record = None if rerun else load_record(record_file, fingerprint)
                bar.set_postfix_str(f"{spec.label} seed {spec.seed}" + (" (reused)" if record else ""))
                if record is not None:
                    record = task.restore(record, settings, context)
                    reused += 1
                else:
                    record = _train_cell(task, spec, settings, context, until_converged, fingerprint, own_folder)
                    Path(record_file).parent.mkdir(parents=True, exist_ok=True)
                    record.save(record_file)
                records.append(record)
    finally:
        torch.set_num_threads(previous_threads)
    return records, reused
