"""From training label counts to HEM / HEM+ margins.

The paper's rule `mu = sqrt(M / S)` was calibrated on CIFAR / ImageNet-size training sets; for the few dozen to few
hundred examples of a typical fine-tuning run it gives margins of 3 to 6.5, which learn far slower than CE
(`benchmarks/small_data_margins.py`, docs/method.md "Margins for small training sets"). The rule's margin is therefore
capped at `max_margin` (1.0 by default), which changes nothing for S >= M (2000 samples with the default M).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch


#: Default cap on the rule's margin (`max_margin`): the rule is kept for S >= M / max_margin**2 (2000 samples).
DEFAULT_MAX_MARGIN = 1.0
#: Margins of 2 and more learned slower than CE in the first epochs of every small-data setting of
#: `benchmarks/small_data_margins.py` (1 did not): [`margin_notes`] warns when the mean margin of the training
#: samples reaches it.
LARGE_MARGIN = 2.0


@dataclass(frozen=True, eq=False)
class Margins:
    """The margins of one run, in the one form they keep from the builder to the kernel.

    Built only by [`build_margins`] (or read back by [`stored_margins`]); whether they are used per target class is
    decided there, once, and carried: nothing downstream compares entries to find out.

    Args:
        values (`torch.Tensor`): `(C,)` float32 margins, one per class (all equal for one shared margin).
        per_class (`bool`): each sample uses the margin of its target class (HEM+); otherwise the one shared margin
            `values[0]` (HEM, MM, ...).
    """

    values: torch.Tensor
    per_class: bool

    def __post_init__(self):
        values = torch.as_tensor(self.values, dtype=torch.float32).detach().reshape(-1)
        if values.numel() == 0:
            raise ValueError("Margins.values must hold at least one margin, got an empty tensor.")
        if not bool((torch.isfinite(values) & (values >= 0)).all()):
            raise ValueError(f"Margins.values must be finite and >= 0, got {values.tolist()}.")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "per_class", bool(self.per_class))
        # Read once here, on the host: a shared margin is a plain float for the kernels from now on.
        object.__setattr__(self, "shared", float(values[0]))

    def argument(self, device: torch.device | None = None) -> float | torch.Tensor:
        """What the losses and kernels take as `margin`: the `(C,)` tensor (on `device`) when per class, else the
        shared margin as a float."""
        if not self.per_class:
            return self.shared
        return self.values if device is None else self.values.to(device)

    def to(self, device: torch.device | str) -> Margins:
        """The same margins with their values on `device` (this value itself when they are there already)."""
        device = torch.device(device)
        here = self.values.device
        if here.type == device.type and (device.index is None or here.index == device.index):
            return self
        return Margins(self.values.to(device), self.per_class)

    def __len__(self) -> int:
        return self.values.numel()

    def __repr__(self) -> str:
        shown = f"per_class ({self.values.numel()})" if self.per_class else f"{self.shared:.4g}"
        return f"Margins({shown})"


def _check_max_margin(max_margin) -> float:
    """`max_margin` as a float (`inf` for `None`: no cap), or a clear error."""
    if max_margin is None:
        return math.inf
    if isinstance(max_margin, bool) or not isinstance(max_margin, (int, float)) or math.isnan(max_margin):
        raise ValueError(f"max_margin must be a number > 0, inf or None (no cap), got {max_margin!r}.")
    if max_margin <= 0:
        raise ValueError(f"max_margin must be > 0 (inf or None: no cap), got {max_margin!r}.")
    return float(max_margin)


def rule_margin(scale: float, num_samples: float) -> float:
    """The paper's HEM margin `sqrt(M / S)`, uncapped."""
    return math.sqrt(scale / num_samples)


