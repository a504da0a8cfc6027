"""The task contract of the experiments layer: what `hf-hem compare` and `hf-hem benchmark` need to know about a task.

A task turns one cell of a plan ([`~hf_hem.experiments.records.RunSpec`]: a loss, a seed, and a margin in a margin
sweep) into one [`~hf_hem.experiments.records.RunRecord`]: its metrics, its learning curves, the fingerprint of the
settings it ran with, and the arrays its plots draw. Everything else is shared: the runner (plan, resume by
fingerprint, training until converged), the summary (mean ± std, Welch's t-test against the baseline, convergence)
and the report. A task declares:

* `name`, `title`, `default_losses`, `baseline` and `metrics` (the headline metrics in table order, each with its
  direction);
* `curve_key`: the learning curve judged for convergence, and how to change the epochs (`epochs` / `with_epochs`)
  so that the runner can continue an unconverged run with more of them;
* `fingerprint(settings)`: the settings that change its numbers; a finished run with the same fingerprint is read
  back instead of being rerun;
* `run`, `plots` and `sections` (its own tables and prose), both given the [`~hf_hem.experiments.summary.Summary`].

Each task owns its settings type: the compare tasks take the flags of their pipeline script
([`~hf_hem.experiments.tasks.ScriptSettings`]), the benchmark-suite tasks a `BenchmarkSettings`. Adding a task is
one module with a subclass of [`Task`] and one line in `hf_hem.experiments.tasks.TASKS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .records import RunRecord, RunSpec
    from .summary import Summary


__all__ = ["COMPARE", "BENCHMARK", "Metric", "Plot", "RunContext", "Task"]

#: The two front doors; a task names the one it belongs to (`Task.front_door`).
COMPARE, BENCHMARK = "compare", "benchmark"


@dataclass(frozen=True)
class Metric:
    """One metric of a task: its key in the run's `metrics`, its label in tables, its direction and its decimals.

    Attributes:
        key (`str`): The key in [`~hf_hem.experiments.records.RunRecord`]`.metrics` (or in its `curves`, for a panel
            of the learning-curve plot).
        label (`str`): The row or column title.
        higher_is_better (`bool`, defaults to `True`): Its direction; tables mark the best value and verdicts say
            "better" / "worse" by it.
        digits (`int`, defaults to 3): Decimals in tables.
    """

    key: str
    label: str
    higher_is_better: bool = True
    digits: int = 3

    @property
    def arrow(self) -> str:
        """`"↑"` when higher is better, else `"↓"`."""
        return "↑" if self.higher_is_better else "↓"


@dataclass(frozen=True)
class Plot:
    """One PNG a report shows.

    Attributes:
        path (`Path`): The written file (inside the report's folder; the report links it by its name).
        caption (`str`): Its caption and heading.
        section (`str`, defaults to `"plots"`): Where the report puts it: `"plots"` (the plots section), or
            `"curves"` / `"sweep"` for the learning-curve and margin-sweep plots, which have their own sections.
    """

    path: Path
    caption: str
    section: str = "plots"


@dataclass
class RunContext:
    """What the runner hands to [`Task.run`] besides the cell and the settings.

    Attributes:
        output_dir (`Path`): The folder of the whole experiment (its report, its records).
        run_dir (`Path`): This run's own folder (checkpoints, predictions); created by the runner.
        progress (`bool`, defaults to `True`): Whether the task may show progress bars.
        options (`dict`, *optional*): What a front door passes to its tasks beyond the settings (the benchmark's
            `train_fn` and `model_fn`, for instance); tasks read the keys they know and ignore the rest.
    """

    output_dir: Path
    run_dir: Path
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class of every experiment task; the shared runner, summary and report ask it what they need.

    Subclasses fill the class attributes and implement [`~Task.run`] and the settings hooks ([`~Task.fingerprint`],
    [`~Task.epochs`], [`~Task.with_epochs`], [`~Task.default_seeds`]); [`~Task.plots`], [`~Task.sections`] and
    [`~Task.restore`] are optional.

    Attributes:
        name (`str`): The `--task` value.
        aliases (`tuple[str, ...]`): Other `--task` spellings of the same task.
        front_door (`str`): `"compare"` or `"benchmark"`: the command that offers the task.
        title (`str`): A short title for reports.
        description (`str`): A paragraph for the top of its report (what is trained and measured).
        default_losses (`tuple[str, ...]`): The losses compared without `--losses`.
        baseline (`str`, defaults to `"ce"`): The loss every other is tested against (when it is among the losses).
        metrics (`tuple[Metric, ...]`): The headline metrics, in table order; the "in short" comparison and the
            verdicts use `summary_metrics`, which default to them.
        summary_metrics (`tuple[Metric, ...]`): The metrics of the comparison against the baseline; empty means
            `metrics`.
        curve_key (`str`): The logged metric whose learning curve decides whether a run converged.
        curve_label (`str`): How reports name that curve.
        curve_panels (`tuple[Metric, ...]`): The panels of the learning-curve plot (keys of the records' `curves`);
            a key no run has is left out.
        sweep_metrics (`tuple[Metric, ...]`): The panels of the margin-sweep plot (`--margins`).
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    front_door: str = COMPARE
    title: str = ""
    description: str = ""
    default_losses: tuple[str, ...] = ("ce", "hem")
    baseline: str = "ce"
    metrics: tuple[Metric, ...] = ()
    summary_metrics: tuple[Metric, ...] = ()
    curve_key: str = "eval_loss"
    curve_label: str = "validation loss"
    curve_panels: tuple[Metric, ...] = (
        Metric("loss", "training loss", False),
        Metric("hem/violating_fraction", "violating fraction (training)", False),
    )
    sweep_metrics: tuple[Metric, ...] = ()

    # -- Settings ------------------------------------------------------------------------------------------------

    def default_seeds(self, settings) -> list[int]:
        """The seeds without `--seeds`."""
        return [0]

    def fingerprint(self, settings) -> dict:
        """The settings that change this task's numbers, JSON-able: a finished run is reused only when its recorded
        fingerprint equals this one (and its loss, seed and margin match)."""
        raise NotImplementedError

    def epochs(self, settings) -> float:
        """The training epochs `settings` asks for (what `--until_converged` multiplies)."""
        raise NotImplementedError

    def with_epochs(self, settings, epochs: float):
        """A copy of `settings` that trains for `epochs` epochs; `settings` itself is left unchanged."""
        raise NotImplementedError

    # -- Running -------------------------------------------------------------------------------------------------

    def run(self, spec: RunSpec, settings, context: RunContext) -> RunRecord:
        """Train and evaluate one cell of the plan. The record's `fingerprint` must be `self.fingerprint(settings)`;
        its `arrays` hold what [`~Task.plots`] draws (they are not written to the record's JSON)."""
        raise NotImplementedError

    def restore(self, record: RunRecord, settings, context: RunContext) -> RunRecord:
        """A finished run read back from its JSON (resume): put back the arrays the plots need, e.g. from the files
        the run left in `context.run_dir`. The default returns the record as it is."""
        return record

    # -- Reporting -----------------------------------------------------------------------------------------------

    def describe(self, records: Sequence[RunRecord], settings) -> dict:
        """Facts about what was compared, JSON-able (data, model, classes), for the report's header."""
        return {}

    def plots(self, summary: Summary, records: Sequence[RunRecord], output_dir: Path, settings) -> list[Plot]:
        """Write the task's own PNGs into `output_dir` from the summary and every record (all seeds; the arrays of
        the records are there); return them in report order. The learning curves and the margin sweep are drawn by
        the shared report."""
        return []

    def sections(self, summary: Summary, records: Sequence[RunRecord], settings) -> list[str]:
        """The task's own markdown (extra tables, prose) after the headline results; `[]` for none."""
        return []

    # -- Helpers -------------------------------------------------------------------------------------------------

    @property
    def verdict_metrics(self) -> tuple[Metric, ...]:
        """`summary_metrics`, or `metrics` when the task names none."""
        return self.summary_metrics or self.metrics

    def metric(self, key: str) -> Metric:
        """The [`Metric`] of `key` among the task's metrics and panels; an unknown key gets a neutral label."""
        for metric in (*self.metrics, *self.summary_metrics, *self.curve_panels, *self.sweep_metrics):
            if metric.key == key:
                return metric
        return Metric(key, key)
