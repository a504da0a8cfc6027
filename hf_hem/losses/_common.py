"""Input checks and reshaping shared by every loss in `hf_hem.losses`."""

from __future__ import annotations

import math
import weakref

import torch


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; expected one of {REDUCTIONS}.")


def flatten_logits_and_labels(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checks `logits`/`labels` and views every position as one sample.

    Args:
        logits (`torch.Tensor`): `(N, C)` or `(N, C, d1, ...)`, any floating dtype.
        labels (`torch.Tensor`): `(N,)` or `(N, d1, ...)`, integer class indices or `ignore_index`.
        ignore_index (`int`): label value of positions that take no part in the loss.

    Returns:
        `(flat_logits, flat_labels, valid)`: `flat_logits` is `(P, C)` in float32 (float64 stays float64),
        `flat_labels` is `(P,)` with ignored positions replaced by 0 so that gathers stay in range, and `valid`
        is the `(P,)` boolean mask of positions that count.
    """
    if not torch.is_tensor(logits) or not torch.is_floating_point(logits):
        raise ValueError(
            f"logits must be a floating point tensor, got {type(logits).__name__} {getattr(logits, 'dtype', '')}."
        )
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}.")
    if not torch.is_tensor(labels) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}.")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected labels of shape {expected} (logits are (N, C, d1, ...), labels (N, d1, ...))."
        )
    num_classes = logits.shape[1]
    if logits.dim() > 2:
        # Class dimension last so that every spatial position becomes one row.
        logits = logits.movedim(1, -1)
    flat_logits = logits.reshape(-1, num_classes)
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        # Half-precision logits are computed in float32; autograd casts the gradient back.
        flat_logits = flat_logits.float()
    flat_labels = labels.reshape(-1).long()
    valid = check_label_range(flat_labels, num_classes, ignore_index)
    flat_labels = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    return flat_logits, flat_labels, valid


def check_label_range(flat_labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Raises a ValueError listing the labels outside `[0, num_classes)` that are not `ignore_index`.

    Returns:
        `torch.Tensor`: the boolean mask of labels that are not `ignore_index`.
    """
    valid = flat_labels != ignore_index
    out_of_range = valid & ((flat_labels < 0) | (flat_labels >= num_classes))
    if bool(out_of_range.any()):
        bad = torch.unique(flat_labels[out_of_range]).tolist()
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ValueError(
            f"labels contain values [{shown}] outside [0, {num_classes}) that are not ignore_index={ignore_index}."
        )
    return valid


# Margin tensors whose values were checked, by id: (weak reference, version counter at the check). A trainer passes
# the same margin buffer on every step; checking its values again would stall the host on a GPU (a device-to-host
# copy) once per step. The version counter moves on every in-place change, so edited margins are checked again.
_checked_margins: dict[int, tuple[weakref.ref, int]] = {}


def _margin_values_known_valid(margin: torch.Tensor) -> bool:
    entry = _checked_margins.get(id(margin))
    return entry is not None and entry[0]() is margin and entry[1] == margin._version


def _check_margin_values(margin: torch.Tensor) -> None:
    """Raises unless every margin is finite and >= 0; remembers a tensor that passed (outside `torch.compile`)."""
    if not bool((torch.isfinite(margin) & (margin >= 0)).all()):
        raise ValueError(f"margins must be finite and >= 0, got {margin.tolist()}.")
    if torch.compiler.is_compiling():
        return
    if len(_checked_margins) >= 64:
        for key in [key for key, (reference, _) in _checked_margins.items() if reference() is None]:
            del _checked_margins[key]
        if len(_checked_margins) >= 64:
            _checked_margins.clear()
    _checked_margins[id(margin)] = (weakref.ref(margin), margin._version)


def check_margin(margin: float | torch.Tensor, num_classes: int | None = None) -> float | torch.Tensor:
    """Validates a scalar margin or a 1-D tensor of per-target-class margins (HEM+)."""
    if torch.is_tensor(margin):
        if margin.dim() == 0:
            margin = float(margin)
        else:
            if margin.dim() != 1:
                raise ValueError(
                    f"margin tensor must be 1-D with one margin per class, got shape {tuple(margin.shape)}."
                )
            if num_classes is not None and margin.numel() != num_classes:
                raise ValueError(
                    f"margin tensor has {margin.numel()} entries but the logits have {num_classes} classes; "
                    "expected one margin per class."
                )
            if not _margin_values_known_valid(margin):
                _check_margin_values(margin)
            return margin
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be a float or a 1-D tensor of per-class margins, got {type(margin).__name__}.")
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be finite and >= 0, got {margin}.")
    return float(margin)


def reduce_per_sample(per_sample: torch.Tensor, denominator: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduces per-sample losses: `mean` divides the sum by `max(denominator, 1)`."""
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / denominator.clamp_min(1).to(total.dtype)


def restore_shape(per_sample: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gives per-position losses the shape of `labels`."""
    return per_sample.reshape(labels.shape)
