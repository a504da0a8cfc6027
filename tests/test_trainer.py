"""HEMTrainer / HEMConfig / hem_loss_func and label counting, on tiny models built from configs (offline)."""

import copy
import json
import os

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from transformers import (  # noqa: E402
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTForImageClassification,
)

from hf_hem.counting import count_labels, pixel_histogram  # noqa: E402
from hf_hem.losses import LOSS_NAMES, get_loss, hem_loss  # noqa: E402
from hf_hem.losses.registry import LOSS_SPECS  # noqa: E402
from hf_hem.losses.terms import LossTerms  # noqa: E402
from hf_hem.margins import margins_from_counts  # noqa: E402
from hf_hem.trainer import HEMConfig, HEMTrainer, hem_loss_func  # noqa: E402
from hf_hem.trainer import hem_trainer as hem_trainer_module  # noqa: E402


try:  # tests/ may or may not become a package
    from .helpers import (
        NUM_CLASSES,
        image_dataset,
        segmentation_dataset,
        tiny_bert,
        tiny_resnet,
        tiny_segformer,
        tiny_vit,
    )
    from .step_recording import GradientRecorder
except ImportError:
    from helpers import (
        NUM_CLASSES,
        image_dataset,
        segmentation_dataset,
        tiny_bert,
        tiny_resnet,
        tiny_segformer,
        tiny_vit,
    )
    from step_recording import GradientRecorder

# Tiny models: one intra-op thread is faster, and far steadier when other jobs share the cores.
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_args(tmp_path, **overrides):
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32,
        "max_steps": 4,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "margin_scale": 8.0,  # with 32 training samples: mu = sqrt(8 / 32) = 0.5
        "seed": 0,
    }
    defaults.update(overrides)
    return HEMConfig(**defaults)


def exact_step_args(tmp_path, **overrides):
    """One plain SGD step without clipping, so gradients and weight updates can be checked exactly."""
    settings = {
        "optim": "sgd",
        "learning_rate": 0.1,
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "max_steps": 1,
        "per_device_train_batch_size": 4,
    }
    settings.update(overrides)
    return make_args(tmp_path, **settings)


class RecordingHEMTrainer(HEMTrainer):
    """Keeps a copy of every micro-batch, to rebuild the expected loss by hand."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen_batches = getattr(self, "seen_batches", [])
            self.seen_batches.append({k: v.detach().clone() for k, v in inputs.items()})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def changed_parameters(before, model):
    after = dict(model.named_parameters())
    return {name: not torch.equal(before[name], after[name].detach()) for name in before}


# ---- HEMConfig ----


def test_config_help_works_through_hf_argument_parser(capsys):
    parser = HfArgumentParser(HEMConfig)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args_into_dataclasses(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--loss_name", "--margin_scale", "--per_class_margins", "--class_counts", "--loss_ignore_index"):
        assert flag in text


def test_config_parses_flags(tmp_path):
    (args,) = HfArgumentParser(HEMConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--loss_name", "hem+", "--class_counts", "50", "5", "--margin_scale", "1000"]
    )
    assert args.loss_name == "hem+" and args.class_counts == [50, 5] and args.margin_scale == 1000.0
    assert args.per_class_margins is True
    assert HEMConfig(output_dir=str(tmp_path), loss_name="HEM").per_class_margins is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_name": "hinge"}, "hem\\+"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor=0.1"),
        ({"label_smoothing_factor": 0.1, "loss_name": "ce"}, "label_smoothing_factor"),
        ({"loss_name": "hem+", "margin": 0.2}, "hem\\+"),
        ({"loss_name": "hem+", "per_class_margins": False}, "per_class_margins=False"),
        ({"margin": -1.0}, "margin must be"),
        ({"margin_scale": 0.0}, "margin_scale"),
        ({"class_counts": [3, -1]}, "class_counts"),
        ({"focal_gamma": -2.0}, "focal_gamma"),
    ],
)
def test_config_rejects_bad_values(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HEMConfig(output_dir=str(tmp_path), **kwargs)


# ---- loss composition ----


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_normaliser_matches_loss_mean(loss_name):
    """local_sum / local_count reproduces each loss's own `reduction="mean"` (one process, one batch)."""
    torch.manual_seed(1)
    logits = torch.randn(6, NUM_CLASSES, 3, 3)
    labels = torch.randint(0, NUM_CLASSES, (6, 3, 3))
    labels[0, 0] = 255
    counts = [40, 20, 5]
    margins = margins_from_counts(counts, scale=20.0, per_class=loss_name == "hem+")
    terms = LossTerms(
        loss_name,
        margins=margins,
        per_class_margins=loss_name == "hem+",
        class_counts=counts,
        ignore_index=255,
    )
    local_sum, local_count = terms.parts(logits, labels)
    kwargs = {"class_counts": counts} if loss_name == "la" else {}
    if loss_name in ("hem", "hem+", "mm", "mm+maz", "mm+thres"):
        kwargs = {"margin": margins if loss_name == "hem+" else float(margins[0])}
    expected = get_loss(loss_name, ignore_index=255, **kwargs)(logits, labels)
    torch.testing.assert_close(local_sum / local_count.clamp_min(1).float(), expected, rtol=1e-6, atol=1e-7)
    assert LOSS_SPECS[loss_name].normaliser in ("violating", "labelled", "set")


