"""One summary of an experiment: mean ± std per run label and metric, Welch's t-test against the baseline, and the
convergence of every run; the verdict and ranking lines of the reports are written from it.

A verdict never ranks unconverged runs silently: a label any of whose runs did not converge carries the count in
the verdict line itself ([`Summary.display`]: `"hem (unconverged 1/3)"`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .convergence import DEFAULT_CRITERION, Convergence, ConvergenceCriterion, convergence_cell, run_convergence
from .records import RunRecord
from .stats import format_p_value, summarize
from .task import Metric, Task


__all__ = ["Summary", "summarize_records"]


@dataclass
class Summary:
    """Statistics of every run label of one experiment.

    Attributes:
        task (`str`): The task's name.
        labels (`list[str]`): Run labels ([`~hf_hem.experiments.records.RunSpec.label`]) in the order first run.
        seeds (`list[int]`): The seeds, sorted.
        baseline (`str`, *optional*): The label tested against; `None` when the task's baseline was not run.
        stats (`dict`): `stats[label][metric] = {"mean", "std", "n", "values", "p_value", "note"}` (see
            `hf_hem.experiments.stats.summarize`); non-finite per-seed values are left out.
        convergence (`dict[str, list[Convergence]]`): Per label, the convergence of each run on the task's
            `curve_key` (in record order).
        curve_key (`str`): The curve that was judged.
        criterion ([`~hf_hem.experiments.convergence.ConvergenceCriterion`]): How.
    """

    task: str
    labels: list[str]
    seeds: list[int]
    baseline: str | None
    stats: dict
    convergence: dict[str, list[Convergence]] = field(default_factory=dict)
    curve_key: str = ""
    criterion: ConvergenceCriterion = DEFAULT_CRITERION

    def mean_std(self, label: str, key: str) -> tuple[float, float] | None:
        """`(mean, std)` over seeds of metric `key` of `label`, or `None` when no run of it has a finite value."""
        entry = self.stats.get(label, {}).get(key)
        if entry is None or not entry["n"]:
            return None
        return entry["mean"], entry["std"]

    def unconverged(self, label: str) -> tuple[int, int]:
        """`(runs that did not converge, runs decided)` of `label`; undecided runs (too short a curve) count in
        neither."""
        decided = [result for result in self.convergence.get(label, []) if result.converged is not None]
        return sum(not result.converged for result in decided), len(decided)

    def undecided(self, label: str) -> int:
        """Runs of `label` whose curve was too short to judge (or absent)."""
        return sum(result.converged is None for result in self.convergence.get(label, []))

    def converged(self, label: str) -> bool:
        """Whether every run of `label` was judged and converged."""
        failed, decided = self.unconverged(label)
        return decided > 0 and failed == 0 and self.undecided(label) == 0

    def display(self, label: str) -> str:
        """`label` as verdicts and rankings name it: `"hem (unconverged 1/3)"` when 1 of its 3 runs did not
        converge, `"hem (convergence undecided 2/2)"` when runs could not be judged (too few evaluations)."""
        failed, _ = self.unconverged(label)
        undecided, total = self.undecided(label), len(self.convergence.get(label, []))
        notes = []
        if failed:
            notes.append(f"unconverged {failed}/{total}")
        if undecided:
            notes.append(f"convergence undecided {undecided}/{total}")
        return f"{label} ({', '.join(notes)})" if notes else label

    def convergence_cell(self, label: str) -> str:
        """The table cell of `label`'s convergence: `"yes (3/3; spread ≤ 0.0040)"`, `"no (1/3; ...)"` or `"n/a"`."""
        return convergence_cell(self.convergence.get(label, []))

    @property
    def unconverged_labels(self) -> list[str]:
        """The labels with at least one run that did not converge."""
        return [label for label in self.labels if self.unconverged(label)[0]]

    @property
    def unjudged_labels(self) -> list[str]:
        """The labels not known to have converged in every run: unconverged or undecided runs."""
        return [label for label in self.labels if self.unconverged(label)[0] or self.undecided(label)]

    def smoke_line(self) -> str | None:
        """The first line of a report in which some run did not converge or could not be judged (naming them), else
        `None`."""
        labels = self.unjudged_labels
        if not labels:
            return None
        return (
            "> **Smoke run, not a verdict**: not every run converged ("
            + ", ".join(f"`{self.display(label)}`" for label in labels)
            + "); the numbers below compare unfinished training. Train longer (`--until_converged`, more epochs) "
            "before reading a difference between losses from them."
        )

    def ranking(self, metric: Metric) -> str:
        """The labels ordered best first by the mean of `metric`, each as [`display`] names it:
        `"ce > hem (unconverged 1/3)"`; labels without a value are left out."""
        means = {label: self.mean_std(label, metric.key) for label in self.labels}
        ordered = sorted(
            (label for label, value in means.items() if value is not None and math.isfinite(value[0])),
            key=lambda label: means[label][0],
            reverse=metric.higher_is_better,
        )
        return " > ".join(f"`{self.display(label)}`" for label in ordered)

    def verdicts(self, metrics: Sequence[Metric], alpha: float = 0.05) -> list[str]:
        """One line per non-baseline label: on which `metrics` it is better / worse than the baseline (Welch,
        p < `alpha`) or not clearly different; every label named as [`display`] names it."""
        if self.baseline is None:
            return []
        lines = []
        for label in self.labels:
            if label == self.baseline:
                continue
            better, worse, unclear = [], [], []
            for metric in metrics:
                entry, reference = self.stats[label].get(metric.key), self.stats[self.baseline].get(metric.key)
                if entry is None or reference is None or not entry["n"] or not reference["n"]:
                    continue
                difference = entry["mean"] - reference["mean"]
                text = f"{metric.label} ({difference:+.3f}, {format_p_value(entry['p_value'])})"
                significant = not math.isnan(entry["p_value"]) and entry["p_value"] < alpha
                signed = difference if metric.higher_is_better else -difference
                (better if significant and signed > 0 else worse if significant and signed < 0 else unclear).append(
                    text
                )
            lines.append(
                f"* **{self.display(label)} vs {self.display(self.baseline)}** — better (p < {alpha}): "
                f"{', '.join(better) or 'none'}; worse (p < {alpha}): {', '.join(worse) or 'none'}; no clear "
                f"difference: {', '.join(unclear) or 'none'}."
            )
        return lines

    def convergence_json(self) -> dict:
        """The `convergence` entry of `results.json` / `compare_results.json`."""
        return {
            "criterion": {**dataclasses.asdict(self.criterion), "metric": self.curve_key},
            "losses": {label: [result._asdict() for result in found] for label, found in self.convergence.items()},
        }


