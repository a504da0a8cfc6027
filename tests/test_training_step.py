"""The training step: exact gradient accumulation and skipping samples that meet their margin (one process).

Two processes are in `tests/test_trainer_distributed.py`. Every case takes one plain SGD step without clipping on a
fixed, sequential batch order and compares the gradients before the optimizer step with one process computing the
loss of the whole batch directly.
"""

import os

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from transformers import ResNetConfig, ResNetForImageClassification  # noqa: E402

from hf_hem.losses import cross_entropy_loss, hem_loss  # noqa: E402
from hf_hem.margins import margins_from_counts  # noqa: E402
from hf_hem.trainer import HEMConfig, HEMTrainer  # noqa: E402
from hf_hem.trainer.sample_skipping import StaleZeroLossTracker, WindowGatherer, skip_pays  # noqa: E402


try:  # tests/ may or may not become a package
    from .helpers import tiny_vit
    from .step_recording import GradientRecorder, SequentialHEMTrainer, one_sgd_step_settings
except ImportError:
    from helpers import tiny_vit
    from step_recording import GradientRecorder, SequentialHEMTrainer, one_sgd_step_settings

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NUM_SAMPLES = 64
MARGIN_SCALE = 4.0  # mu = sqrt(4 / 64) = 0.25


def uneven_batch(seed=0):
    """64 images in four blocks of 16: classes 0 only (satisfied), a mix, classes 0 only, classes 1 and 2 only.

    With the classifier bias of `satisfied_vit`, class-0 images meet their margin, so the violating counts of the
    four micro-batches of 16 are 0, some, 0, 16: uneven, with micro-batches that have nothing to backpropagate.
    """
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.zeros(16), rng.integers(0, 3, 16), np.zeros(16), rng.integers(1, 3, 16)])
    pixels = rng.normal(scale=0.5, size=(NUM_SAMPLES, 3, 8, 8)).astype(np.float32)
    features = datasets.Features(
        {"pixel_values": datasets.Array3D((3, 8, 8), "float32"), "label": datasets.ClassLabel(num_classes=3)}
    )
    return datasets.Dataset.from_dict({"pixel_values": pixels, "label": labels.astype(np.int64)}, features=features)


def satisfied_vit():
    model = tiny_vit(num_labels=3)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([3.0, 0.0, 0.0]))
    return model


def one_step(tmp_path, model, dataset, loss_name, batch_size, accumulation, **config):
    recorder = GradientRecorder()
    args = HEMConfig(
        **one_sgd_step_settings(
            tmp_path / f"{loss_name}-{batch_size}-{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            loss_name=loss_name,
            margin_scale=MARGIN_SCALE,
            **config,
        )
    )
    trainer = SequentialHEMTrainer(model=model, args=args, train_dataset=dataset, callbacks=[recorder])
    trainer.train()
    return recorder.gradients, trainer.state.log_history[0]


def direct_gradients(model, dataset, loss_name):
    """One process, one batch of 64, the loss written out by hand."""
    pixels = torch.tensor(np.asarray(dataset["pixel_values"]))
    labels = torch.tensor(dataset["label"])
    model.train()
    model.zero_grad()
    logits = model(pixel_values=pixels).logits
    if loss_name == "ce":
        loss = cross_entropy_loss(logits, labels)
    else:
        counts = np.bincount(labels.numpy(), minlength=3)
        margins = margins_from_counts(counts, scale=MARGIN_SCALE, per_class=loss_name == "hem+")
        loss = hem_loss(logits, labels, margins if loss_name == "hem+" else float(margins[0]))
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, float(loss.detach())


def assert_same_gradients(actual, expected, what):
    for name, gradient in expected.items():
        difference = (actual[name] - gradient).norm() / gradient.norm().clamp_min(1e-12)
        assert difference < 1e-6 or (actual[name] - gradient).abs().max() < 1e-7, (
            f"{what}: {name} differs {difference}"
        )


@pytest.mark.parametrize("loss_name", ["hem", "hem+", "ce"])
def test_accumulation_is_exact(tmp_path, loss_name):
    """4 micro-batches of 16 (violating counts 0, k, 0, 16 for HEM) = one batch of 64: gradients and logged loss."""
    dataset = uneven_batch()
    expected, expected_loss = direct_gradients(satisfied_vit(), dataset, loss_name)
    for batch_size, accumulation in ((64, 1), (16, 4)):
        gradients, log = one_step(tmp_path, satisfied_vit(), dataset, loss_name, batch_size, accumulation)
        assert_same_gradients(gradients, expected, f"{loss_name} {accumulation}x{batch_size}")
        assert log["loss"] == pytest.approx(expected_loss, rel=1e-6)