def test_violating_stat_is_nonzero_hem_loss():
    torch.manual_seed(2)
    logits = torch.randn(64, NUM_CLASSES)
    labels = torch.randint(0, NUM_CLASSES, (64,))
    margins = torch.tensor([0.3, 0.6, 1.2])
    terms = LossTerms("hem+", margins=margins, per_class_margins=True, class_counts=None, ignore_index=-100)
    stats = dict(zip(terms.stat_names, terms.stats(logits, labels).tolist()))
    per_sample = hem_loss(logits, labels, margins, reduction="none")
    assert stats["violating"] == int((per_sample > 0).sum())
    assert stats["labelled"] == 64
    assert stats["correct"] == int((logits.argmax(1) == labels).sum())
    assert stats["margin_sum"] == pytest.approx(float(margins[labels].sum()), rel=1e-6)


# ---- training with every loss ----


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_every_loss_trains_tiny_resnet(tmp_path, loss_name):
    model = tiny_resnet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_args(tmp_path, loss_name=loss_name, max_steps=16, logging_steps=4, learning_rate=2e-2)
    trainer = HEMTrainer(model=model, args=args, train_dataset=image_dataset(size=16))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0], f"{loss_name}: logged losses {losses} did not decrease"
    unchanged = [name for name, changed in changed_parameters(before, model).items() if not changed]
    assert not unchanged, f"{loss_name}: parameters not updated: {unchanged}"
    assert model.config.hem_loss == loss_name
    assert model.config.hem_class_counts == [11, 11, 10]


