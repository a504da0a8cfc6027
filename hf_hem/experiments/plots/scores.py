"""Score plots of classifiers: score histograms of known vs unknown images, ROC of the rejection, reliability."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from ...metrics import expected_calibration_error, max_logit_score, msp_score, reliability_diagram_bins, softmax
from ..records import RunRecord
from .palette import KNOWN_COLOR, OOD_COLOR, PALETTE, UNKNOWN_COLOR, new_figure


__all__ = ["plot_reliability", "plot_roc", "plot_score_histograms"]


def _scores(record: RunRecord, kind: str) -> dict[str, np.ndarray]:
    score = msp_score if kind == "msp" else max_logit_score
    out = {"known": score(record.arrays["eval_logits"])}
    for key, label in (("unknown_logits", "unknown"), ("ood_logits", "OOD")):
        if key in record.arrays and len(record.arrays[key]):
            out[label] = score(record.arrays[key])
    return out


def plot_score_histograms(records: Sequence[RunRecord], path: Path, kind: str = "msp") -> Path:
    """Histograms of the MSP (`kind="msp"`) or max-logit (`"mls"`) score, known vs unknown images, one panel per record.

    Args:
        records (`list[RunRecord]`): One record per loss.
        path (`Path`): PNG to write.
        kind (`str`, *optional*, defaults to `"msp"`): `"msp"` or `"mls"`.

    Returns:
        `Path`: `path`.
    """
    title = "max softmax probability" if kind == "msp" else "max logit"
    figure, axes = new_figure(len(records))
    colors = {"known": KNOWN_COLOR, "unknown": UNKNOWN_COLOR, "OOD": OOD_COLOR}
    for axis, record in zip(axes, records):
        scores = _scores(record, kind)
        low = min(float(values.min()) for values in scores.values())
        high = max(float(values.max()) for values in scores.values())
        bins = np.linspace(low, high if high > low else low + 1e-6, 31)
        for label, values in scores.items():
            axis.hist(
                values, bins=bins, density=True, alpha=0.55, color=colors[label], label=f"{label} ({len(values)})"
            )
        auroc = record.metrics.get(f"eval_rejection_auroc_{kind}")
        axis.set_title(f"{record.label}" + (f" — AUROC {auroc:.3f}" if auroc is not None else ""))
        axis.set_xlabel(title)
        axis.set_ylabel("density")
        axis.legend(fontsize="small")
    figure.suptitle(f"Known vs unknown images: {title}")
    figure.savefig(path, dpi=110)
    return path


def plot_roc(records: Sequence[RunRecord], path: Path) -> Path:
    """ROC curves of rejecting unknown images by MSP (solid) and max logit (dashed), one colour per record."""
    figure, (axis,) = new_figure(1, width=4.8, height=4.2)
    for color, record in zip(PALETTE, records):
        for kind, style in (("msp", "-"), ("mls", "--")):
            scores = _scores(record, kind)
            if "unknown" not in scores:
                continue
            truth = np.r_[np.ones(len(scores["known"])), np.zeros(len(scores["unknown"]))]
            false_positive, true_positive, _ = roc_curve(truth, np.r_[scores["known"], scores["unknown"]])
            auroc = record.metrics.get(f"eval_rejection_auroc_{kind}", float("nan"))
            axis.plot(false_positive, true_positive, style, color=color, label=f"{record.label} {kind} ({auroc:.3f})")
    axis.plot([0, 1], [0, 1], ":", color="#999999", linewidth=1)
    axis.set_xlabel("unknown images accepted (FPR)")
    axis.set_ylabel("known images accepted (TPR)")
    axis.set_title("Rejecting unknown classes")
    axis.legend(fontsize="small", loc="lower right")
    figure.savefig(path, dpi=110)
    return path


def plot_reliability(records: Sequence[RunRecord], path: Path, n_bins: int = 10) -> Path:
    """Reliability diagrams (accuracy against confidence per bin) of the known validation images, one panel per record."""
    figure, axes = new_figure(len(records), width=3.6, height=3.6)
    for axis, color, record in zip(axes, PALETTE, records):
        probabilities = softmax(record.arrays["eval_logits"])
        labels = record.arrays["eval_labels"]
        bins = reliability_diagram_bins(probabilities, labels, n_bins=n_bins)
        edges = bins["bin_edges"]
        filled = bins["count"] > 0
        centers = (edges[:-1] + edges[1:]) / 2
        axis.bar(centers[filled], bins["accuracy"][filled], width=1.0 / n_bins, color=color, edgecolor="white")
        # Near-perfect models put almost every image in the last bin; the counts show how much each bar weighs.
        for center, height, count in zip(centers[filled], bins["accuracy"][filled], bins["count"][filled]):
            axis.annotate(
                str(int(count)), (center, height), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
            )
        axis.plot([0, 1], [0, 1], ":", color="#555555", linewidth=1)
        ece = expected_calibration_error(probabilities, labels, n_bins=15)
        axis.set_title(f"{record.label} — ECE {ece:.3f}")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.08)
        axis.set_xlabel("confidence (max softmax)")
        axis.set_ylabel("accuracy")
    figure.suptitle("Reliability on known classes (numbers: images per bin)")
    figure.savefig(path, dpi=110)
    return path
