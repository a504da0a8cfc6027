"""A registry loss split into what one process computes on one micro-batch: a loss sum, a count, statistics.

The batch loss of every registry loss is `sum over samples of the per-sample losses / count`, where the count is
what [`LossSpec.normaliser`] names (violating samples, labelled samples, or 1 for set-level losses like Dice). Both
parts add up over micro-batches and processes, which is what makes the trainer's loss that of the whole global,
accumulated batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from ..margins import Margins
from .hem import hem_loss, needs_upsampling
from .kernels import BlockUpsampler, row_blocks
from .registry import loss_spec
from .settings import LossSettings, build_loss


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


@dataclass(frozen=True)
class BatchSums:
    """The sums one process adds up over the micro-batches of a window (or an evaluation), and that one all-reduce
    adds up over the processes: the per-batch bookkeeping of [`HEMTrainer`] and [`HEMLossFunction`], by name.

    Args:
        count (`torch.Tensor`): what the batch loss divides by ([`LossSpec.normaliser`]: violating samples,
            labelled samples, or one per set).
        loss_sum (`torch.Tensor`): the sum of the per-sample losses, detached (the loss of the batch is
            `loss_sum / count`).
        items (`torch.Tensor`): labels that are not -100, as the stock `Trainer` counts `num_items_in_batch`.
        skipped (`torch.Tensor`): samples left out of the backward pass (`skip_zero_loss`).
        samples (`torch.Tensor`): samples (rows) of the batch.
        stats (`torch.Tensor`): the `LossTerms.stats` sums, in `LossTerms.stat_names` order (may be empty).

    All are 0-d tensors of one dtype and device (`stats` 1-D); a field a caller does not track is 0.
    """

    count: torch.Tensor
    loss_sum: torch.Tensor
    items: torch.Tensor
    skipped: torch.Tensor
    samples: torch.Tensor
    stats: torch.Tensor

    _SCALARS: ClassVar[tuple[str, ...]] = ("count", "loss_sum", "items", "skipped", "samples")

    @classmethod
    def of(cls, count: torch.Tensor, **fields) -> BatchSums:
        """Sums with `count` and the given fields (tensors or numbers) in `count`'s dtype and device, the rest 0."""
        values = {}
        for name in cls._SCALARS[1:]:
            value = fields.pop(name, 0.0)
            # Numbers are filled in on count's device (no host-to-device copy on an accelerator).
            values[name] = value.detach().to(count) if torch.is_tensor(value) else count.new_full((), float(value))
        stats = fields.pop("stats", None)
        if fields:
            raise ValueError(f"BatchSums has no field(s) {sorted(fields)}; expected {cls._SCALARS + ('stats',)}.")
        stats = count.new_zeros(0) if stats is None else stats.detach().to(count)
        return cls(count=count.detach(), stats=stats, **values)

    def __add__(self, other: BatchSums) -> BatchSums:
        return BatchSums(*(mine + theirs for mine, theirs in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    def pack(self) -> torch.Tensor:
        """One 1-D tensor for one all-reduce: the scalars in field order, then the statistics."""
        return torch.cat([torch.stack([getattr(self, name) for name in self._SCALARS]), self.stats])

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> BatchSums:
        """The inverse of [`pack`]."""
        head = len(cls._SCALARS)
        return cls(*packed[:head].unbind(), stats=packed[head:])

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> BatchSums:
        """The sums over every process: `reduce` sums a tensor across processes (one call, on the packed sums)."""
        return BatchSums.unpack(reduce(self.pack()))


def loss_share(loss_sum: torch.Tensor, global_count: torch.Tensor, gradient_scale: float = 1.0) -> torch.Tensor:
    """This process's part of the global batch loss `sum of loss sums / global count`, times `gradient_scale`.

    With DDP, which averages the processes' gradients, `gradient_scale` is the number of processes: the average of
    the processes' parts is then the gradient of the global batch loss.
    """
    return loss_sum * (gradient_scale / global_count.clamp_min(1).to(loss_sum.dtype))


class LossTerms:
    """The configured loss split into what one process can compute on one micro-batch.

    Args:
        settings ([`LossSettings`] or `str`): the loss settings, or a registry name (then the keyword arguments
            below that mirror the settings build them: `per_class_margins`, `ignore_index`, `options`,
            `upsample_logits_in_loss`, `class_dim`).
        margins ([`Margins`] or `torch.Tensor`, *optional*): the run's margins; required by the margin losses, and
            enable the margin statistics for every loss. A bare `(num_classes,)` tensor is used per class as
            `per_class_margins` says (the settings' choice).
        class_counts (*optional*): per-class training counts (the priors of `la`).
        per_class_margins, ignore_index, options, upsample_logits_in_loss, class_dim: with a registry name only;
            `options` is a mapping or object with the baselines' parameters (`la_tau`, ...).

    `compute(logits, labels)` returns [`BatchTerms`] such that the batch loss is
    `sum over processes and micro-batches of loss_sum / sum of count`; `stats(logits, labels)` returns the sums
    behind the logged `hem/*` metrics, and `metrics(sums)` turns accumulated sums into them.
    """

    def __init__(
        self,
        settings: LossSettings | str,
        *,
        margins: Margins | torch.Tensor | None = None,
        class_counts=None,
        per_class_margins: bool | None = None,
        ignore_index: int = -100,
        options: Mapping | object | None = None,
        upsample_logits_in_loss: bool = False,
        class_dim: int = 1,
    ):
        if not isinstance(settings, LossSettings):
            settings = _settings_from_arguments(
                settings, per_class_margins, ignore_index, options, upsample_logits_in_loss, class_dim
            )
        if settings.ignore_index is None or settings.class_dim is None:
            settings = settings.replace(
                ignore_index=-100 if settings.ignore_index is None else settings.ignore_index,
                class_dim=1 if settings.class_dim is None else settings.class_dim,
            )
        if margins is not None and not isinstance(margins, Margins):
            margins = Margins(margins, settings.per_class_margins)
        self.settings = settings
        self.spec = settings.spec
        self.loss_name = self.spec.name
        self.normaliser = self.spec.normaliser
        self.ignore_index = int(settings.ignore_index)
        self.class_dim = int(settings.class_dim)
        #: The run's [`Margins`] (`None` without margins): per class or shared, as they were built.
        self.margin_set = margins
        reduction = "mean" if self.normaliser == "set" else "none"
        self.criterion = build_loss(settings, class_counts, margins=margins, reduction=reduction)
        self.stat_names = STAT_NAMES_ALWAYS + (STAT_NAMES_MARGIN if margins is not None else ())
        #: Whether `compute` takes low-resolution segmentation logits as they are (the criterion upsamples them).
        self.upsamples_logits = settings.upsample_logits_in_loss and self.spec.margin_loss

    def follow_device(self, device: torch.device) -> None:
        """Moves the criterion's buffers (margins, priors) and the margins to `device`; a no-op once they are there,
        so no margin is copied to the device on every step."""
        self.criterion.to(device)
        if self.margin_set is not None:
            self.margin_set = self.margin_set.to(device)

    @property
    def margins(self) -> torch.Tensor | None:
        """The `(num_classes,)` margin values (one per target class; all equal for a shared margin), or `None`."""
        return None if self.margin_set is None else self.margin_set.values

    def match_label_size(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logits `compute` takes: upsampled bilinearly to the label size (as SegFormer's own loss does) unless
        the criterion does it itself block by block."""
        if self.upsamples_logits or not needs_upsampling(logits, labels, self.class_dim):
            return logits
        return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)

    def compute(self, logits: torch.Tensor, labels: torch.Tensor) -> BatchTerms:
        """Local loss sum (differentiable), local count (float64, float32 on MPS) and per-sample losses."""
        self.follow_device(logits.device)
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
        named = {"labelled": valid.sum(), "correct": self._correct(logits.detach(), labels, valid)}
        if self.margins is not None:
            if per_sample is None or self.loss_name not in ("hem", "hem+"):
                per_sample = self._hem_per_sample(logits.detach(), labels)
            violating = per_sample > 0
            named["violating"] = violating.sum()
            named["violation_sum"] = per_sample[violating].sum()
            named["margin_sum"] = self.margin_sum(labels, valid, logits.device)
        return self.pack_stats(count_dtype(logits.device), **named)

    def margin_sum(self, labels: torch.Tensor, valid: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The sum of the labelled samples' margins (behind `hem/margin_mean`)."""
        margins = self.margins.to(device)
        return margins[labels[valid].to(device).long()].sum()

    def pack_stats(self, dtype: torch.dtype, **named: torch.Tensor) -> torch.Tensor:
        """The statistics given by name (`stat_names`: every one of them) as one tensor in `stat_names` order."""
        if set(named) != set(self.stat_names):
            raise ValueError(f"statistics {sorted(named)} given; expected exactly {list(self.stat_names)}.")
        return torch.stack([named[name].to(dtype) for name in self.stat_names])

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
        margin = self.margin_set.argument(logits.device)
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


def _settings_from_arguments(loss_name, per_class_margins, ignore_index, options, upsample_logits_in_loss, class_dim):
    """[`LossSettings`] from `LossTerms`' keyword form: a registry name, and the baselines' parameters read from
    `options` (a mapping or an object such as `HEMConfig`) through the registry's `config_arguments`."""
    read = options.get if isinstance(options, Mapping) else (lambda key: getattr(options, key, None))
    baselines = {}
    if options is not None:
        for field in loss_spec(loss_name).config_arguments:
            if read(field) is not None:
                baselines[field] = read(field)
    return LossSettings(
        loss_name,
        per_class_margins=per_class_margins,
        ignore_index=ignore_index,
        upsample_logits_in_loss=upsample_logits_in_loss,
        class_dim=class_dim,
        **baselines,
    )
