"""`evaluate` module: accuracy and balanced accuracy, computed by `hf_hem.metrics`."""

import evaluate

from hf_hem.metrics import accuracy, balanced_accuracy
from hf_hem.metrics.evaluate_support import metric_info


_DESCRIPTION = """
Accuracy (fraction of correct predictions) and balanced accuracy (mean recall over the classes present in the
references), as computed by `hf_hem.metrics.accuracy` and `hf_hem.metrics.balanced_accuracy`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class ids.
    references (`list[int]`): True class ids.
    num_classes (`int`, *optional*): Number of classes, used to check the label range.

Returns:
    `dict`: `accuracy` and `balanced_accuracy` (`float`).

Example:
    >>> metric = hf_hem.metrics.load_metric("hem_accuracy")
    >>> metric.compute(predictions=[0, 1, 1, 1], references=[0, 1, 1, 0])
    {'accuracy': 0.75, 'balanced_accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HemAccuracy(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, predictions="int64", references="int64")

    def _compute(self, predictions, references, num_classes=None):
        return {
            "accuracy": accuracy(predictions, references),
            "balanced_accuracy": balanced_accuracy(predictions, references, num_classes),
        }
