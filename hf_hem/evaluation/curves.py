"""Learning curves and a convergence check, shared by `hf-hem compare` and `hf-hem benchmark`.

A comparison of two losses says something about the losses only when both runs have converged: a run stopped while
its metric still climbs compares schedules, not losses. Every run therefore records its metrics per evaluation (a
*learning curve*) and every report states, per loss, whether the curve of its task metric had levelled off by the
end of training, by the criterion of [`ConvergenceCriterion`].

A curve is a JSON-friendly dict `{"epoch": [...], "value": [...]}`; the curves of one run are a dict from the metric
name to its curve (e.g. `"loss"`, `"hem/violating_fraction"`, `"eval_mean_iou"`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np


__all__ = [
    "DEFAULT_CRITERION",
    "Convergence",
    "ConvergenceCriterion",
    "check_convergence",
    "convergence_cell",
    "curves_from_history",
    "curves_from_log_history",
    "mean_curve",
    "plot_learning_curves",
    "read_trainer_curves",
    "run_convergence",
]

# Entries of an evaluation log that are bookkeeping, not metrics of the model.
_EVAL_BOOKKEEPING = ("_runtime", "_samples_per_second", "_steps_per_second", "_samples")
_TRAIN_KEYS = ("loss", "hem/violating_fraction", "learning_rate")
_PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974")


@dataclass(frozen=True)
class ConvergenceCriterion:
    """When a learning curve counts as converged: its last evaluations lie within `tolerance` of each other.

    The window is the last `window_fraction` of the evaluations, and at least `min_evaluations` of them; the run
    converged when `max - min` of the metric over the window is at most `tolerance`. A curve that still climbs (or
    still swings) over the last quarter of training fails; a plateau passes. Fewer than `min_evaluations`
    evaluations leave the question open (`converged=None`).

    A flat end can also come from a learning rate annealed to zero while the model is still far from its optimum;
    the criterion cannot tell the two apart. The 1.5x-epochs check of the docs (rerun with more epochs, compare the
    final metrics) is the test that can.

    Attributes:
        tolerance (`float`, defaults to 0.01): Largest spread of the metric over the window (absolute, in the metric's
            units: 0.01 is one point of accuracy or mIoU).
        window_fraction (`float`, defaults to 0.25): Share of the evaluations, counted from the end, in the window.
        min_evaluations (`int`, defaults to 3): Smallest window.
    """

    tolerance: float = 0.01
    window_fraction: float = 0.25
    min_evaluations: int = 3

    def __post_init__(self):
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance!r}.")
        if not 0 < self.window_fraction <= 1:
            raise ValueError(f"window_fraction must be in (0, 1], got {self.window_fraction!r}.")
        if not isinstance(self.min_evaluations, int) or self.min_evaluations < 2:
            raise ValueError(f"min_evaluations must be an integer >= 2, got {self.min_evaluations!r}.")

    def window(self, num_evaluations: int) -> int:
        """How many of `num_evaluations` evaluations, counted from the end, the check looks at."""
        return max(self.min_evaluations, math.ceil(self.window_fraction * num_evaluations))

    def describe(self, metric_label: str = "the task metric") -> str:
        """The criterion in one sentence, for reports."""
        return (
            f"a run has converged when {metric_label} varies by at most {self.tolerance:g} (max − min) over its last "
            f"{self.window_fraction:.0%} of evaluations (at least {self.min_evaluations})"
        )


#: The criterion of every report unless one is passed.
DEFAULT_CRITERION = ConvergenceCriterion()


class Convergence(NamedTuple):
    """What [`check_convergence`] found."""

    converged: bool | None
    """`True` / `False`, or `None` when the curve has fewer evaluations than the criterion needs."""
    spread: float
    """`max - min` of the metric over the window (NaN when undecided)."""
    window: int
    """Evaluations in the window."""


def check_convergence(values: Sequence[float], criterion: ConvergenceCriterion = DEFAULT_CRITERION) -> Convergence:
    """Whether a learning curve (the metric at each evaluation, in order) has levelled off by `criterion`.

    Non-finite values count as not converged when they fall in the window: a metric that became NaN has not settled.

    Example:

    ```python
    >>> check_convergence([0.2, 0.5, 0.7, 0.80, 0.805, 0.80, 0.803]).converged
    True
    >>> check_convergence([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).converged
    False
    ```
    """
    array = np.asarray(list(values), dtype=np.float64).reshape(-1)
    window = criterion.window(array.size)
    if array.size < criterion.min_evaluations:
        return Convergence(None, float("nan"), min(window, array.size))
    window = min(window, array.size)
    tail = array[-window:]
    if not np.all(np.isfinite(tail)):
        return Convergence(False, float("nan"), window)
    spread = float(tail.max() - tail.min())
    # A hair of slack: a spread equal to the tolerance passes, whatever the float rounding of the difference.
    return Convergence(spread <= criterion.tolerance + 1e-12, spread, window)


def convergence_cell(results: Sequence[Convergence]) -> str:
    """A table cell for one loss over its seeds: `"yes (3/3; spread ≤ 0.0040)"` (all converged), `"no (1/3; ...)"`
    or `"n/a"` (no seed decided); the spread is the largest over seeds."""
    decided = [result for result in results if result.converged is not None]
    if not decided:
        return "n/a"
    passed = sum(bool(result.converged) for result in decided)
    verdict = "yes" if passed == len(decided) else "no"
    spreads = [result.spread for result in decided if math.isfinite(result.spread)]
    spread = f"; spread ≤ {max(spreads):.4f}" if spreads else ""
    return f"{verdict} ({passed}/{len(decided)}{spread})"


def curves_from_log_history(log_history: Sequence[Mapping]) -> dict[str, dict[str, list[float]]]:
    """The learning curves in a Trainer's `state.log_history` (`trainer_state.json`).

    Training logs give `loss`, `hem/violating_fraction` (margin losses) and `learning_rate`; evaluation logs give
    every `eval_*` metric (their runtime and throughput entries left out). The Trainer's final summary
    (`train_runtime`, `train_loss`) is no point of a curve and is skipped.

    Returns:
        `dict[str, dict[str, list[float]]]`: `curves[metric] = {"epoch": [...], "value": [...]}`, in log order.
    """
    curves: dict[str, dict[str, list[float]]] = {}

    def add(key, epoch, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        curve = curves.setdefault(key, {"epoch": [], "value": []})
        curve["epoch"].append(float(epoch))
        curve["value"].append(float(value))

    for entry in log_history:
        epoch = entry.get("epoch")
        if epoch is None or "train_runtime" in entry:
            continue
        if any(key.startswith("eval_") for key in entry):
            for key, value in entry.items():
                if key.startswith("eval_") and not key.endswith(_EVAL_BOOKKEEPING):
                    add(key, epoch, value)
        else:
            for key in _TRAIN_KEYS:
                if key in entry:
                    add(key, epoch, entry[key])
    return curves


def curves_from_history(history: Sequence[Mapping], epoch_offset: float = 0) -> dict[str, dict[str, list[float]]]:
    """The learning curves in the per-epoch `history` of [`~hf_hem.evaluation.train_model`]: one curve per key
    besides `epoch`, epochs shifted by `epoch_offset` (to chain several trainings, e.g. the tasks of continual
    learning). Entries without a key leave a gap in that key's curve only."""
    curves: dict[str, dict[str, list[float]]] = {}
    for entry in history:
        epoch = float(entry["epoch"]) + epoch_offset
        for key, value in entry.items():
            if key == "epoch" or value is None or isinstance(value, bool):
                continue
            curve = curves.setdefault(key, {"epoch": [], "value": []})
            curve["epoch"].append(epoch)
            curve["value"].append(float(value))
    return curves


