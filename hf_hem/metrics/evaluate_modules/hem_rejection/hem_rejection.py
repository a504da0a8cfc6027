"""`evaluate` module: unknown-class rejection metrics (AUROC, FPR95, AUPR-In), computed by `hf_hem.metrics`."""

import evaluate
import numpy as np

from hf_hem.metrics import aupr, auroc, fpr_at_tpr
from hf_hem.metrics.evaluate_support import metric_info


_DESCRIPTION = """
Unknown-class rejection metrics for a per-sample "knownness" score (higher = more likely a known class, e.g.
`hf_hem.metrics.msp_score`): AUROC, FPR at 95% TPR and AUPR with known samples as positives.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list[float]`): One score per sample, higher = more known.
    is_known (`list[int]`): 1 for samples of known classes, 0 for unknown ones; both must occur.
    tpr (`float`, *optional*, defaults to 0.95): True positive rate for the FPR metric.

Returns:
    `dict`: `auroc`, `fpr{round(100 * tpr)}` (`fpr95` by default) and `aupr` (`float`).

Example:
    >>> metric = hf_hem.metrics.load_metric("hem_rejection")
    >>> metric.compute(scores=[0.9, 0.8, 0.7, 0.8, 0.1], is_known=[1, 1, 1, 0, 0])["auroc"]
    0.75
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HemRejection(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, scores="float64", is_known="int64")

    def _compute(self, scores, is_known, tpr=0.95):
        scores, is_known = np.asarray(scores, dtype=np.float64), np.asarray(is_known)
        if not np.isin(is_known, (0, 1)).all():
            raise ValueError(f"`is_known` must hold 0 or 1, got values {np.unique(is_known)[:10].tolist()}.")
        known, unknown = scores[is_known == 1], scores[is_known == 0]
        return {
            "auroc": auroc(known, unknown),
            f"fpr{round(100 * tpr)}": fpr_at_tpr(known, unknown, tpr),
            "aupr": aupr(known, unknown),
        }
