"""Metrics for HEM experiments: plain NumPy functions, plus local `evaluate` modules that wrap them.

Besides hf_hem's own modules (`hem_*`), `mean_iou`, `seqeval` and `accuracy` are offline drop-ins for the Hub metrics
of those names: same `compute` arguments and results, so a script that calls `evaluate.load("seqeval")` runs
offline with `evaluate.load(evaluate_module_path("seqeval"))`.

Importing this package does not import `evaluate` (slow to import and optional); [`load_metric`] does.
"""

from pathlib import Path

from .classification import (
    accuracy,
    accuracy_score,
    balanced_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    reliability_diagram_bins,
    shot_group_accuracy,
    softmax,
)
from .ood import aupr, auroc, energy_score, fpr_at_tpr, max_logit_score, msp_score, rejection_metrics
from .segmentation import StreamingConfusionMatrix, confusion_matrix_metrics, mean_iou
from .sequence_labeling import seqeval_scores


EVALUATE_MODULES_DIR = Path(__file__).parent / "evaluate_modules"


def available_metrics() -> list[str]:
    """Names of the bundled `evaluate` modules, for [`load_metric`]."""
    return sorted(path.parent.name for path in EVALUATE_MODULES_DIR.glob("*/*.py") if path.stem == path.parent.name)


def evaluate_module_path(name: str) -> str:
    """The folder of a bundled `evaluate` module, to pass to `evaluate.load` (offline, no Hub needed).

    Args:
        name (`str`): One of [`available_metrics`]: `"mean_iou"`, `"seqeval"` and `"accuracy"` are drop-ins for the
            Hub metrics of those names; `"hem_*"` are hf_hem's own.

    Returns:
        `str`: the module's folder.

    Example:

    ```python
    >>> import evaluate
    >>> metric = evaluate.load(evaluate_module_path("mean_iou"))  # instead of evaluate.load("mean_iou")
    ```
    """
    if name not in available_metrics():
        raise ValueError(f"Unknown metric {name!r}; available: {available_metrics()}.")
    return str(EVALUATE_MODULES_DIR / name)


def load_metric(name: str, **kwargs):
    """Loads a bundled `evaluate` module by path, so it works offline and without the Hugging Face Hub.

    Args:
        name (`str`): One of [`available_metrics`], e.g. `"hem_mean_iou"` or `"seqeval"`.
        kwargs: Passed to `evaluate.load` (e.g. `experiment_id`, `num_process`, `process_id`).

    Returns:
        `evaluate.EvaluationModule`: The loaded metric.
    """
    path = evaluate_module_path(name)
    import evaluate  # deferred: importing evaluate takes several seconds

    return evaluate.load(path, **kwargs)


__all__ = [
    "StreamingConfusionMatrix",
    "accuracy",
    "accuracy_score",
    "aupr",
    "auroc",
    "available_metrics",
    "balanced_accuracy",
    "confusion_matrix_metrics",
    "energy_score",
    "evaluate_module_path",
    "expected_calibration_error",
    "fpr_at_tpr",
    "load_metric",
    "max_logit_score",
    "mean_iou",
    "msp_score",
    "per_class_accuracy",
    "rejection_metrics",
    "reliability_diagram_bins",
    "seqeval_scores",
    "shot_group_accuracy",
    "softmax",
]
