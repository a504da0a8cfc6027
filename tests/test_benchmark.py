"""Tests for the benchmark suite (`hf-hem benchmark`, `hf_hem.experiments.suite` and its tasks): building blocks against
hand-computed values, the training recipe, then the benchmark front door end to end."""

import math
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from hf_hem.experiments.stats import (
    comparison_table,
    format_mean_std,
    markdown_table,
    mean_std,
    summarize,
    welch_t_test,
)
from hf_hem.experiments.suite.adversarial import fgsm, model_logits, pgd
from hf_hem.experiments.suite.continual import average_accuracy, class_incremental_splits, forgetting
from hf_hem.experiments.suite.corruptions import CORRUPTIONS, corrupt
from hf_hem.experiments.suite.imbalance import long_tailed_counts, long_tailed_indices, shot_thresholds
from hf_hem.experiments.suite.ood_sets import (
    SYNTHETIC_OOD_KINDS,
    blobs,
    gaussian_smooth,
    natural_image_patches,
    phase_randomized,
    pixel_permuted,
    split_known_unknown,
    synthetic_ood_sets,
    uniform_noise,
)
from hf_hem.models import tiny_resnet


os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny models run fastest on one thread, and many times faster than on two when other processes share the CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digit_images():
    """64 scikit-learn digits as (N, 1, 16, 16) float32 in [0, 1] (2x nearest upscaling of the 8x8 originals)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:64] / 16.0).astype(np.float32)
    return np.kron(images, np.ones((2, 2), dtype=np.float32))[:, None], digits.target[:64]


# ---------------------------------------------------------------- synthetic OOD sets and held-out classes


@pytest.mark.parametrize("generator", [uniform_noise, pixel_permuted, phase_randomized, blobs])
def test_ood_generators_keep_shape_dtype_range_and_are_seeded(generator, digit_images):
    images, _ = digit_images
    out = generator(images, seed=3)
    assert out.shape == images.shape and out.dtype == images.dtype and isinstance(out, np.ndarray)
    assert out.min() >= images.min() and out.max() <= images.max()
    np.testing.assert_array_equal(out, generator(images, seed=3))
    assert not np.array_equal(out, generator(images, seed=4))
    assert not np.allclose(out, images)


@pytest.mark.parametrize("generator", [uniform_noise, pixel_permuted, phase_randomized, blobs])
def test_ood_generators_return_tensors_for_tensors(generator, digit_images):
    images = torch.from_numpy(digit_images[0]).double() * 2 - 1  # a normalised range, [-1, 1]
    out = generator(images, seed=0)
    assert torch.is_tensor(out) and out.dtype == torch.float64 and out.shape == images.shape
    assert out.min() >= -1 and out.max() <= 1


def test_uniform_noise_explicit_range_and_spread():
    out = uniform_noise(np.zeros((50, 1, 8, 8)), seed=0, value_range=(2.0, 4.0))
    assert 2.0 <= out.min() and out.max() <= 4.0
    assert abs(out.mean() - 3.0) < 0.05  # 3200 uniform values on [2, 4]


def test_pixel_permuted_keeps_each_histogram_and_moves_channels_together():
    rng = np.random.default_rng(0)
    first = rng.random((3, 1, 5, 5))
    images = np.concatenate([first, first + 10], axis=1)  # channel 1 = channel 0 + 10 at every pixel
    out = pixel_permuted(images, seed=1)
    np.testing.assert_allclose(out[:, 1], out[:, 0] + 10)
    for index in range(3):
        np.testing.assert_array_equal(np.sort(out[index, 0], axis=None), np.sort(images[index, 0], axis=None))


def test_pixel_permuted_per_image_versus_shared_permutation():
    images = np.tile(np.arange(16.0).reshape(1, 1, 4, 4), (2, 1, 1, 1))  # two identical images
    per_image = pixel_permuted(images, seed=0)
    assert not np.array_equal(per_image[0], per_image[1])
    shared = pixel_permuted(images, seed=0, same_permutation=True)
    np.testing.assert_array_equal(shared[0], shared[1])


def test_phase_randomized_keeps_amplitude_spectrum_and_mean(digit_images):
    images = digit_images[0].astype(np.float64)
    out = phase_randomized(images, seed=0, clip=False)
    np.testing.assert_allclose(np.abs(np.fft.fft2(out)), np.abs(np.fft.fft2(images)), atol=1e-9)
    np.testing.assert_allclose(out.mean(axis=(2, 3)), images.mean(axis=(2, 3)), atol=1e-12)
    # Spatial structure is gone: the scrambled images barely correlate with the originals.
    correlation = np.corrcoef(out.reshape(-1), images.reshape(-1))[0, 1]
    assert abs(correlation) < 0.3


def test_blobs_are_two_level_with_both_levels(digit_images):
    out = blobs(digit_images[0], seed=0)
    assert set(np.unique(out).tolist()) == {0.0, 1.0}
    assert 0.02 < out.mean() < 0.98


def test_gaussian_smooth_hand_values():
    constant = np.full((2, 6, 6), 0.3)
    np.testing.assert_allclose(gaussian_smooth(constant, 1.5), constant)
    impulse = np.zeros((9, 9))
    impulse[4, 4] = 1.0
    smoothed = gaussian_smooth(impulse, 1.0, mode="wrap")
    assert smoothed.sum() == pytest.approx(1.0)
    assert smoothed[4, 4] == smoothed.max() and smoothed[4, 3] == pytest.approx(smoothed[3, 4])
    np.testing.assert_array_equal(gaussian_smooth(impulse, 0), impulse)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(impulse, -1)


def test_synthetic_ood_sets_builds_requested_kinds(digit_images):
    sets = synthetic_ood_sets(digit_images[0], seed=0)
    assert list(sets) == list(SYNTHETIC_OOD_KINDS)
    np.testing.assert_array_equal(synthetic_ood_sets(digit_images[0], kinds=["blobs"])["blobs"], sets["blobs"])
    with pytest.raises(ValueError, match="unknown synthetic OOD kinds"):
        synthetic_ood_sets(digit_images[0], kinds=["fractals"])


def test_ood_generators_reject_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        uniform_noise(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="value_range"):
        uniform_noise(np.zeros((1, 1, 2, 2)), value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        pixel_permuted(np.full((1, 1, 2, 2), np.nan))


def test_natural_image_patches_shape_and_range():
    patches = natural_image_patches(5, 16, num_channels=3, seed=0)
    assert patches.shape == (5, 3, 16, 16) and patches.dtype == np.float32
    assert 0 <= patches.min() and patches.max() <= 1 and patches.std() > 0.01


def test_split_known_unknown_hand_example():
    split = split_known_unknown(np.array([3, 1, 2, 3, 0, 2]), unknown_classes=[2, 0])
    np.testing.assert_array_equal(split.known_indices, [0, 1, 3])
    np.testing.assert_array_equal(split.unknown_indices, [2, 4, 5])
    np.testing.assert_array_equal(split.known_labels, [1, 0, 1])
    assert split.class_map == {1: 0, 3: 1}
    with pytest.raises(ValueError, match="do not occur"):
        split_known_unknown([0, 1], unknown_classes=[5])
    with pytest.raises(ValueError, match="every class"):
        split_known_unknown([0, 1], unknown_classes=[0, 1])


# ---------------------------------------------------------------- imbalance


def test_long_tailed_counts_hand_values():
    np.testing.assert_array_equal(long_tailed_counts(3, 100, 100), [100, 10, 1])
    np.testing.assert_array_equal(long_tailed_counts(5, 160, 16), [160, 80, 40, 20, 10])
    np.testing.assert_array_equal(long_tailed_counts(4, 50, 10, profile="step"), [50, 50, 5, 5])
    np.testing.assert_array_equal(long_tailed_counts(5, 50, 10, profile="step"), [50, 50, 50, 5, 5])
    np.testing.assert_array_equal(long_tailed_counts(3, 7, 1), [7, 7, 7])
    np.testing.assert_array_equal(long_tailed_counts(2, 5, 1000), [5, 1])  # never fewer than one sample
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tailed_counts(3, 10, 0.5)
    with pytest.raises(ValueError, match="profile"):
        long_tailed_counts(3, 10, 10, profile="linear")


def test_long_tailed_indices_selects_the_profile():
    labels = np.repeat(np.arange(5), [170, 160, 200, 161, 180])
    indices, counts = long_tailed_indices(labels, imbalance_ratio=16, seed=0)
    np.testing.assert_array_equal(counts, [160, 80, 40, 20, 10])  # n_max = the smallest class
    np.testing.assert_array_equal(np.bincount(labels[indices], minlength=5), counts)
    assert np.unique(indices).size == indices.size and np.all(np.diff(indices) > 0)
    same, _ = long_tailed_indices(labels, imbalance_ratio=16, seed=0)
    other, _ = long_tailed_indices(labels, imbalance_ratio=16, seed=1)
    np.testing.assert_array_equal(indices, same)
    assert not np.array_equal(indices, other)
    _, reversed_counts = long_tailed_indices(labels, 16, class_order=[4, 3, 2, 1, 0])
    np.testing.assert_array_equal(reversed_counts, [10, 20, 40, 80, 160])
    with pytest.raises(ValueError, match="lower `max_count`"):
        long_tailed_indices(labels, 16, max_count=190)


def test_shot_thresholds_split_classes_in_thirds():
    counts = np.array([100, 59, 35, 21, 12, 7, 4, 2, 1, 1])
    many, few = shot_thresholds(counts)
    assert (many, few) == (12, 4)
    assert np.sum(counts > many) == 4 and np.sum(counts < few) == 3


# ---------------------------------------------------------------- continual learning


def test_class_incremental_splits():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 0])
    tasks = class_incremental_splits(labels, num_tasks=5)
    assert [task.classes.tolist() for task in tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    np.testing.assert_array_equal(tasks[0].indices, [0, 1, 11])
    assert sorted(np.concatenate([task.indices for task in tasks]).tolist()) == list(range(labels.size))
    uneven = class_incremental_splits([0, 1, 2, 3, 4], num_tasks=2)
    assert [task.classes.tolist() for task in uneven] == [[0, 1, 2], [3, 4]]
    shuffled = class_incremental_splits(labels, num_tasks=5, seed=0)
    assert sorted(np.concatenate([task.classes for task in shuffled]).tolist()) == list(range(10))
    assert [t.classes.tolist() for t in shuffled] == [
        t.classes.tolist() for t in class_incremental_splits(labels, 5, 0)
    ]
    explicit = class_incremental_splits(labels, 2, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert explicit[0].classes.tolist() == [9, 8, 7, 6, 5]
    with pytest.raises(ValueError, match="num_tasks"):
        class_incremental_splits(labels, num_tasks=11)


def test_average_accuracy_and_forgetting_hand_computed():
    nan = float("nan")
    matrix = [[0.9, nan, nan], [0.6, 0.8, nan], [0.3, 0.5, 0.7]]
    np.testing.assert_allclose(average_accuracy(matrix), [0.9, 0.7, 0.5])
    # Task 0: best 0.9, final 0.3 -> 0.6; task 1: best 0.8, final 0.5 -> 0.3; mean 0.45.
    assert forgetting(matrix) == pytest.approx(0.45)
    # The best accuracy need not be on the diagonal: task 0 peaks after task 1 (0.7), final 0.4 -> 0.3.
    assert forgetting([[0.5, 0.0, 0.0], [0.7, 0.9, 0.0], [0.4, 0.6, 0.8]]) == pytest.approx(0.3)
    assert math.isnan(forgetting([[0.8]]))
    with pytest.raises(ValueError, match="square"):
        forgetting([[0.1, 0.2]])
    with pytest.raises(ValueError, match="finite"):
        average_accuracy([[nan, nan], [0.1, 0.2]])


# ---------------------------------------------------------------- adversarial attacks


def _linear_model(seed=0, in_features=48, num_classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


def _attack_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((16, 3, 4, 4), generator=generator), torch.randint(0, 4, (16,), generator=generator)


def _loss(model, inputs, labels):
    with torch.no_grad():
        return nn.functional.cross_entropy(model(inputs), labels).item()


def test_fgsm_stays_in_ball_and_raises_convex_loss():
    model = _linear_model()
    inputs, labels = _attack_batch()
    adversarial = fgsm(model, inputs, labels, epsilon=0.05, clamp=None)
    assert (adversarial - inputs).abs().max() <= 0.05 + 1e-6
    # CE of a linear model is convex in the input, so a signed-gradient step must raise it.
    assert _loss(model, adversarial, labels) > _loss(model, inputs, labels)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_never_leaves_the_ball_and_raises_loss(norm, random_start):
    model = _linear_model()
    inputs, labels = _attack_batch()
    epsilon = 0.05 if norm == "linf" else 0.5
    adversarial = pgd(
        model, inputs, labels, epsilon, step_size=epsilon / 2, steps=8, norm=norm, random_start=random_start
    )
    delta = adversarial - inputs
    if norm == "linf":
        assert delta.abs().max() <= epsilon + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= epsilon * (1 + 1e-5)
        assert delta.abs().max() > 0.05  # an L2 attack is not secretly an L-inf one
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert _loss(model, adversarial, labels) > _loss(model, inputs, labels) + 0.01
    torch.testing.assert_close(
        adversarial, pgd(model, inputs, labels, epsilon, epsilon / 2, 8, norm=norm, random_start=random_start)
    )


def test_pgd_respects_clamp_or_not():
    model = _linear_model()
    inputs, labels = _attack_batch()
    clamped = pgd(model, inputs, labels, 0.3, steps=5, clamp=(0.0, 1.0))
    assert clamped.min() >= 0 and clamped.max() <= 1
    unclamped = pgd(model, inputs, labels, 0.3, steps=5, clamp=None)
    assert unclamped.min() < 0 or unclamped.max() > 1
    assert (unclamped - inputs).abs().max() <= 0.3 + 1e-6


def test_pgd_zero_epsilon_is_identity_and_bad_arguments_raise():
    model = _linear_model()
    inputs, labels = _attack_batch()
    torch.testing.assert_close(pgd(model, inputs, labels, 0.0), inputs)
    with pytest.raises(ValueError, match="epsilon"):
        pgd(model, inputs, labels, -0.1)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, inputs, labels, 0.1, norm="l1")
    with pytest.raises(ValueError, match="outside clamp"):
        fgsm(model, inputs * 3, labels, 0.1)


def test_pgd_breaks_a_trained_model():
    """A linear model trained to separate two Gaussian blobs loses accuracy under PGD, more than under noise."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (200,), generator=generator)
    inputs = (0.5 + 0.08 * (2 * labels.float() - 1)).view(-1, 1, 1, 1) + 0.05 * torch.randn(
        (200, 1, 4, 4), generator=generator
    )
    model = _linear_model(in_features=16, num_classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    clean_accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    adversarial = pgd(model, inputs, labels, epsilon=0.1, steps=10, clamp=None)
    attacked_accuracy = (model(adversarial).argmax(1) == labels).float().mean().item()
    assert clean_accuracy > 0.95
    assert attacked_accuracy < 0.2


def test_attacks_on_transformers_model_restore_mode_and_leave_grads():
    model = tiny_resnet(3, 1, seed=0, embedding_size=8, hidden_sizes=(8, 16)).train()
    inputs = torch.rand((4, 1, 16, 16))
    labels = torch.tensor([0, 1, 2, 0])
    assert model_logits(model, inputs).shape == (4, 3)
    adversarial = pgd(model, inputs, labels, epsilon=0.03, steps=2)
    assert model.training and all(parameter.grad is None for parameter in model.parameters())
    assert (adversarial - inputs).abs().max() <= 0.03 + 1e-6


# ---------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_identity_shape_dtype_and_monotone(name, digit_images):
    images = digit_images[0]
    np.testing.assert_array_equal(corrupt(images, name, 0), images)
    errors = []
    for severity in range(1, 6):
        out = corrupt(images, name, severity)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert out.min() >= 0 and out.max() <= 1
        errors.append(float(np.mean((out.astype(np.float64) - images) ** 2)))
    assert errors[0] > 0
    assert all(later > earlier for earlier, later in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_accept_tensors_and_rgb(name):
    images = torch.rand((2, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    out = corrupt(images, name, 3)
    assert torch.is_tensor(out) and out.dtype == torch.float32 and out.shape == images.shape


def test_corruptions_hand_values_and_errors():
    images = np.array([[[[0.0, 1.0], [0.0, 1.0]]]])
    np.testing.assert_allclose(corrupt(images, "contrast", 2), [[[[0.25, 0.75], [0.25, 0.75]]]])  # factor 0.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(images * 255, "contrast", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(images, "contrast", 6)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(images, "fog", 1)


# ---------------------------------------------------------------- statistics


def test_mean_std_and_format():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert format_mean_std(0.91234, 0.0041) == "0.912 ± 0.004"
    assert format_mean_std(0.5, float("nan")) == "0.500"
    assert format_mean_std(float("nan"), 0.1) == "n/a" and format_mean_std(2.25, digits=1) == "2.2"
    # A seed where the metric is undefined is left out when asked, an error otherwise.
    assert mean_std([0.5, float("nan"), None, 0.7], omit_nonfinite=True) == pytest.approx((0.6, math.sqrt(0.02)))
    assert all(math.isnan(value) for value in mean_std([float("nan")], omit_nonfinite=True))
    with pytest.raises(ValueError, match="finite"):
        mean_std([0.5, float("nan")])


def test_welch_t_test_hand_computed():
    # a: mean 2, var 1, n 3; b: mean 5.5, var 5/3, n 4 -> se^2 = 1/3 + 5/12 = 0.75, t = -3.5 / sqrt(0.75).
    result = welch_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    assert result.statistic == pytest.approx(-3.5 / math.sqrt(0.75))
    # Welch-Satterthwaite df = 0.75^2 / ((1/3)^2 / 2 + (5/12)^2 / 3).
    from scipy import stats

    dof = 0.75**2 / ((1 / 3) ** 2 / 2 + (5 / 12) ** 2 / 3)
    assert result.p_value == pytest.approx(2 * stats.t.sf(3.5 / math.sqrt(0.75), dof))
    assert 0.005 < result.p_value < 0.02 and result.note == ""


def test_welch_t_test_degenerate_cases():
    single = welch_t_test([0.9], [0.8, 0.7])
    assert math.isnan(single.p_value) and ">= 2" in single.note
    constant = welch_t_test([0.5, 0.5], [0.7, 0.7])
    assert math.isnan(constant.p_value) and "zero variance" in constant.note
    one_constant = welch_t_test([0.5, 0.5, 0.5], [0.7, 0.8, 0.75])
    assert 0 < one_constant.p_value < 0.05


def test_markdown_table_and_comparison_table():
    assert markdown_table(["loss", "acc"], [["ce", 0.9], ["a|b", 1]]) == (
        "| loss | acc |\n| --- | --- |\n| ce | 0.9 |\n| a\\|b | 1 |"
    )
    with pytest.raises(ValueError, match="row 0"):
        markdown_table(["a", "b"], [[1]])
    summary = summarize({"ce": {"acc": [0.90, 0.92, 0.91]}, "hem": {"acc": [0.80, 0.81, 0.82]}}, baseline="ce")
    assert summary["ce"]["acc"]["note"] == "baseline" and summary["hem"]["acc"]["p_value"] < 0.01
    table = comparison_table(summary)
    assert table.splitlines()[2] == "| ce | 0.910 ± 0.010 |"
    assert table.splitlines()[3].startswith("| hem | 0.810 ± 0.010 (p")


# ---------------------------------------------------------------- data, training and the benchmark runner

TINY_SETTINGS = {
    "image_size": 16,
    "max_train_samples": 240,
    "max_test_samples": 120,
    "embedding_size": 8,
    "hidden_sizes": (8, 16),
    "epochs": 2,
    "continual_epochs": 1,
    "num_tasks": 2,
    "ood_sets": ("uniform_noise", "blobs"),
    "attack_steps": 2,
    "corruptions": ("contrast", "jpeg_compression"),
    "severities": (1, 5),
}


def test_dataset_to_arrays_from_an_in_memory_dataset():
    from datasets import Dataset
    from PIL import Image

    from hf_hem.experiments.suite.benchmark_data import dataset_to_arrays

    pixels = [np.full((4, 6, 3), value, dtype=np.uint8) for value in (0, 255, 51)]
    dataset = Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels], "fine_label": [2, 0, 1]})
    images, labels = dataset_to_arrays(dataset, image_size=8, num_channels=1)
    assert images.shape == (3, 1, 8, 8) and images.dtype == np.float32
    np.testing.assert_allclose(images[:, 0, 0, 0], [0.0, 1.0, 0.2], atol=1e-6)
    np.testing.assert_array_equal(labels, [2, 0, 1])
    subset, _ = dataset_to_arrays(dataset, image_size=8, num_channels=3, max_samples=2)
    assert subset.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="label column"):
        dataset_to_arrays(dataset, 8, 1, label_column="target")


