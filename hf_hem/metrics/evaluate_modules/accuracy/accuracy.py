"""`evaluate` module: an offline drop-in for the Hub's `accuracy` metric, computed by `hf_hem.metrics.accuracy_score`."""

import evaluate

from hf_hem.metrics import accuracy_score
from hf_hem.metrics.evaluate_support import metric_info


_DESCRIPTION = """
Accuracy: the fraction of predictions equal to their reference, with the arguments and result of the Hub's
`accuracy` metric (`evaluate.load("accuracy")`), so that scripts written for it, such as transformers'
`run_glue.py`, `run_image_classification.py` or `run_swag.py`, run offline with
`evaluate.load(hf_hem.metrics.evaluate_module_path("accuracy"))`. The `"multilabel"` configuration
(`evaluate.load(path, "multilabel")`) takes label sets and counts a sample as right when all its labels are.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted labels (`list[list[int]]` for "multilabel").
    references (`list[int]`): True labels, the same shape.
    normalize (`bool`, *optional*, defaults to `True`): The fraction of right samples; `False` gives their number.
    sample_weight (`list[float]`, *optional*): One weight per sample.

Returns:
    `dict`: `accuracy` (`float`).

Example:
    >>> metric = evaluate.load(hf_hem.metrics.evaluate_module_path("accuracy"))
    >>> metric.compute(predictions=[0, 1, 1, 1], references=[0, 1, 1, 0])
    {'accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        dtype = ["int64"] if self.config_name == "multilabel" else "int64"
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, predictions=dtype, references=dtype)

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None):
        return {"accuracy": accuracy_score(predictions, references, normalize=normalize, sample_weight=sample_weight)}