def _per_seed_values(records: Sequence[RunRecord], labels: Sequence[str]) -> dict:
    values: dict = {label: {} for label in labels}
    for record in records:
        for key, value in record.metrics.items():
            bucket = values[record.label].setdefault(key, [])
            if value is not None and math.isfinite(value):
                bucket.append(float(value))
    return values


def summarize_records(
    task: Task,
    records: Sequence[RunRecord],
    baseline: str | None,
    criterion: ConvergenceCriterion = DEFAULT_CRITERION,
) -> Summary:
    """The [`Summary`] of `records` (one task): statistics per label and metric, and each run's convergence on the
    task's `curve_key` (chained trainings such as continual learning give `extras["curve_segments"]`, and each
    segment must converge).

    Args:
        task ([`~hf_hem.experiments.task.Task`]): The task of the records.
        records (`Sequence[RunRecord]`): Every run, all seeds.
        baseline (`str`, *optional*): The label every other is tested against (usually `task.baseline`); `None`,
            or a label that was not run: no tests.
        criterion (`ConvergenceCriterion`, *optional*): The convergence criterion.
    """
    if not records:
        raise ValueError("summarize_records needs at least one run record.")
    labels = list(dict.fromkeys(record.label for record in records))
    baseline = baseline if baseline in labels else None
    stats = summarize(_per_seed_values(records, labels), baseline=baseline)
    convergence = {
        label: [
            run_convergence(record.curves, task.curve_key, record.extras.get("curve_segments"), criterion)
            for record in records
            if record.label == label
        ]
        for label in labels
    }
    seeds = sorted({record.seed for record in records})
    return Summary(task.name, labels, seeds, baseline, stats, convergence, task.curve_key, criterion)