def test_logged_metrics_and_their_values(tmp_path):
    model = tiny_vit()
    dataset = image_dataset()
    args = make_args(tmp_path, loss_name="hem+", max_steps=2)
    trainer = HEMTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    train_log = trainer.state.log_history[0]
    for key in ("loss", "hem/violating_fraction", "hem/mean_violation", "hem/margin_mean", "hem/accuracy"):
        assert key in train_log
    metrics = trainer.evaluate()
    assert metrics["eval_hem/violating_fraction"] == trainer.state.log_history[-1]["eval_hem/violating_fraction"]
    # The whole set is one evaluation batch: compare every value with a direct computation.
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.tensor(np.asarray(dataset["pixel_values"]))).logits
    labels = torch.tensor(dataset["label"])
    margins = trainer.margins
    per_sample = hem_loss(logits, labels, margins, reduction="none")
    violating = per_sample > 0
    target = logits.gather(1, labels[:, None]).squeeze(1)
    worst = logits.scatter(1, labels[:, None], float("-inf")).max(1).values - target + margins[labels]
    # Violating means a positive worst margin error, which is exactly a non-zero HEM loss.
    assert torch.equal(violating, worst > 0)
    assert metrics["eval_loss"] == pytest.approx(float(hem_loss(logits, labels, margins)), rel=1e-5)
    assert metrics["eval_hem/violating_fraction"] == pytest.approx(float(violating.float().mean()))
    assert metrics["eval_hem/mean_violation"] == pytest.approx(float(per_sample[violating].mean()), rel=1e-5)
    assert metrics["eval_hem/margin_mean"] == pytest.approx(float(margins[labels].mean()), rel=1e-6)
    assert metrics["eval_hem/accuracy"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    # A custom prefix is honoured, and predict() reports the same metrics under its own prefix.
    assert "val_hem/accuracy" in trainer.evaluate(metric_key_prefix="val")
    assert "test_hem/violating_fraction" in trainer.predict(dataset).metrics


# ---- gradient accumulation ----


@pytest.mark.parametrize("loss_name", ["hem", "ce"])
def test_gradient_accumulation_equals_the_concatenated_batch(tmp_path, loss_name):
    """GA 2 x batch 4: the step optimises (and logs) the loss of the batch of 8 the two micro-batches make up.

    The uneven case (violating counts 0, k, 0, 16) is `tests/test_training_step.py`.
    """
    model = tiny_vit()
    reference = copy.deepcopy(model)
    recorder = GradientRecorder()
    args = exact_step_args(tmp_path, loss_name=loss_name, margin=1.0, gradient_accumulation_steps=2)
    trainer = RecordingHEMTrainer(
        model=model, args=args, train_dataset=image_dataset(num_samples=8), callbacks=[recorder]
    )
    trainer.train()
    assert len(trainer.seen_batches) == 2 and all(b["labels"].shape == (4,) for b in trainer.seen_batches)

    reference.train()
    criterion = get_loss(loss_name, margin=1.0) if loss_name == "hem" else get_loss("ce")
    pixels = torch.cat([b["pixel_values"] for b in trainer.seen_batches])
    labels = torch.cat([b["labels"] for b in trainer.seen_batches])
    expected = criterion(reference(pixel_values=pixels).logits, labels)
    expected.backward()
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(recorder.steps[0][name], parameter.grad, rtol=1e-5, atol=1e-6)
    # The logged loss is the optimised loss.
    assert trainer.state.log_history[0]["loss"] == pytest.approx(expected.item(), rel=1e-6)


def test_hem_loss_func_with_stock_trainer_matches_hem_trainer(tmp_path):
    dataset = image_dataset(num_samples=8)
    gradients = {}
    for kind in ("hem_trainer", "stock"):
        recorder = GradientRecorder()
        if kind == "hem_trainer":
            args = exact_step_args(tmp_path, loss_name="hem", margin=1.0, gradient_accumulation_steps=2)
            trainer = HEMTrainer(model=tiny_vit(), args=args, train_dataset=dataset, callbacks=[recorder])
        else:
            args = TrainingArguments(**{k: v for k, v in _init_kwargs(exact_step_args(tmp_path)).items()})
            args.gradient_accumulation_steps = 2
            trainer = Trainer(
                model=tiny_vit(),
                args=args,
                train_dataset=dataset,
                callbacks=[recorder],
                compute_loss_func=hem_loss_func("hem", margin=1.0),
            )
        trainer.train()
        gradients[kind] = (recorder.steps[0], trainer.state.log_history[0]["loss"])
    for name, gradient in gradients["hem_trainer"][0].items():
        torch.testing.assert_close(gradients["stock"][0][name], gradient, rtol=1e-5, atol=1e-6)
    assert gradients["stock"][1] == pytest.approx(gradients["hem_trainer"][1], rel=1e-6)


def _init_kwargs(config):
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init and f.name in names}


def test_hem_loss_func_validation():
    with pytest.raises(ValueError, match="margin= or class_counts="):
        hem_loss_func("hem")
    with pytest.raises(ValueError, match="not a known loss"):
        hem_loss_func("hinge", margin=0.2)
    with pytest.raises(ValueError, match="per-class margins"):
        hem_loss_func("hem+", margin=0.2)
    loss_func = hem_loss_func("hem+", class_counts=[30, 10])
    torch.testing.assert_close(loss_func.margins, margins_from_counts([30, 10], per_class=True))
    logits, labels = torch.tensor([[2.0, 1.9], [0.0, 3.0]]), torch.tensor([0, 1])
    torch.testing.assert_close(loss_func({"logits": logits}, labels), hem_loss(logits, labels, loss_func.margins))


