"""The default margins on small training sets (the rule capped at `max_margin`) and the start-up notes about them."""

import logging
import math
import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import HfArgumentParser  # noqa: E402

from hf_hem.margins import (  # noqa: E402
    DEFAULT_MAX_MARGIN,
    LARGE_MARGIN,
    margin_notes,
    margins_from_counts,
    resolve_margins,
)
from hf_hem.trainer import HEMConfig, HEMTrainer  # noqa: E402


try:  # tests/ may or may not become a package
    from .helpers import hem_args, image_dataset, tiny_vit
except ImportError:
    from helpers import hem_args, image_dataset, tiny_vit

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LOGGER = "hf_hem.trainer.loss_setup"


def balanced(num_samples: int, num_classes: int = 2) -> list[int]:
    share, rest = divmod(num_samples, num_classes)
    return [share + (index < rest) for index in range(num_classes)]


# ---------------------------------------------------------------- the default


@pytest.mark.parametrize("num_samples", [48, 120, 240])
def test_small_training_sets_get_the_cap_instead_of_the_rule(num_samples):
    # The issue's SegFormer (48 images), ViT (120) and BERT (240) fine-tunes: the rule gives 6.45, 4.08, 2.89.
    counts = balanced(num_samples)
    rule = margins_from_counts(counts, per_class=False, max_margin=None)
    assert rule[0].item() == pytest.approx(math.sqrt(2000 / num_samples))
    assert rule[0].item() > 2.5
    default = margins_from_counts(counts, per_class=False)
    assert default.tolist() == pytest.approx([DEFAULT_MAX_MARGIN] * 2)
    assert resolve_margins(2, class_counts=counts).tolist() == pytest.approx([DEFAULT_MAX_MARGIN] * 2)
    # HEM+ on balanced classes still equals HEM.
    assert margins_from_counts(counts, per_class=True).tolist() == pytest.approx(default.tolist())


@pytest.mark.parametrize(
    "counts, expected",
    [([5000] * 10, 0.2), ([1281] * 1000, math.sqrt(2000 / 1_281_000))],  # CIFAR-10 (50,000), ImageNet-1k (1.28M)
)
def test_paper_scale_margins_are_unchanged(counts, expected):
    default = margins_from_counts(counts, per_class=False)
    assert default[0].item() == pytest.approx(expected)
    torch.testing.assert_close(default, margins_from_counts(counts, per_class=False, max_margin=None))
    torch.testing.assert_close(margins_from_counts(counts), margins_from_counts(counts, max_margin=None))


def test_long_tailed_paper_scale_hem_plus_is_unchanged():
    # CIFAR-10-LT, imbalance ratio 100: 12,406 images, 5000 down to 50 per class; the rarest class's margin is 2.
    counts = [round(5000 * 0.01 ** (c / 9)) for c in range(10)]
    torch.testing.assert_close(margins_from_counts(counts), margins_from_counts(counts, max_margin=None))
    assert margins_from_counts(counts).max().item() == pytest.approx(math.sqrt(2000 / (10 * counts[-1])))


def test_hem_plus_on_small_data_keeps_its_class_ratios():
    counts = [100, 25, 4]
    rule = margins_from_counts(counts, max_margin=None)
    capped = margins_from_counts(counts)
    factor = DEFAULT_MAX_MARGIN / math.sqrt(2000 / sum(counts))
    torch.testing.assert_close(capped, rule * factor)
    # mu_c proportional to 1 / sqrt(s_c), as the paper's HEM+; the sample-weighted mean margin stays within the cap.
    assert (capped[0] / capped[2]).item() == pytest.approx(math.sqrt(4 / 100))
    weighted = (capped * torch.tensor(counts, dtype=torch.float32)).sum() / sum(counts)
    assert weighted.item() <= DEFAULT_MAX_MARGIN + 1e-6


def test_segmentation_counts_images_and_is_capped_alike():
    pixels = [300_000, 100_000]
    capped = margins_from_counts(pixels, num_samples=48)
    rule = margins_from_counts(pixels, num_samples=48, max_margin=None)
    torch.testing.assert_close(capped, rule * (DEFAULT_MAX_MARGIN / math.sqrt(2000 / 48)))
    assert margins_from_counts(pixels, per_class=False, num_samples=48).tolist() == pytest.approx([1.0, 1.0])
    # ADE20K-size training sets (20,210 images) keep the rule.
    torch.testing.assert_close(
        margins_from_counts(pixels, num_samples=20_210),
        margins_from_counts(pixels, num_samples=20_210, max_margin=None),
    )


