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


def resolve_margins(
    num_classes: int,
    *,
    margin: float | None = None,
    class_counts=None,
    scale: float = 2000.0,
    per_class: bool = False,
    num_samples: float | None = None,
) -> torch.Tensor | None:
    """`(num_classes,)` margins from a fixed margin or from class counts; `None` when neither is known.

    The one place where the trainer, [`hem_loss_func`] and the task suite turn their settings into margins: a fixed
    `margin` is repeated per class, otherwise [`margins_from_counts`] applies the paper's rule.

    Args:
        num_classes (`int`): number of classes (checked against `len(class_counts)`).
        margin (`float`, *optional*): one fixed margin, finite and >= 0.
        class_counts (*optional*): training samples (segmentation: labelled pixels) per class.
        scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class (`bool`, defaults to `False`): HEM+ margins (one per target class).
        num_samples (`float`, *optional*): `S`; defaults to `sum(class_counts)`.
    """
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
        return torch.full((max(int(num_classes), 1),), float(margin), dtype=torch.float32)
    if class_counts is None:
        return None
    return margins_from_counts(
        class_counts, scale=scale, per_class=per_class, num_classes=num_classes or None, num_samples=num_samples
    )


# Keys written into a model config, so checkpoints and Hub downloads carry the margins they were trained with.
CONFIG_KEYS = ("hem_loss", "hem_margins", "hem_class_counts", "hem_margin_scale", "hem_num_margin_samples")


def store_margins_in_config(
    config, loss_name: str, margins: torch.Tensor | None, class_counts, margin_scale: float, num_samples
) -> None:
    """Writes the loss, margins, counts, `M` and `S` into `config` (`CONFIG_KEYS`); a no-op without a config."""
    if config is None:
        return
    config.hem_loss = loss_name
    config.hem_margins = None if margins is None else [float(m) for m in margins.tolist()]
    config.hem_class_counts = None if class_counts is None else [int(c) for c in class_counts]
    config.hem_margin_scale = float(margin_scale)
    config.hem_num_margin_samples = num_samples


def stored_margins(stored, num_classes: int, source: str) -> torch.Tensor | None:
    """The margins an earlier HEM run stored (a config object or a `config.json` dict), checked; `None` if none."""
    values = stored.get("hem_margins") if isinstance(stored, dict) else getattr(stored, "hem_margins", None)
    if values is None:
        return None
    margins = torch.as_tensor(values, dtype=torch.float32)
    if margins.numel() != num_classes:
        raise ValueError(f"{source} holds {margins.numel()} margins but the model has num_labels={num_classes}.")
    return margins
