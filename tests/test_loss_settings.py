"""`LossSettings` (one checked value), `build_loss`, the `Margins` value and the named per-batch sums `BatchSums`."""

import dataclasses
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from hf_hem import HEMLoss, LossSettings, build_loss, get_loss, hem_loss, hem_loss_func  # noqa: E402
from hf_hem.losses.registry import LOSS_NAMES  # noqa: E402
from hf_hem.losses.terms import BatchSums, LossTerms, loss_share  # noqa: E402
from hf_hem.margins import Margins, build_margins, margins_from_counts, stored_margins  # noqa: E402
from hf_hem.trainer import HEMConfig  # noqa: E402
from hf_hem.trainer.hem_config import LOSS_SETTINGS_FIELDS  # noqa: E402


# ---- the value: checked once, with errors that name the value and what was expected ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_name": "hinge"}, "loss_name='hinge' is not a known loss; expected one of ce, hem, hem\\+"),
        ({"loss_name": "hem+", "margin": 0.2}, "margin=0.2 with loss_name='hem\\+'.*per-class margins"),
        ({"loss_name": "hem+", "per_class_margins": False}, "per_class_margins=False contradicts"),
        ({"per_class_margins": "yes"}, "per_class_margins must be True, False or None, got 'yes'"),
        ({"margin": 0.5, "per_class_margins": True}, "margin=0.5 with per_class_margins=True"),
        ({"margin": -1.0}, "margin must be a finite number >= 0, got -1.0"),
        ({"margin": float("nan")}, "margin must be a finite number"),
        ({"margin_scale": 0.0}, "margin_scale must be a finite number > 0"),
        ({"max_margin": 0.0}, "max_margin must be a number > 0, inf or None"),
        ({"class_counts": [3, -1]}, "class_counts must be a non-empty list of integers >= 0"),
        ({"class_counts": [1.5, 2]}, "class_counts must be a non-empty list of integers"),
        ({"class_counts": []}, "class_counts must be a non-empty list"),
        ({"class_counts": [0, 0]}, "class_counts are all zero"),
        ({"num_margin_samples": 0}, "num_margin_samples must be a finite number > 0"),
        ({"ignore_index": 1.5}, "ignore_index must be an int or None, got 1.5"),
        ({"class_dim": 0}, "class_dim must be 1 .* got 0"),
        ({"upsample_logits_in_loss": "yes"}, "upsample_logits_in_loss must be True or False"),
        ({"logitnorm_temperature": 0.0}, "logitnorm_temperature must be a finite number > 0"),
        ({"la_tau": float("inf")}, "la_tau must be a finite number"),
        ({"focal_gamma": -2.0}, "focal_gamma must be a finite number >= 0, got -2.0"),
        ({"dice_smooth": -1.0}, "dice_smooth must be a finite number >= 0"),
        ({"causal_lm_margin": -1.0}, "causal_lm_margin must be a finite number >= 0"),
    ],
)
def test_settings_reject_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossSettings(**kwargs)


