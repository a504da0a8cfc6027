"""From training label counts to HEM / HEM+ margins."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch


def _as_counts(counts, num_classes: int | None) -> np.ndarray:
    array = np.asarray(counts.detach().cpu() if torch.is_tensor(counts) else counts, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence with one count per class, got shape {array.shape}.")
    if num_classes is not None and array.size != num_classes:
        raise ValueError(
            f"counts has {array.size} entries but num_classes={num_classes}; expected one count per class."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"counts must be finite and >= 0, got {array.tolist()}.")
    if array.sum() == 0:
        raise ValueError("counts are all zero: margins need at least one training sample.")
    return array


def margins_from_counts(
    counts,
    scale: float = 2000.0,
    per_class: bool = True,
    *,
    num_classes: int | None = None,
    num_samples: float | None = None,
) -> torch.Tensor:
    r"""Margins from the training set's label counts.

    HEM uses one margin `mu = sqrt(M / S)` for `S` training samples. HEM+ gives each target class `c` its own
    margin `mu_c = sqrt(M / (n * S * p_c))`, with `n` classes and `p_c = counts[c] / sum(counts)` — for
    classification (`S = sum(counts)`) that is `sqrt(M / (n * counts[c]))`, and with balanced classes it equals HEM.

    Args:
        counts (`Sequence[int]` or `torch.Tensor`): training samples (or, for segmentation, labelled pixels) per class.
        scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class (`bool`, defaults to `True`): HEM+ margins; if `False`, the single HEM margin repeated `n` times.
        num_classes (`int`, *optional*): expected number of classes, checked against `len(counts)`.
        num_samples (`float`, *optional*): `S`. Defaults to `sum(counts)`. For segmentation pass the number of
            training **images**: counting pixels as samples would drive the margin towards 0.

    Returns:
        `torch.Tensor` of shape `(n,)`, float32. A class with no training sample is never a target, so its margin is
        never used: it gets the largest finite margin, with a warning.
    """
    array = _as_counts(counts, num_classes)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}.")
    total = float(array.sum())
    samples = total if num_samples is None else float(num_samples)
    if not math.isfinite(samples) or samples <= 0:
        raise ValueError(f"num_samples must be a finite number > 0, got {num_samples!r}.")
    n = array.size
    if not per_class:
        return torch.full((n,), math.sqrt(scale / samples), dtype=torch.float32)
    present = array > 0
    margins = np.empty(n, dtype=np.float64)
    margins[present] = np.sqrt(scale / (n * samples * array[present] / total))
    if not present.all():
        missing = np.flatnonzero(~present).tolist()
        warnings.warn(
            f"classes {missing} have no training samples; giving them the largest finite margin "
            f"{margins[present].max():.4g} (it is never used while they never appear as targets).",
            stacklevel=2,
        )
        margins[~present] = margins[present].max()
    return torch.as_tensor(margins, dtype=torch.float32)
