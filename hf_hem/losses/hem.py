"""HEM (high error margin) loss, HEM+, and the multi-class margin losses it grew from.

Reference: M. W. Spratling and H. H. Schütt, "A margin-based replacement for cross-entropy loss",
arXiv:2501.12191 (2025). The exact definitions, and the choices made where the paper is ambiguous, are on the
project's method page (`docs/method.md`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..margins import DEFAULT_MAX_MARGIN, Margins, build_margins
from ._common import check_class_dim_argument, check_margin, check_reduction, class_dim_repr

# The reference lives in `_reference` so that the kernels can fall back to it without importing this module, which
# imports them. `margin_errors` was defined here first: re-exported, so `hf_hem.losses.hem.margin_errors` still works.
from ._reference import _margin_family_loss_reference
from ._reference import margin_errors as margin_errors
from .kernels import fused_margin_family_loss, resolve_implementation, upsampled_margin_family_loss


def needs_upsampling(logits, labels, class_dim: int = 1) -> bool:
    """Whether `(N, C, h, w)` logits are to be upsampled to `(N, H, W)` labels of another size (SegFormer-style).

    Only logits with the class dimension 1 are upsampled; classes-last logits never are.
    """
    return (
        class_dim == 1
        and torch.is_tensor(logits)
        and torch.is_tensor(labels)
        and logits.dim() == 4
        and labels.dim() == 3
        and tuple(logits.shape[-2:]) != tuple(labels.shape[-2:])
    )


def check_upsample_class_dim(upsample_logits: bool, class_dim: int) -> None:
    """Raises unless `upsample_logits` comes with `class_dim=1`: only `(N, C, h, w)` logits are upsampled."""
    if upsample_logits and class_dim != 1:
        raise ValueError(
            f"upsample_logits=True upsamples (N, C, h, w) logits with class_dim=1 only, got class_dim={class_dim}; "
            "pass logits with classes in dimension 1 or set upsample_logits=False."
        )


def _margin_family_function(name: str, *, threshold: bool, mean_above_zero: bool, doc: str):
    """The public function of one member of the margin family; the members differ only in the two switches.

    It dispatches to the fused kernels (`hf_hem.losses.kernels`) or, for `implementation="reference"`, to the
    reference. Both compute the same function; the fused path needs no autograd graph of `(P, C)` intermediates. One
    body serves the four losses, so their arguments and their dispatch cannot drift apart.
    """

    def loss(
        logits: torch.Tensor,
        labels: torch.Tensor,
        margin: float | torch.Tensor = 0.2,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        implementation: str = "auto",
        upsample_logits: bool = False,
        class_dim: int = 1,
    ) -> torch.Tensor:
        check_upsample_class_dim(upsample_logits, class_dim)
        options = dict(
            threshold=threshold, mean_above_zero=mean_above_zero, ignore_index=ignore_index, reduction=reduction
        )
        if upsample_logits and needs_upsampling(logits, labels):
            return upsampled_margin_family_loss(logits, labels, margin, implementation=implementation, **options)
        if resolve_implementation(logits, margin, implementation, class_dim) == "reference":
            return _margin_family_loss_reference(logits, labels, margin, class_dim=class_dim, **options)
        return fused_margin_family_loss(
            logits, labels, margin, implementation=implementation, class_dim=class_dim, **options
        )

    # Named after the module attribute it is bound to, so that pickling, `repr` and the docs see the public name.
    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return loss


hem_loss = _margin_family_function(
    "hem_loss",
    threshold=True,
    mean_above_zero=True,
    doc=r"""High error margin (HEM) loss; HEM+ when `margin` holds one margin per target class.

    Per sample with logits `y`, target `t`: margin errors `e_i = max(0, y_i - y_t + mu_t)` (`e_t = 0`), threshold
    `tau = mean(e)` over all C entries (detached), kept errors `e_i >= tau`, loss = mean of the kept errors above
    zero. The batch loss is the mean over the samples whose loss is above zero (0 when every sample satisfies the
    margin). Every position of `(N, C, d1, ...)` logits (or `(N, d1, ..., C)` with `class_dim=-1`) is a sample.

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
            upsampled logits are never held in memory; the gradient flows back to the small logits. Needs
            `class_dim=1`.
        class_dim (`int`, defaults to 1): the class dimension of `logits`: 1 (image classification `(N, C)`,
            segmentation `(N, C, H, W)`) or -1, classes last (token classification `(N, L, C)` with `(N, L)`
            labels). The fused kernels read contiguous classes-last logits in place, as `(N * L, C)` rows.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.

    Reference:
        Spratling & Schütt, "A margin-based replacement for cross-entropy loss", arXiv:2501.12191.

    Example:

    ```python
    >>> logits = torch.tensor([[2.0, 1.9, 2.3, 0.0]], requires_grad=True)
    >>> hem_loss(logits, torch.tensor([0]), margin=0.2)
    tensor(0.5000, grad_fn=<DivBackward0>)
    >>> token_logits = torch.randn(2, 7, 5)  # (N, L, C) of a token classification head
    >>> hem_loss(token_logits, torch.randint(0, 5, (2, 7)), class_dim=-1).shape
    torch.Size([])
    ```
    """,
)


mm_loss = _margin_family_function(
    "mm_loss",
    threshold=False,
    mean_above_zero=False,
    doc="""Multi-class margin loss: the mean of all margin errors (equals `F.multi_margin_loss(p=1)`).

    Args: as [`hem_loss`]; `"mean"` divides by the number of non-ignored samples.
    """,
)


mm_maz_loss = _margin_family_function(
    "mm_maz_loss",
    threshold=False,
    mean_above_zero=True,
    doc="""MM+maz ablation: mean of the errors above zero per sample, mean over samples above zero (no threshold).

    Args: as [`hem_loss`].
    """,
)


mm_thres_loss = _margin_family_function(
    "mm_thres_loss",
    threshold=True,
    mean_above_zero=False,
    doc="""MM+thres ablation: HEM's threshold, then a plain mean over all C entries and all samples.

    Args: as [`hem_loss`]; `"mean"` divides by the number of non-ignored samples.
    """,
)


class _MarginLoss(nn.Module):
    _function = staticmethod(hem_loss)

    def __init__(
        self,
        margin: float | torch.Tensor | Margins = 0.2,
        ignore_index: int = -100,
        reduction: str = "mean",
        upsample_logits: bool = False,
        *,
        class_dim: int = 1,
    ):
        super().__init__()
        check_reduction(reduction)
        check_class_dim_argument(class_dim)
        check_upsample_class_dim(upsample_logits, class_dim)
        if isinstance(margin, Margins):
            # Checked when built; per class or shared as decided there: the (C,) values, or the shared float.
            margin = margin.values if margin.per_class else margin.shared
        else:
            margin = check_margin(margin)  # a float, or a (C,) tensor of per-class margins
        # A buffer, so margins follow `.to(device)` and are saved in the state dict: (C,) per class, 0-d shared.
        self.register_buffer("margin", torch.as_tensor(margin, dtype=torch.float32).clone())
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.upsample_logits = upsample_logits
        self.class_dim = class_dim
        self._scalar_margin_key: tuple | None = None
        self._scalar_margin = 0.0

    def _buffer_key(self) -> tuple:
        return (self.margin.device, self.margin.data_ptr(), self.margin._version)

    def _margin_argument(self) -> float | torch.Tensor:
        if self.margin.dim():
            return self.margin
        # Reading a scalar margin that lives on a GPU stalls the host; read it again only when the buffer moved
        # (`.to`) or changed (`load_state_dict`, in-place edits).
        key = self._buffer_key()
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
        class_dim: int = 1,
        max_margin: float | None = DEFAULT_MAX_MARGIN,
    ):
        """Builds the loss with margins derived from training label counts (through [`build_margins`], the rule of
        [`margins_from_counts`]; `max_margin` caps the rule's margin on small training sets, `None` keeps the paper's
        rule unchanged). `per_class=False` gives one shared margin."""
        margins = build_margins(
            None, class_counts=counts, scale=scale, per_class=per_class, num_samples=num_samples, max_margin=max_margin
        )
        return cls(
            margins,
            ignore_index=ignore_index,
            reduction=reduction,
            upsample_logits=upsample_logits,
            class_dim=class_dim,
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return type(self)._function(
            logits,
            labels,
            self._margin_argument(),
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            upsample_logits=self.upsample_logits,
            class_dim=self.class_dim,
        )

    def extra_repr(self) -> str:
        margin = f"{float(self.margin):.4g}" if self.margin.dim() == 0 else f"per-class ({self.margin.numel()})"
        upsample = ", upsample_logits=True" if self.upsample_logits else ""
        class_dim = f", {class_dim_repr(self.class_dim)}" if self.class_dim != 1 else ""
        return f"margin={margin}, ignore_index={self.ignore_index}, reduction={self.reduction!r}{upsample}{class_dim}"


class HEMLoss(_MarginLoss):
    """Module form of [`hem_loss`]; margins are kept in the `margin` buffer.

    Args:
        margin, ignore_index, reduction, upsample_logits: as [`hem_loss`].
        class_dim (`int`, defaults to 1): the class dimension of the logits, 1 or -1 (classes last, as token
            classification heads give them); kept as the `class_dim` attribute.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)`; with `class_dim=-1`, `(N, d1, ..., C)`
        - labels: `(N,)` or `(N, d1, ...)`
        - Output: scalar, or shaped like `labels` for `reduction="none"`.

    Example:

    ```python
    >>> criterion = HEMLoss.from_label_counts(torch.bincount(train_labels))  # HEM+
    >>> loss = criterion(model(images), labels)
    >>> token_criterion = HEMLoss(0.2, class_dim=-1)  # (N, L, C) logits, (N, L) labels
    ```
    """

    _function = staticmethod(hem_loss)


class MMLoss(_MarginLoss):
    """Module form of [`mm_loss`]; arguments and shapes as [`HEMLoss`]."""

    _function = staticmethod(mm_loss)


class MMMazLoss(_MarginLoss):
    """Module form of [`mm_maz_loss`]; arguments and shapes as [`HEMLoss`]."""

    _function = staticmethod(mm_maz_loss)


class MMThresLoss(_MarginLoss):
    """Module form of [`mm_thres_loss`]; arguments and shapes as [`HEMLoss`]."""

    _function = staticmethod(mm_thres_loss)