def test_settings_normalise_once_and_are_frozen():
    settings = LossSettings("HEM+", class_counts=np.array([5, 3, 2]))
    assert settings.loss_name == "hem+"
    assert settings.per_class_margins is True  # the loss's own choice, decided here
    assert settings.class_counts == (5, 3, 2) and all(type(c) is int for c in settings.class_counts)
    assert LossSettings("hem").per_class_margins is False
    assert LossSettings("mm", per_class_margins=True).per_class_margins is True
    assert LossSettings(class_counts=torch.tensor([4, 1])).class_counts == (4, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.margin = 1.0
    # A changed copy is checked again.
    with pytest.raises(ValueError, match="focal_gamma"):
        settings.replace(focal_gamma=-1.0)
    assert settings.replace(focal_gamma=0.5).focal_gamma == 0.5


def test_loss_arguments_come_from_the_registry():
    settings = LossSettings("focal", focal_gamma=0.5, la_tau=3.0)
    assert settings.loss_arguments() == {"gamma": 0.5}
    assert LossSettings("la", la_tau=3.0).loss_arguments() == {"tau": 3.0}
    assert LossSettings("hem").loss_arguments() == {}
    assert LossSettings("hem").needs_class_counts and not LossSettings("hem", margin=1.0).needs_class_counts
    assert LossSettings("la", margin=None).needs_class_counts and not LossSettings("ce").needs_class_counts


# ---- HEMConfig: the flags, and the value they make ----


def test_hem_config_fields_are_the_settings_fields_with_the_same_defaults(tmp_path):
    config = HEMConfig(output_dir=str(tmp_path))
    settings_defaults = {field.name: field.default for field in dataclasses.fields(LossSettings)}
    config_fields = {field.name: field for field in dataclasses.fields(HEMConfig)}
    for config_name, settings_name in LOSS_SETTINGS_FIELDS.items():
        assert config_fields[config_name].default == settings_defaults[settings_name], config_name
    # Every settings field but the head's class dimension is a flag.
    assert set(settings_defaults) - set(LOSS_SETTINGS_FIELDS.values()) == {"class_dim"}
    assert config.to_loss_settings() == LossSettings()


def test_hem_config_round_trip_through_flags(tmp_path):
    (args,) = HfArgumentParser(HEMConfig).parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path), "--loss_name", "hem+", "--class_counts", "50", "5",
            "--margin_scale", "1000", "--max_margin", "0.5", "--loss_ignore_index", "255", "--focal_gamma", "0.5",
            "--num_margin_samples", "20", "--upsample_logits_in_loss", "true",
        ]
    )  # fmt: skip
    expected = LossSettings(
        "hem+",
        class_counts=(50, 5),
        margin_scale=1000.0,
        max_margin=0.5,
        ignore_index=255,
        focal_gamma=0.5,
        num_margin_samples=20,
        upsample_logits_in_loss=True,
    )
    assert args.loss_settings == expected
    assert args.to_loss_settings() == expected
    # The config keeps the value's normalised fields.
    assert args.loss_name == "hem+" and args.per_class_margins is True and args.class_counts == [50, 5]


def test_hem_config_errors_come_from_the_value(tmp_path):
    for kwargs in ({"focal_gamma": -2.0}, {"loss_name": "hem+", "margin": 0.2}, {"max_margin": -1.0}):
        with pytest.raises(ValueError) as from_value:
            LossSettings(**kwargs)
        with pytest.raises(ValueError) as from_config:
            HEMConfig(output_dir=str(tmp_path), **kwargs)
        assert str(from_config.value) == str(from_value.value)


# ---- build_loss and hem_loss_func: the value and the keyword path give the same loss ----


def _batch(seed=0, num_classes=4, batch=16):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, generator=generator) * 2
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return logits, labels


@pytest.mark.parametrize(
    "keywords",
    [
        {"loss_name": "hem", "margin": 0.3},
        {"loss_name": "hem", "class_counts": [40, 30, 20, 10]},
        {"loss_name": "hem+", "class_counts": [40, 30, 20, 10], "max_margin": None},
        {"loss_name": "mm+maz", "margin": 0.5},
        {"loss_name": "ce"},
        {"loss_name": "la", "class_counts": [40, 30, 20, 10], "la_tau": 2.0},
        {"loss_name": "focal", "focal_gamma": 0.5},
        {"loss_name": "logitnorm", "logitnorm_temperature": 0.5},
        {"loss_name": "dice", "dice_smooth": 1.0},
    ],
)
def test_hem_loss_func_with_a_value_equals_the_keyword_path(keywords):
    logits, labels = _batch()
    labels[:3] = -100
    by_keywords = hem_loss_func(**keywords)
    by_value = hem_loss_func(LossSettings(**keywords))
    torch.testing.assert_close(by_value({"logits": logits}, labels), by_keywords({"logits": logits}, labels))
    if by_keywords.margins is not None:
        torch.testing.assert_close(by_value.margins, by_keywords.margins)
        assert by_value.terms.margin_set.per_class == by_keywords.terms.margin_set.per_class
    # And both equal the loss built by name.
    name = keywords["loss_name"]
    module_kwargs = {"margin": keywords["margin"]} if "margin" in keywords else {}
    if "class_counts" in keywords:
        module_kwargs["class_counts"] = keywords["class_counts"]
        if "max_margin" in keywords:
            module_kwargs["max_margin"] = keywords["max_margin"]
    module_kwargs.update(LossSettings(**keywords).loss_arguments())
    expected = get_loss(name, **module_kwargs)(logits, labels)
    torch.testing.assert_close(by_value({"logits": logits}, labels), expected.to(torch.float32))