def test_other_caps_and_no_cap():
    counts = balanced(50)
    assert margins_from_counts(counts, per_class=False, max_margin=0.5)[0].item() == pytest.approx(0.5)
    assert margins_from_counts(counts, per_class=False, max_margin=math.inf)[0].item() == pytest.approx(math.sqrt(40))
    # A cap above the rule changes nothing.
    assert margins_from_counts(counts, per_class=False, max_margin=10.0)[0].item() == pytest.approx(math.sqrt(40))


def test_a_fixed_margin_is_never_capped():
    assert resolve_margins(3, margin=3.0, class_counts=[10, 10, 10]).tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1", True])
def test_bad_max_margin_is_refused(bad):
    with pytest.raises(ValueError, match="max_margin"):
        margins_from_counts([10, 10], max_margin=bad)
    with pytest.raises(ValueError, match="max_margin"):
        resolve_margins(2, margin=0.5, max_margin=bad)


def test_config_field(tmp_path):
    assert HEMConfig(output_dir=str(tmp_path)).max_margin == DEFAULT_MAX_MARGIN
    assert HEMConfig(output_dir=str(tmp_path), max_margin=None).max_margin is None
    for bad in (0.0, -2.0, "x"):
        with pytest.raises(ValueError, match="max_margin"):
            HEMConfig(output_dir=str(tmp_path), max_margin=bad)
    # On the command line, inf switches the cap off (HfArgumentParser cannot parse None for a float field).
    (args,) = HfArgumentParser(HEMConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--max_margin", "inf"]
    )
    assert resolve_margins(2, class_counts=[24, 24], max_margin=args.max_margin)[0].item() == pytest.approx(
        math.sqrt(2000 / 48)
    )


# ---------------------------------------------------------------- the notes


def test_notes_for_the_issue_case():
    counts = balanced(48, 3)
    capped, large = margin_notes(margins_from_counts(counts, per_class=False), counts)
    assert large is None
    assert "6.45" in capped and "max_margin=1" in capped and "S" in capped
    capped, large = margin_notes(
        margins_from_counts(counts, per_class=False, max_margin=None), counts, max_margin=None
    )
    assert capped is None
    assert "6.45" in large and "S = 48" in large and "margin=1.0" in large


def test_notes_are_silent_at_scale_and_for_moderate_fixed_margins():
    counts = [5000] * 10
    assert margin_notes(margins_from_counts(counts), counts) == (None, None)
    assert margin_notes(torch.full((10,), 1.5), counts, fixed=True) == (None, None)
    _, large = margin_notes(torch.full((10,), LARGE_MARGIN), counts, fixed=True)
    assert "2" in large and "given margin" in large


def _trainer(tmp_path, num_samples, **config):
    args = hem_args(tmp_path, per_device_train_batch_size=8, max_steps=1, save_strategy="no", **config)
    return HEMTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset(num_samples))


def _records(caplog, level):
    return [record for record in caplog.records if record.name == LOGGER and record.levelno == level]


def test_trainer_warns_once_for_a_large_margin_on_small_data(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer = _trainer(tmp_path, 48, max_margin=None)
        trainer.train()
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert f"{math.sqrt(2000 / 48):.3g}" in warnings[0].getMessage() and "S = 48" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _trainer(tmp_path, 48, margin=4.0)
    assert len(_records(caplog, logging.WARNING)) == 1


def test_trainer_default_on_small_data_caps_and_only_informs(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer = _trainer(tmp_path, 48)
    assert trainer.margins.tolist() == pytest.approx([DEFAULT_MAX_MARGIN] * 3)
    assert not _records(caplog, logging.WARNING)
    (info,) = _records(caplog, logging.INFO)
    assert "6.45" in info.getMessage() and "max_margin" in info.getMessage()


@pytest.mark.parametrize(
    "config",
    [
        {"margin_scale": 8.0},  # mu = sqrt(8 / 48) = 0.41: neither capped nor large
        {"margin": 1.5},  # a moderate fixed margin
        {"loss_name": "ce", "max_margin": None},  # not a margin loss: its margins only feed the hem/* metrics
    ],
)
def test_trainer_is_silent_otherwise(tmp_path, caplog, config):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _trainer(tmp_path, 48, **config)
    assert not _records(caplog, logging.WARNING) and not _records(caplog, logging.INFO)