def test_train_model_learns_and_uses_count_based_losses():
    from hf_hem.experiments.suite.training import loss_for_training, predict_logits, train_model

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = 0.1 * torch.rand((60, 1, 8, 8), generator=generator)
    for label in range(3):  # class c lights up rows 2c..2c+1: separable, so a few epochs suffice
        images[labels == label, :, 2 * label : 2 * label + 2] += 0.9
    for loss_name in ("ce", "hem+", "la"):
        model = _linear_model(seed=0, in_features=64, num_classes=3)
        trained = train_model(model, (images, labels), loss_name, seed=0, epochs=20, batch_size=20, learning_rate=0.2)
        assert not trained.training
        accuracy = (predict_logits(trained, images).argmax(1) == labels.numpy()).mean()
        assert accuracy > 0.9, (loss_name, accuracy)
    resnet = tiny_resnet(3, 1, seed=0, embedding_size=8, hidden_sizes=(8,), depths=(1,))
    assert predict_logits(train_model(resnet, (images, labels), "hem", seed=0, epochs=1), images).shape == (60, 3)
    hem_plus = loss_for_training("hem+", [100, 25, 4])
    # Capped as HEMConfig caps it (the "hf" backend): below S = 2000 the rule runs with M = max_margin**2 * S, so
    # HEM+ keeps the rule's ratios and both backends train with the same margins.
    counts = torch.tensor([100.0, 25.0, 4.0])
    torch.testing.assert_close(hem_plus.margin, torch.sqrt(counts.sum() / (3 * counts)))
    assert float(loss_for_training("hem", [100, 25, 4]).margin) == pytest.approx(1.0)
    assert float(loss_for_training("hem", [1000, 1000, 1000]).margin) == pytest.approx((2000 / 3000) ** 0.5)
    with pytest.raises(ValueError, match="hinge.*not a known loss"):
        loss_for_training("hinge", [1, 1])