# ---- checkpoints and resuming ----


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_kill_and_resume_reuses_margins_and_matches_uninterrupted_run(tmp_path):
    dataset = image_dataset(num_samples=16)
    common = {"loss_name": "hem+", "max_steps": 6, "per_device_train_batch_size": 4, "margin_scale": 4.0}

    uninterrupted = tiny_vit()
    HEMTrainer(model=uninterrupted, args=make_args(tmp_path / "a", **common), train_dataset=dataset).train()

    interrupted_args = make_args(tmp_path / "b", save_strategy="steps", save_steps=3, **common)
    first = HEMTrainer(model=tiny_vit(), args=interrupted_args, train_dataset=dataset, callbacks=[StopAfter(3)])
    first.train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    assert first.state.global_step == 3 and checkpoint.is_dir()
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["hem_loss"] == "hem+" and config["hem_class_counts"] == [6, 5, 5]
    torch.testing.assert_close(torch.tensor(config["hem_margins"]), first.margins)

    # A fresh process: different initial weights and different class counts in its arguments; resuming must
    # still optimise the stored margins.
    resumed_model = tiny_vit(seed=123)
    resumed_args = make_args(tmp_path / "b", class_counts=[100, 1, 1], **common)
    resumed = HEMTrainer(model=resumed_model, args=resumed_args, train_dataset=dataset)
    assert not torch.allclose(resumed.margins, first.margins)
    resumed.train(resume_from_checkpoint=True)
    torch.testing.assert_close(resumed.margins, first.margins)
    assert resumed_model.config.hem_margins == config["hem_margins"]
    final = dict(uninterrupted.named_parameters())
    for name, parameter in resumed_model.named_parameters():
        torch.testing.assert_close(parameter, final[name], rtol=0, atol=1e-6)


def test_eval_only_uses_margins_stored_in_model_config(tmp_path):
    model = tiny_vit()
    dataset = image_dataset()
    HEMTrainer(model=model, args=make_args(tmp_path, loss_name="hem+", max_steps=1), train_dataset=dataset)
    model.save_pretrained(tmp_path / "saved")
    loaded = ViTForImageClassification.from_pretrained(tmp_path / "saved")
    evaluator = HEMTrainer(model=loaded, args=make_args(tmp_path, loss_name="hem+"), eval_dataset=dataset)
    torch.testing.assert_close(evaluator.margins, torch.tensor(model.config.hem_margins))
    assert "eval_hem/violating_fraction" in evaluator.evaluate()


# ---- segmentation and text classification ----


def test_segformer_hem_plus_margins_from_pixel_histogram(tmp_path):
    dataset, masks = segmentation_dataset()
    model = tiny_segformer()
    args = make_args(tmp_path, loss_name="hem+", per_device_train_batch_size=2, max_steps=3, margin_scale=1.0)
    trainer = HEMTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    pixels = np.bincount(masks[masks != 255], minlength=4)
    assert model.config.hem_class_counts == pixels.tolist()
    assert model.config.hem_num_margin_samples == 6  # S = number of images, not pixels
    expected = margins_from_counts(pixels, scale=1.0, per_class=True, num_samples=6)
    torch.testing.assert_close(torch.tensor(model.config.hem_margins), expected)
    assert all(np.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)

    # The loss is HEM+ on logits upsampled to the label size, with SegFormer's ignore index 255.
    model.eval()
    batch = {"pixel_values": dataset[:3]["pixel_values"], "labels": dataset[:3]["labels"]}
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
        assert outputs.logits.shape == (3, 4, 8, 8) and outputs.loss is None
        upsampled = torch.nn.functional.interpolate(
            outputs.logits, size=(16, 16), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(loss, hem_loss(upsampled, batch["labels"], expected, ignore_index=255))
    assert "eval_hem/violating_fraction" in trainer.evaluate()


def test_segmentation_class_counts_use_the_number_of_images(tmp_path):
    dataset, _ = segmentation_dataset()
    pixels = [500, 300, 100, 20]
    args = make_args(tmp_path, loss_name="hem", class_counts=pixels, margin_scale=6.0)
    trainer = HEMTrainer(model=tiny_segformer(), args=args, train_dataset=dataset)
    torch.testing.assert_close(trainer.margins, torch.full((4,), 1.0))  # sqrt(6 / 6 images), not sqrt(6 / 920)
    with pytest.raises(ValueError, match="num_margin_samples"):
        HEMTrainer(model=tiny_segformer(), args=args, eval_dataset=dataset)


def test_segmentation_pixels_out_of_range_are_named(tmp_path):
    dataset, _ = segmentation_dataset(bad_value=9)
    args = make_args(tmp_path, loss_name="hem+", per_device_train_batch_size=2, max_steps=1)
    trainer = HEMTrainer(model=tiny_segformer(), args=args, train_dataset=dataset)
    with pytest.raises(ValueError, match=r"\[9\]"):
        trainer.train()


def test_text_classification_with_tiny_bert(tmp_path):
    model = tiny_bert("SequenceClassification", num_labels=NUM_CLASSES, vocab_size=50, max_position_embeddings=16)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, 24)
    input_ids = rng.integers(5, 50, (24, 8))
    input_ids[:, 1] = labels + 1  # a token that gives the class away
    dataset = datasets.Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "label": labels}
    )
    args = make_args(tmp_path, loss_name="hem", max_steps=6, margin_scale=6.0)
    trainer = HEMTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    assert model.config.hem_margins == pytest.approx([0.5] * NUM_CLASSES)
    assert model.config.hem_class_counts == np.bincount(labels, minlength=NUM_CLASSES).tolist()
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and "eval_hem/accuracy" in metrics


