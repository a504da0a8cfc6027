"""Semantic segmentation metrics from a streaming confusion matrix (mIoU, mean and overall pixel accuracy).

Ignore convention (as in mmsegmentation): pixels whose *reference* equals `ignore_index` are removed from both the
prediction and the reference before counting, so whatever the model predicts there does not matter.
"""

from collections.abc import Mapping

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


def _checked_label_map(label_map, name: str = "label_map") -> dict[int, int]:
    if not isinstance(label_map, Mapping):
        raise ValueError(f"`{name}` must be a dict of old label -> new label, got {type(label_map).__name__}.")
    return {int(old): int(new) for old, new in label_map.items()}


def mean_iou(
    predictions,
    references,
    num_labels: int,
    ignore_index: int,
    nan_to_num: float | None = None,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict:
    """Mean IoU and pixel accuracies with the arguments and results of the Hub's `mean_iou` metric
    (`evaluate.load("mean_iou")`, after mmsegmentation), so scripts written for it get the same numbers offline.

    Per label map, in this order: `label_map` renames reference labels (all at once, so `{1: 2, 2: 1}` swaps them);
    `reduce_labels` turns reference 0 (background) into 255 and lowers every other label by one (255 stays 255);
    reference pixels equal to `ignore_index` are dropped with their predictions. Areas are then counted over all maps:
    values outside `[0, num_labels)` count for no class (as in the Hub module, which bins with `np.histogram`). Per
    class, IoU = intersection / union and accuracy = intersection / reference area, NaN where they divide by zero;
    the means skip NaN.

    Args:
        predictions (array-like): Predicted label maps: a `(batch, height, width)` array or a list of 2-D maps (NumPy
            arrays, torch tensors or nested lists; sizes may differ between maps).
        references (array-like): Reference label maps, one per prediction and of its size.
        num_labels (`int`): Number of classes.
        ignore_index (`int`): Reference value of pixels to leave out (after `reduce_labels`), e.g. 255.
        nan_to_num (`float`, *optional*): Replaces NaN in every result.
        label_map (`dict[int, int]`, *optional*): Reference label renaming.
        reduce_labels (`bool`, *optional*, defaults to `False`): Reference 0 is background (ignored as 255), the
            other labels are shifted down by one (ADE20k's convention).

    Returns:
        `dict`: `mean_iou`, `mean_accuracy`, `overall_accuracy` (`np.float64`), `per_category_iou`,
        `per_category_accuracy` (`np.ndarray` of shape `(num_labels,)`).

    Example:

    ```python
    >>> result = mean_iou([[[0, 1], [2, 1]]], [[[1, 2], [0, 2]]], num_labels=3, ignore_index=255, reduce_labels=True)
    >>> float(result["mean_iou"]), result["per_category_iou"].tolist()
    (1.0, [1.0, 1.0, nan])
    ```
    """
    num_labels = check_num_classes(num_labels)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"`ignore_index` must be an integer label value such as 255, got {ignore_index!r}.")
    label_map = _checked_label_map(label_map) if label_map is not None else None
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predicted and {len(references)} reference label maps; expected one reference "
            "map per prediction."
        )
    intersection, union, reference_area = (np.zeros(num_labels, dtype=np.float64) for _ in range(3))

    def area(values: np.ndarray) -> np.ndarray:
        in_range = values[(values >= 0) & (values < num_labels)]
        return np.bincount(in_range, minlength=num_labels)

    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        prediction = as_labels(prediction, f"predictions[{index}]", ndim=None)
        reference = as_labels(reference, f"references[{index}]", ndim=None)
        if prediction.shape != reference.shape:
            raise ValueError(
                f"predictions[{index}] has shape {prediction.shape} but references[{index}] has shape "
                f"{reference.shape}; expected maps of the same size."
            )
        if label_map is not None:
            renamed = reference.copy()
            for old, new in label_map.items():
                renamed[reference == old] = new
            reference = renamed
        if reduce_labels:
            reference = np.where(reference == 0, 255, reference - 1)
            reference[reference == 254] = 255
        kept = reference != ignore_index
        prediction, reference = prediction[kept], reference[kept]
        matched, predicted, true = area(prediction[prediction == reference]), area(prediction), area(reference)
        intersection += matched
        reference_area += true
        union += predicted + true - matched

    with np.errstate(invalid="ignore", divide="ignore"):
        per_category_iou = intersection / union
        per_category_accuracy = intersection / reference_area
        overall_accuracy = np.float64(intersection.sum()) / np.float64(reference_area.sum())

    def nan_mean(values: np.ndarray) -> np.float64:  # np.nanmean warns on all-NaN input
        defined = values[~np.isnan(values)]
        return defined.mean() if defined.size else np.float64("nan")

    result = {
        "mean_iou": nan_mean(per_category_iou),
        "mean_accuracy": nan_mean(per_category_accuracy),
        "overall_accuracy": overall_accuracy,
        "per_category_iou": per_category_iou,
        "per_category_accuracy": per_category_accuracy,
    }
    if nan_to_num is not None:
        result = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in result.items()}
    return result
