"""`HEMConfig`: `TrainingArguments` plus the loss settings of [`HEMTrainer`]."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..losses.registry import LOSS_NAMES, MARGIN_LOSS_NAMES
from ..losses.settings import LossSettings, check_number


@dataclass
class HEMConfig(TrainingArguments):
    r"""
    Configuration class for [`HEMTrainer`].

    This class includes only the parameters that are specific to HEM training. For a full list of training
    arguments, please refer to the [`~transformers.TrainingArguments`] documentation. Using
    [`~transformers.HfArgumentParser`] we can turn this class into
    [argparse](https://docs.python.org/3/library/argparse#module-argparse) arguments that can be specified on the
    command line.

    Parameters:
        > Parameters that control the loss

        loss_name (`str`, *optional*, defaults to `"hem"`):
            Loss to train with, one of `ce`, `hem`, `hem+`, `mm`, `mm+maz`, `mm+thres`, `logitnorm`, `la`, `focal`,
            `dice` (see [`get_loss`]). `hem+` is HEM with one margin per target class, for imbalanced data.

        > Parameters that control the margins

        margin (`float` or `None`, *optional*, defaults to `None`):
            One fixed margin `mu` for the margin losses (`hem`, `mm`, `mm+maz`, `mm+thres`). `None` derives it from
            the training set: `mu = sqrt(margin_scale / S)`, capped at `max_margin`. Not allowed with `hem+`, whose
            margins always come from class counts.
        margin_scale (`float`, *optional*, defaults to `2000.0`):
            The paper's `M` in `mu = sqrt(M / S)` and `mu_c = sqrt(M / (n * S * p_c))`.
        per_class_margins (`bool` or `None`, *optional*, defaults to `None`):
            One margin per target class from the class frequencies (HEM+ margins). `None` means `True` for `hem+`
            and `False` otherwise; `False` with `hem+` is an error.
        class_counts (`list[int]` or `None`, *optional*, defaults to `None`):
            Training samples (segmentation: labelled pixels) per class. `None` counts them from `train_dataset` at
            start-up: from the Arrow label column for classification, with a streamed pixel histogram for
            segmentation.
        num_margin_samples (`int` or `None`, *optional*, defaults to `None`):
            `S`, the number of training samples in the margin formula. `None` uses the number of labelled samples for
            classification and the number of training **images** for segmentation.
        max_margin (`float` or `None`, *optional*, defaults to `1.0`):
            Cap on the margin the rule derives: when `sqrt(margin_scale / S)` exceeds it (small training sets, S <
            2000), the margins are scaled down so that HEM's is `max_margin` (HEM+ keeps its ratios between
            classes). The paper's rule, calibrated on CIFAR / ImageNet, gives 3 to 6.5 for a few dozen to a few
            hundred samples and learned far slower than CE there (docs/method.md). `None` (`inf` on the command
            line) applies the rule unchanged; a fixed `margin` is never capped.

        > Parameters that control the labels

        loss_ignore_index (`int` or `None`, *optional*, defaults to `None`):
            Label value that takes no part in the loss. `None` uses the model config's `semantic_loss_ignore_index`
            when it has one (segmentation, e.g. 255) and `-100` otherwise.
        class_counts_column (`str` or `None`, *optional*, defaults to `None`):
            Column of `train_dataset` that the class counts (and so the margins and the `la` priors) are counted from
            when `class_counts` is not given. `None` picks `"labels"` or `"label"`, whichever is present. It only
            names what is counted: the loss always takes the batch's `labels`. Formerly `label_column_name`, a name
            that the data arguments of transformers' example scripts also declare (see the note below).
        upsample_logits_in_loss (`bool`, *optional*, defaults to `False`):
            Segmentation with logits smaller than the labels (SegFormer): the margin losses score the logits
            upsampled to the label size block by block, so the full-resolution logits are never held (same loss to
            rounding, far less memory). Without it, and for the other losses, the logits are upsampled first, as
            SegFormer's own loss does.

        > Parameters that control the training step

        skip_zero_loss (`str`, *optional*, defaults to `"off"`):
            Skip the backward pass of samples that meet their margin (margin losses only; their loss and gradient are
            exactly zero). `"off"`: every sample is forwarded and backpropagated. `"exact"`: a forward pass without
            autograd finds the samples with a non-zero loss, and only those are forwarded again and
            backpropagated: the same gradients as `"off"` for models whose train-mode forward of a sample does not
            depend on the other samples or on random state (no BatchNorm, dropout 0). `"stale"`: as `"exact"`, and
            samples whose loss was zero when last seen are also left out of the next epochs (revisited every
            `stale_revisit_epochs` epochs, and every sample in the last `stale_final_fraction` of training);
            approximate, one process only.
        skip_backward_ratio (`float`, *optional*, defaults to `2.0`):
            Cost of a backward pass relative to a forward pass, `B / F`, for the cost model of `skip_zero_loss`:
            skipping costs `F + f (F + B)` against `F + B` for a violating fraction `f`, so the ordinary step is taken
            while the last micro-batch's violating fraction is at least `B / (F + B)` (2/3 by default).
        stale_revisit_epochs (`int`, *optional*, defaults to `4`):
            With `skip_zero_loss="stale"`: a sample with zero loss is left out of at most `stale_revisit_epochs - 1`
            epochs in a row before it is seen again.
        stale_final_fraction (`float`, *optional*, defaults to `0.125`):
            With `skip_zero_loss="stale"`: the final fraction of the epochs that see every sample (as InfoBatch's
            annealing), so the last updates are those of `"exact"`.
        skip_gather_window (`bool`, *optional*, defaults to `True`):
            With `skip_zero_loss` and `gradient_accumulation_steps > 1`: forward and backpropagate the violating
            samples of the whole accumulation window together at its last micro-batch, in chunks of at most
            `per_device_train_batch_size`, instead of the remainder of each micro-batch (fewer, fuller passes: on an
            accelerator a small pass costs nearly what a full one does, and on a CPU each pass has a fixed overhead).
            Same gradients as without it; holds a copy of the window's violating inputs until its last micro-batch.

        > Parameters of the baseline losses

        logitnorm_temperature (`float`, *optional*, defaults to `0.04`):
            `tau` of LogitNorm (`logitnorm`).
        la_tau (`float`, *optional*, defaults to `1.0`):
            `tau` of logit-adjusted cross-entropy (`la`); the priors come from the class counts.
        focal_gamma (`float`, *optional*, defaults to `2.0`):
            `gamma` of the focal loss (`focal`).
        dice_smooth (`float`, *optional*, defaults to `0.0`):
            Smoothing constant of the soft Dice loss (`dice`).

        > Parameters of causal language models

        causal_lm_margin (`float`, *optional*, defaults to `1.0`):
            The margin of every target token when a causal LM (`LlamaForCausalLM`, `GPT2LMHeadModel`, ...) is trained
            without `margin`: the paper's `sqrt(M / S)` with `S` training tokens would be tiny. With `hem+` the base of
            the per-token margins `mu_c = causal_lm_margin * sqrt(S / (V * s_c))` from the training set's token counts.
            See docs/language_models.md.
        causal_lm_fused_head (`bool`, *optional*, defaults to `True`):
            Causal LMs trained with `hem` or `hem+`: score the LM head with [`fused_linear_hem_loss`] from the last
            hidden states, so the `(tokens, vocabulary)` logits are never built in training (same loss and gradients;
            `hem/accuracy` is then not logged in training). Not used with `skip_zero_loss`, for other losses, or for
            heads whose logits are transformed after the linear layer (soft-capping, scaling); evaluation always
            builds the logits.

    > [!NOTE]
    > `HEMConfig` keeps every default of [`~transformers.TrainingArguments`]. `label_smoothing_factor` must stay 0:
    > [`HEMTrainer`] computes its own loss and would silently skip the smoothing.

    > [!NOTE]
    > No field name is shared with the argument dataclasses of transformers' example scripts or of TRL, so
    > `HfArgumentParser((ModelArguments, DataTrainingArguments, HEMConfig))` works in those scripts: the parser puts
    > every dataclass's fields into one namespace and stops at a name declared twice. The former
    > `label_column_name` is still accepted in Python (`HEMConfig(label_column_name=...)` and the attribute, with a
    > `FutureWarning`) as `class_counts_column`; on the command line `--label_column_name` belongs to the script's
    > data arguments.
    """

    loss_name: str = field(
        default="hem",
        metadata={"help": f"Loss to train with, one of: {', '.join(LOSS_NAMES)}.", "choices": list(LOSS_NAMES)},
    )
    margin: float | None = field(
        default=None,
        metadata={
            "help": "One fixed margin for the margin losses. Default: derived from the training set, "
            "sqrt(margin_scale / S). Not allowed with hem+."
        },
    )
    margin_scale: float = field(
        default=2000.0, metadata={"help": "The paper's M in mu = sqrt(M / S) and mu_c = sqrt(M / (n S p_c))."}
    )
    per_class_margins: bool | None = field(
        default=None,
        metadata={"help": "One margin per target class (HEM+ margins). Default: true for hem+, false otherwise."},
    )
    class_counts: list[int] | None = field(
        default=None,
        metadata={
            "help": "Training samples (segmentation: labelled pixels) per class. Default: counted from the "
            "training set at start-up."
        },
    )
    num_margin_samples: int | None = field(
        default=None,
        metadata={
            "help": "S in the margin formula. Default: labelled samples (classification) or training images "
            "(segmentation)."
        },
    )
    max_margin: float | None = field(
        default=1.0,
        metadata={
            "help": "Cap on the margin derived by the rule (small training sets); inf applies the paper's rule "
            "unchanged. A fixed margin is never capped."
        },
    )
    loss_ignore_index: int | None = field(
        default=None,
        metadata={
            "help": "Label value ignored by the loss. Default: the model config's semantic_loss_ignore_index "
            "(segmentation), else -100."
        },
    )
    class_counts_column: str | None = field(
        default=None,
        metadata={
            "help": "Column of the training set the class counts (margins, priors) are counted from when "
            "--class_counts is not given. Default: 'labels' or 'label', whichever is present."
        },
    )
    upsample_logits_in_loss: bool = field(
        default=False,
        metadata={
            "help": "Segmentation: let the margin losses (hem, hem+, mm, ...) upsample low-resolution logits to the "
            "label size block by block instead of materialising them (same loss, far less memory)."
        },
    )
    skip_zero_loss: str = field(
        default="off",
        metadata={
            "help": "Skip samples that meet their margin (zero loss, zero gradient): off, exact (a no-grad selection "
            "pass, then forward/backward of the violating samples only) or stale (also leave out samples whose loss "
            "was zero when last seen, revisited on a schedule; approximate).",
            "choices": ["off", "exact", "stale"],
        },
    )
    skip_backward_ratio: float = field(
        default=2.0,
        metadata={
            "help": "Backward / forward cost ratio of the skip cost model: the ordinary step is taken while the "
            "violating fraction is at least ratio / (1 + ratio)."
        },
    )
    stale_revisit_epochs: int = field(
        default=4, metadata={"help": "skip_zero_loss=stale: a zero-loss sample is seen again after this many epochs."}
    )
    stale_final_fraction: float = field(
        default=0.125, metadata={"help": "skip_zero_loss=stale: final fraction of the epochs that see every sample."}
    )
    skip_gather_window: bool = field(
        default=True,
        metadata={
            "help": "skip_zero_loss with gradient accumulation: backpropagate the violating samples of the whole "
            "window at its last micro-batch, in full chunks of the micro-batch size (same gradients)."
        },
    )
    logitnorm_temperature: float = field(default=0.04, metadata={"help": "Temperature of LogitNorm (logitnorm)."})
    la_tau: float = field(default=1.0, metadata={"help": "tau of logit-adjusted cross-entropy (la)."})
    focal_gamma: float = field(default=2.0, metadata={"help": "gamma of the focal loss (focal)."})
    dice_smooth: float = field(default=0.0, metadata={"help": "Smoothing constant of the soft Dice loss (dice)."})
    causal_lm_margin: float = field(
        default=1.0,
        metadata={
            "help": "Causal LMs: the margin of every target token when margin is unset (the base of the per-token "
            "margins for hem+)."
        },
    )
    causal_lm_fused_head: bool = field(
        default=True,
        metadata={
            "help": "Causal LMs with hem/hem+: train through the fused linear HEM head (never building the "
            "(tokens, vocabulary) logits)."
        },
    )

    @property
    def label_column_name(self) -> str | None:
        """Former name of `class_counts_column` (deprecated)."""
        _warn_renamed("label_column_name", stacklevel=3)
        return self.class_counts_column

    @label_column_name.setter
    def label_column_name(self, value: str | None) -> None:
        _warn_renamed("label_column_name", stacklevel=3)
        self.class_counts_column = value

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments) -> HEMConfig:
        """An `HEMConfig` with the fields of a plain `TrainingArguments` and the default loss settings."""
        if not isinstance(args, TrainingArguments):
            raise ValueError(f"args must be an HEMConfig (or TrainingArguments), got {type(args).__name__}.")
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init})

    def to_loss_settings(self) -> LossSettings:
        """The loss settings of these arguments as one checked [`LossSettings`] value (what the trainer, the
        experiments and [`hem_loss_func`] take). `loss_ignore_index=None` stays `None`: the trainer reads the model's
        ignore index."""
        return LossSettings(**{name: getattr(self, field) for field, name in LOSS_SETTINGS_FIELDS.items()})

    @property
    def loss_settings(self) -> LossSettings:
        """[`to_loss_settings`] as a property."""
        return self.to_loss_settings()

    def __post_init__(self):
        # The loss settings are checked by the value they make, once; its normalised fields are kept (the lower-case
        # loss name, the per-class choice made for `None`, the counts as a list).
        settings = self.to_loss_settings()
        self.loss_name = settings.loss_name
        self.per_class_margins = settings.per_class_margins
        if settings.class_counts is not None:
            self.class_counts = list(settings.class_counts)
        if self.skip_zero_loss not in ("off", "exact", "stale"):
            raise ValueError(f"skip_zero_loss={self.skip_zero_loss!r}; expected one of 'off', 'exact', 'stale'.")
        if self.skip_zero_loss != "off" and self.loss_name not in MARGIN_LOSS_NAMES:
            raise ValueError(
                f"skip_zero_loss={self.skip_zero_loss!r} with loss_name={self.loss_name!r}: only the margin losses "
                f"({', '.join(MARGIN_LOSS_NAMES)}) have samples with exactly zero loss and gradient; use 'off'."
            )
        check_number("skip_backward_ratio", self.skip_backward_ratio, minimum=0.0)
        if (
            isinstance(self.stale_revisit_epochs, bool)
            or not isinstance(self.stale_revisit_epochs, int)
            or (self.stale_revisit_epochs < 1)
        ):
            raise ValueError(f"stale_revisit_epochs must be an integer >= 1, got {self.stale_revisit_epochs!r}.")
        check_number("stale_final_fraction", self.stale_final_fraction, minimum=0.0, inclusive=True)
        if self.stale_final_fraction > 1:
            raise ValueError(f"stale_final_fraction must be in [0, 1], got {self.stale_final_fraction!r}.")
        if self.label_smoothing_factor != 0:
            kind = "a margin loss" if self.loss_name in MARGIN_LOSS_NAMES else "HEMTrainer's losses"
            raise ValueError(
                f"label_smoothing_factor={self.label_smoothing_factor} cannot be combined with loss_name="
                f"{self.loss_name!r}: label smoothing is not defined for {kind}, and HEMTrainer computes its own loss "
                "so the Trainer's label smoother would be silently skipped. Set label_smoothing_factor=0."
            )
        super().__post_init__()


# Fields renamed because transformers' example scripts or TRL declare the same name in their own argument dataclasses
# (HfArgumentParser refuses a flag declared twice): old name -> new name. The old names stay accepted in Python.
RENAMED_FIELDS = {"label_column_name": "class_counts_column"}


def _warn_renamed(old: str, stacklevel: int) -> None:
    warnings.warn(
        f"HEMConfig's {old} was renamed {RENAMED_FIELDS[old]}: the old name is also a data argument of transformers' "
        f"example scripts, and HfArgumentParser refuses a name declared twice. Use {RENAMED_FIELDS[old]}.",
        FutureWarning,
        stacklevel=stacklevel,
    )


def _accept_renamed_fields(init):
    """Wraps the dataclass `__init__` so that the old names of renamed fields still work (with a `FutureWarning`)."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for old, new in RENAMED_FIELDS.items():
            if old in kwargs:
                if new in kwargs:
                    raise ValueError(
                        f"{old}={kwargs[old]!r} and {new}={kwargs[new]!r} were both given; {old} is the former name "
                        f"of {new}: give {new} only."
                    )
                _warn_renamed(old, stacklevel=3)
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    return __init__


HEMConfig.__init__ = _accept_renamed_fields(HEMConfig.__init__)

#: `HEMConfig` field -> [`LossSettings`] field: the loss settings that `HEMConfig` exposes as flags.
LOSS_SETTINGS_FIELDS = {
    "loss_name": "loss_name",
    "margin": "margin",
    "margin_scale": "margin_scale",
    "per_class_margins": "per_class_margins",
    "max_margin": "max_margin",
    "class_counts": "class_counts",
    "num_margin_samples": "num_margin_samples",
    "loss_ignore_index": "ignore_index",
    "upsample_logits_in_loss": "upsample_logits_in_loss",
    "logitnorm_temperature": "logitnorm_temperature",
    "la_tau": "la_tau",
    "focal_gamma": "focal_gamma",
    "dice_smooth": "dice_smooth",
    "causal_lm_margin": "causal_lm_margin",
}
