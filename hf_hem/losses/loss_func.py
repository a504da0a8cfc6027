"""`hem_loss_func`: any registry loss for the stock transformers `Trainer`'s `compute_loss_func` argument.

No transformers import: the callable follows the Trainer's contract (`(outputs, labels, num_items_in_batch)`) with
plain torch and `torch.distributed`.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch

from ..margins import DEFAULT_MAX_MARGIN
from .settings import LossSettings
from .terms import BatchSums, LossTerms, logits_from_outputs, loss_share


def is_causal_lm_output(outputs) -> bool:
    """Whether `outputs` is a transformers causal-LM output (`CausalLMOutput`, `CausalLMOutputWithPast`, ...),
    read from its class name so that this module needs no transformers import."""
    return "CausalLMOutput" in type(outputs).__name__


def next_token_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """`labels[..., 1:]` with the last position ignored, shaped like `labels`: what transformers' causal-LM loss
    scores position `t` of the logits against (the token at `t + 1`)."""
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


class HEMLossFunction:
    """The callable returned by [`hem_loss_func`]; see there."""

    def __init__(self, terms: LossTerms, average_tokens_across_devices: bool = True, shift_labels: bool | None = None):
        self.terms = terms
        self.average_tokens_across_devices = average_tokens_across_devices
        self.shift_labels = shift_labels
        self._warned_unshifted = False

    @property
    def margins(self) -> torch.Tensor | None:
        return self.terms.margins

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
        if labels is None:
            raise ValueError("hem_loss_func got labels=None; the batches must contain 'labels'.")
        raw_logits = logits_from_outputs(outputs)
        if self.shift_labels:
            labels = next_token_labels(labels, self.terms.ignore_index)
        elif self.shift_labels is None:
            self._check_not_unshifted(outputs, raw_logits)
        logits = self.terms.match_label_size(raw_logits, labels)
        local_sum, local_count = self.terms.parts(logits, labels)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world_size = torch.distributed.get_world_size() if distributed else 1
        # The Trainer's own share of this micro-batch in its accumulation window: labels != -100, as it counts.
        local = BatchSums.of(local_count, items=labels.ne(-100).sum())
        summed = local.all_reduce(_all_reduce_sum) if world_size > 1 else local
        # num_items_in_batch is summed over processes by the Trainer only with average_tokens_across_devices.
        items_here = summed.items if self.average_tokens_across_devices else local.items
        trainer_multiplies = num_items_in_batch is not None and self.average_tokens_across_devices
        # DDP averages gradients over processes: undo it ourselves unless the Trainer multiplies by world_size.
        loss = loss_share(local_sum, summed.count, 1.0 if trainer_multiplies else float(world_size))
        if num_items_in_batch is not None:
            # Weight of this micro-batch in the accumulation window; 1/k for k equal micro-batches.
            total = torch.as_tensor(num_items_in_batch, dtype=items_here.dtype, device=items_here.device)
            loss = loss * (items_here / total.clamp_min(1)).to(loss)
        return loss

    def _check_not_unshifted(self, outputs, logits: torch.Tensor) -> None:
        """`shift_labels` unset: a causal LM's output is an error (its labels would train it to copy the current
        token), and classes-last `(N, L, C)` logits of an unknown model get one warning."""
        if is_causal_lm_output(outputs):
            raise ValueError(
                f"hem_loss_func got the output of a causal LM ({type(outputs).__name__}, logits of shape "
                f"{tuple(logits.shape)}) with shift_labels unset: scored against the unshifted labels (= input_ids) "
                "it would learn to copy the current token instead of predicting the next one. Pass "
                "hem_loss_func(..., shift_labels=True) (or shift_labels=False if your collator already shifted them)."
            )
        if (
            not self._warned_unshifted
            and torch.is_tensor(logits)
            and logits.dim() == 3
            and self.terms.class_dim in (-1, 2)
            and "TokenClassifierOutput" not in type(outputs).__name__
        ):
            self._warned_unshifted = True
            warnings.warn(
                f"hem_loss_func got (N, L, C) logits of shape {tuple(logits.shape)} with shift_labels unset: every "
                "position is scored against its own label (token classification). If these are a causal LM's logits "
                "over its vocabulary, pass shift_labels=True, or it learns to copy the current token; pass "
                "shift_labels=False to silence this warning.",
                UserWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        shift = "" if self.shift_labels is None else f", shift_labels={self.shift_labels}"
        return f"HEMLossFunction(loss_name={self.terms.loss_name!r}, ignore_index={self.terms.ignore_index}{shift})"


def hem_loss_func(
    loss_name: str | LossSettings = "hem",
    margin: float | None = None,
    *,
    class_counts=None,
    num_classes: int | None = None,
    margin_scale: float = 2000.0,
    per_class_margins: bool | None = None,
    num_margin_samples: float | None = None,
    max_margin: float | None = DEFAULT_MAX_MARGIN,
    ignore_index: int = -100,
    logitnorm_temperature: float = 0.04,
    la_tau: float = 1.0,
    focal_gamma: float = 2.0,
    dice_smooth: float = 0.0,
    upsample_logits_in_loss: bool = False,
    average_tokens_across_devices: bool = True,
    class_dim: int | None = None,
    shift_labels: bool | None = None,
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
        loss_name (`str` or [`LossSettings`], defaults to `"hem"`): any name of [`get_loss`], or the whole loss
            settings as one value; then the loss keywords below (`margin` to `upsample_logits_in_loss`, and
            `class_dim`) stay unset, as the value holds them.
        margin (`float`, *optional*): one fixed margin for the margin losses.
        class_counts (`Sequence[int]`, *optional*): training samples (or pixels) per class: margins
            `sqrt(margin_scale / S)` capped at 1 (per class for `hem+`; see [`build_margins`]), and the priors of
            `la`.
        num_classes (`int`, *optional*): number of classes, needed with `margin` for per-class metrics; defaults to
            `len(class_counts)`.
        margin_scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class_margins (`bool`, *optional*): HEM+ margins; defaults to `loss_name == "hem+"`.
        num_margin_samples (`float`, *optional*): `S`; defaults to `sum(class_counts)`. Pass the number of images for
            segmentation.
        max_margin (`float` or `None`, defaults to 1.0): cap on the rule's margin; `None`: the paper's rule.
        ignore_index (`int`, defaults to -100): label value ignored by the loss (255 for most segmentation sets).
        logitnorm_temperature, la_tau, focal_gamma, dice_smooth: parameters of the baselines.
        upsample_logits_in_loss (`bool`, defaults to `False`): as the [`HEMConfig`] field: the margin losses
            upsample low-resolution segmentation logits block by block instead of materialising them.
        average_tokens_across_devices (`bool`, defaults to `True`): must equal the `TrainingArguments` field of the
            same name, which decides whether the Trainer multiplies the loss by the number of processes.
        class_dim (`int`, *optional*): where the classes are in the logits; -1 for token classification and causal
            LMs (`(N, L, C)` logits, `(N, L)` labels). Defaults to 1, or -1 with `shift_labels=True`.
        shift_labels (`bool`, *optional*): causal LMs: `True` scores the logits at position `t` against the label at
            `t + 1` (`labels[..., 1:]`, the last position ignored), as transformers' own causal-LM loss does, so every
            predicted token is one HEM sample. `False`: the labels are used as they are (token classification, or a
            collator that shifted them already). `None` (default): as `False`, but the output of a causal LM
            (`CausalLMOutput*`) raises an error (its unshifted labels train the model to copy the current token) and
            other `(N, L, C)` logits warn once.

    Returns:
        `HEMLossFunction`: a callable `(outputs, labels, num_items_in_batch=None) -> torch.Tensor`.

    Example:

    ```python
    >>> counts = count_labels(train_ds, num_classes=10)
    >>> trainer = Trainer(model, args, train_dataset=train_ds, compute_loss_func=hem_loss_func("hem+", class_counts=counts))
    >>> # a causal LM (also TRL's SFTTrainer, see docs/language_models.md): one HEM sample per predicted token
    >>> loss_func = hem_loss_func("hem", margin=1.0, shift_labels=True)
    >>> trainer = Trainer(llama, args, train_dataset=lm_ds, compute_loss_func=loss_func)
    ```
    """
    if shift_labels is not None and not isinstance(shift_labels, bool):
        raise ValueError(f"shift_labels must be True, False or None, got {shift_labels!r}.")
    keywords = {
        "margin": margin,
        "class_counts": class_counts,
        "margin_scale": margin_scale,
        "per_class_margins": per_class_margins,
        "num_margin_samples": num_margin_samples,
        "max_margin": max_margin,
        "ignore_index": ignore_index,
        "logitnorm_temperature": logitnorm_temperature,
        "la_tau": la_tau,
        "focal_gamma": focal_gamma,
        "dice_smooth": dice_smooth,
        "upsample_logits_in_loss": upsample_logits_in_loss,
        "class_dim": class_dim,
    }
    if isinstance(loss_name, LossSettings):
        settings = loss_name
        defaults = inspect.signature(hem_loss_func).parameters
        given = [key for key, value in keywords.items() if not _is_default(value, defaults[key].default)]
        if given:
            raise ValueError(
                f"hem_loss_func got a LossSettings value and the loss keyword(s) {', '.join(given)}: the value holds "
                "them; give one or the other (settings.replace(...) changes a value)."
            )
    else:
        if class_counts is not None:
            counts = class_counts.detach().cpu() if torch.is_tensor(class_counts) else class_counts
            keywords["class_counts"] = np.asarray(counts, dtype=np.int64).reshape(-1)
        settings = LossSettings(loss_name, **keywords)
    if settings.class_dim is None:
        settings = settings.replace(class_dim=-1 if shift_labels else 1)
    elif shift_labels and settings.class_dim not in (-1, 2):
        raise ValueError(
            "shift_labels=True is for causal LM logits (N, L, V) with the vocabulary last; got "
            f"class_dim={settings.class_dim}, expected -1 (or leave class_dim unset)."
        )
    if settings.ignore_index is None:
        settings = settings.replace(ignore_index=-100)
    if settings.class_counts is not None:
        if num_classes is not None and len(settings.class_counts) != num_classes:
            raise ValueError(f"class_counts has {len(settings.class_counts)} entries but num_classes={num_classes}.")
        num_classes = len(settings.class_counts)
    margins = settings.margins(num_classes)
    if settings.spec.margin_loss and margins is None:
        raise ValueError(
            f"hem_loss_func({settings.loss_name!r}) needs margin= or class_counts= (e.g. count_labels(train_dataset, "
            "num_classes))."
        )
    terms = LossTerms(settings, margins=margins)
    return HEMLossFunction(
        terms, average_tokens_across_devices=average_tokens_across_devices, shift_labels=shift_labels
    )


def _is_default(value, default) -> bool:
    if default is None or value is None:
        return value is default
    return isinstance(value, type(default)) and value == default


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(tensor)
    return tensor
