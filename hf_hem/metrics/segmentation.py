"""Semantic segmentation metrics from a streaming confusion matrix (mIoU, mean and overall pixel accuracy).

Ignore convention (as in mmsegmentation): pixels whose *reference* equals `ignore_index` are removed from both the
prediction and the reference before counting, so whatever the model predicts there does not matter.
"""

import numpy as np

from ._validation import as_labels, check_num_classes


def confusion_matrix_metrics(confusion_matrix) -> dict:
    """Segmentation metrics from a confusion matrix whose rows are reference classes and columns predicted classes.

    Per class `c`: `IoU_c = TP / (TP + FP + FN)` and `accuracy_c = TP / (TP + FN)`. A class with no reference and no
    predicted pixels has NaN IoU; a class with no reference pixels has NaN accuracy. Means skip NaN entries.

    Args:
        confusion_matrix (array-like of `int`): Pixel counts, shape `(C, C)`.

    Returns:
        `dict`: `mean_iou`, `mean_accuracy`, `overall_accuracy` (`float`, NaN when nothing is defined), and
        `per_category_iou`, `per_category_accuracy` (`list[float]` of length `C`, NaN as above).
    """
    confusion_matrix = np.asarray(confusion_matrix)
    if confusion_matrix.ndim != 2 or confusion_matrix.shape[0] != confusion_matrix.shape[1]:
        raise ValueError(f"`confusion_matrix` must be square (C, C), got shape {confusion_matrix.shape}.")
    if confusion_matrix.size and confusion_matrix.min() < 0:
        raise ValueError("`confusion_matrix` must hold non-negative counts.")
    confusion_matrix = confusion_matrix.astype(np.float64)
    true_positives = np.diag(confusion_matrix)
    reference_area = confusion_matrix.sum(axis=1)
    union = reference_area + confusion_matrix.sum(axis=0) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positives / union, np.nan)
        class_accuracy = np.where(reference_area > 0, true_positives / reference_area, np.nan)
        overall_accuracy = true_positives.sum() / reference_area.sum() if reference_area.sum() > 0 else np.nan

    def nan_mean(values: np.ndarray) -> float:  # np.nanmean warns on all-NaN input
        defined = values[~np.isnan(values)]
        return float(defined.mean()) if defined.size else float("nan")

    return {
        "mean_iou": nan_mean(iou),
        "mean_accuracy": nan_mean(class_accuracy),
        "overall_accuracy": float(overall_accuracy),
        "per_category_iou": iou.tolist(),
        "per_category_accuracy": class_accuracy.tolist(),
    }


class StreamingConfusionMatrix:
    """Accumulates a `(num_classes, num_classes)` pixel confusion matrix over batches (rows: reference, cols: prediction).

    Args:
        num_classes (`int`): Number of classes; valid labels are `0 .. num_classes - 1`.
        ignore_index (`int`, *optional*, defaults to 255): Reference value marking pixels to leave out.

    Example:

    ```python
    >>> metric = StreamingConfusionMatrix(num_classes=3)
    >>> metric.update([[0, 1, 2]], [[0, 1, 255]])
    >>> metric.compute()["mean_iou"]
    1.0
    ```
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = check_num_classes(num_classes)
        if 0 <= ignore_index < self.num_classes:
            raise ValueError(f"`ignore_index` ({ignore_index}) must not be a valid class id in [0, {num_classes}).")
        self.ignore_index = int(ignore_index)
        self.confusion_matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, predictions, references) -> "StreamingConfusionMatrix":
        """Adds a batch of label maps.

        Args:
            predictions (array-like of `int`): Predicted class ids, any shape (e.g. `(batch, height, width)`); NumPy
                arrays, lists or torch tensors on any device.
            references (array-like of `int`): Reference class ids or `ignore_index`, same shape as `predictions`.

        Returns:
            `StreamingConfusionMatrix`: `self`, so calls can be chained.
        """
        predictions = as_labels(predictions, "predictions", ndim=None)
        references = as_labels(references, "references", ndim=None)
        if predictions.shape != references.shape:
            raise ValueError(
                f"`predictions` and `references` must have the same shape, got {predictions.shape} and {references.shape}."
            )
        kept = references != self.ignore_index
        predictions, references = predictions[kept], references[kept]
        for name, labels in (("references", references), ("predictions", predictions)):
            bad = np.unique(labels[(labels < 0) | (labels >= self.num_classes)])
            if bad.size:
                raise ValueError(
                    f"`{name}` at non-ignored pixels must lie in [0, {self.num_classes}), got {bad[:10].tolist()} "
                    f"(reference pixels equal to ignore_index={self.ignore_index} are skipped)."
                )
        counts = np.bincount(references * self.num_classes + predictions, minlength=self.num_classes**2)
        self.confusion_matrix += counts.reshape(self.num_classes, self.num_classes)
        return self

    def merge(self, other: "StreamingConfusionMatrix") -> "StreamingConfusionMatrix":
        """Adds the counts of another matrix (e.g. from another process) into this one and returns `self`."""
        if not isinstance(other, StreamingConfusionMatrix):
            raise ValueError(f"Can only merge another StreamingConfusionMatrix, got {type(other).__name__}.")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"Cannot merge a matrix with num_classes={other.num_classes}, ignore_index={other.ignore_index} into "
                f"one with num_classes={self.num_classes}, ignore_index={self.ignore_index}."
            )
        self.confusion_matrix += other.confusion_matrix
        return self

    def reset(self) -> None:
        """Sets all counts to zero."""
        self.confusion_matrix[:] = 0

    def compute(self) -> dict:
        """Metrics of the accumulated counts; see [`confusion_matrix_metrics`]."""
        return confusion_matrix_metrics(self.confusion_matrix)