def test_train_with_hem_trainer_learns_with_the_same_recipe():
    from hf_hem.experiments.suite.training import get_train_fn, predict_logits, train_with_hem_trainer

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = 0.1 * torch.rand((60, 1, 8, 8), generator=generator)
    for label in range(3):
        images[labels == label, :, 2 * label : 2 * label + 2] += 0.9
    model = tiny_resnet(3, 1, seed=0, embedding_size=8, hidden_sizes=(8,), depths=(1,))
    trained = train_with_hem_trainer(
        model, (images, labels), "hem", seed=0, epochs=20, batch_size=20, learning_rate=0.1
    )
    assert not trained.training and trained.config.hem_loss == "hem"
    assert (predict_logits(trained, images).argmax(1) == labels.numpy()).mean() > 0.9
    assert get_train_fn("hf") is train_with_hem_trainer
    with pytest.raises(ValueError, match="backend"):
        get_train_fn("jax")


@pytest.mark.parametrize("backend", ["torch", "hf"])
def test_train_model_records_learning_curves_with_both_backends(backend):
    from hf_hem.experiments.convergence import check_convergence
    from hf_hem.experiments.curves import curves_from_history
    from hf_hem.experiments.suite.training import _violating_count, predict_logits, train_model

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = 0.1 * torch.rand((60, 1, 8, 8), generator=generator)
    for label in range(3):
        images[labels == label, :, 2 * label : 2 * label + 2] += 0.9
    model = tiny_resnet(3, 1, seed=0, embedding_size=8, hidden_sizes=(8,), depths=(1,))
    calls, history = [], []

    def eval_fn(model):
        calls.append(model.training)  # evaluated in eval mode, and training resumes in train mode
        return {"accuracy": float((predict_logits(model, images).argmax(1) == labels.numpy()).mean())}

    train_model(
        model, (images, labels), "hem", 0, epochs=12, batch_size=20, learning_rate=0.05, backend=backend,
        eval_fn=eval_fn, history=history,
    )  # fmt: skip
    assert [entry["epoch"] for entry in history] == list(range(1, 13)) and calls == [False] * 12
    assert all(0.0 <= entry["hem/violating_fraction"] <= 1.0 and entry["loss"] >= 0.0 for entry in history)
    curves = curves_from_history(history)
    assert set(curves) == {"loss", "hem/violating_fraction", "accuracy"}
    # Learned and settled: every evaluation of the convergence window (the last 3 of 12) above 0.9.
    assert min(curves["accuracy"]["value"][-3:]) > 0.9 and check_convergence(curves["accuracy"]["value"]).window == 3
    # Without `history` nothing is evaluated; without `eval_fn` only the training values are recorded.
    train_model(model, (images, labels), "ce", 0, epochs=1, eval_fn=eval_fn, backend=backend)
    assert len(calls) == 12
    ce_history = []
    train_model(model, (images, labels), "ce", 0, epochs=2, backend=backend, history=ce_history)
    assert len(ce_history) == 2 and all(
        {"epoch", "loss"} <= set(entry) <= {"epoch", "loss", "hem/violating_fraction"} for entry in ce_history
    )
    # The violating count: margin 0.5 per sample; only the second sample's runner-up is within its margin.
    logits = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.2, 0.0]])
    assert _violating_count(logits, torch.tensor([0, 1]), torch.tensor(0.5)) == 1
    assert _violating_count(logits, torch.tensor([0, 1]), torch.tensor([2.5, 0.1, 0.1])) == 1