def _as_counts(counts, num_classes: int | None) -> np.ndarray:
    array = np.asarray(counts.detach().cpu() if torch.is_tensor(counts) else counts, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence with one count per class, got shape {array.shape}.")
    if num_classes is not None and array.size != num_classes:
        raise ValueError(
            f"counts has {array.size} entries but num_classes={num_classes}; expected one count per class."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"counts must be finite and >= 0, got {array.tolist()}.")
    if array.sum() == 0:
        raise ValueError("counts are all zero: margins need at least one training sample.")
    return array


def margins_from_counts(
    counts,
    scale: float = 2000.0,
    per_class: bool = True,
    *,
    num_classes: int | None = None,
    num_samples: float | None = None,
    max_margin: float | None = DEFAULT_MAX_MARGIN,
) -> torch.Tensor:
    r"""Margins from the training set's label counts.

    HEM uses one margin `mu = sqrt(M / S)` for `S` training samples. HEM+ gives each target class `c` its own
    margin `mu_c = sqrt(M / (n * S * p_c))`, with `n` classes and `p_c = counts[c] / sum(counts)` — for
    classification (`S = sum(counts)`) that is `sqrt(M / (n * counts[c]))`, and with balanced classes it equals HEM.

    When the HEM margin `sqrt(M / S)` exceeds `max_margin` (small training sets: S < 2000 with the defaults), every
    margin is multiplied by `max_margin / sqrt(M / S)`: HEM gets `max_margin`, HEM+ keeps its ratios between classes
    (and still equals HEM on balanced classes), and rare classes may stay above `max_margin`. That is the rule with
    `M` lowered to `max_margin**2 * S`. At CIFAR / ImageNet scale nothing changes (0.2 for S = 50,000).

    Args:
        counts (`Sequence[int]` or `torch.Tensor`): training samples (or, for segmentation, labelled pixels) per class.
        scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class (`bool`, defaults to `True`): HEM+ margins; if `False`, the single HEM margin repeated `n` times.
        num_classes (`int`, *optional*): expected number of classes, checked against `len(counts)`.
        num_samples (`float`, *optional*): `S`. Defaults to `sum(counts)`. For segmentation pass the number of
            training **images**: counting pixels as samples would drive the margin towards 0.
        max_margin (`float` or `None`, defaults to `DEFAULT_MAX_MARGIN` = 1.0): cap on the HEM margin; `None` or
            `inf` applies the paper's rule unchanged.

    Returns:
        `torch.Tensor` of shape `(n,)`, float32. A class with no training sample is never a target, so its margin is
        never used: it gets the largest finite margin, with a warning.
    """
    array = _as_counts(counts, num_classes)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}.")
    total = float(array.sum())
    samples = total if num_samples is None else float(num_samples)
    if not math.isfinite(samples) or samples <= 0:
        raise ValueError(f"num_samples must be a finite number > 0, got {num_samples!r}.")
    cap = _check_max_margin(max_margin)
    # Lowering M to cap**2 * S caps the HEM margin and scales HEM+'s margins alike.
    scale = min(scale, cap**2 * samples)
    n = array.size
    if not per_class:
        return torch.full((n,), rule_margin(scale, samples), dtype=torch.float32)
    present = array > 0
    margins = np.empty(n, dtype=np.float64)
    margins[present] = np.sqrt(scale / (n * samples * array[present] / total))
    if not present.all():
        missing = np.flatnonzero(~present).tolist()
        warnings.warn(
            f"classes {missing} have no training samples; giving them the largest finite margin "
            f"{margins[present].max():.4g} (it is never used while they never appear as targets).",
            stacklevel=2,
        )
        margins[~present] = margins[present].max()
    return torch.as_tensor(margins, dtype=torch.float32)