@pytest.mark.parametrize("loss_name", ["hem", "hem+"])
@pytest.mark.parametrize("accumulation", [1, 4])
def test_exact_skipping_equals_no_skipping(tmp_path, loss_name, accumulation):
    """A model without BatchNorm or dropout: skip_zero_loss='exact' gives the gradients of 'off' to 1e-6."""
    dataset = uneven_batch()
    batch_size = NUM_SAMPLES // accumulation
    reference, reference_log = one_step(tmp_path, satisfied_vit(), dataset, loss_name, batch_size, accumulation)
    # `skip_backward_ratio` large: every micro-batch takes the selection pass, whatever its violating fraction; each
    # micro-batch backpropagates its own violating samples (gathering them is tested below).
    gradients, log = one_step(
        tmp_path,
        satisfied_vit(),
        dataset,
        loss_name,
        batch_size,
        accumulation,
        skip_zero_loss="exact",
        skip_backward_ratio=1e6,
        skip_gather_window=False,
    )
    assert_same_gradients(gradients, reference, f"exact {loss_name}")
    assert log["loss"] == pytest.approx(reference_log["loss"], rel=1e-6)
    assert log["hem/violating_fraction"] == pytest.approx(reference_log["hem/violating_fraction"])
    if accumulation == 4:
        # The satisfied blocks of 16 (micro-batches 1 and 3) were not backpropagated.
        assert log["hem/skipped_fraction"] >= 32 / 64


