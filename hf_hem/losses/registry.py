"""`get_loss(name, **kwargs)`: every loss of the library by its short name."""

from __future__ import annotations

from torch import nn

from .baselines import CrossEntropyLoss, DiceLoss, FocalLoss, LogitAdjustedLoss, LogitNormLoss
from .hem import HEMLoss, MMLoss, MMMazLoss, MMThresLoss


_MARGIN_LOSSES = {"hem": HEMLoss, "hem+": HEMLoss, "mm": MMLoss, "mm+maz": MMMazLoss, "mm+thres": MMThresLoss}
_BASELINES = {
    "ce": CrossEntropyLoss,
    "logitnorm": LogitNormLoss,
    "la": LogitAdjustedLoss,
    "focal": FocalLoss,
    "dice": DiceLoss,
}
LOSS_NAMES = ("ce", "hem", "hem+", "mm", "mm+maz", "mm+thres", "logitnorm", "la", "focal", "dice")
MARGIN_LOSS_NAMES = tuple(_MARGIN_LOSSES)
# Losses whose construction needs the training set's class counts unless a margin is given.
COUNT_LOSS_NAMES = ("hem+", "la")


def get_loss(name: str, **kwargs) -> nn.Module:
    """Builds a loss module by name.

    Args:
        name (`str`): one of `ce, hem, hem+, mm, mm+maz, mm+thres, logitnorm, la, focal, dice` (case-insensitive).
        kwargs: the module's constructor arguments. For the margin losses, either `margin=` or
            `class_counts=` (with optional `scale=`, `num_samples=`); `hem+` uses per-class margins from
            `class_counts`, `hem`/`mm*` one margin (from `class_counts` if no `margin` is given). `la` needs
            `class_counts=`.

    Example:

    ```python
    >>> criterion = get_loss("hem+", class_counts=[5000, 500, 50])
    ```
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; valid names are: {', '.join(LOSS_NAMES)}.")
    if key in _MARGIN_LOSSES:
        cls = _MARGIN_LOSSES[key]
        class_counts = kwargs.pop("class_counts", None)
        scale = kwargs.pop("scale", 2000.0)
        num_samples = kwargs.pop("num_samples", None)
        if kwargs.get("margin") is None:
            kwargs.pop("margin", None)
            if class_counts is None:
                if key == "hem+":
                    raise ValueError("loss 'hem+' needs class_counts= (training samples per class) or margin=.")
                return cls(**kwargs)
            return cls.from_label_counts(
                class_counts, scale=scale, per_class=key == "hem+", num_samples=num_samples, **kwargs
            )
        return cls(**kwargs)
    if key == "la" and kwargs.get("class_counts") is None:
        raise ValueError("loss 'la' (logit-adjusted CE) needs class_counts= (training samples per class).")
    return _BASELINES[key](**kwargs)