def test_loss_kwargs_mean_hem_config_fields_for_both_backends():
    import dataclasses

    from hf_hem.experiments.suite.training import LOSS_KWARGS, loss_for_training, train_model
    from hf_hem.trainer import HEMConfig

    assert set(LOSS_KWARGS) <= {field.name for field in dataclasses.fields(HEMConfig)}
    assert loss_for_training("la", [5, 3, 1], loss_kwargs={"la_tau": 1.5}).tau == 1.5
    # A field of another loss is ignored, as HEMConfig ignores it.
    assert loss_for_training("focal", [1, 1], loss_kwargs={"focal_gamma": 1.0, "la_tau": 9.0}).gamma == 1.0
    assert loss_for_training("logitnorm", [1, 1], loss_kwargs={"logitnorm_temperature": 0.1}).temperature == 0.1
    torch.testing.assert_close(
        loss_for_training("hem", [4, 4], loss_kwargs={"margin": 0.25}).margin, torch.tensor(0.25)
    )
    per_class = loss_for_training("mm", [100, 25, 4], loss_kwargs={"per_class_margins": True})
    torch.testing.assert_close(per_class.margin, loss_for_training("hem+", [100, 25, 4]).margin)
    with pytest.raises(ValueError, match="not HEMConfig loss fields"):
        loss_for_training("la", [1, 1], loss_kwargs={"tau": 1.0})
    with pytest.raises(ValueError, match="margin=0.5 with loss_name='hem\\+'.*per-class margins from class counts"):
        loss_for_training("hem+", [1, 1], loss_kwargs={"margin": 0.5})

    labels = torch.arange(12) % 3
    images = torch.rand((12, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    model = tiny_resnet(3, 1, seed=0, embedding_size=8, hidden_sizes=(8,), depths=(1,))
    trained = train_model(
        model, (images, labels), "hem", seed=0, epochs=1, batch_size=6, backend="hf", loss_kwargs={"margin": 0.25}
    )
    assert trained.config.hem_margins == pytest.approx([0.25] * 3)
    with pytest.raises(ValueError, match="not HEMConfig loss fields"):
        train_model(model, (images, labels), "la", seed=0, epochs=1, backend="hf", loss_kwargs={"tau": 1.0})
    with pytest.raises(ValueError, match="backend"):
        train_model(model, (images, labels), "ce", seed=0, epochs=1, backend="jax")


def test_settings_validation():
    from hf_hem.experiments.suite.settings import BenchmarkSettings

    assert BenchmarkSettings.from_overrides({"hidden_sizes": [8, 16]}).hidden_sizes == (8, 16)
    with pytest.raises(ValueError, match="unknown benchmark settings"):
        BenchmarkSettings.from_overrides({"epoch": 3})
    with pytest.raises(ValueError, match="ood_sets"):
        BenchmarkSettings(ood_sets=("svhn",))
    with pytest.raises(ValueError, match="severities"):
        BenchmarkSettings(severities=(0, 6))


def test_runner_helpers():
    from hf_hem.experiments.benchmark import run_file_name
    from hf_hem.experiments.records import jsonable as _jsonable
    from hf_hem.experiments.runner import check_losses as _resolve_losses
    from hf_hem.experiments.runner import check_seeds as _resolve_seeds

    assert run_file_name("hem+", 2) == "hem-plus_seed2.json"
    assert _jsonable({"a": np.float32(0.5), "b": [float("nan"), np.int64(3)], "c": np.arange(2)}) == {
        "a": 0.5,
        "b": [None, 3],
        "c": [0, 1],
    }
    assert _resolve_seeds(3) == [0, 1, 2] and _resolve_seeds([4, 7]) == [4, 7]
    assert _resolve_losses("CE, hem+") == ["ce", "hem+"]
    with pytest.raises(ValueError, match="unknown losses"):
        _resolve_losses("ce,hinge")
    with pytest.raises(ValueError, match="seeds"):
        _resolve_seeds([1, 1])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ood", "imbalance", "continual", "adversarial", "corruptions"])
def test_run_benchmark_end_to_end_and_resumes(task, tmp_path):
    import json

    from hf_hem.experiments.benchmark import run_benchmark
    from hf_hem.experiments.records import jsonable
    from hf_hem.experiments.suite.training import train_model
    from hf_hem.experiments.tasks import get_task

    calls = []

    def counting_train_fn(*args, **kwargs):
        calls.append(args[2])
        return train_model(*args, **kwargs)

    def run(**overrides):
        settings = {**TINY_SETTINGS, **overrides}
        return run_benchmark(task, "ce,hem", 2, tmp_path, settings, train_fn=counting_train_fn, progress=False)

    first = run()
    trainings_per_run = 2 if task == "continual" else 1  # one training per continual task
    assert len(calls) == 4 * trainings_per_run and first["num_reused"] == 0
    task_dir = tmp_path / task
    assert sorted(p.name for p in (task_dir / "runs").iterdir()) == [
        "ce_seed0.json",
        "ce_seed1.json",
        "hem_seed0.json",
        "hem_seed1.json",
    ]
    results = json.loads((task_dir / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    headline = [m.key for m in get_task(task).metrics if m.key in results["summary"]["ce"]]
    assert headline and len(results["runs"]) == 4
    for metric in headline:
        assert results["summary"]["hem"][metric]["n"] == 2
    report = (task_dir / "report.md").read_text()
    assert first["table"] in report and "Welch" in report
    # The verdict line of hem against the baseline (naming runs that did not converge, or could not be judged).
    assert re.search(r"\* \*\*hem( \([^)]*\))? vs ce( \([^)]*\))?\*\* — better", report)
    pngs = list(task_dir.glob("*.png"))
    assert pngs and all(f"]({png.name})" in report for png in pngs)
    # Every run recorded its learning curve; the headline table says whether each loss converged.
    assert (task_dir / "learning_curves.png").is_file() and " | converged |" in report
    assert all(run["details"]["curves"][get_task(task).curve_key]["value"] for run in results["runs"])
    assert results["convergence"]["criterion"]["metric"] == get_task(task).curve_key
    assert set(results["convergence"]["losses"]) == {"ce", "hem"}

    second = run()  # everything finished: nothing is retrained, numbers are identical
    assert len(calls) == 4 * trainings_per_run and second["num_reused"] == 4
    assert jsonable(second["summary"]) == jsonable(first["summary"])

    (task_dir / "runs" / "hem_seed1.json").unlink()  # an interrupted benchmark: only the missing run is redone
    third = run()
    assert len(calls) == 5 * trainings_per_run and third["num_reused"] == 3


@pytest.mark.slow
def test_run_benchmark_default_trainer_is_hem_trainer_and_resumes(tmp_path, monkeypatch):
    from hf_hem.experiments.benchmark import run_benchmark
    from hf_hem.experiments.suite import training

    calls = []
    original = training.train_with_hem_trainer

    def counting(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "train_with_hem_trainer", counting)
    first = run_benchmark("imbalance", "ce,hem+", 2, tmp_path, TINY_SETTINGS, progress=False)
    assert calls == ["ce", "hem+", "ce", "hem+"] and first["settings"]["trainer"] == "hf"  # the plan goes seed by seed
    second = run_benchmark("imbalance", "ce,hem+", 2, tmp_path, TINY_SETTINGS, progress=False)
    assert len(calls) == 4 and second["num_reused"] == 4 and second["table"] == first["table"]
    third = run_benchmark("imbalance", "ce,hem+", 2, tmp_path, {**TINY_SETTINGS, "trainer": "torch"}, progress=False)
    assert (
        len(calls) == 4 and third["num_reused"] == 0
    )  # the backend is part of the settings: the plain loop redid all


@pytest.mark.slow
def test_changed_settings_or_rerun_redo_finished_runs(tmp_path):
    from hf_hem.experiments.benchmark import run_benchmark

    calls = []

    def fake_train_fn(model, train_dataset, loss_name, seed, **kwargs):
        calls.append((loss_name, seed, kwargs["epochs"]))
        return model.eval()

    settings = {**TINY_SETTINGS, "ood_sets": ("uniform_noise",)}
    run_benchmark("ood", ["ce"], [5], tmp_path, settings, train_fn=fake_train_fn, progress=False)
    run_benchmark(
        "ood", ["ce"], [5], tmp_path, {**settings, "imbalance_ratio": 50}, train_fn=fake_train_fn, progress=False
    )
    assert calls == [("ce", 5, 2)]  # the imbalance ratio does not affect the OOD task
    run_benchmark("ood", ["ce"], [5], tmp_path, {**settings, "epochs": 3}, train_fn=fake_train_fn, progress=False)
    run_benchmark(
        "ood", ["ce"], [5], tmp_path, {**settings, "epochs": 3}, train_fn=fake_train_fn, progress=False, rerun=True
    )
    assert calls == [("ce", 5, 2), ("ce", 5, 3), ("ce", 5, 3)]


def test_margin_sweep_trains_each_margin_and_old_run_files_are_reused(tmp_path):
    import json

    from hf_hem.experiments.benchmark import run_benchmark

    calls = []

    def fake_train_fn(model, train_dataset, loss_name, seed, **kwargs):
        calls.append((loss_name, seed, kwargs.get("loss_kwargs")))
        return model.eval()

    settings = {**TINY_SETTINGS, "ood_sets": ("uniform_noise",)}

    def run(**kwargs):
        return run_benchmark(
            "ood", "ce,hem", [0], tmp_path, settings, train_fn=fake_train_fn, progress=False, **kwargs
        )

    results = run(margins=[0.5, 2.0])
    # The margin reaches the training as HEMConfig's `margin`; losses without a margin train once.
    assert calls == [("ce", 0, None), ("hem", 0, {"margin": 0.5}), ("hem", 0, {"margin": 2.0})]
    runs = tmp_path / "ood" / "runs"
    assert sorted(path.name for path in runs.iterdir()) == [
        "ce_seed0.json",
        "hem-m0.5_seed0.json",
        "hem-m2_seed0.json",
    ]
    assert results["margins"] == [0.5, 2.0] and set(results["summary"]) == {"ce", "hem μ=0.5", "hem μ=2"}
    assert json.loads((runs / "hem-m2_seed0.json").read_text())["margin"] == 2.0
    assert (tmp_path / "ood" / "margin_sweep.png").is_file()
    assert "(margin_sweep.png)" in (tmp_path / "ood" / "report.md").read_text()

    # A run file written before the experiments layer (no `margin`, no `attempts`) is read back, not retrained.
    path = runs / "ce_seed0.json"
    old = json.loads(path.read_text())
    del old["margin"], old["attempts"]
    path.write_text(json.dumps(old))
    again = run()
    assert len(calls) == 4 and calls[-1] == ("hem", 0, None) and again["num_reused"] == 1


def test_suite_tasks_grow_their_own_epochs_for_until_converged():
    from hf_hem.experiments.suite.settings import BenchmarkSettings
    from hf_hem.experiments.tasks import get_task

    settings = BenchmarkSettings(epochs=30, continual_epochs=4)
    grown = get_task("ood").with_epochs(settings, 45.0)
    assert grown.epochs == 45 and settings.epochs == 30 and get_task("ood").epochs(grown) == 45
    continual = get_task("continual")
    assert continual.epochs(settings) == 4 and continual.with_epochs(settings, 4 * 1.5).continual_epochs == 6
    assert continual.with_epochs(settings, 4.2).continual_epochs == 5  # whole epochs, rounded up
    # The fingerprint names the settings that change a task's numbers, and only those.
    assert "imbalance_ratio" not in get_task("ood").fingerprint(settings)
    assert get_task("imbalance").fingerprint(settings)["imbalance_ratio"] == 10.0


def test_benchmark_cli_parser_and_main(tmp_path, capsys, monkeypatch):
    import argparse

    from hf_hem.experiments import cli
    from hf_hem.experiments.task import BENCHMARK
    from hf_hem.experiments.tasks import task_names

    parser = argparse.ArgumentParser(prog="hf-hem")
    cli.add_benchmark_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["benchmark", "--task", "ood,imbalance", "--seeds", "0,4", "--hidden_sizes", "8,16", "--epochs", "3"]
    )
    assert args.task == ["ood", "imbalance"] and args.seeds == [0, 4] and args.handler is cli.run_benchmark_command
    settings = cli.settings_from_args(args)
    assert settings.hidden_sizes == (8, 16) and settings.epochs == 3 and settings.image_size == 32
    assert parser.parse_args(["benchmark", "--task", "all"]).task == [
        "ood",
        "imbalance",
        "continual",
        "adversarial",
        "corruptions",
    ]
    assert set(task_names(BENCHMARK)) == {"ood", "imbalance", "continual", "adversarial", "corruptions"}
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark", "--task", "segmentation"])
    capsys.readouterr()

    recorded = {}

    def fake_run_benchmark(task, losses, seeds, output_dir, settings, **kwargs):
        recorded.update(task=task, losses=losses, seeds=seeds, settings=settings, **kwargs)
        return {"title": "T", "seeds": [0, 1, 2], "num_reused": 0, "table": "| loss |", "output_dir": str(output_dir)}

    monkeypatch.setattr("hf_hem.experiments.cli.run_benchmark", fake_run_benchmark)
    assert (
        cli.main(
            ["--task", "adversarial", "--losses", "ce,hem+", "--output_dir", str(tmp_path), "--linf_epsilon", "0.1"]
        )
        == 0
    )
    assert recorded["task"] == "adversarial" and recorded["losses"] == "ce,hem+" and recorded["seeds"] == 3
    assert recorded["settings"].linf_epsilon == 0.1 and recorded["command"].startswith("hf-hem benchmark --task")
    assert "| loss |" in capsys.readouterr().out
    assert recorded["margins"] is None and recorded["until_converged"] is None
    # `--margins` sweeps and `--until_converged` reach the benchmark through the shared runner's arguments.
    cli.main(["--task", "ood", "--margins", "0.5,1,2", "--until_converged", "--max_epochs", "60", "--epochs", "20"])
    assert recorded["task"] == "ood" and recorded["margins"] == [0.5, 1.0, 2.0]
    assert recorded["until_converged"].max_epochs == 60 and recorded["settings"].epochs == 20
