"""Segmentation plots: validation images with their ground truth and every run's predicted masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.patches import Patch

from ..records import RunRecord
from .palette import new_canvas


__all__ = ["plot_segmentation_masks"]


def _class_colors(num_classes: int) -> np.ndarray:
    """`(num_classes + 1, 3)` uint8 colours: a qualitative palette per class, and dark grey last (ignored pixels)."""
    palette = colormaps["tab20"].colors
    colors = np.asarray([palette[(2 * index) % 20 + (2 * index // 20) % 2] for index in range(num_classes)])
    return np.rint(np.vstack([colors, [0.25, 0.25, 0.25]]) * 255).astype(np.uint8)


def _colorize(label_map: np.ndarray, colors: np.ndarray) -> np.ndarray:
    num_classes = len(colors) - 1
    ids = np.where((label_map >= 0) & (label_map < num_classes), label_map, num_classes)
    return colors[ids]


def plot_segmentation_masks(records: Sequence[RunRecord], path: Path) -> Path:
    """A grid: one row per validation example, columns image, ground truth, then each record's predicted mask."""
    first = records[0].arrays
    images, labels = first["images"], first["labels"]
    class_names = [str(name) for name in first.get("class_names", [])]
    colors = _class_colors(max(len(class_names), int(labels[labels != 255].max(initial=0)) + 1))
    columns = 2 + len(records)
    figure = new_canvas(2.0 * columns, 2.0 * len(images) + 0.6)
    axes = figure.subplots(len(images), columns, squeeze=False)
    titles = ["image", "ground truth", *(record.label for record in records)]
    for row, (image, label) in enumerate(zip(images, labels)):
        panels = [image, _colorize(label, colors)]
        for record in records:
            prediction = record.arrays["predictions"][row]
            panel = _colorize(prediction, colors)
            panel[label == 255] = (panel[label == 255] * 0.35).astype(np.uint8)  # not scored: dimmed
            panels.append(panel)
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(panel, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=10)
    present = sorted(
        {int(v) for v in np.unique(labels) if v != 255}
        | {int(v) for r in records for v in np.unique(r.arrays["predictions"])}
    )
    handles = [
        Patch(color=colors[index] / 255, label=class_names[index] if index < len(class_names) else str(index))
        for index in present[:20]
    ]
    handles.append(Patch(color=colors[-1] / 255, label="ignored"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize="small")
    figure.suptitle("Validation images: ground truth and predicted masks (dimmed: ignored pixels, not scored)")
    figure.savefig(path, dpi=100)
    return path