def run_convergence(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    key: str,
    segments: Sequence[Sequence[int]] | None = None,
    criterion: ConvergenceCriterion = DEFAULT_CRITERION,
) -> Convergence:
    """[`check_convergence`] of one run's curve `key`; with `segments` (`[start, stop)` index ranges of separate
    trainings, as in continual learning) every segment must converge, and the spread is the largest.

    A run without the curve is undecided (`converged=None`).
    """
    curve = curves.get(key) if curves else None
    if not curve:
        return Convergence(None, float("nan"), 0)
    values = [float("nan") if value is None else value for value in curve["value"]]
    if not segments:
        return check_convergence(values, criterion)
    results = [check_convergence(values[start:stop], criterion) for start, stop in segments]
    if any(result.converged is None for result in results):
        return Convergence(None, float("nan"), min(result.window for result in results))
    spreads = [result.spread for result in results]
    return Convergence(
        all(result.converged for result in results),
        float("nan") if any(math.isnan(spread) for spread in spreads) else max(spreads),
        min(result.window for result in results),
    )


def read_trainer_curves(output_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """[`curves_from_log_history`] of the `trainer_state.json` in `output_dir`; `{}` when there is none."""
    import json

    path = Path(output_dir) / "trainer_state.json"
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return curves_from_log_history(state.get("log_history", []))


def mean_curve(curves: Sequence[Mapping[str, Sequence[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sample std (`ddof=1`) of several seeds' curves of one metric, on the epochs of the first.

    Seeds of one comparison evaluate at the same epochs; should they not, the others are interpolated linearly onto
    the first one's epochs. The std is NaN for one seed, as everywhere in the reports.

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: `(epochs, mean, std)`.
    """
    curves = [curve for curve in curves if len(curve["epoch"])]
    if not curves:
        empty = np.zeros(0)
        return empty, empty, empty
    epochs = np.asarray(curves[0]["epoch"], dtype=np.float64)
    rows = []
    for curve in curves:
        x, y = np.asarray(curve["epoch"], dtype=np.float64), np.asarray(curve["value"], dtype=np.float64)
        rows.append(y if x.shape == epochs.shape and np.allclose(x, epochs) else np.interp(epochs, x, y))
    stacked = np.vstack(rows)
    std = stacked.std(axis=0, ddof=1) if len(rows) > 1 else np.full(epochs.shape, np.nan)
    return epochs, stacked.mean(axis=0), std


def plot_learning_curves(
    curves_by_loss: Mapping[str, Sequence[Mapping[str, Mapping[str, Sequence[float]]]]],
    metrics: Sequence[tuple[str, str]],
    path: str | Path,
    title: str = "Learning curves (mean over seeds; band: ± one standard deviation)",
) -> Path | None:
    """One panel per metric, one line per loss (mean over seeds) with a band of ± one std over seeds.

    Args:
        curves_by_loss: `curves_by_loss[loss]` = the curves of each seed of that loss (see
            [`curves_from_log_history`]).
        metrics (`Sequence[tuple[str, str]]`): `(key, label)` of the panels, in order; a metric that no run has is
            left out.
        path (`str` or `Path`): PNG to write.
        title (`str`, *optional*): The figure's title.

    Returns:
        `Path` or `None`: `path`, or `None` (nothing written) when no run has any of the metrics.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [
        (key, label)
        for key, label in metrics
        if any(key in curves for runs in curves_by_loss.values() for curves in runs)
    ]
    if not shown:
        return None
    figure = Figure(figsize=(4.2 * len(shown), 3.6), layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot: no global backend state, no display needed
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    for axis, (key, label) in zip(axes, shown):
        for color, (loss, runs) in zip(_PALETTE, curves_by_loss.items()):
            epochs, mean, std = mean_curve([curves[key] for curves in runs if key in curves])
            if not epochs.size:
                continue
            axis.plot(epochs, mean, color=color, label=loss, linewidth=1.5)
            if np.isfinite(std).any():
                axis.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path
