"""`LossSettings`: every setting of a run's loss in one checked value, and `build_loss`, the one function that builds
the loss of a run from it.

`HEMConfig` exposes these settings as command-line flags and hands them on with `HEMConfig.to_loss_settings()`;
[`hem_loss_func`] and the experiments take the value itself. The checks live in `LossSettings.__post_init__` only.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..margins import DEFAULT_MAX_MARGIN, Margins, build_margins
from .registry import LOSS_NAMES, LossSpec, loss_spec


@dataclass(frozen=True)
class LossSettings:
    r"""The settings of one run's loss, checked once when the value is made.

    Args:
        loss_name (`str`, defaults to `"hem"`): a registry name (`ce`, `hem`, `hem+`, `mm`, `mm+maz`, `mm+thres`,
            `logitnorm`, `la`, `focal`, `dice`), case-insensitive; kept lower-case.
        margin (`float`, *optional*): one fixed margin for the margin losses; `None` derives the margins from class
            counts. Not allowed with `hem+` or `per_class_margins=True`.
        margin_scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class_margins (`bool`, *optional*): margins per target class (HEM+). `None` means the loss's own
            choice (`True` for `hem+` only) and is replaced by that `bool` when the value is made.
        max_margin (`float` or `None`, defaults to 1.0): cap on the rule's margin (small training sets); `None` or
            `inf`: the paper's rule unchanged.
        class_counts (`tuple[int, ...]`, *optional*): training samples (segmentation: labelled pixels) per class.
        num_margin_samples (`float`, *optional*): `S` in the margin rule; defaults to `sum(class_counts)`.
        ignore_index (`int`, *optional*): the label that takes no part. `None`: -100, unless the model names
            another (the trainer reads `config.semantic_loss_ignore_index`).
        class_dim (`int`, *optional*): the class dimension of the logits, 1 or -1. `None`: from the head (the
            trainer), else 1.
        upsample_logits_in_loss (`bool`, defaults to `False`): the margin losses upsample low-resolution
            segmentation logits block by block.
        logitnorm_temperature (`float`, defaults to 0.04): `tau` of LogitNorm.
        la_tau (`float`, defaults to 1.0): `tau` of logit-adjusted cross-entropy.
        focal_gamma (`float`, defaults to 2.0): `gamma` of the focal loss.
        dice_smooth (`float`, defaults to 0.0): smoothing constant of the soft Dice loss.
        causal_lm_margin (`float`, defaults to 1.0): a causal LM's margin when `margin` is unset (the base of the
            per-token margins for `hem+`).

    Raises:
        `ValueError`: naming the setting and what was expected, for any value out of place.

    Example:

    ```python
    >>> settings = LossSettings("hem+", class_counts=(500, 50, 5))
    >>> criterion = build_loss(settings)
    ```
    """

    loss_name: str = "hem"
    margin: float | None = None
    margin_scale: float = 2000.0
    per_class_margins: bool | None = None
    max_margin: float | None = DEFAULT_MAX_MARGIN
    class_counts: tuple[int, ...] | None = None
    num_margin_samples: float | None = None
    ignore_index: int | None = None
    class_dim: int | None = None
    upsample_logits_in_loss: bool = False
    logitnorm_temperature: float = 0.04
    la_tau: float = 1.0
    focal_gamma: float = 2.0
    dice_smooth: float = 0.0
    causal_lm_margin: float = 1.0

    def __post_init__(self):
        name = self.loss_name.lower() if isinstance(self.loss_name, str) else self.loss_name
        if name not in LOSS_NAMES:
            raise ValueError(
                f"loss_name={self.loss_name!r} is not a known loss; expected one of {', '.join(LOSS_NAMES)}."
            )
        spec = loss_spec(name)
        _set(self, "loss_name", name)
        if self.per_class_margins is None:
            _set(self, "per_class_margins", spec.per_class_margins)
        elif not isinstance(self.per_class_margins, bool):
            raise ValueError(f"per_class_margins must be True, False or None, got {self.per_class_margins!r}.")
        elif spec.per_class_margins and not self.per_class_margins:
            raise ValueError(
                f"per_class_margins=False contradicts loss_name={name!r} (HEM with per-class margins); use "
                "loss_name='hem' for one margin."
            )
        if self.margin is not None:
            check_number("margin", self.margin, minimum=0.0, inclusive=True)
            if spec.per_class_margins:
                raise ValueError(
                    f"margin={self.margin} with loss_name={name!r}: HEM+ uses per-class margins from class counts "
                    "(class_counts or the training set); use loss_name='hem' for one fixed margin."
                )
            if self.per_class_margins:
                raise ValueError(
                    f"margin={self.margin} with per_class_margins=True: per-class margins come from class counts; "
                    "leave margin unset or set per_class_margins=False."
                )
        check_number("margin_scale", self.margin_scale, minimum=0.0)
        if self.max_margin is not None and not (
            isinstance(self.max_margin, (int, float)) and not isinstance(self.max_margin, bool) and self.max_margin > 0
        ):
            raise ValueError(f"max_margin must be a number > 0, inf or None (no cap), got {self.max_margin!r}.")
        if self.class_counts is not None:
            _set(self, "class_counts", _counts_tuple(self.class_counts))
        if self.num_margin_samples is not None:
            check_number("num_margin_samples", self.num_margin_samples, minimum=0.0)
        if self.ignore_index is not None and (
            isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, numbers.Integral)
        ):
            raise ValueError(f"ignore_index must be an int or None, got {self.ignore_index!r}.")
        if self.class_dim is not None and (
            isinstance(self.class_dim, bool) or not isinstance(self.class_dim, int) or self.class_dim == 0
        ):
            raise ValueError(
                f"class_dim must be 1 (logits (N, C, ...)), -1 (classes last) or None (from the head), got "
                f"{self.class_dim!r}."
            )
        if not isinstance(self.upsample_logits_in_loss, bool):
            raise ValueError(f"upsample_logits_in_loss must be True or False, got {self.upsample_logits_in_loss!r}.")
        check_number("logitnorm_temperature", self.logitnorm_temperature, minimum=0.0)
        check_number("la_tau", self.la_tau)
        check_number("focal_gamma", self.focal_gamma, minimum=0.0, inclusive=True)
        check_number("dice_smooth", self.dice_smooth, minimum=0.0, inclusive=True)
        check_number("causal_lm_margin", self.causal_lm_margin, minimum=0.0, inclusive=True)

    @property
    def spec(self) -> LossSpec:
        """The registry's facts about the loss."""
        return loss_spec(self.loss_name)

    @property
    def needs_class_counts(self) -> bool:
        """Whether the loss cannot be built without class counts: HEM+ and `la` always, the other margin losses
        without a `margin`."""
        spec = self.spec
        return spec.needs_class_counts or (spec.margin_loss and self.margin is None)

    def loss_arguments(self) -> dict:
        """The constructor arguments of the loss's baseline parameters (`focal_gamma` -> `gamma`, ...), through the
        registry's `config_arguments`."""
        return {argument: getattr(self, field) for field, argument in self.spec.config_arguments.items()}

    def replace(self, **changes) -> LossSettings:
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)

    def margins(
        self, num_classes: int | None = None, class_counts=None, num_samples: float | None = None, *, tokens=False
    ) -> Margins | None:
        """The run's [`Margins`] from these settings (see [`hf_hem.margins.build_margins`]).

        Args:
            num_classes (`int`, *optional*): the number of classes (the vocabulary size for `tokens`).
            class_counts (*optional*): counts taken from the training set; `self.class_counts` when `None`.
            num_samples (`float`, *optional*): `S`; `self.num_margin_samples` when `None`.
            tokens (`bool`, defaults to `False`): a causal LM: `causal_lm_margin` (per token from the counts for
                HEM+) instead of the rule, when `margin` is unset.
        """
        counts = self.class_counts if class_counts is None else class_counts
        return build_margins(
            num_classes,
            margin=self.margin,
            class_counts=counts,
            scale=self.margin_scale,
            per_class=self.per_class_margins,
            num_samples=self.num_margin_samples if num_samples is None else num_samples,
            max_margin=self.max_margin,
            token_margin=self.causal_lm_margin if tokens and self.margin is None else None,
        )