class TorchImageDataset(torch.utils.data.Dataset):
    """A plain map-style dataset: no Arrow column, so the labels are counted through the data pipeline."""

    def __init__(self, hf_dataset):
        self.pixels = torch.tensor(np.asarray(hf_dataset["pixel_values"]))
        self.labels = torch.tensor(hf_dataset["label"])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def test_plain_torch_dataset_is_counted_at_train_start(tmp_path):
    hf_dataset = image_dataset()
    model = tiny_vit()
    trainer = HEMTrainer(
        model=model,
        args=make_args(tmp_path, loss_name="hem+", max_steps=1),
        train_dataset=TorchImageDataset(hf_dataset),
    )
    assert getattr(model.config, "hem_margins", None) is None  # deferred: counting needs a pass over the data
    trainer.train()
    counts = np.bincount(hf_dataset["label"], minlength=NUM_CLASSES)
    assert model.config.hem_class_counts == counts.tolist() and model.config.hem_num_margin_samples is None
    torch.testing.assert_close(trainer.margins, margins_from_counts(counts, scale=8.0, per_class=True))


# ---- bad input ----


def test_num_labels_mismatch_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="5 classes but the model has num_labels=3"):
        HEMTrainer(model=tiny_vit(), args=make_args(tmp_path), train_dataset=image_dataset(num_classes=5))


def test_missing_label_column_lists_columns(tmp_path):
    dataset = image_dataset().rename_column("label", "target")
    with pytest.raises(ValueError, match=r"columns present: \['pixel_values', 'target'\]"):
        HEMTrainer(model=tiny_vit(), args=make_args(tmp_path), train_dataset=dataset)
    with pytest.raises(ValueError, match="class_counts_column='fine_label' is not a column"):
        HEMTrainer(model=tiny_vit(), args=make_args(tmp_path, class_counts_column="fine_label"), train_dataset=dataset)


def test_labels_out_of_range_are_named(tmp_path):
    dataset = image_dataset(class_label=False)
    labels = np.array(dataset["label"])
    labels[[2, 5]] = [7, -3]
    dataset = dataset.remove_columns("label").add_column("label", labels.tolist())
    with pytest.raises(ValueError, match=r"values \[-3, 7\] outside \[0, 3\)"):
        HEMTrainer(model=tiny_vit(), args=make_args(tmp_path), train_dataset=dataset)


def test_plain_training_arguments_are_converted(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    trainer = HEMTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset())
    assert isinstance(trainer.args, HEMConfig) and trainer.args.loss_name == "hem"
    assert trainer.args.max_steps == 1


def test_regression_models_and_missing_margins_are_rejected(tmp_path):
    model = tiny_vit()
    model.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match="multi_label_classification"):
        HEMTrainer(model=model, args=make_args(tmp_path), train_dataset=image_dataset())
    with pytest.raises(ValueError, match="no train_dataset to count"):
        HEMTrainer(model=tiny_vit(), args=make_args(tmp_path, loss_name="hem+"), eval_dataset=image_dataset())


# ---- label counting ----


