"""What every fused backend reads: one home for the inputs that `_cpu`, `_portable` and `_triton` all take."""

from __future__ import annotations

from typing import NamedTuple

import torch


class KernelInputs(NamedTuple):
    """The inputs of one call of a backend's `forward` or `backward`.

    Each backend module (`_cpu`, `_portable`, `_triton`) has `forward(inputs, threshold, mean_above_zero)`, returning
    `(per_sample, tau, kept, label_error)`, and `backward(inputs, tau, kept, weight)`, returning the gradient with
    respect to `inputs.grouped`.

    Args:
        grouped (`torch.Tensor`): contiguous `(B, C, I)` logits (see [`group_logits`]); sample `(b, i)` is row
            `b * I + i` of the labels.
        labels (`torch.Tensor`): `(B * I,)` int64 class indices or `ignore_index`.
        margins (`torch.Tensor`, *optional*): `(C,)` per-target-class margins in the compute dtype (HEM+); `None` to
            use `margin` for every sample.
        margin (`float`): the one margin, read when `margins` is `None`.
        ignore_index (`int`): label of samples that take no part.
    """

    grouped: torch.Tensor
    labels: torch.Tensor
    margins: torch.Tensor | None
    margin: float
    ignore_index: int
