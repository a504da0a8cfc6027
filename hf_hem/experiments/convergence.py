"""The convergence check of every experiment report: has a run's learning curve levelled off?

A comparison of two losses says something about the losses only when both runs have converged: a run stopped while
its metric still climbs compares schedules, not losses. Every run records its metrics per evaluation (a learning
curve, see `hf_hem.experiments.curves`), and every report states, per loss, whether the curve of its task metric had
levelled off by the end of training, by the criterion of [`ConvergenceCriterion`]. With `--until_converged` the runner
continues an unconverged run with more epochs (see `hf_hem.experiments.runner`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


__all__ = [
    "DEFAULT_CRITERION",
    "Convergence",
    "ConvergenceCriterion",
    "check_convergence",
    "convergence_cell",
    "run_convergence",
]


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
