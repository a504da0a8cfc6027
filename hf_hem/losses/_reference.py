"""The margin family in plain autograd operations: the definition the fused kernels are tested against.

Kept apart from `hem.py` so that the kernels (`kernels/_upsample.py` falls back to it) can import the definition
without importing the public losses, which import the kernels.
"""

from __future__ import annotations

import torch

from ._common import check_margin, check_reduction, flatten_logits_and_labels, reduce_per_sample, restore_shape


def margin_errors(
    flat_logits: torch.Tensor, flat_labels: torch.Tensor, valid: torch.Tensor, margin: float | torch.Tensor
) -> torch.Tensor:
    """Margin errors `e_i = max(0, y_i - y_t + mu_t)` for `i != t`, 0 for the target and for ignored rows.

    Shape:
        - flat_logits: `(P, C)`, flat_labels and valid: `(P,)`; margin: a float or `(C,)` (per target class).
        - Output: `(P, C)`.
    """
    target_logit = flat_logits.gather(1, flat_labels[:, None])
    if torch.is_tensor(margin):
        margin = margin.to(device=flat_logits.device, dtype=flat_logits.dtype)[flat_labels][:, None]
    errors = (flat_logits - target_logit + margin).clamp_min(0)
    counts = torch.ones_like(errors, dtype=torch.bool).scatter(1, flat_labels[:, None], False)
    counts &= valid[:, None]
    return errors * counts


def _margin_family_loss_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor,
    *,
    threshold: bool,
    mean_above_zero: bool,
    ignore_index: int,
    reduction: str,
    class_dim: int = 1,
) -> torch.Tensor:
    """The margin family in plain autograd operations: the definition the fused kernels are tested against.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)` with `class_dim=1`; `(N, d1, ..., C)` with `class_dim=-1`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.
    """
    check_reduction(reduction)
    flat_logits, flat_labels, valid = flatten_logits_and_labels(logits, labels, ignore_index, class_dim)
    num_classes = flat_logits.shape[1]
    margin = check_margin(margin, num_classes)
    errors = margin_errors(flat_logits, flat_labels, valid, margin)
    # The masks are built from detached values: the threshold tau and the counts are constants for autograd.
    detached = errors.detach()
    kept = detached > 0
    if threshold:
        kept &= detached >= detached.mean(dim=1, keepdim=True)
    kept_sum = (errors * kept).sum(dim=1)
    if mean_above_zero:
        per_sample = kept_sum / kept.sum(dim=1).clamp_min(1).to(kept_sum.dtype)
        denominator = (kept.any(dim=1)).sum()
    else:
        per_sample = kept_sum / num_classes
        denominator = valid.sum()
    if reduction == "none":
        return restore_shape(per_sample, labels)
    return reduce_per_sample(per_sample, denominator, reduction)