@pytest.mark.parametrize("loss_name", ["hem", "hem+"])
@pytest.mark.parametrize("batch_size, accumulation", [(16, 4), (8, 8)])
def test_gathered_window_equals_no_skipping(tmp_path, loss_name, batch_size, accumulation):
    """skip_gather_window: the violating samples of all micro-batches, backpropagated together in chunks at the
    window's end (several chunks, some under no_sync), give the gradients and logged loss of 'off' to 1e-6."""
    dataset = uneven_batch()
    reference, reference_log = one_step(tmp_path, satisfied_vit(), dataset, loss_name, batch_size, accumulation)
    model = satisfied_vit()
    batch_sizes = []
    model.register_forward_pre_hook(lambda module, args, kwargs: batch_sizes.append(
        (torch.is_grad_enabled(), kwargs["pixel_values"].shape[0])), with_kwargs=True)  # fmt: skip
    gradients, log = one_step(
        tmp_path,
        model,
        dataset,
        loss_name,
        batch_size,
        accumulation,
        skip_zero_loss="exact",
        skip_backward_ratio=1e6,
        skip_gather_window=True,
    )
    assert_same_gradients(gradients, reference, f"gathered {loss_name} {accumulation}x{batch_size}")
    assert log["loss"] == pytest.approx(reference_log["loss"], rel=1e-6)
    assert log["hem/violating_fraction"] == pytest.approx(reference_log["hem/violating_fraction"])
    violating = round(reference_log["hem/violating_fraction"] * NUM_SAMPLES)
    backward_passes = [size for grad_enabled, size in batch_sizes if grad_enabled]
    # A micro-batch after an all-violating one takes the ordinary step (the cost model): with blocks of 8 that is the
    # last one, whose own synchronised pass comes after the gathered chunks. The others take a selection pass, and
    # their violating samples go in near-equal chunks of at most the micro-batch size, not one pass per micro-batch.
    ordinary = 1 if batch_size == 8 else 0
    assert len(batch_sizes) - len(backward_passes) == accumulation - ordinary
    gathered = violating - ordinary * batch_size
    chunks = [len(chunk) for chunk in torch.arange(gathered).tensor_split(-(-gathered // batch_size))]
    assert backward_passes == chunks + [batch_size] * ordinary


def test_window_gatherer_chunks():
    gatherer = WindowGatherer()
    for size, violating in ((4, [0, 2, 3]), (8, [1, 2, 3, 4, 5]), (8, [0, 1, 2, 3, 4, 5, 6, 7]), (4, [])):
        inputs = {"pixel_values": torch.arange(size * 2.0).reshape(size, 2), "return_dict": True}
        gatherer.add(inputs, torch.arange(size), torch.tensor(violating, dtype=torch.long))
    assert len(gatherer) == 16
    chunks = gatherer.chunks(chunk_size=6, batch_norm=False)
    assert [labels.shape[0] for _, labels in chunks] == [6, 5, 5]  # ceil(16 / 6) near-equal chunks
    labels = torch.cat([labels for _, labels in chunks])
    assert labels.tolist() == [0, 2, 3, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7]
    assert all(inputs["return_dict"] is True for inputs, _ in chunks)
    torch.testing.assert_close(chunks[0][0]["pixel_values"][:, 0], 2.0 * labels[:6].float())
    # Text padded per batch cannot be concatenated: each micro-batch is chunked on its own.
    padded = WindowGatherer()
    padded.add({"input_ids": torch.zeros(4, 5)}, torch.arange(4), torch.tensor([0, 1, 2]))
    padded.add({"input_ids": torch.zeros(4, 7)}, torch.arange(4), torch.tensor([3]))
    assert [inputs["input_ids"].shape for inputs, _ in padded.chunks(8, batch_norm=False)] == [(3, 5), (1, 7)]
    # BatchNorm: no chunk of one sample; a window with one violating sample takes its whole micro-batch.
    three = WindowGatherer()
    three.add({"pixel_values": torch.zeros(4, 2)}, torch.arange(4), torch.tensor([0, 1, 3]))
    assert [labels.tolist() for _, labels in three.chunks(2, batch_norm=False)] == [[0, 1], [3]]
    assert [labels.tolist() for _, labels in three.chunks(2, batch_norm=True)] == [[0, 1, 3]]
    single = WindowGatherer()
    single.add({"pixel_values": torch.zeros(4, 2)}, torch.arange(4), torch.tensor([2]))
    assert [labels.tolist() for _, labels in single.chunks(2, batch_norm=True)] == [[0, 1], [2, 3]]


def test_batch_norm_selection_pass_leaves_running_statistics_alone(tmp_path):
    """With BatchNorm the selection pass must not update the running statistics: only the backward pass does."""
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=3)
    dataset = uneven_batch()
    statistics = {}
    for mode in ("off", "exact"):
        torch.manual_seed(0)
        model = ResNetForImageClassification(config)
        one_step(tmp_path, model, dataset, "hem", 64, 1, skip_zero_loss=mode, skip_backward_ratio=1e6, margin=0.0)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        statistics[mode] = (int(bn.num_batches_tracked), bn.running_mean.clone())
    # One update per step in both modes (not two in 'exact'); margin 0 makes every sample with a wrong or tied
    # logit violate, and all of them here violate, so the statistics come from the same 64 images.
    assert statistics["off"][0] == statistics["exact"][0] == 1


def test_skip_cost_model():
    assert skip_pays(0.5, 2.0) and not skip_pays(0.7, 2.0)
    assert not skip_pays(0.5, 0.5)  # a cheap backward does not pay for a selection pass at f = 0.5


def test_stale_tracker_revisits_and_anneals():
    tracker = StaleZeroLossTracker(4, revisit_epochs=3, final_fraction=0.25)
    index = torch.arange(4)
    assert tracker.keep(index, 0.0).all()
    tracker.record(index, torch.tensor([False, True, False, True]))
    kept = [tracker.keep(index, 0.1).tolist() for _ in range(3)]
    # Zero-loss samples 0 and 2 are left out twice in a row, then seen again; 1 and 3 always.
    assert kept == [[False, True, False, True], [False, True, False, True], [True, True, True, True]]
    tracker.record(index, torch.tensor([False, True, True, True]))
    assert tracker.keep(index, 0.5).tolist() == [False, True, True, True]
    assert tracker.keep(index, 0.8).all()  # the final quarter sees every sample


def test_skipping_needs_a_margin_loss():
    with pytest.raises(ValueError, match="only the margin losses"):
        HEMConfig(output_dir="unused", loss_name="ce", skip_zero_loss="exact")
    with pytest.raises(ValueError, match="skip_zero_loss='fast'"):
        HEMConfig(output_dir="unused", skip_zero_loss="fast")


def test_stale_training_runs_and_logs(tmp_path):
    dataset = uneven_batch()
    args = HEMConfig(
        output_dir=str(tmp_path / "stale"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        num_train_epochs=4,
        per_device_train_batch_size=16,
        logging_steps=4,
        learning_rate=0.05,
        margin_scale=MARGIN_SCALE,
        skip_zero_loss="stale",
        stale_final_fraction=0.0,
        seed=0,
    )
    trainer = HEMTrainer(model=satisfied_vit(), args=args, train_dataset=dataset)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "hem/skipped_fraction" in entry]
    assert len(logs) == 4
    # The satisfied class-0 images of the first epoch are left out of the second without a forward pass.
    assert logs[1]["hem/skipped_fraction"] > 0.2
    assert all(np.isfinite(entry["loss"]) for entry in logs)
