"""Input checks and reshaping shared by every loss in `hf_hem.losses`."""

from __future__ import annotations

import math
import weakref

import torch


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; expected one of {REDUCTIONS}.")


def check_class_dim_argument(class_dim) -> int:
    """Checks a `class_dim` argument before the logits are known (module constructors): an int that is not 0."""
    if isinstance(class_dim, bool) or not isinstance(class_dim, int):
        raise ValueError(
            f"class_dim must be an int, got {class_dim!r}; expected 1 (logits (N, C, d1, ...)) or -1 "
            "(class dimension last, logits (N, d1, ..., C))."
        )
    if class_dim == 0:
        raise ValueError(
            "class_dim=0 is not supported: dimension 0 is the batch; expected 1 (logits (N, C, d1, ...)) or -1 "
            "(class dimension last, logits (N, d1, ..., C))."
        )
    return class_dim


def normalize_class_dim(class_dim, logits_shape) -> int:
    """The class dimension of logits of shape `logits_shape` as a non-negative index: 1 or the last dimension.

    Only the two layouts the heads of transformers produce are supported: classes first after the batch (image
    classification `(N, C)`, segmentation `(N, C, H, W)`) and classes last (token classification `(N, L, C)`).

    Raises:
        `ValueError`: naming `class_dim` and the shape, for any other dimension.
    """
    check_class_dim_argument(class_dim)
    ndim = len(logits_shape)
    if -ndim <= class_dim < ndim and class_dim % ndim in (1, ndim - 1):
        return class_dim % ndim
    raise ValueError(
        f"class_dim={class_dim} is not supported for logits of shape {tuple(logits_shape)}: expected 1 "
        f"(logits (N, C, d1, ...)) or the last dimension, -1 or {ndim - 1} (logits (N, d1, ..., C))."
    )


def labels_shape_for(logits_shape, class_dim: int) -> tuple[int, ...]:
    """The shape labels must have: the logits' shape without the (normalised) class dimension."""
    return tuple(size for dim, size in enumerate(logits_shape) if dim != class_dim)


def check_logits_and_labels(logits: torch.Tensor, labels: torch.Tensor, class_dim: int = 1) -> int:
    """Checks the logits' type and rank, `class_dim`, and the labels' type and shape, without touching any data.

    Returns:
        `int`: the class dimension as a non-negative index (1, or `logits.dim() - 1`).
    """
    if not torch.is_tensor(logits) or not torch.is_floating_point(logits):
        raise ValueError(
            f"logits must be a floating point tensor, got {type(logits).__name__} {getattr(logits, 'dtype', '')}."
        )
    if logits.dim() < 2:
        raise ValueError(
            f"logits must have shape (N, C), (N, C, d1, ...) or, with class_dim=-1, (N, d1, ..., C); got shape "
            f"{tuple(logits.shape)}."
        )
    given, class_dim = class_dim, normalize_class_dim(class_dim, logits.shape)
    if (
        not torch.is_tensor(labels)
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
    ):
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}.")
    expected = labels_shape_for(logits.shape, class_dim)
    if tuple(labels.shape) != expected:
        layout = "(N, C, d1, ...)" if class_dim == 1 else "(N, d1, ..., C)"
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape {tuple(logits.shape)} with "
            f"class_dim={given}: expected labels of shape {expected} (the logits' shape without the class "
            f"dimension; logits are {layout}, labels (N, d1, ...))."
        )
    return class_dim


def flatten_logits_and_labels(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, class_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checks `logits`/`labels` and views every position as one sample.

    Args:
        logits (`torch.Tensor`): any floating dtype.
        labels (`torch.Tensor`): integer class indices or `ignore_index`.
        ignore_index (`int`): label value of positions that take no part in the loss.
        class_dim (`int`, defaults to 1): the class dimension of `logits`, 1 or the last one (-1).

    Returns:
        `(flat_logits, flat_labels, valid)`: `flat_logits` is `(P, C)` in float32 (float64 stays float64),
        `flat_labels` is `(P,)` with ignored positions replaced by 0 so that gathers stay in range, and `valid`
        is the `(P,)` boolean mask of positions that count. Row `p` is position `p` of `labels.reshape(-1)`.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)` with `class_dim=1`; `(N, d1, ..., C)` with `class_dim=-1`
        - labels: `(N,)` or `(N, d1, ...)`
    """
    class_dim = check_logits_and_labels(logits, labels, class_dim)
    num_classes = logits.shape[class_dim]
    if class_dim != logits.dim() - 1:
        # Class dimension last so that every spatial position becomes one row (a view when already classes-last).
        logits = logits.movedim(class_dim, -1)
    flat_logits = logits.reshape(-1, num_classes)
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        # Half-precision logits are computed in float32; autograd casts the gradient back.
        flat_logits = flat_logits.float()
    flat_labels = labels.reshape(-1).long()
    valid = check_label_range(flat_labels, num_classes, ignore_index)
    flat_labels = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    return flat_logits, flat_labels, valid


def class_dim_repr(class_dim: int) -> str:
    """The `extra_repr` part of a module's `class_dim`: empty for the default 1."""
    return "" if class_dim == 1 else f"class_dim={class_dim}"


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
