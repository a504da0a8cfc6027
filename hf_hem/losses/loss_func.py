"""`hem_loss_func`: any registry loss for the stock transformers `Trainer`'s `compute_loss_func` argument.

No transformers import: the callable follows the Trainer's contract (`(outputs, labels, num_items_in_batch)`) with
plain torch and `torch.distributed`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..margins import resolve_margins
from .registry import LOSS_NAMES, MARGIN_LOSS_NAMES, loss_spec
from .terms import LossTerms, logits_from_outputs


class HEMLossFunction:
    """The callable returned by [`hem_loss_func`]; see there."""

    def __init__(self, terms: LossTerms, average_tokens_across_devices: bool = True):
        self.terms = terms
        self.average_tokens_across_devices = average_tokens_across_devices

    @property
    def margins(self) -> torch.Tensor | None:
        return self.terms.margins

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
        if labels is None:
            raise ValueError("hem_loss_func got labels=None; the batches must contain 'labels'.")
        logits = self.terms.match_label_size(logits_from_outputs(outputs), labels)
        local_sum, local_count = self.terms.parts(logits, labels)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world_size = torch.distributed.get_world_size() if distributed else 1
        # The Trainer's own share of this micro-batch in its accumulation window: labels != -100, as it counts.
        items_here = labels.ne(-100).sum().to(local_count)
        if world_size > 1:
            packed = torch.stack([local_count, items_here])
            torch.distributed.all_reduce(packed)
            global_count = packed[0]
            if self.average_tokens_across_devices:
                items_here = packed[1]  # num_items_in_batch is then summed over processes too
        else:
            global_count = local_count
        loss = local_sum / global_count.clamp_min(1).to(local_sum.dtype)
        trainer_multiplies = num_items_in_batch is not None and self.average_tokens_across_devices
        if num_items_in_batch is not None:
            # Weight of this micro-batch in the accumulation window; 1/k for k equal micro-batches.
            total = torch.as_tensor(num_items_in_batch, dtype=items_here.dtype, device=items_here.device)
            loss = loss * (items_here / total.clamp_min(1)).to(loss)
        if world_size > 1 and not trainer_multiplies:
            loss = loss * world_size  # undo DDP's gradient averaging ourselves
        return loss

    def __repr__(self) -> str:
        return f"HEMLossFunction(loss_name={self.terms.loss_name!r}, ignore_index={self.terms.ignore_index})"


def hem_loss_func(
    loss_name: str = "hem",
    margin: float | None = None,
    *,
    class_counts=None,
    num_classes: int | None = None,
    margin_scale: float = 2000.0,
    per_class_margins: bool | None = None,
    num_margin_samples: float | None = None,
    ignore_index: int = -100,
    logitnorm_temperature: float = 0.04,
    la_tau: float = 1.0,
    focal_gamma: float = 2.0,
    dice_smooth: float = 0.0,
    upsample_logits_in_loss: bool = False,
    average_tokens_across_devices: bool = True,
    class_dim: int = 1,
) -> HEMLossFunction:
    r"""A loss for the stock [`~transformers.Trainer`]'s `compute_loss_func` argument.

    The stock Trainer pops the labels and calls `loss_func(outputs, labels, num_items_in_batch=...)`. It treats the
    result as already scaled for gradient accumulation and, with `average_tokens_across_devices` (the default),
    multiplies it by the number of processes. This callable follows that contract:

    * several processes: the count of violating samples is all-reduced, so the gradient is that of the concatenated
      global batch, as in [`HEMTrainer`];
    * gradient accumulation: each micro-batch is its own HEM batch, weighted by its share of the window's labels
      (`labels != -100`, the Trainer's `num_items_in_batch`): `sum_m (items_m / items) * L_m`. For equal-sized
      micro-batches this is the plain mean that [`HEMTrainer`] optimises.

    [`HEMTrainer`] also derives margins from the training set, stores them in the model config and logs the `hem/*`
    metrics; with `hem_loss_func` pass the margin or the class counts yourself (e.g. from [`count_labels`]).

    Args:
        loss_name (`str`, defaults to `"hem"`): any name of [`get_loss`].
        margin (`float`, *optional*): one fixed margin for the margin losses.
        class_counts (`Sequence[int]`, *optional*): training samples (or pixels) per class: margins
            `sqrt(margin_scale / S)` capped at 1 (per class for `hem+`; see [`resolve_margins`]), and the priors of
            `la`.
        num_classes (`int`, *optional*): number of classes, needed with `margin` for per-class metrics; defaults to
            `len(class_counts)`.
        margin_scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class_margins (`bool`, *optional*): HEM+ margins; defaults to `loss_name == "hem+"`.
        num_margin_samples (`float`, *optional*): `S`; defaults to `sum(class_counts)`. Pass the number of images for
            segmentation.
        ignore_index (`int`, defaults to -100): label value ignored by the loss (255 for most segmentation sets).
        logitnorm_temperature, la_tau, focal_gamma, dice_smooth: parameters of the baselines.
        upsample_logits_in_loss (`bool`, defaults to `False`): as the [`HEMConfig`] field: the margin losses
            upsample low-resolution segmentation logits block by block instead of materialising them.
        average_tokens_across_devices (`bool`, defaults to `True`): must equal the `TrainingArguments` field of the
            same name, which decides whether the Trainer multiplies the loss by the number of processes.
        class_dim (`int`, defaults to 1): where the classes are in the logits; -1 for token classification
            (`(N, L, C)` logits, `(N, L)` labels).

    Returns:
        `HEMLossFunction`: a callable `(outputs, labels, num_items_in_batch=None) -> torch.Tensor`.

    Example:

    ```python
    >>> counts = count_labels(train_ds, num_classes=10)
    >>> trainer = Trainer(model, args, train_dataset=train_ds, compute_loss_func=hem_loss_func("hem+", class_counts=counts))
    ```
    """
    if not isinstance(loss_name, str) or loss_name.lower() not in LOSS_NAMES:
        raise ValueError(f"loss_name={loss_name!r} is not a known loss; expected one of {', '.join(LOSS_NAMES)}.")
    name = loss_spec(loss_name).name
    per_class = name == "hem+" if per_class_margins is None else bool(per_class_margins)
    if name == "hem+" and (margin is not None or not per_class):
        raise ValueError("loss 'hem+' uses per-class margins from class_counts=; use loss_name='hem' for one margin.")
    if class_counts is not None:
        class_counts = np.asarray(
            class_counts.detach().cpu() if torch.is_tensor(class_counts) else class_counts, dtype=np.int64
        )
        if num_classes is not None and class_counts.size != num_classes:
            raise ValueError(f"class_counts has {class_counts.size} entries but num_classes={num_classes}.")
        num_classes = class_counts.size
    margins = resolve_margins(
        num_classes or 0,
        margin=margin,
        class_counts=class_counts,
        scale=margin_scale,
        per_class=per_class,
        num_samples=num_margin_samples,
    )
    if name in MARGIN_LOSS_NAMES and margins is None:
        raise ValueError(
            f"hem_loss_func({name!r}) needs margin= or class_counts= (e.g. count_labels(train_dataset, num_classes))."
        )
    if margin is not None and num_classes is None:
        # Without the number of classes the margin cannot be spread per class; metrics are not computed here anyway.
        per_class = False
    terms = LossTerms(
        name,
        margins=margins,
        per_class_margins=per_class,
        class_counts=class_counts,
        ignore_index=ignore_index,
        options={
            "logitnorm_temperature": logitnorm_temperature,
            "la_tau": la_tau,
            "focal_gamma": focal_gamma,
            "dice_smooth": dice_smooth,
        },
        upsample_logits_in_loss=upsample_logits_in_loss,
        class_dim=class_dim,
    )
    return HEMLossFunction(terms, average_tokens_across_devices=average_tokens_across_devices)
