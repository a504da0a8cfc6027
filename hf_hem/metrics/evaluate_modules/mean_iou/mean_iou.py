"""`evaluate` module: an offline drop-in for the Hub's `mean_iou` metric, computed by `hf_hem.metrics.mean_iou`."""

import evaluate

from hf_hem.metrics.evaluate_support import metric_info
from hf_hem.metrics.segmentation import mean_iou


_DESCRIPTION = """
Mean intersection over union (IoU), mean class accuracy and overall pixel accuracy of semantic segmentation, with
the arguments and results of the Hub's `mean_iou` metric (`evaluate.load("mean_iou")`), so that scripts written for
it, such as transformers' `run_semantic_segmentation.py`, run offline with
`evaluate.load(hf_hem.metrics.evaluate_module_path("mean_iou"))`. Reference pixels equal to `ignore_index` (after
`label_map` and `reduce_labels`) are left out with their predictions; values outside `[0, num_labels)` count for no
class. Classes that divide by zero get NaN, which the means skip.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D label maps): Predicted class ids, e.g. a `(batch, height, width)` NumPy array.
    references (`list` of 2-D label maps): Reference class ids, one map per prediction and of its size.
    num_labels (`int`): Number of classes.
    ignore_index (`int`): Reference value of pixels to leave out, e.g. 255.
    nan_to_num (`float`, *optional*): Replaces NaN in every result.
    label_map (`dict[int, int]`, *optional*): Renames reference labels before anything else.
    reduce_labels (`bool`, *optional*, defaults to `False`): Reference 0 becomes 255 (background, ignored with
        ignore_index=255) and the other labels move down by one.

Returns:
    `dict`: `mean_iou`, `mean_accuracy`, `overall_accuracy` (`np.float64`), `per_category_iou` and
    `per_category_accuracy` (`np.ndarray` of shape `(num_labels,)`).

Example:
    >>> metric = evaluate.load(hf_hem.metrics.evaluate_module_path("mean_iou"))
    >>> result = metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [255, 0]]], num_labels=2,
    ...                         ignore_index=255)
    >>> float(result["mean_iou"]), result["per_category_iou"].tolist()
    (0.5, [0.5, 0.5])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, predictions=[["int64"]], references=[["int64"]])

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num=None,
        label_map=None,
        reduce_labels: bool = False,
    ):
        return mean_iou(
            predictions,
            references,
            num_labels=num_labels,
            ignore_index=ignore_index,
            nan_to_num=nan_to_num,
            label_map=label_map,
            reduce_labels=reduce_labels,
        )
