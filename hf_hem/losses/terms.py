"""A registry loss split into what one process computes on one micro-batch: a loss sum, a count, statistics.

The batch loss of every registry loss is `sum over samples of the per-sample losses / count`, where the count is
what [`LossSpec.normaliser`] names (violating samples, labelled samples, or 1 for set-level losses like Dice). Both
parts add up over micro-batches and processes, which is what makes the trainer's loss that of the whole global,
accumulated batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .hem import hem_loss, needs_upsampling
from .kernels import BlockUpsampler, row_blocks
from .registry import build_loss, loss_spec


STAT_NAMES_ALWAYS = ("labelled", "correct")
STAT_NAMES_MARGIN = ("violating", "violation_sum", "margin_sum")


def logits_from_outputs(outputs) -> torch.Tensor:
    """The logits of a model output: `outputs["logits"]` of a `ModelOutput`/dict, `outputs[0]` of a tuple."""
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(f"the model output has no 'logits'; keys present: {list(outputs.keys())}.")
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    if torch.is_tensor(outputs):
        return outputs
    raise ValueError(f"cannot find logits in a model output of type {type(outputs).__name__}.")


def count_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps pixel counts exact beyond 2**24; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class BatchTerms(NamedTuple):
    """What one micro-batch contributes: `loss_sum` (differentiable), `count` (a constant) and the detached
    per-sample losses (`None` for set-level losses), shaped like the labels."""

    loss_sum: torch.Tensor
    count: torch.Tensor
    per_sample: torch.Tensor | None


class LossTerms:
    """The configured loss split into what one process can compute on one micro-batch.

    Args:
        loss_name (`str`): a registry name.
        margins (`torch.Tensor`, *optional*): `(num_classes,)` margins; required by the margin losses, and enable the
            margin statistics for every loss.
        per_class_margins (`bool`, defaults to `False`): use the margins per target class.
        class_counts (*optional*): per-class training counts (the priors of `la`).
        ignore_index (`int`, defaults to -100): label value that takes no part.
        options (`Mapping` or object, *optional*): `HEMConfig` fields of the baselines (`la_tau`, ...).
        upsample_logits_in_loss (`bool`, defaults to `False`): the margin losses upsample low-resolution
            segmentation logits block by block.
        class_dim (`int`, defaults to 1): where the classes are in the logits: 1 (`(N, C, ...)`) or -1 (`(N, L, C)`,
            token classification).

    `compute(logits, labels)` returns [`BatchTerms`] such that the batch loss is
    `sum over processes and micro-batches of loss_sum / sum of count`; `stats(logits, labels)` returns the sums
    behind the logged `hem/*` metrics, and `metrics(sums)` turns accumulated sums into them.
    """

    def __init__(
        self,
        loss_name: str,
        *,
        margins: torch.Tensor | None = None,
        per_class_margins: bool = False,
        class_counts=None,
        ignore_index: int = -100,
        options: Mapping | object | None = None,
        upsample_logits_in_loss: bool = False,
        class_dim: int = 1,
    ):
        self.spec = loss_spec(loss_name)
        self.loss_name = self.spec.name
        self.normaliser = self.spec.normaliser
        self.ignore_index = int(ignore_index)
        self.class_dim = int(class_dim)
        self.margins = None if margins is None else torch.as_tensor(margins, dtype=torch.float32).reshape(-1)
        reduction = "mean" if self.normaliser == "set" else "none"
        self.criterion = build_loss(
            self.loss_name,
            margins=self.margins,
            per_class_margins=per_class_margins,
            class_counts=class_counts,
            ignore_index=self.ignore_index,
            reduction=reduction,
            upsample_logits=upsample_logits_in_loss,
            options=options,
            class_dim=self.class_dim,
        )
        self.stat_names = STAT_NAMES_ALWAYS + (STAT_NAMES_MARGIN if self.margins is not None else ())
        #: Whether `compute` takes low-resolution segmentation logits as they are (the criterion upsamples them).
        self.upsamples_logits = upsample_logits_in_loss and self.spec.margin_loss

    def match_label_size(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logits `compute` takes: upsampled bilinearly to the label size (as SegFormer's own loss does) unless
        the criterion does it itself block by block."""
        if self.upsamples_logits or not needs_upsampling(logits, labels, self.class_dim):
            return logits
        return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)

    def compute(self, logits: torch.Tensor, labels: torch.Tensor) -> BatchTerms:
        """Local loss sum (differentiable), local count (float64, float32 on MPS) and per-sample losses."""
        # Margin and prior buffers follow the logits; a no-op once they are there.
        self.criterion.to(logits.device)
        value = self.criterion(logits, labels)
        dtype = count_dtype(logits.device)
        if self.normaliser == "set":
            # Dice is one value per set of positions: each process and micro-batch contributes its own Dice with
            # weight 1, so the optimised loss is the mean of the sets' Dice losses.
            return BatchTerms(value, torch.ones((), dtype=dtype, device=logits.device), None)
        per_sample = value.detach()
        if self.normaliser == "violating":
            count = (per_sample > 0).sum()
        else:
            count = (labels != self.ignore_index).sum()
        return BatchTerms(value.sum(), count.to(dtype), per_sample)

    def parts(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(loss_sum, count)` of [`compute`]."""
        terms = self.compute(logits, labels)
        return terms.loss_sum, terms.count

    @torch.no_grad()
    def stats(
        self, logits: torch.Tensor, labels: torch.Tensor, per_sample: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sums over the labelled samples: count, correct, and, with margins, violating, violation sum, margin sum.

        A sample *violates* its margin when its HEM loss is non-zero, which is exactly when
        `max_{i != t} (y_i - y_t + mu_t) > 0` and when its loss under any margin loss is non-zero; the violation sum
        adds up the violating samples' HEM losses. For `hem` and `hem+` these come from the per-sample losses the
        loss already computed (`per_sample`); the other losses run one fused HEM forward without autograd. No copy
        of the `(samples, classes)` logits is made: accuracy takes an argmax in the logits' own layout (block by
        block when the criterion upsamples).
        """
        valid = labels != self.ignore_index
        dtype = count_dtype(logits.device)
        values = [valid.sum(), self._correct(logits.detach(), labels, valid)]
        if self.margins is not None:
            if per_sample is None or self.loss_name not in ("hem", "hem+"):
                per_sample = self._hem_per_sample(logits.detach(), labels)
            violating = per_sample > 0
            margins = self.margins.to(logits.device)
            values += [violating.sum(), per_sample[violating].sum(), margins[labels[valid].long()].sum()]
        return torch.stack([value.to(dtype) for value in values])

    def _correct(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if needs_upsampling(logits, labels, self.class_dim):
            size = (int(labels.shape[-2]), int(labels.shape[-1]))
            compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
            upsampler = BlockUpsampler(logits, size, compute)
            total = torch.zeros((), dtype=torch.int64, device=logits.device)
            for start, stop in row_blocks(logits, size):
                predicted = upsampler.block(start, stop).argmax(1)
                total += ((predicted == labels[:, start:stop]) & valid[:, start:stop]).sum()
            return total
        predicted = logits.argmax(self.class_dim if self.class_dim >= 0 else logits.dim() + self.class_dim)
        return ((predicted == labels) & valid).sum()

    def _hem_per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        margins = self.margins.to(logits.device)
        margin = margins if bool((margins != margins[0]).any()) else float(margins[0])
        extra = {} if self.class_dim == 1 else {"class_dim": self.class_dim}
        return hem_loss(
            logits,
            labels,
            margin,
            ignore_index=self.ignore_index,
            reduction="none",
            upsample_logits=needs_upsampling(logits, labels, self.class_dim),
            **extra,
        )

    def metrics(self, sums: list[float]) -> dict[str, float]:
        """Turns accumulated `stats` sums into the logged `hem/*` values."""
        named = dict(zip(self.stat_names, sums))
        labelled = max(named["labelled"], 1.0)
        # NaN: some step did not build the logits (the fused causal-LM head), so its accuracy is unknown.
        out = {} if math.isnan(named["correct"]) else {"hem/accuracy": named["correct"] / labelled}
        if "violating" in named:
            out["hem/violating_fraction"] = named["violating"] / labelled
            out["hem/mean_violation"] = named["violation_sum"] / max(named["violating"], 1.0)
            out["hem/margin_mean"] = named["margin_sum"] / labelled
        return out
