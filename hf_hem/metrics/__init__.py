"""Metrics for HEM experiments: plain NumPy functions, plus local `evaluate` modules that wrap them.

Importing this package does not import `evaluate` (slow to import and optional); [`load_metric`] does.
"""

from pathlib import Path

from .classification import (
    accuracy,
    balanced_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    reliability_diagram_bins,
    shot_group_accuracy,
    softmax,
)
from .ood import aupr, auroc, energy_score, fpr_at_tpr, max_logit_score, msp_score, rejection_metrics
from .segmentation import StreamingConfusionMatrix, confusion_matrix_metrics


EVALUATE_MODULES_DIR = Path(__file__).parent / "evaluate_modules"


def available_metrics() -> list[str]:
    """Names of the bundled `evaluate` modules, for [`load_metric`]."""
    return sorted(path.parent.name for path in EVALUATE_MODULES_DIR.glob("*/*.py") if path.stem == path.parent.name)


def load_metric(name: str, **kwargs):
    """Loads a bundled `evaluate` module by path, so it works offline and without the Hugging Face Hub.

    Args:
        name (`str`): One of [`available_metrics`], e.g. `"hem_mean_iou"`.
        kwargs: Passed to `evaluate.load` (e.g. `experiment_id`, `num_process`, `process_id`).

    Returns:
        `evaluate.EvaluationModule`: The loaded metric.
    """
    if name not in available_metrics():
        raise ValueError(f"Unknown metric {name!r}; available: {available_metrics()}.")
    import evaluate  # deferred: importing evaluate takes several seconds

    return evaluate.load(str(EVALUATE_MODULES_DIR / name), **kwargs)


__all__ = [
    "StreamingConfusionMatrix",
    "accuracy",
    "aupr",
    "auroc",
    "available_metrics",
    "balanced_accuracy",
    "confusion_matrix_metrics",
    "energy_score",
    "expected_calibration_error",
    "fpr_at_tpr",
    "load_metric",
    "max_logit_score",
    "msp_score",
    "per_class_accuracy",
    "rejection_metrics",
    "reliability_diagram_bins",
    "shot_group_accuracy",
    "softmax",
]