def build_margins(
    num_classes: int | None,
    *,
    margin: float | None = None,
    class_counts=None,
    scale: float = 2000.0,
    per_class: bool = False,
    num_samples: float | None = None,
    max_margin: float | None = DEFAULT_MAX_MARGIN,
    token_margin: float | None = None,
) -> Margins | None:
    """The margins of a run, as a [`Margins`] value; `None` when neither a margin nor class counts are known.

    The one builder: [`HEMTrainer`], [`hem_loss_func`], [`get_loss`] / `HEMLoss.from_label_counts` and
    [`hf_hem.losses.build_loss`] all come here. Which rule applies, in this order:

    * a fixed `margin`: repeated per class, never capped, shared (`per_class` must be `False`);
    * `token_margin` (causal LMs): that margin for every token, or with `per_class` the per-token rule
      [`token_margins`] from the token counts;
    * `class_counts`: the paper's rule [`margins_from_counts`], capped at `max_margin`.

    Args:
        num_classes (`int`, *optional*): number of classes (checked against `len(class_counts)`; taken from it when
            `None`).
        margin (`float`, *optional*): one fixed margin, finite and >= 0.
        class_counts (*optional*): training samples (segmentation: labelled pixels; causal LMs: target tokens) per
            class.
        scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class (`bool`, defaults to `False`): margins per target class (HEM+).
        num_samples (`float`, *optional*): `S`; defaults to `sum(class_counts)`.
        max_margin (`float` or `None`, defaults to 1.0): cap on the rule's HEM margin (see [`margins_from_counts`]);
            `None` or `inf`: the paper's rule unchanged.
        token_margin (`float`, *optional*): the base margin of a causal LM (`HEMConfig.causal_lm_margin`).
    """
    _check_max_margin(max_margin)
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
        if per_class:
            raise ValueError(
                f"margin={margin} with per_class=True: per-class margins come from class counts; leave margin unset "
                "or use one shared margin."
            )
        return Margins(torch.full((max(int(num_classes or 0), 1),), float(margin), dtype=torch.float32), False)
    if token_margin is not None:
        if num_classes is None:
            raise ValueError("token margins need num_classes (the vocabulary size).")
        return Margins(token_margins(num_classes, token_margin, class_counts, per_token=per_class), per_class)
    if class_counts is None:
        return None
    values = margins_from_counts(
        class_counts,
        scale=scale,
        per_class=per_class,
        num_classes=num_classes or None,
        num_samples=num_samples,
        max_margin=max_margin,
    )
    return Margins(values, per_class)


def resolve_margins(
    num_classes: int,
    *,
    margin: float | None = None,
    class_counts=None,
    scale: float = 2000.0,
    per_class: bool = False,
    num_samples: float | None = None,
    max_margin: float | None = DEFAULT_MAX_MARGIN,
) -> torch.Tensor | None:
    """The `(num_classes,)` margin tensor of [`build_margins`] (its `values`), or `None`; kept for callers that
    want the tensor alone."""
    margins = build_margins(
        num_classes,
        margin=margin,
        class_counts=class_counts,
        scale=scale,
        per_class=per_class and margin is None,
        num_samples=num_samples,
        max_margin=max_margin,
    )
    return None if margins is None else margins.values