def test_count_labels_reads_the_arrow_column_with_index_mappings():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 1000)
    dataset = datasets.Dataset.from_dict({"label": labels, "text": ["x"] * 1000})
    np.testing.assert_array_equal(count_labels(dataset, 5), np.bincount(labels, minlength=5))
    subset = dataset.shuffle(seed=0).select(range(100))
    np.testing.assert_array_equal(count_labels(subset, 5), np.bincount(subset["label"], minlength=5))
    transformed = dataset.with_transform(lambda batch: {"labels": [0] * len(batch["label"])})
    np.testing.assert_array_equal(count_labels(transformed, 5), np.bincount(labels, minlength=5))
    np.testing.assert_array_equal(count_labels(torch.tensor([0, 2, 2, -100]), 3, ignore_index=-100), [1, 0, 2])
    np.testing.assert_array_equal(count_labels([1, 1], 4), [0, 2, 0, 0])


def test_count_labels_errors():
    dataset = datasets.Dataset.from_dict({"target": [0, 1]})
    with pytest.raises(ValueError, match=r"columns present: \['target'\]"):
        count_labels(dataset, 2)
    with pytest.raises(ValueError, match=r"\[5\] outside \[0, 2\)"):
        count_labels([0, 5, 1], 2)
    with pytest.raises(ValueError, match="null"):
        count_labels(datasets.Dataset.from_dict({"label": [0, None]}), 2)
    with pytest.raises(ValueError, match="pixel_histogram"):
        count_labels(np.zeros((2, 2), dtype=int), 2)


def test_pixel_histogram_sources():
    from PIL import Image

    masks = [np.array([[0, 1], [255, 1]], dtype=np.uint8), np.array([[2, 2], [2, 0]], dtype=np.uint8)]
    expected = [2, 2, 3]
    np.testing.assert_array_equal(pixel_histogram(masks, 3, progress=False), expected)
    np.testing.assert_array_equal(pixel_histogram(torch.tensor(np.stack(masks)), 3, progress=False), expected)
    image_set = datasets.Dataset.from_dict({"image": [None, None], "annotation": [Image.fromarray(m) for m in masks]})
    np.testing.assert_array_equal(pixel_histogram(image_set, 3, progress=False), expected)
    # ADE20K-style label reduction: 0 becomes ignored, the rest shift down by one.
    reduced = pixel_histogram(
        image_set,
        2,
        mask_column="annotation",
        transform=lambda m: np.where((m == 0) | (m == 255), 255, m - 1),
        progress=False,
    )
    np.testing.assert_array_equal(reduced, [2, 3])
    items = [{"labels": torch.tensor(m.astype(np.int64))} for m in masks]
    np.testing.assert_array_equal(pixel_histogram(items, 3, progress=False), expected)
    with pytest.raises(ValueError, match=r"\[2\] outside \[0, 2\)"):
        pixel_histogram(masks, 2, progress=False)
    with pytest.raises(ValueError, match="columns present"):
        pixel_histogram(image_set, 3, mask_column="mask", progress=False)


def test_counting_pass_moves_no_generator_training_uses(tmp_path):
    """A run that counts through the data pipeline sees the augmentations of a run given its counts."""
    from hf_hem.data import build_segmentation_transforms, load_digits_segmentation_dataset

    def dataset_with_random_crops():
        train = load_digits_segmentation_dataset(num_images=12, image_size=32, seed=0)["train"]
        transform = build_segmentation_transforms(
            size=16, image_mean=[0.0] * 3, image_std=[1.0] * 3, train=True, num_labels=11, seed=0
        )
        train.set_transform(transform)
        return train

    counted, given = dataset_with_random_crops(), dataset_with_random_crops()
    args = make_args(tmp_path, loss_name="hem+", remove_unused_columns=False, per_device_train_batch_size=4)
    trainer = HEMTrainer(model=tiny_segformer(num_labels=11), args=args, train_dataset=counted)
    assert trainer.class_counts.sum() > 0  # the counting pass ran through the random crops
    np.testing.assert_array_equal(np.asarray(counted[0]["labels"]), np.asarray(given[0]["labels"]))
    np.testing.assert_array_equal(np.asarray(counted[1]["pixel_values"]), np.asarray(given[1]["pixel_values"]))


# ---- launches, sharded engines ----


