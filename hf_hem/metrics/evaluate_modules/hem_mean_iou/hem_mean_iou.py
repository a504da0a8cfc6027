"""`evaluate` module: mean IoU and pixel accuracies from a confusion matrix, computed by `hf_hem.metrics`."""

import evaluate

from hf_hem.metrics import StreamingConfusionMatrix
from hf_hem.metrics.evaluate_support import metric_info


_DESCRIPTION = """
Semantic segmentation metrics (mean IoU, mean class accuracy, overall pixel accuracy, per-class values) from a pixel
confusion matrix, as computed by `hf_hem.metrics.StreamingConfusionMatrix`. Reference pixels equal to `ignore_index`
are left out of both prediction and reference (mmsegmentation convention). Classes with neither reference nor predicted
pixels get NaN IoU and are skipped by the means.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): One flattened predicted label map per example.
    references (`list[list[int]]`): One flattened reference label map per example, same length as its prediction.
    num_labels (`int`): Number of classes.
    ignore_index (`int`, *optional*, defaults to 255): Reference value of pixels to leave out.

Returns:
    `dict`: `mean_iou`, `mean_accuracy`, `overall_accuracy` (`float`), `per_category_iou`, `per_category_accuracy`
    (`list[float]`).

Example:
    >>> metric = hf_hem.metrics.load_metric("hem_mean_iou")
    >>> metric.compute(predictions=[[0, 1, 1]], references=[[0, 1, 255]], num_labels=2)["mean_iou"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HemMeanIou(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, predictions=["int64"], references=["int64"])

    def _compute(self, predictions, references, num_labels, ignore_index=255):
        confusion = StreamingConfusionMatrix(num_labels, ignore_index=ignore_index)
        for prediction, reference in zip(predictions, references):
            confusion.update(prediction, reference)
        return confusion.compute()
