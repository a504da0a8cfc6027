"""Plots of curves: learning curves (mean over seeds, band ± one std) and metrics against the margin of a sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..records import RunRecord
from ..stats import mean_std
from ..task import Metric
from .palette import PALETTE, color, new_canvas, new_figure


__all__ = ["mean_curve", "plot_learning_curves", "plot_margin_sweep"]


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
    shown = [
        (key, label)
        for key, label in metrics
        if any(key in curves for runs in curves_by_loss.values() for curves in runs)
    ]
    if not shown:
        return None
    figure = new_canvas(4.2 * len(shown), 3.6)
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    for axis, (key, label) in zip(axes, shown):
        for line_color, (loss, runs) in zip(PALETTE, curves_by_loss.items()):
            epochs, mean, std = mean_curve([curves[key] for curves in runs if key in curves])
            if not epochs.size:
                continue
            axis.plot(epochs, mean, color=line_color, label=loss, linewidth=1.5)
            if np.isfinite(std).any():
                axis.fill_between(epochs, mean - std, mean + std, color=line_color, alpha=0.2, linewidth=0)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path


def plot_margin_sweep(
    records: Sequence[RunRecord], path: str | Path, metrics: Sequence[Metric], rule_samples: float | None = None
) -> Path | None:
    """Metrics against the margin of a sweep: one line per swept loss, mean ± std over seeds (log-scaled margin axis);
    every run without a swept margin is a horizontal reference line (mean, band ± std).

    Args:
        records (`Sequence[RunRecord]`): Every run of the sweep, all seeds.
        path (`str` or `Path`): PNG to write.
        metrics (`Sequence[Metric]`): One panel each; one that no run has is left out.
        rule_samples (`float`, *optional*): Training samples S; marks the paper's rule sqrt(2000 / S).

    Returns:
        `Path` or `None`: `path`, or `None` when no run has a swept margin.
    """
    swept = [record for record in records if record.margin is not None]
    metrics = [metric for metric in metrics if any(metric.key in record.metrics for record in records)]
    if not swept or not metrics:
        return None
    figure, axes = new_figure(len(metrics), width=4.4, height=3.6)
    color_index = 0
    for loss in dict.fromkeys(record.loss for record in swept):
        line_color = color(color_index)
        color_index += 1
        margins = sorted({record.margin for record in swept if record.loss == loss})
        for axis, metric in zip(axes, metrics):
            stats = [
                mean_std(
                    [r.metrics.get(metric.key) for r in swept if r.loss == loss and r.margin == margin],
                    omit_nonfinite=True,
                )
                for margin in margins
            ]
            means = np.array([mean for mean, _ in stats])
            stds = np.nan_to_num(np.array([std for _, std in stats]))
            axis.errorbar(margins, means, yerr=stds, marker="o", capsize=3, color=line_color, label=loss)
    references: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.margin is None:
            references.setdefault(record.label, []).append(record)
    for reference, group in references.items():
        line_color = color(color_index)
        color_index += 1
        for axis, metric in zip(axes, metrics):
            mean, std = mean_std([record.metrics.get(metric.key) for record in group], omit_nonfinite=True)
            if math.isfinite(mean):
                axis.axhline(mean, color=line_color, linestyle="--", linewidth=1.2, label=reference)
                if math.isfinite(std):
                    axis.axhspan(mean - std, mean + std, color=line_color, alpha=0.12, linewidth=0)
    for axis, metric in zip(axes, metrics):
        if rule_samples:
            axis.axvline(
                math.sqrt(2000 / rule_samples), color="#555555", linestyle=":", linewidth=1, label="rule √(2000/S)"
            )
        axis.set_xscale("log")
        axis.set_xlabel("margin μ")
        axis.set_ylabel(metric.label)
        axis.set_title(f"{metric.label} ({metric.arrow} better)")
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    figure.suptitle("Margin sweep (mean ± std over seeds)")
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path
