"""Unknown-class rejection (out-of-distribution detection) scores and metrics.

Convention throughout: known (in-distribution) samples are the positives and a higher score means "more known". A
sample is accepted as known when its score is at or above a threshold.
"""

import numpy as np

from ._validation import as_scores
from .classification import softmax


def _logits(logits) -> np.ndarray:
    logits = as_scores(logits, "logits", ndim=2)
    if logits.shape[1] == 0:
        raise ValueError(f"`logits` must have at least one class column, got shape {logits.shape}.")
    return logits


def msp_score(logits) -> np.ndarray:
    """Maximum softmax probability per sample.

    Args:
        logits (array-like of `float`): Classifier logits, shape `(N, C)`.

    Returns:
        `np.ndarray` of shape `(N,)`: Scores in `(0, 1]`, higher = more known.
    """
    return softmax(_logits(logits), axis=1).max(axis=1)


def max_logit_score(logits) -> np.ndarray:
    """Maximum logit per sample (MLS).

    Args:
        logits (array-like of `float`): Classifier logits, shape `(N, C)`.

    Returns:
        `np.ndarray` of shape `(N,)`: Scores, higher = more known.
    """
    return _logits(logits).max(axis=1)


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy `T * logsumexp(logits / T)` per sample.

    Args:
        logits (array-like of `float`): Classifier logits, shape `(N, C)`.
        temperature (`float`, *optional*, defaults to 1.0): Temperature `T > 0`.

    Returns:
        `np.ndarray` of shape `(N,)`: Scores, higher = more known.
    """
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, got {temperature!r}.")
    scaled = _logits(logits) / temperature
    row_max = scaled.max(axis=1)
    return temperature * (row_max + np.log(np.exp(scaled - row_max[:, None]).sum(axis=1)))


def _score_pair(known_scores, unknown_scores) -> tuple[np.ndarray, np.ndarray]:
    known_scores = as_scores(known_scores, "known_scores")
    unknown_scores = as_scores(unknown_scores, "unknown_scores")
    if known_scores.size == 0 or unknown_scores.size == 0:
        raise ValueError(
            f"Both score sets must be non-empty, got {known_scores.size} known and {unknown_scores.size} unknown scores."
        )
    return known_scores, unknown_scores


def auroc(known_scores, unknown_scores) -> float:
    """Area under the ROC curve for separating known from unknown samples, computed exactly.

    Equals the Mann-Whitney probability `P(s_known > s_unknown) + 0.5 * P(s_known == s_unknown)` over all
    known/unknown pairs; each known score is ranked among the sorted unknown scores, ties counting 1/2.

    Args:
        known_scores (array-like of `float`): Scores of known samples, shape `(N_known,)`.
        unknown_scores (array-like of `float`): Scores of unknown samples, shape `(N_unknown,)`.

    Returns:
        `float`: AUROC in `[0, 1]`; 0.5 is chance, 1 means every known scores above every unknown.
    """
    known_scores, unknown_scores = _score_pair(known_scores, unknown_scores)
    sorted_unknown = np.sort(unknown_scores)
    below = np.searchsorted(sorted_unknown, known_scores, side="left")
    below_or_tied = np.searchsorted(sorted_unknown, known_scores, side="right")
    wins = below.sum() + 0.5 * (below_or_tied - below).sum()
    return float(wins / (known_scores.size * unknown_scores.size))


def fpr_at_tpr(known_scores, unknown_scores, tpr: float = 0.95) -> float:
    """False positive rate (unknowns accepted as known) at the threshold that keeps at least `tpr` of the knowns.

    Exactly: with `k = ceil(tpr * N_known)`, the threshold `t` is the `k`-th largest known score, samples with
    `score >= t` are accepted, and the result is the fraction of unknown scores `>= t`. `t` is the largest threshold
    whose true positive rate is at least `tpr` (ties at `t` may push the true positive rate above `tpr`). This is the
    first point of sklearn's `roc_curve` with `tpr >= 0.95`, the usual "FPR95".

    Args:
        known_scores (array-like of `float`): Scores of known samples, shape `(N_known,)`.
        unknown_scores (array-like of `float`): Scores of unknown samples, shape `(N_unknown,)`.
        tpr (`float`, *optional*, defaults to 0.95): Target true positive rate in `(0, 1]`.

    Returns:
        `float`: FPR in `[0, 1]`, lower is better.
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"`tpr` must be in (0, 1], got {tpr!r}.")
    known_scores, unknown_scores = _score_pair(known_scores, unknown_scores)
    # Rounding first keeps e.g. 0.95 * 20 = 19.000000000000004 from becoming 20.
    num_accepted = max(1, int(np.ceil(round(tpr * known_scores.size, 9))))
    threshold = np.sort(known_scores)[::-1][num_accepted - 1]
    return float(np.mean(unknown_scores >= threshold))


