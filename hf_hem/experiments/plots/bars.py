"""Bar plots of per-class results: one group of bars per class, one bar per run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...metrics import per_class_accuracy
from ..records import RunRecord
from .palette import PALETTE, new_figure


__all__ = ["grouped_bars", "plot_per_class_accuracy", "plot_per_class_iou"]


def grouped_bars(axis, records: Sequence[RunRecord], values: Sequence[Sequence[float]]) -> np.ndarray:
    """One group of bars per class, one bar per record in its palette colour; returns the group positions."""
    positions = np.arange(len(values[0]))
    width = 0.8 / len(records)
    for index, (color, record, heights) in enumerate(zip(PALETTE, records, values)):
        axis.bar(positions + (index - (len(records) - 1) / 2) * width, heights, width, color=color, label=record.label)
    return positions


def plot_per_class_accuracy(records: Sequence[RunRecord], path: Path) -> Path:
    """Grouped bars: validation accuracy of every known class, one bar per record."""
    class_names = [str(name) for name in records[0].arrays.get("class_names", [])]
    num_classes = len(class_names)
    figure, (axis,) = new_figure(1, width=max(5.0, 0.6 * num_classes * max(1, len(records)) / 2 + 2), height=3.4)
    accuracies = [
        per_class_accuracy(
            record.arrays["eval_logits"].argmax(1), record.arrays["eval_labels"], num_classes=num_classes
        )
        for record in records
    ]
    positions = grouped_bars(axis, records, accuracies)
    lowest = min([float(np.nanmin(accuracy)) for accuracy in accuracies if np.isfinite(accuracy).any()] + [1.0])
    axis.set_xticks(positions, class_names)
    axis.set_xlabel("class")
    axis.set_ylabel("accuracy")
    axis.set_ylim(max(0.0, lowest - 0.1), 1.0)
    axis.set_title("Per-class accuracy (validation, known classes)")
    axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path, dpi=110)
    return path


def plot_per_class_iou(records: Sequence[RunRecord], path: Path, max_classes: int = 30) -> Path:
    """Grouped bars of per-class IoU, one bar per record; the `max_classes` classes with most validation pixels."""
    class_names = [str(name) for name in records[0].arrays.get("class_names", [])]
    matrix = records[0].arrays.get("confusion_matrix")
    order = list(range(len(class_names)))
    if matrix is not None:
        order = [int(index) for index in np.argsort(-np.asarray(matrix).sum(axis=1), kind="stable")]
    order = order[:max_classes]
    shown = [class_names[index] for index in order]
    figure, (axis,) = new_figure(1, width=max(5.0, 0.45 * len(shown) * max(1, len(records)) / 2 + 2), height=3.6)
    per_class = [record.extras.get("per_class_iou") or {} for record in records]
    values = [[np.nan if iou.get(name) is None else float(iou[name]) for name in shown] for iou in per_class]
    positions = grouped_bars(axis, records, values)
    axis.set_xticks(
        positions, shown, rotation=45 if len(shown) > 10 else 0, ha="right" if len(shown) > 10 else "center"
    )
    axis.set_xlabel(
        "class" + (f" (the {len(shown)} with most validation pixels)" if len(class_names) > len(shown) else "")
    )
    axis.set_ylabel("IoU")
    axis.set_ylim(0.0, 1.0)
    axis.set_title("Per-class IoU (validation)")
    axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path, dpi=110)
    return path
