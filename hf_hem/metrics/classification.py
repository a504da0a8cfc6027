"""Classification metrics: accuracy, balanced and per-class accuracy, calibration, and long-tail shot groups.

All functions take array-likes (lists, NumPy arrays, torch tensors) and return Python floats or NumPy arrays.
"""

import numpy as np

from ._validation import as_labels, as_scores, check_label_range, check_num_classes, check_same_length, to_numpy


def _labels_pair(predictions, references, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validates a prediction/reference pair and returns it with the number of classes (inferred if not given)."""
    predictions = as_labels(predictions, "predictions")
    references = as_labels(references, "references")
    check_same_length(predictions, references, "predictions", "references")
    if num_classes is None:
        num_classes = int(max(predictions.max(), references.max())) + 1
    num_classes = check_num_classes(num_classes)
    check_label_range(predictions, num_classes, "predictions")
    check_label_range(references, num_classes, "references")
    return predictions, references, num_classes


def accuracy(predictions, references) -> float:
    """Fraction of samples whose predicted label equals the reference label.

    Args:
        predictions (array-like of `int`): Predicted class ids, shape `(N,)`.
        references (array-like of `int`): True class ids, shape `(N,)`.

    Returns:
        `float`: Accuracy in `[0, 1]`.
    """
    predictions = as_labels(predictions, "predictions")
    references = as_labels(references, "references")
    check_same_length(predictions, references, "predictions", "references")
    return float(np.mean(predictions == references))


def accuracy_score(predictions, references, normalize: bool = True, sample_weight=None) -> float:
    """Accuracy with the arguments of the Hub's `accuracy` metric (and scikit-learn's `accuracy_score`).

    Args:
        predictions (array-like of `int`): Predicted labels, shape `(N,)`; or `(N, L)` label sets (multi-label),
            where a sample is right only when all its labels are.
        references (array-like of `int`): True labels, the shape of `predictions`.
        normalize (`bool`, *optional*, defaults to `True`): The fraction of right samples; with `False`, their
            number (their summed weight with `sample_weight`).
        sample_weight (array-like of `float`, *optional*): One weight per sample.

    Returns:
        `float`: The (weighted) fraction, or number, of right samples.

    Example:

    ```python
    >>> accuracy_score([0, 1, 1, 2], [0, 1, 2, 2], sample_weight=[1, 1, 2, 0])
    0.5
    ```
    """
    predictions = to_numpy(predictions)
    references = to_numpy(references)
    if predictions.ndim not in (1, 2) or predictions.shape != references.shape:
        raise ValueError(
            f"`predictions` and `references` must have the same shape, (N,) or (N, L) for label sets, got "
            f"{predictions.shape} and {references.shape}."
        )
    if len(predictions) == 0:
        raise ValueError("`predictions` and `references` are empty; at least one sample is needed.")
    right = predictions == references
    if right.ndim == 2:
        right = right.all(axis=1)
    right = right.astype(np.float64)
    if sample_weight is None:
        return float(right.mean() if normalize else right.sum())
    weights = as_scores(sample_weight, "sample_weight")
    if weights.shape != right.shape:
        raise ValueError(f"`sample_weight` must hold one weight per sample ({len(right)}), got shape {weights.shape}.")
    if normalize:
        if weights.sum() == 0:
            raise ValueError("`sample_weight` sums to zero; the weighted accuracy is undefined.")
        return float(np.average(right, weights=weights))
    return float(np.dot(right, weights))


def per_class_accuracy(predictions, references, num_classes: int) -> np.ndarray:
    """Recall of each class: the fraction of the samples of class `c` that are predicted as `c`.

    Args:
        predictions (array-like of `int`): Predicted class ids in `[0, num_classes)`, shape `(N,)`.
        references (array-like of `int`): True class ids in `[0, num_classes)`, shape `(N,)`.
        num_classes (`int`): Number of classes.

    Returns:
        `np.ndarray` of shape `(num_classes,)`: Per-class accuracy, NaN for classes absent from `references`.
    """
    predictions, references, num_classes = _labels_pair(predictions, references, num_classes)
    support = np.bincount(references, minlength=num_classes)
    correct = np.bincount(references[predictions == references], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, correct / support, np.nan)


def balanced_accuracy(predictions, references, num_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present in `references` (matches sklearn's `balanced_accuracy_score`).

    Args:
        predictions (array-like of `int`): Predicted class ids, shape `(N,)`.
        references (array-like of `int`): True class ids, shape `(N,)`.
        num_classes (`int`, *optional*): Number of classes, used to check the label range. Inferred when omitted.

    Returns:
        `float`: Balanced accuracy in `[0, 1]`.
    """
    return float(np.nanmean(per_class_accuracy(*_labels_pair(predictions, references, num_classes))))


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (the row maximum is subtracted before exponentiating).

    Args:
        logits (array-like of `float`): Unnormalised scores.
        axis (`int`, *optional*, defaults to -1): Axis to normalise over.

    Returns:
        `np.ndarray`: Probabilities with the shape of `logits`, summing to 1 along `axis`.
    """
    logits = to_numpy(logits).astype(np.float64, copy=False)
    shifted = np.exp(logits - np.max(logits, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


def _probabilities_pair(probabilities, references) -> tuple[np.ndarray, np.ndarray]:
    probabilities = as_scores(probabilities, "probabilities", ndim=2)
    references = as_labels(references, "references")
    check_same_length(probabilities, references, "probabilities", "references")
    if probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("`probabilities` must lie in [0, 1]; pass softmax(logits), not logits.")
    row_sums = probabilities.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=1e-3):
        worst = row_sums[np.argmax(np.abs(row_sums - 1))]
        raise ValueError(f"Each row of `probabilities` must sum to 1, found a row summing to {worst:.4g}.")
    check_label_range(references, probabilities.shape[1], "references")
    return probabilities, references


def reliability_diagram_bins(probabilities, references, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin confidence, accuracy and sample count, the data behind a reliability diagram.

    Confidence is the top-1 probability and a sample is correct when its arg-max equals the reference. Bins are `n_bins`
    equal-width intervals `(lo, hi]` of `[0, 1]` (a confidence of exactly 0 goes to the first bin).

    Args:
        probabilities (array-like of `float`): Class probabilities, shape `(N, C)`, rows summing to 1.
        references (array-like of `int`): True class ids, shape `(N,)`.
        n_bins (`int`, *optional*, defaults to 15): Number of bins.

    Returns:
        `dict[str, np.ndarray]`: `bin_edges` `(n_bins + 1,)`; `confidence` and `accuracy` `(n_bins,)`, the means over
        each bin's samples (NaN for empty bins); `count` `(n_bins,)`, samples per bin.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}.")
    probabilities, references = _probabilities_pair(probabilities, references)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == references).astype(np.float64)
    # k / n_bins is correctly rounded, so an edge equals the float literal a user would write (0.6, not 0.6000000000000001).
    bin_edges = np.arange(n_bins + 1) / n_bins
    # right=True puts a confidence equal to an edge into the bin that edge closes, i.e. bins are (lo, hi].
    bin_index = np.digitize(confidence, bin_edges[1:-1], right=True)
    count = np.bincount(bin_index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_index, weights=confidence, minlength=n_bins) / count
        mean_accuracy = np.bincount(bin_index, weights=correct, minlength=n_bins) / count
    return {"bin_edges": bin_edges, "confidence": mean_confidence, "accuracy": mean_accuracy, "count": count}


def expected_calibration_error(probabilities, references, n_bins: int = 15) -> float:
    """Expected calibration error: `sum_b (n_b / N) * |accuracy_b - confidence_b|` over equal-width confidence bins.

    See [`reliability_diagram_bins`] for the binning (top-1 confidence, bins `(lo, hi]`).

    Args:
        probabilities (array-like of `float`): Class probabilities, shape `(N, C)`, rows summing to 1.
        references (array-like of `int`): True class ids, shape `(N,)`.
        n_bins (`int`, *optional*, defaults to 15): Number of bins.

    Returns:
        `float`: ECE in `[0, 1]`.
    """
    bins = reliability_diagram_bins(probabilities, references, n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def shot_group_accuracy(predictions, references, train_class_counts, many: int = 100, few: int = 20) -> dict:
    """Long-tail accuracy split by how many training samples each class had.

    Classes with more than `many` training samples are *many-shot*, fewer than `few` are *few-shot*, the rest are
    *medium-shot*. A group's accuracy is the mean of the per-class accuracies of its classes that occur in
    `references` (the usual long-tailed recognition protocol, which equals sample accuracy on a balanced test set).

    Args:
        predictions (array-like of `int`): Predicted class ids, shape `(N,)`.
        references (array-like of `int`): True class ids, shape `(N,)`.
        train_class_counts (array-like of `int`): Training samples per class, shape `(num_classes,)`.
        many (`int`, *optional*, defaults to 100): Classes with more than `many` training samples are many-shot.
        few (`int`, *optional*, defaults to 20): Classes with fewer than `few` training samples are few-shot.

    Returns:
        `dict[str, float]`: Keys among `"many"`, `"medium"`, `"few"`; a key is present only when its group has at least
        one class that occurs in `references`.
    """
    train_class_counts = as_labels(train_class_counts, "train_class_counts")
    if train_class_counts.size == 0 or train_class_counts.min() < 0:
        raise ValueError(f"`train_class_counts` must be non-empty and non-negative, got {train_class_counts[:10]}.")
    if few > many:
        raise ValueError(f"`few` ({few}) must not exceed `many` ({many}).")
    class_accuracy = per_class_accuracy(predictions, references, num_classes=len(train_class_counts))
    groups = {
        "many": train_class_counts > many,
        "medium": (train_class_counts >= few) & (train_class_counts <= many),
        "few": train_class_counts < few,
    }
    result = {}
    for group, in_group in groups.items():
        present = in_group & ~np.isnan(class_accuracy)
        if present.any():
            result[group] = float(class_accuracy[present].mean())
    return result