def aupr(known_scores, unknown_scores, positive: str = "known") -> float:
    """Area under the precision-recall curve as step-wise average precision, like sklearn's `average_precision_score`.

    `AP = sum_n (R_n - R_{n-1}) * P_n`, with one (precision, recall) point per distinct score threshold, taken from the
    highest score down.

    Args:
        known_scores (array-like of `float`): Scores of known samples, shape `(N_known,)`.
        unknown_scores (array-like of `float`): Scores of unknown samples, shape `(N_unknown,)`.
        positive (`str`, *optional*, defaults to `"known"`): `"known"` gives AUPR-In (knowns are positives, ranked by
            score); `"unknown"` gives AUPR-Out (unknowns are positives, ranked by negated score).

    Returns:
        `float`: Average precision in `[0, 1]`.
    """
    known_scores, unknown_scores = _score_pair(known_scores, unknown_scores)
    if positive == "known":
        positive_scores, negative_scores = known_scores, unknown_scores
    elif positive == "unknown":
        positive_scores, negative_scores = -unknown_scores, -known_scores
    else:
        raise ValueError(f"`positive` must be 'known' or 'unknown', got {positive!r}.")
    scores = np.concatenate([positive_scores, negative_scores])
    is_positive = np.concatenate([np.ones(positive_scores.size), np.zeros(negative_scores.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    # One operating point per distinct score: the last index of each run of equal scores.
    threshold_end = np.flatnonzero(np.diff(scores) != 0)
    threshold_end = np.append(threshold_end, scores.size - 1)
    true_positives = np.cumsum(is_positive)[threshold_end]
    precision = true_positives / (threshold_end + 1)
    recall = true_positives / positive_scores.size
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def rejection_metrics(known_logits, unknown_logits, tpr: float = 0.95, temperature: float = 1.0) -> dict[str, float]:
    """AUROC, FPR at `tpr` and AUPR-In for the MSP, max-logit and energy scores.

    Args:
        known_logits (array-like of `float`): Logits of known samples, shape `(N_known, C)`.
        unknown_logits (array-like of `float`): Logits of unknown samples, shape `(N_unknown, C)`.
        tpr (`float`, *optional*, defaults to 0.95): True positive rate for the FPR metric.
        temperature (`float`, *optional*, defaults to 1.0): Temperature of the energy score.

    Returns:
        `dict[str, float]`: Keys `f"{score}_{metric}"` for score in `msp`, `mls`, `energy` and metric in `auroc`,
        `fpr{round(100 * tpr)}` (`fpr95` by default), `aupr`.
    """
    known_logits, unknown_logits = _logits(known_logits), _logits(unknown_logits)
    if known_logits.shape[1] != unknown_logits.shape[1]:
        raise ValueError(
            f"Known and unknown logits must have the same number of classes, got {known_logits.shape[1]} and "
            f"{unknown_logits.shape[1]}."
        )
    score_functions = {"msp": msp_score, "mls": max_logit_score, "energy": lambda x: energy_score(x, temperature)}
    fpr_name = f"fpr{round(100 * tpr)}"
    result = {}
    for name, score_function in score_functions.items():
        known, unknown = score_function(known_logits), score_function(unknown_logits)
        result[f"{name}_auroc"] = auroc(known, unknown)
        result[f"{name}_{fpr_name}"] = fpr_at_tpr(known, unknown, tpr)
        result[f"{name}_aupr"] = aupr(known, unknown)
    return result