def test_hem_loss_func_refuses_a_value_and_loss_keywords_together():
    settings = LossSettings("hem", margin=0.3)
    with pytest.raises(ValueError, match="LossSettings value and the loss keyword\\(s\\) ignore_index, focal_gamma"):
        hem_loss_func(settings, focal_gamma=1.0, ignore_index=255)
    # Keywords that are not loss settings stay free.
    assert hem_loss_func(settings, average_tokens_across_devices=False, shift_labels=False) is not None


def test_build_loss_from_settings():
    counts = [40, 30, 20, 10]
    criterion = build_loss(LossSettings("hem+", class_counts=counts))
    assert isinstance(criterion, HEMLoss)
    torch.testing.assert_close(criterion.margin, margins_from_counts(counts, per_class=True))
    # class_counts found for a run win over none in the settings; the ignore index and class dim are passed on.
    token = build_loss(LossSettings("hem", ignore_index=255, class_dim=-1), counts)
    assert token.ignore_index == 255 and token.class_dim == -1 and token.margin.dim() == 0
    assert build_loss(LossSettings("focal", focal_gamma=0.25)).gamma == 0.25
    with pytest.raises(ValueError, match="loss 'hem' needs margins: pass margin=, class_counts="):
        build_loss(LossSettings("hem"))
    with pytest.raises(ValueError, match="loss 'la' .* needs class counts"):
        build_loss(LossSettings("la"))
    with pytest.raises(ValueError, match="settings must be a LossSettings"):
        build_loss("hem")


# ---- Margins: one form from the builder to the kernel, "per class?" decided once ----


def test_per_class_is_decided_by_the_builder_and_kept():
    balanced = [25, 25, 25, 25]
    shared = build_margins(4, class_counts=balanced)
    per_class = build_margins(4, class_counts=balanced, per_class=True)
    # Balanced HEM+ margins equal HEM's values, but stay per class: nothing compares entries afterwards.
    torch.testing.assert_close(per_class.values, shared.values)
    assert not shared.per_class and per_class.per_class
    assert isinstance(shared.argument(), float) and torch.is_tensor(per_class.argument())
    assert HEMLoss(shared).margin.dim() == 0 and HEMLoss(per_class).margin.shape == (4,)
    fixed = build_margins(3, margin=0.7)
    assert fixed.values.tolist() == pytest.approx([0.7] * 3) and not fixed.per_class
    assert build_margins(3) is None
    with pytest.raises(ValueError, match="margin=0.5 with per_class=True"):
        build_margins(3, margin=0.5, per_class=True)
    with pytest.raises(ValueError, match="Margins.values must be finite and >= 0"):
        Margins(torch.tensor([0.2, -1.0]), per_class=True)


def test_get_loss_goes_through_the_builder():
    counts = [100, 10, 1]
    criterion = get_loss("hem+", class_counts=counts)
    torch.testing.assert_close(criterion.margin, build_margins(3, class_counts=counts, per_class=True).values)
    shared = HEMLoss.from_label_counts(counts, per_class=False)
    assert shared.margin.dim() == 0
    assert float(shared.margin) == pytest.approx(build_margins(3, class_counts=counts).shared)


