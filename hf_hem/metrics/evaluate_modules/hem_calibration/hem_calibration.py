"""`evaluate` module: expected calibration error, computed by `hf_hem.metrics`."""

import evaluate

from hf_hem.metrics import expected_calibration_error
from hf_hem.metrics.evaluate_support import metric_info


_DESCRIPTION = """
Expected calibration error (ECE) over equal-width bins of top-1 confidence, as computed by
`hf_hem.metrics.expected_calibration_error`.
"""

_KWARGS_DESCRIPTION = """
Args:
    probabilities (`list[list[float]]`): Class probabilities per sample (rows summing to 1).
    references (`list[int]`): True class ids.
    n_bins (`int`, *optional*, defaults to 15): Number of confidence bins.

Returns:
    `dict`: `expected_calibration_error` (`float`).

Example:
    >>> metric = hf_hem.metrics.load_metric("hem_calibration")
    >>> metric.compute(probabilities=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0], n_bins=10)
    {'expected_calibration_error': 0.45}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HemCalibration(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, probabilities=["float64"], references="int64")

    def _compute(self, probabilities, references, n_bins=15):
        return {"expected_calibration_error": expected_calibration_error(probabilities, references, n_bins)}