def build_loss(
    settings: LossSettings,
    class_counts=None,
    *,
    num_classes: int | None = None,
    margins: Margins | None = None,
    reduction: str = "mean",
) -> nn.Module:
    """The loss module of a run, from its settings: the one function that builds a loss from a [`LossSettings`].

    Args:
        settings ([`LossSettings`]): the loss settings.
        class_counts (*optional*): per-class training counts found for this run (HEM+ margins, `la` priors);
            `settings.class_counts` when `None`.
        num_classes (`int`, *optional*): number of classes; `len(class_counts)` when `None`.
        margins ([`Margins`], *optional*): margins already resolved (stored by an earlier run, or a causal LM's);
            built from `settings` when `None`.
        reduction (`str`, defaults to `"mean"`): `"mean"`, `"sum"` or `"none"`.

    Returns:
        `nn.Module`: the registry's module, e.g. [`HEMLoss`] with the margins as its buffer.
    """
    if not isinstance(settings, LossSettings):
        raise ValueError(f"settings must be a LossSettings, got {type(settings).__name__}.")
    spec = settings.spec
    counts = settings.class_counts if class_counts is None else class_counts
    kwargs = {
        "ignore_index": -100 if settings.ignore_index is None else int(settings.ignore_index),
        "reduction": reduction,
        **settings.loss_arguments(),
    }
    class_dim = 1 if settings.class_dim is None else settings.class_dim
    if class_dim != 1:
        kwargs["class_dim"] = class_dim
    if spec.margin_loss:
        if margins is None:
            margins = settings.margins(num_classes, counts)
        if margins is None:
            raise ValueError(
                f"loss {spec.name!r} needs margins: pass margin=, class_counts= or a training set to count them from."
            )
        kwargs["margin"] = margins
        kwargs["upsample_logits"] = settings.upsample_logits_in_loss
    elif spec.needs_class_counts:
        if counts is None:
            raise ValueError(
                f"loss {spec.name!r} ({spec.card.display}) needs class counts: pass class_counts= or a training set."
            )
        kwargs["class_counts"] = counts
    return spec.loss_class(**kwargs)


def _set(settings: LossSettings, name: str, value) -> None:
    object.__setattr__(settings, name, value)


def _counts_tuple(counts) -> tuple[int, ...]:
    """Class counts as a tuple of Python ints, or a clear error."""
    if torch.is_tensor(counts):
        counts = counts.detach().cpu().tolist()
    elif isinstance(counts, np.ndarray):
        counts = counts.tolist()
    try:
        values = list(counts)
    except TypeError:
        values = None
    if (
        not values
        or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0 for c in values)
        or isinstance(counts, (str, bytes))
    ):
        raise ValueError(f"class_counts must be a non-empty list of integers >= 0, got {counts!r}.")
    if sum(values) == 0:
        raise ValueError("class_counts are all zero; expected the training samples per class.")
    return tuple(int(c) for c in values)


def check_number(name: str, value, minimum: float | None = None, inclusive: bool = False) -> None:
    """Raises a ValueError naming `name` unless `value` is a finite real number (`> minimum`, or `>=` if `inclusive`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value >= minimum if inclusive else value > minimum
    if not ok:
        bound = "" if minimum is None else f" {'>=' if inclusive else '>'} {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")