def test_stored_margins_read_per_class_from_the_run_or_the_values():
    assert stored_margins({"hem_margins": [0.5, 0.5]}, 2, "cfg").per_class is False
    assert stored_margins({"hem_margins": [0.5, 0.5]}, 2, "cfg", per_class=True).per_class is True
    assert stored_margins({"hem_margins": [0.5, 0.9]}, 2, "cfg").per_class is True
    assert stored_margins({}, 2, "cfg") is None


def test_statistics_use_the_margins_as_built():
    logits, labels = _batch(seed=3)
    margins = build_margins(4, class_counts=[40, 30, 20, 10], per_class=True)
    terms = LossTerms(LossSettings("hem+"), margins=margins)
    stats = dict(zip(terms.stat_names, terms.stats(logits, labels).tolist()))
    per_sample = hem_loss(logits, labels, margins.values, reduction="none")
    assert stats["violating"] == float((per_sample > 0).sum())
    assert stats["margin_sum"] == pytest.approx(float(margins.values[labels].sum()))


# ---- BatchSums: the named per-batch sums and their one all-reduce ----


def test_batch_sums_pack_unpack_and_add():
    count = torch.tensor(3.0, dtype=torch.float64)
    stats = torch.tensor([4.0, 2.0, 3.0], dtype=torch.float64)
    first = BatchSums.of(count, loss_sum=torch.tensor(1.5, requires_grad=True), skipped=1, samples=4, stats=stats)
    assert first.loss_sum.dtype == torch.float64 and not first.loss_sum.requires_grad
    assert float(first.items) == 0.0  # not given: 0
    second = BatchSums.of(count * 2, loss_sum=0.5, items=5, samples=4, stats=stats)
    total = first + second
    assert (float(total.count), float(total.loss_sum), float(total.items)) == (9.0, 2.0, 5.0)
    assert (float(total.skipped), float(total.samples)) == (1.0, 8.0)
    torch.testing.assert_close(total.stats, stats * 2)
    packed = total.pack()
    assert packed.shape == (5 + 3,)
    again = BatchSums.unpack(packed)
    for field in dataclasses.fields(BatchSums):
        torch.testing.assert_close(getattr(again, field.name), getattr(total, field.name))
    doubled = total.all_reduce(lambda tensor: tensor * 2)  # two processes holding the same sums
    assert float(doubled.count) == 18.0 and doubled.stats.tolist() == (stats * 4).tolist()
    with pytest.raises(ValueError, match="BatchSums has no field\\(s\\) \\['violating'\\]"):
        BatchSums.of(count, violating=1)


def test_loss_share_is_the_processes_part_of_the_global_loss():
    loss_sum = torch.tensor(6.0)
    assert float(loss_share(loss_sum, torch.tensor(4.0, dtype=torch.float64))) == 1.5
    assert float(loss_share(loss_sum, torch.tensor(4.0), gradient_scale=2.0)) == 3.0
    assert float(loss_share(loss_sum, torch.tensor(0.0))) == 6.0  # no violating sample: divide by 1


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_terms_from_settings_equal_terms_from_a_name(loss_name):
    """`LossTerms(settings)` and the keyword form give the same criterion and counts."""
    logits, labels = _batch(seed=5)
    counts = [40, 30, 20, 10]
    settings = LossSettings(loss_name, class_counts=counts)
    margins = settings.margins(4)
    by_value = LossTerms(settings, margins=margins, class_counts=counts)
    by_name = LossTerms(
        loss_name,
        margins=None if margins is None else margins.values,
        per_class_margins=settings.per_class_margins,
        class_counts=counts,
    )
    for a, b in zip(by_value.parts(logits, labels), by_name.parts(logits, labels)):
        torch.testing.assert_close(a, b)
