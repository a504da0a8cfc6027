"""HEM (high error margin) loss, HEM+, and the multi-class margin losses it grew from.

Reference: M. W. Spratling and H. H. Schütt, "A margin-based replacement for cross-entropy loss",
arXiv:2501.12191 (2025). The exact definitions, and the choices made where the paper is ambiguous, are on the
project's method page (`docs/method.md`).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_margin, check_reduction, flatten_logits_and_labels, reduce_per_sample, restore_shape
from .kernels import fused_margin_family_loss, resolve_implementation
from .kernels._upsample import upsampled_margin_family_loss


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
) -> torch.Tensor:
    """The margin family in plain autograd operations: the definition the fused kernels are tested against."""
    check_reduction(reduction)
    flat_logits, flat_labels, valid = flatten_logits_and_labels(logits, labels, ignore_index)
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


def needs_upsampling(logits, labels) -> bool:
    """Whether `(N, C, h, w)` logits are to be upsampled to `(N, H, W)` labels of another size (SegFormer-style)."""
    return (
        torch.is_tensor(logits)
        and torch.is_tensor(labels)
        and logits.dim() == 4
        and labels.dim() == 3
        and tuple(logits.shape[-2:]) != tuple(labels.shape[-2:])
    )


def _margin_family_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor,
    *,
    threshold: bool,
    mean_above_zero: bool,
    ignore_index: int,
    reduction: str,
    implementation: str = "auto",
    upsample_logits: bool = False,
) -> torch.Tensor:
    """Dispatches to the fused kernels (`hf_hem.losses.kernels`) or, for `implementation="reference"`, the reference.

    Both compute the same function; the fused path needs no autograd graph of `(P, C)` intermediates.
    """
    if upsample_logits and needs_upsampling(logits, labels):
        return upsampled_margin_family_loss(
            logits,
            labels,
            margin,
            threshold=threshold,
            mean_above_zero=mean_above_zero,
            ignore_index=ignore_index,
            reduction=reduction,
            implementation=implementation,
        )
    if resolve_implementation(logits, margin, implementation) == "reference":
        return _margin_family_loss_reference(
            logits,
            labels,
            margin,
            threshold=threshold,
            mean_above_zero=mean_above_zero,
            ignore_index=ignore_index,
            reduction=reduction,
        )
    return fused_margin_family_loss(
        logits,
        labels,
        margin,
        threshold=threshold,
        mean_above_zero=mean_above_zero,
        ignore_index=ignore_index,
        reduction=reduction,
        implementation=implementation,
    )


def hem_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor = 0.2,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    implementation: str = "auto",
    upsample_logits: bool = False,
) -> torch.Tensor:
    r"""High error margin (HEM) loss; HEM+ when `margin` holds one margin per target class.

    Per sample with logits `y`, target `t`: margin errors `e_i = max(0, y_i - y_t + mu_t)` (`e_t = 0`), threshold
    `tau = mean(e)` over all C entries (detached), kept errors `e_i >= tau`, loss = mean of the kept errors above
    zero. The batch loss is the mean over the samples whose loss is above zero (0 when every sample satisfies the
    margin). Every position of `(N, C, d1, ...)` logits is a sample.

    Args:
        logits (`torch.Tensor`): unnormalised scores; half precision is computed in float32.
        labels (`torch.Tensor`): class indices, or `ignore_index` for positions that do not count.
        margin (`float` or `torch.Tensor`, defaults to 0.2): one margin `mu`, or a `(C,)` tensor `mu_c` used for
            samples whose target is `c` (HEM+, see [`margins_from_counts`]).
        ignore_index (`int`, defaults to -100): label of ignored positions; they get loss 0 and gradient 0.
        reduction (`str`, defaults to `"mean"`): `"mean"` (the paper's batch loss), `"sum"` (sum of per-sample
            losses) or `"none"` (per-sample losses, shaped like `labels`).
        implementation (`str`, defaults to `"auto"`): `"auto"` uses the fused kernels of `hf_hem.losses.kernels`
            (Triton on CUDA, a compiled C++ kernel on CPU, chunked torch elsewhere); `"reference"` the plain
            autograd definition; `"cpu"`, `"triton"` or `"torch"` force one fused backend.
        upsample_logits (`bool`, defaults to `False`): when `(N, C, h, w)` logits are smaller than the `(N, H, W)`
            labels (SegFormer-style models), score them upsampled to the label size as SegFormer's own loss does
            (`F.interpolate(..., mode="bilinear", align_corners=False)`), a block of rows at a time, so the
            upsampled logits are never held in memory; the gradient flows back to the small logits.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.

    Reference:
        Spratling & Schütt, "A margin-based replacement for cross-entropy loss", arXiv:2501.12191.

    Example:

    ```python
    >>> logits = torch.tensor([[2.0, 1.9, 2.3, 0.0]], requires_grad=True)
    >>> hem_loss(logits, torch.tensor([0]), margin=0.2)
    tensor(0.5000, grad_fn=<DivBackward0>)
    ```
    """
    return _margin_family_loss(
        logits,
        labels,
        margin,
        threshold=True,
        mean_above_zero=True,
        ignore_index=ignore_index,
        reduction=reduction,
        implementation=implementation,
        upsample_logits=upsample_logits,
    )


def mm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor = 0.2,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    implementation: str = "auto",
    upsample_logits: bool = False,
) -> torch.Tensor:
    """Multi-class margin loss: the mean of all margin errors (equals `F.multi_margin_loss(p=1)`).

    Args: as [`hem_loss`]; `"mean"` divides by the number of non-ignored samples.
    """
    return _margin_family_loss(
        logits,
        labels,
        margin,
        threshold=False,
        mean_above_zero=False,
        ignore_index=ignore_index,
        reduction=reduction,
        implementation=implementation,
        upsample_logits=upsample_logits,
    )


def mm_maz_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor = 0.2,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    implementation: str = "auto",
    upsample_logits: bool = False,
) -> torch.Tensor:
    """MM+maz ablation: mean of the errors above zero per sample, mean over samples above zero (no threshold).

    Args: as [`hem_loss`].
    """
    return _margin_family_loss(
        logits,
        labels,
        margin,
        threshold=False,
        mean_above_zero=True,
        ignore_index=ignore_index,
        reduction=reduction,
        implementation=implementation,
        upsample_logits=upsample_logits,
    )


def mm_thres_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor = 0.2,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    implementation: str = "auto",
    upsample_logits: bool = False,
) -> torch.Tensor:
    """MM+thres ablation: HEM's threshold, then a plain mean over all C entries and all samples.

    Args: as [`hem_loss`]; `"mean"` divides by the number of non-ignored samples.
    """
    return _margin_family_loss(
        logits,
        labels,
        margin,
        threshold=True,
        mean_above_zero=False,
        ignore_index=ignore_index,
        reduction=reduction,
        implementation=implementation,
        upsample_logits=upsample_logits,
    )


class _MarginLoss(nn.Module):
    _function = staticmethod(hem_loss)

    def __init__(
        self,
        margin: float | torch.Tensor = 0.2,
        ignore_index: int = -100,
        reduction: str = "mean",
        upsample_logits: bool = False,
    ):
        super().__init__()
        check_reduction(reduction)
        margin = check_margin(margin)
        # A buffer, so margins follow `.to(device)` and are saved in the state dict.
        self.register_buffer("margin", torch.as_tensor(margin, dtype=torch.float32).clone())
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.upsample_logits = upsample_logits
        self._scalar_margin_key: tuple | None = None
        self._scalar_margin = 0.0

    def _margin_argument(self) -> float | torch.Tensor:
        if self.margin.dim():
            return self.margin
        # Reading a scalar margin that lives on a GPU stalls the host; read it again only when the buffer moved
        # (`.to`) or changed (`load_state_dict`, in-place edits).
        key = (self.margin.device, self.margin.data_ptr(), self.margin._version)
        if key != self._scalar_margin_key:
            self._scalar_margin, self._scalar_margin_key = float(self.margin), key
        return self._scalar_margin

    @classmethod
    def from_label_counts(
        cls,
        counts,
        scale: float = 2000.0,
        per_class: bool = True,
        *,
        num_samples: int | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        upsample_logits: bool = False,
    ):
        """Builds the loss with margins derived from training label counts (see [`margins_from_counts`])."""
        from ..margins import margins_from_counts

        margins = margins_from_counts(counts, scale=scale, per_class=per_class, num_samples=num_samples)
        return cls(margins, ignore_index=ignore_index, reduction=reduction, upsample_logits=upsample_logits)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return type(self)._function(
            logits,
            labels,
            self._margin_argument(),
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            upsample_logits=self.upsample_logits,
        )

    def extra_repr(self) -> str:
        margin = f"{float(self.margin):.4g}" if self.margin.dim() == 0 else f"per-class ({self.margin.numel()})"
        upsample = ", upsample_logits=True" if self.upsample_logits else ""
        return f"margin={margin}, ignore_index={self.ignore_index}, reduction={self.reduction!r}{upsample}"


class HEMLoss(_MarginLoss):
    """Module form of [`hem_loss`]; margins are kept in the `margin` buffer.

    Example:

    ```python
    >>> criterion = HEMLoss.from_label_counts(torch.bincount(train_labels))  # HEM+
    >>> loss = criterion(model(images), labels)
    ```
    """

    _function = staticmethod(hem_loss)


class MMLoss(_MarginLoss):
    """Module form of [`mm_loss`]."""

    _function = staticmethod(mm_loss)


class MMMazLoss(_MarginLoss):
    """Module form of [`mm_maz_loss`]."""

    _function = staticmethod(mm_maz_loss)


class MMThresLoss(_MarginLoss):
    """Module form of [`mm_thres_loss`]."""

    _function = staticmethod(mm_thres_loss)