def test_several_processes_launched_but_none_distributed_is_refused(tmp_path, monkeypatch):
    # What a launcher leaves in the environment when accelerate then finds nothing to distribute over (no LOCAL_RANK
    # here, so no process group waits for a second process).
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = make_args(tmp_path, use_cpu=False)
    with pytest.raises(RuntimeError, match=r"started 2 processes \(WORLD_SIZE=2, RANK=1\).*--use_cpu true"):
        HEMTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset())
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert HEMTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset()).loss_is_scaled_for_ga


def test_tensor_context_and_sequence_parallelism_are_refused():
    from accelerate.parallelism_config import ParallelismConfig

    from hf_hem.trainer.distributed import check_data_parallel_only

    check_data_parallel_only(None)
    check_data_parallel_only(ParallelismConfig(dp_shard_size=2))
    for name in ("tp_size", "cp_size"):
        with pytest.raises(ValueError, match=rf"data parallelism only .*got {name}=2"):
            check_data_parallel_only(ParallelismConfig(**{name: 2}))


def test_launch_mismatch_and_padded_rows():
    from types import SimpleNamespace

    from hf_hem.trainer.distributed import launch_mismatch, real_rows_in_batch

    assert launch_mismatch({"WORLD_SIZE": "2"}, num_processes=2) is None
    assert launch_mismatch({}, num_processes=1) is None
    assert "WORLD_SIZE=4, LOCAL_RANK=3" in launch_mismatch({"WORLD_SIZE": "4", "LOCAL_RANK": "3"}, num_processes=1)
    # 45 samples, 2 processes x 8: the last global batch holds 45 % 16 = 13 real rows, 8 on rank 0 and 5 on rank 1.
    last = SimpleNamespace(end_of_dataloader=True, remainder=13)
    assert [real_rows_in_batch(last, rank, 2, 8) for rank in (0, 1)] == [8, 5]
    # 3 samples, 4 processes x 2: ranks 2 and 3 hold padding only.
    tiny = SimpleNamespace(end_of_dataloader=True, remainder=3)
    assert [real_rows_in_batch(tiny, rank, 4, 2) for rank in range(4)] == [2, 1, 0, 0]
    for state in (
        SimpleNamespace(end_of_dataloader=False, remainder=13),  # not the last batch
        SimpleNamespace(end_of_dataloader=True, remainder=0),  # no padding
        SimpleNamespace(end_of_dataloader=True, remainder=-1),  # no length: gather_for_metrics keeps everything
    ):
        assert real_rows_in_batch(state, 1, 2, 8) == 8
    assert real_rows_in_batch(last, 0, 1, 8) == 8


@pytest.mark.parametrize("engine", ["FSDP", "DeepSpeed"])
def test_sharded_engines_refuse_skipping_and_normalise_each_micro_batch(tmp_path, engine, monkeypatch, caplog):
    # accelerate enables FSDP and DeepSpeed only on accelerators: fake the trainer's view of the engine.
    monkeypatch.setattr(hem_trainer_module, "sharded_engine_name", lambda fsdp, deepspeed: engine)
    for skip in ("exact", "stale"):
        with pytest.raises(ValueError, match=rf"skip_zero_loss='{skip}' is not supported under {engine}"):
            HEMTrainer(model=tiny_vit(), args=make_args(tmp_path, skip_zero_loss=skip), train_dataset=image_dataset())
    with caplog.at_level("WARNING", logger="hf_hem.trainer.distributed"):
        HEMTrainer(
            model=tiny_vit(), args=make_args(tmp_path, gradient_accumulation_steps=2), train_dataset=image_dataset()
        )
    assert f"{engine} with gradient_accumulation_steps=2: each micro-batch is its own HEM batch" in caplog.text
    # One micro-batch per step: normalising the loss before backward (no gradient touched afterwards) gives exactly
    # the gradient of the exact-accumulation path.
    gradients = {}
    for path in ("sharded", "plain"):
        if path == "plain":
            monkeypatch.undo()
        recorder = GradientRecorder()
        trainer = HEMTrainer(
            model=tiny_vit(), args=exact_step_args(tmp_path), train_dataset=image_dataset(), callbacks=[recorder]
        )
        assert trainer.loss_is_scaled_for_ga == (path == "plain")
        trainer.train()
        assert "hem/violating_fraction" in trainer.state.log_history[0]
        gradients[path] = recorder.gradients
    for name, gradient in gradients["plain"].items():
        torch.testing.assert_close(gradients["sharded"][name], gradient, rtol=1e-6, atol=1e-7, msg=name)


