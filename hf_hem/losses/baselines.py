"""The paper's baselines: cross-entropy, LogitNorm, logit-adjusted CE, focal and Dice.

Each accepts `(N, C)` or `(N, C, d1, ...)` logits with `(N,)` / `(N, d1, ...)` labels and an `ignore_index`, masked
before any gather or one-hot; with `class_dim=-1`, `(N, d1, ..., C)` logits (token classification heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    check_class_dim_argument,
    check_reduction,
    class_dim_repr,
    flatten_logits_and_labels,
    reduce_per_sample,
    restore_shape,
)


def _cross_entropy_rows(flat_logits, flat_labels, valid, reduction, labels):
    per_sample = F.cross_entropy(flat_logits, flat_labels, reduction="none") * valid
    if reduction == "none":
        return restore_shape(per_sample, labels)
    return reduce_per_sample(per_sample, valid.sum(), reduction)


def cross_entropy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_dim: int = 1,
) -> torch.Tensor:
    """Cross-entropy, with the same shapes, checks and float32 upcast as [`hem_loss`].

    Args:
        ignore_index (`int`, defaults to -100): label of positions that take no part.
        reduction (`str`, defaults to `"mean"`): `"mean"` (over non-ignored positions), `"sum"` or `"none"`.
        class_dim (`int`, defaults to 1): the class dimension of `logits`, 1 or -1 (classes last). The other losses
            of this module take the same three keyword arguments.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.
    """
    check_reduction(reduction)
    flat_logits, flat_labels, valid = flatten_logits_and_labels(logits, labels, ignore_index, class_dim)
    return _cross_entropy_rows(flat_logits, flat_labels, valid, reduction, labels)


def logitnorm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.04,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_dim: int = 1,
) -> torch.Tensor:
    """LogitNorm: cross-entropy on `y / (temperature * ||y||_2)`.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.

    Reference:
        Wei et al., "Mitigating Neural Network Overconfidence with Logit Normalization", ICML 2022.
    """
    check_reduction(reduction)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    flat_logits, flat_labels, valid = flatten_logits_and_labels(logits, labels, ignore_index, class_dim)
    norms = flat_logits.norm(p=2, dim=1, keepdim=True) + 1e-7
    return _cross_entropy_rows(flat_logits / (norms * temperature), flat_labels, valid, reduction, labels)


def logit_adjusted_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_counts,
    tau: float = 1.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_dim: int = 1,
) -> torch.Tensor:
    """Logit-adjusted cross-entropy: cross-entropy on `y + tau * log(pi)`, `pi` the training class priors.

    Args:
        class_counts (`Sequence[int]` or `torch.Tensor`): training samples per class; priors are their frequencies.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.

    Reference:
        Menon et al., "Long-tail learning via logit adjustment", ICLR 2021.
    """
    check_reduction(reduction)
    flat_logits, flat_labels, valid = flatten_logits_and_labels(logits, labels, ignore_index, class_dim)
    log_prior = log_priors(class_counts, flat_logits.shape[1]).to(flat_logits)
    return _cross_entropy_rows(flat_logits + tau * log_prior, flat_labels, valid, reduction, labels)


def log_priors(class_counts, num_classes: int) -> torch.Tensor:
    """Log class priors from counts, with a floor of 1e-12 for classes never seen."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() != num_classes:
        raise ValueError(
            f"class_counts has shape {tuple(counts.shape)}; expected ({num_classes},), one count per class."
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError(f"class_counts must be finite, >= 0 and not all zero, got {counts.tolist()}.")
    return torch.log(counts / counts.sum() + 1e-12).float()


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_dim: int = 1,
) -> torch.Tensor:
    """Focal loss `-(1 - p_t)^gamma * log(p_t)` on the softmax.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """
    check_reduction(reduction)
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    flat_logits, flat_labels, valid = flatten_logits_and_labels(logits, labels, ignore_index, class_dim)
    log_p = F.log_softmax(flat_logits, dim=1).gather(1, flat_labels[:, None]).squeeze(1)
    per_sample = -((1 - log_p.exp()).clamp_min(0) ** gamma) * log_p * valid
    if reduction == "none":
        return restore_shape(per_sample, labels)
    return reduce_per_sample(per_sample, valid.sum(), reduction)


def dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smooth: float = 0.0,
    eps: float = 1e-7,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_dim: int = 1,
) -> torch.Tensor:
    """Multiclass soft Dice loss on the softmax: `1 - mean_c (2 |P_c G_c| + smooth) / (|P_c| + |G_c| + smooth)`.

    The mean runs over the classes present in the labels. With `reduction="mean"` (or `"sum"`, the same value)
    the Dice is computed over every non-ignored position of the batch at once; `"none"` computes it per sample
    `N` over that sample's positions.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or `(N,)` for `reduction="none"`.

    Reference:
        Milletari et al., "V-Net", 3DV 2016 (soft Dice); multiclass form as in segmentation_models_pytorch.
    """
    check_reduction(reduction)
    flat_logits, flat_labels, valid = flatten_logits_and_labels(logits, labels, ignore_index, class_dim)
    num_classes = flat_logits.shape[1]
    probs = F.softmax(flat_logits, dim=1) * valid[:, None]
    one_hot = F.one_hot(flat_labels, num_classes).to(probs.dtype) * valid[:, None]
    # Group the positions: one group per sample for "none", one group for the whole batch otherwise. The rows are in
    # label order whatever the class dimension, so sample n's positions are one block of rows.
    groups = labels.shape[0] if reduction == "none" else 1
    probs, one_hot = probs.reshape(groups, -1, num_classes), one_hot.reshape(groups, -1, num_classes)
    intersection = (probs * one_hot).sum(dim=1)
    cardinality = probs.sum(dim=1) + one_hot.sum(dim=1)
    dice = (2 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    present = one_hot.sum(dim=1) > 0
    per_group = 1 - (dice * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)
    per_group = per_group * present.any(dim=1)
    return per_group if reduction == "none" else per_group[0]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


class _BaselineLoss(nn.Module):
    """Shared by the baseline modules: `ignore_index`, `reduction` and `class_dim`, checked when built."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", class_dim: int = 1):
        super().__init__()
        check_reduction(reduction)
        check_class_dim_argument(class_dim)
        self.ignore_index, self.reduction, self.class_dim = ignore_index, reduction, class_dim

    def _keywords(self) -> dict:
        return {"ignore_index": self.ignore_index, "reduction": self.reduction, "class_dim": self.class_dim}

    def extra_repr(self) -> str:
        return class_dim_repr(self.class_dim)


class CrossEntropyLoss(_BaselineLoss):
    """Module form of [`cross_entropy_loss`].

    Args:
        ignore_index, reduction, class_dim: as [`cross_entropy_loss`]; the other baseline modules take them too.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", *, class_dim: int = 1):
        super().__init__(ignore_index, reduction, class_dim)

    def forward(self, logits, labels):
        return cross_entropy_loss(logits, labels, **self._keywords())


class LogitNormLoss(_BaselineLoss):
    """Module form of [`logitnorm_loss`]."""

    def __init__(
        self, temperature: float = 0.04, ignore_index: int = -100, reduction: str = "mean", *, class_dim: int = 1
    ):
        super().__init__(ignore_index, reduction, class_dim)
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, logits, labels):
        return logitnorm_loss(logits, labels, self.temperature, **self._keywords())


class LogitAdjustedLoss(_BaselineLoss):
    """Module form of [`logit_adjusted_loss`]; the class counts are kept in the `class_counts` buffer."""

    def __init__(
        self, class_counts, tau: float = 1.0, ignore_index: int = -100, reduction: str = "mean", *, class_dim: int = 1
    ):
        super().__init__(ignore_index, reduction, class_dim)
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        log_priors(counts, counts.numel() if counts.dim() == 1 else -1)
        self.register_buffer("class_counts", counts.float())
        self.tau = tau

    def forward(self, logits, labels):
        return logit_adjusted_loss(logits, labels, self.class_counts, self.tau, **self._keywords())


class FocalLoss(_BaselineLoss):
    """Module form of [`focal_loss`]."""

    def __init__(self, gamma: float = 2.0, ignore_index: int = -100, reduction: str = "mean", *, class_dim: int = 1):
        super().__init__(ignore_index, reduction, class_dim)
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = gamma

    def forward(self, logits, labels):
        return focal_loss(logits, labels, self.gamma, **self._keywords())


class DiceLoss(_BaselineLoss):
    """Module form of [`dice_loss`]."""

    def __init__(
        self,
        smooth: float = 0.0,
        eps: float = 1e-7,
        ignore_index: int = -100,
        reduction: str = "mean",
        *,
        class_dim: int = 1,
    ):
        super().__init__(ignore_index, reduction, class_dim)
        self.smooth, self.eps = smooth, eps

    def forward(self, logits, labels):
        return dice_loss(logits, labels, self.smooth, self.eps, **self._keywords())