def token_margins(num_tokens: int, margin: float, token_counts=None, per_token: bool = False) -> torch.Tensor:
    """`(V,)` margins of a causal LM: `margin` for every token, or with `per_token` (HEM+) from token counts,
    `margin * sqrt(S / (V * s_c))` with `S` counted tokens, `V` the vocabulary size, `s_c` the count of token `c`
    (see `hf_hem.trainer.causal_lm`); a token never seen as a target gets the largest finite margin (never used
    while it is never a target)."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"causal_lm_margin must be a finite number >= 0, got {margin!r}.")
    if not per_token:
        return torch.full((num_tokens,), float(margin), dtype=torch.float32)
    counts = np.asarray(token_counts, dtype=np.float64).reshape(-1)
    if counts.size != num_tokens:
        raise ValueError(f"token counts have {counts.size} entries but the vocabulary has {num_tokens} tokens.")
    total = float(counts.sum())
    if total <= 0:
        raise ValueError("the training set has no target tokens to count (every label is -100).")
    present = counts > 0
    values = np.empty(num_tokens, dtype=np.float64)
    values[present] = float(margin) * np.sqrt(total / (num_tokens * counts[present]))
    # Most of a real vocabulary never occurs as a target in a fine-tuning set: no per-token warning here.
    values[~present] = values[present].max()
    return torch.as_tensor(values, dtype=torch.float32)


def margin_notes(
    margins: torch.Tensor,
    class_counts=None,
    *,
    scale: float = 2000.0,
    num_samples: float | None = None,
    max_margin: float | None = DEFAULT_MAX_MARGIN,
    fixed: bool = False,
) -> tuple[str | None, str | None]:
    """What to tell the user about a run's margins at start-up: `(capped, large)`, each a message or `None`.

    `capped`: the paper's rule gave more than `max_margin` for this training set, so the margins were scaled down
    (an information: that is the default at work). `large`: the mean margin of the training samples (the margin
    `hem/margin_mean` logs; HEM's one margin, HEM+'s margins weighted by the class counts) is `LARGE_MARGIN` (2) or
    more, which learned slower than CE on small data in `benchmarks/small_data_margins.py` (a warning, with what to
    try).

    Args:
        margins (`torch.Tensor`): the `(n,)` margins of the run.
        class_counts (*optional*): training samples (segmentation: pixels) per class; weights the mean margin.
        scale (`float`, defaults to 2000.0): `M`.
        num_samples (`float`, *optional*): `S`; defaults to `sum(class_counts)`.
        max_margin (`float` or `None`, defaults to 1.0): the cap the margins were derived with.
        fixed (`bool`, defaults to `False`): the margin was given (`margin=`), not derived from counts.
    """
    values = margins.detach().double().cpu()
    counts = None if class_counts is None else torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if counts is not None and counts.numel() == values.numel() and counts.sum() > 0:
        mean_margin = float((values * counts).sum() / counts.sum())
    else:
        mean_margin = float(values.mean())
    samples = None
    if num_samples is not None:
        samples = float(num_samples)
    elif counts is not None and counts.sum() > 0:
        samples = float(counts.sum())
    data = "" if samples is None else f" for S = {samples:g} training samples"
    capped = None
    cap = _check_max_margin(max_margin)
    if not fixed and samples is not None and rule_margin(scale, samples) > cap * (1 + 1e-6):
        capped = (
            f"The paper's margin rule gives mu = sqrt(M / S) = sqrt({scale:g} / {samples:g}) = "
            f"{rule_margin(scale, samples):.3g}, calibrated on CIFAR / ImageNet-size training sets; it is capped at "
            f"max_margin={cap:g} (margins used: mean {mean_margin:.3g}, max {float(values.max()):.3g}), which kept "
            "pace with CE on small training sets (docs/method.md). Set max_margin=None for the paper's rule or "
            "margin= for a fixed margin."
        )
    large = None
    if mean_margin >= LARGE_MARGIN * (1 - 1e-6):
        source = "the given margin" if fixed else f"margin_scale={scale:g}, max_margin={max_margin}"
        large = (
            f"HEM margin {mean_margin:.3g} (mean over the training samples; {source}){data} is large: margins of "
            f"{LARGE_MARGIN:g} and more learned slower than CE on a few dozen to a few hundred samples "
            "(docs/method.md), and hem/violating_fraction stays near 1 while they do. Try margin=1.0, or leave "
            f"margin unset with the default max_margin={DEFAULT_MAX_MARGIN:g}."
        )
    return capped, large


# Keys written into a model config, so checkpoints and Hub downloads carry the margins they were trained with.
CONFIG_KEYS = ("hem_loss", "hem_margins", "hem_class_counts", "hem_margin_scale", "hem_num_margin_samples")


def store_margins_in_config(
    config, loss_name: str, margins: torch.Tensor | None, class_counts, margin_scale: float, num_samples
) -> None:
    """Writes the loss, margins, counts, `M` and `S` into `config` (`CONFIG_KEYS`); a no-op without a config."""
    if config is None:
        return
    config.hem_loss = loss_name
    if isinstance(margins, Margins):
        margins = margins.values
    config.hem_margins = None if margins is None else [float(m) for m in margins.tolist()]
    config.hem_class_counts = None if class_counts is None else [int(c) for c in class_counts]
    config.hem_margin_scale = float(margin_scale)
    config.hem_num_margin_samples = num_samples


def stored_margins(stored, num_classes: int, source: str, per_class: bool = False) -> Margins | None:
    """The margins an earlier HEM run stored (a config object or a `config.json` dict), checked; `None` if none.

    A config stores the values only: they are used per class when `per_class` (this run's setting) says so, or when
    they differ between classes (a HEM+ run's margins mean nothing shared). Decided here, where they are read back.
    """
    values = stored.get("hem_margins") if isinstance(stored, dict) else getattr(stored, "hem_margins", None)
    if values is None:
        return None
    margins = torch.as_tensor(values, dtype=torch.float32)
    if margins.numel() != num_classes:
        raise ValueError(f"{source} holds {margins.numel()} margins but the model has num_labels={num_classes}.")
    return Margins(margins, per_class or bool((margins != margins[0]).any()))