# ---- the margin monitor ----


@pytest.mark.parametrize("margin, warns", [(1000.0, True), (0.1, False)])
def test_violating_fraction_stuck_at_one_is_reported_once(tmp_path, margin, warns, caplog):
    args = make_args(tmp_path, loss_name="hem", margin=margin, max_steps=16, logging_steps=1)
    trainer = HEMTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset())
    with caplog.at_level("WARNING", logger="hf_hem.trainer.margin_monitor"):
        trainer.train()
    fractions = [entry["hem/violating_fraction"] for entry in trainer.state.log_history if "loss" in entry]
    messages = [record.getMessage() for record in caplog.records if record.name == "hf_hem.trainer.margin_monitor"]
    if warns:
        assert min(fractions) == 1.0
        # Once, at step 10 (25% of 16 steps is 4, but never before step 10), with the numbers and what to try.
        assert len(messages) == 1
        assert "after 10 of 16 optimizer steps" in messages[0] and "mean margin 1000" in messages[0]
        assert "`--margin 1`" in messages[0] and "hem/accuracy went from" in messages[0]
    else:
        assert fractions[0] == 1.0 and min(fractions[:10]) < 0.999  # at 1 at first (fresh head), then it moves
        assert messages == []


def test_margin_monitor_waits_for_its_share_of_the_training():
    from types import SimpleNamespace

    from hf_hem.trainer.margin_monitor import ViolatingFractionMonitor

    monitor = ViolatingFractionMonitor(share=0.25)
    assert [monitor.check_step(steps) for steps in (4, 16, 100, 1000)] == [4, 10, 25, 250]
    state = SimpleNamespace(global_step=0, max_steps=100, is_world_process_zero=True)
    monitor.on_train_begin(None, state, None)
    for step, fraction in ((10, 1.0), (20, 1.0), (30, 0.9995)):
        state.global_step = step
        monitor.on_log(None, state, None, logs={"hem/violating_fraction": fraction})
        assert monitor.warned == (step >= 25)
    # A fraction that moved below 1 once is not stuck, even if it climbs back.
    monitor.on_train_begin(None, state, None)
    for step, fraction in ((10, 0.5), (30, 1.0), (60, 1.0)):
        state.global_step = step
        monitor.on_log(None, state, None, logs={"hem/violating_fraction": fraction})
    assert not monitor.warned
    with pytest.raises(ValueError, match="share=0"):
        ViolatingFractionMonitor(share=0)
    # The margin to try is a quarter of the present one, at most 1; HEM+ is told about margin_scale instead.
    for margin, expected in ((6.455, "`--margin 1`"), (1.0, "`--margin 0.25`")):
        assert expected in monitor.message(SimpleNamespace(loss_name="hem"), state, margin)
    hem_plus = monitor.message(SimpleNamespace(loss_name="hem+", margin_scale=2000.0), state, 3.0)
    assert "`--margin_scale` (e.g. 125, which divides every margin by 4)" in hem_plus and "--margin " not in hem_plus


def test_eval_loss_is_the_loss_of_the_whole_evaluation_set(tmp_path):
    # Batches of 5 over 32 samples: the loss of the whole set (sum over its violating samples), not a batch mean.
    model = tiny_vit()
    with torch.no_grad():  # larger logits, so that some samples meet the margin
        model.classifier.weight.mul_(20.0)
    dataset = image_dataset()
    args = make_args(tmp_path, per_device_eval_batch_size=5, margin=0.5)
    metrics = HEMTrainer(model=model, args=args, eval_dataset=dataset).evaluate()
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.tensor(np.asarray(dataset["pixel_values"]))).logits
    labels = torch.tensor(dataset["label"])
    per_sample = hem_loss(logits, labels, 0.5, reduction="none")
    violating = per_sample > 0
    assert 0 < int(violating.sum()) < len(labels)
    assert metrics["eval_loss"] == pytest.approx(float(per_sample.sum() / violating.sum()), rel=1e-6)
    batch_losses = [float(hem_loss(logits[i : i + 5], labels[i : i + 5], 0.5)) for i in range(0, 32, 5)]
    assert metrics["eval_loss"] != pytest.approx(float(np.average(batch_losses, weights=[5] * 6 + [2])), rel=1e-4)
