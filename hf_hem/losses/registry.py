"""The registry: one table of per-loss facts, and `get_loss(name, **kwargs)` that reads it.

Everything else that needs to know something about a loss (the trainer's normalisation, whether class counts are
needed, which [`LossSettings`] fields become constructor arguments, what a model card says) reads [`LOSS_SPECS`]; the loss of
a run is built from its settings by [`hf_hem.losses.build_loss`].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn

from .baselines import CrossEntropyLoss, DiceLoss, FocalLoss, LogitAdjustedLoss, LogitNormLoss
from .hem import HEMLoss, MMLoss, MMMazLoss, MMThresLoss


@dataclass(frozen=True)
class CardText:
    """How a model card shows a loss.

    Args:
        display (`str`): the loss's name in prose and tables.
        tag (`str`): the Hub tag of the loss.
        hem_family (`bool`): whether the card adds the `hem-loss` tag and the HEM explanation.
        sentence (`str`): one sentence saying what the model was trained with.
    """

    display: str
    tag: str
    hem_family: bool
    sentence: str


@dataclass(frozen=True)
class LossSpec:
    """The facts of one registry loss.

    Args:
        name (`str`): the registry name.
        loss_class (`type[nn.Module]`): the module class.
        normaliser (`str`): what the batch value divides the sum of the per-sample losses by: `"violating"`
            (samples with a non-zero loss: HEM, HEM+, MM+maz), `"labelled"` (every labelled sample) or `"set"`
            (one value per set of samples, such as Dice; no per-sample losses).
        margin_loss (`bool`): takes margins (`margin=`); a sample that meets its margin has exactly zero loss and
            zero gradient.
        needs_class_counts (`bool`): cannot be built without per-class training counts (HEM+'s margins, the priors
            of logit adjustment).
        per_class_margins (`bool`): margins per target class by default (HEM+).
        config_arguments (`Mapping[str, str]`): [`LossSettings`] (and `HEMConfig`) field -> constructor argument.
        card_settings (`tuple[str, ...]`): constructor arguments of `config_arguments` that the model card shows.
        card (`CardText`): the card's text.
    """

    name: str
    loss_class: type[nn.Module]
    normaliser: str
    card: CardText
    margin_loss: bool = False
    needs_class_counts: bool = False
    per_class_margins: bool = False
    config_arguments: Mapping[str, str] = field(default_factory=dict)
    card_settings: tuple[str, ...] = ()

    @property
    def skips_satisfied_samples(self) -> bool:
        """Whether samples with zero loss also leave the normalising count unchanged (HEM, HEM+, MM+maz)."""
        return self.margin_loss and self.normaliser == "violating"


def _margin_card(display: str, tag: str, sentence: str, hem_family: bool = False) -> CardText:
    return CardText(display, tag, hem_family, sentence)


_SPECS = (
    LossSpec(
        "ce",
        CrossEntropyLoss,
        "labelled",
        CardText(
            "cross-entropy",
            "cross-entropy-loss",
            False,
            "The model was trained with cross-entropy, as a baseline for comparison with HEM.",
        ),
    ),
    LossSpec(
        "hem",
        HEMLoss,
        "violating",
        CardText("HEM", "hem-loss", True, "The model was trained with HEM: one margin μ shared by all classes."),
        margin_loss=True,
    ),
    LossSpec(
        "hem+",
        HEMLoss,
        "violating",
        CardText(
            "HEM+",
            "hem-plus-loss",
            True,
            "The model was trained with HEM+: each target class has its own margin μ_c, computed from its training "
            "count.",
        ),
        margin_loss=True,
        needs_class_counts=True,
        per_class_margins=True,
    ),
    LossSpec(
        "mm",
        MMLoss,
        "labelled",
        _margin_card(
            "multi-class margin",
            "multi-margin-loss",
            "The model was trained with the multi-class margin loss, the ablation HEM starts from.",
        ),
        margin_loss=True,
    ),
    LossSpec(
        "mm+maz",
        MMMazLoss,
        "violating",
        _margin_card(
            "multi-class margin, mean above zero",
            "mm-maz-loss",
            "The model was trained with the multi-class margin loss averaged over the non-zero errors (MM+maz), an "
            "ablation of HEM.",
        ),
        margin_loss=True,
    ),
    LossSpec(
        "mm+thres",
        MMThresLoss,
        "labelled",
        _margin_card(
            "multi-class margin, thresholded",
            "mm-thres-loss",
            "The model was trained with the multi-class margin loss keeping only the errors at or above their mean "
            "(MM+thres), an ablation of HEM.",
        ),
        margin_loss=True,
    ),
    LossSpec(
        "logitnorm",
        LogitNormLoss,
        "labelled",
        CardText(
            "LogitNorm",
            "logitnorm-loss",
            False,
            "The model was trained with LogitNorm (cross-entropy on L2-normalised logits), as a baseline for HEM.",
        ),
        config_arguments={"logitnorm_temperature": "temperature"},
        card_settings=("temperature",),
    ),
    LossSpec(
        "la",
        LogitAdjustedLoss,
        "labelled",
        CardText(
            "logit-adjusted cross-entropy",
            "logit-adjusted-loss",
            False,
            "The model was trained with logit-adjusted cross-entropy (class priors from the training counts), "
            "as a baseline for HEM+.",
        ),
        needs_class_counts=True,
        config_arguments={"la_tau": "tau"},
        card_settings=("tau",),
    ),
    LossSpec(
        "focal",
        FocalLoss,
        "labelled",
        CardText("focal", "focal-loss", False, "The model was trained with focal loss, as a baseline for HEM."),
        config_arguments={"focal_gamma": "gamma"},
        card_settings=("gamma",),
    ),
    LossSpec(
        "dice",
        DiceLoss,
        "set",
        CardText("Dice", "dice-loss", False, "The model was trained with Dice loss, as a baseline for HEM."),
        config_arguments={"dice_smooth": "smooth"},
    ),
)

#: Every loss of the library by registry name, in the order the docs list them.
LOSS_SPECS: Mapping[str, LossSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
LOSS_NAMES = tuple(LOSS_SPECS)
MARGIN_LOSS_NAMES = tuple(name for name, spec in LOSS_SPECS.items() if spec.margin_loss)
# Losses whose construction needs the training set's class counts unless a margin is given.
COUNT_LOSS_NAMES = tuple(name for name, spec in LOSS_SPECS.items() if spec.needs_class_counts)


def loss_spec(name: str) -> LossSpec:
    """The [`LossSpec`] of `name` (case-insensitive); a clear error for unknown names."""
    key = name.lower() if isinstance(name, str) else name
    if key not in LOSS_SPECS:
        raise ValueError(f"unknown loss {name!r}; valid names are: {', '.join(LOSS_NAMES)}.")
    return LOSS_SPECS[key]


def needs_class_counts(name: str, margin: float | None = None) -> bool:
    """Whether building `name` needs class counts: HEM+ and `la` always, the other margin losses without `margin`."""
    spec = loss_spec(name)
    return spec.needs_class_counts or (spec.margin_loss and margin is None)


def get_loss(name: str, **kwargs) -> nn.Module:
    """Builds a loss module by name.

    Args:
        name (`str`): one of `ce, hem, hem+, mm, mm+maz, mm+thres, logitnorm, la, focal, dice` (case-insensitive).
        kwargs: the module's constructor arguments. For the margin losses, either `margin=` or
            `class_counts=` (with optional `scale=`, `num_samples=`, `max_margin=`); `hem+` uses per-class margins from
            `class_counts`, `hem`/`mm*` one margin (from `class_counts` if no `margin` is given). `la` needs
            `class_counts=`.

    Example:

    ```python
    >>> criterion = get_loss("hem+", class_counts=[5000, 500, 50])
    ```
    """
    spec = loss_spec(name)
    if spec.margin_loss:
        class_counts = kwargs.pop("class_counts", None)
        scale = kwargs.pop("scale", 2000.0)
        num_samples = kwargs.pop("num_samples", None)
        # The cap of the rule's margin on small training sets (margins.DEFAULT_MAX_MARGIN unless given).
        cap = {"max_margin": kwargs.pop("max_margin")} if "max_margin" in kwargs else {}
        if kwargs.get("margin") is None:
            kwargs.pop("margin", None)
            if class_counts is None:
                if spec.needs_class_counts:
                    raise ValueError(
                        f"loss {spec.name!r} needs class_counts= (training samples per class) or margin=."
                    )
                return spec.loss_class(**kwargs)
            return spec.loss_class.from_label_counts(
                class_counts, scale=scale, per_class=spec.per_class_margins, num_samples=num_samples, **cap, **kwargs
            )
        return spec.loss_class(**kwargs)
    if spec.needs_class_counts and kwargs.get("class_counts") is None:
        raise ValueError(f"loss {spec.name!r} (logit-adjusted CE) needs class_counts= (training samples per class).")
    return spec.loss_class(**kwargs)
