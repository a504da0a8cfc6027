"""`scripts/run_semantic_segmentation.py` and `hf_hem.pipelines.semantic_segmentation`, end to end and offline.

The runs are tiny (tens of 32×32 images, a SegFormer of a few thousand parameters): they check that data, model,
trainer, streaming metrics, cards, Hub and launchers fit together, and that training moves in the right direction.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import SemanticSegmenterOutput  # noqa: E402

from hf_hem.data import ADE20K_HUB_ID, UndecodableImageError, load_digits_segmentation_dataset  # noqa: E402
from hf_hem.data import segmentation as segmentation_module  # noqa: E402
from hf_hem.pipelines.semantic_segmentation import (  # noqa: E402
    SegmentationDataArguments,
    SegmentationMetrics,
    load_semantic_segmentation_data,
    parse_semantic_segmentation_args,
    upsample_and_argmax,
)
from hf_hem.trainer import HEMTrainer  # noqa: E402


try:  # tests/ may or may not become a package
    from .helpers import (
        TINY_PIPELINE_FLAGS,
        ade_examples,
        hem_args,
        offline_env,
        pipeline_script,
        reduce_ade_labels,
        run_pipeline,
        run_pipeline_process,
        script_main,
        tiny_bert,
        tiny_segformer,
        write_ade_parquet,
    )
    from .hub_server import LoopbackHub, hub_client_env
except ImportError:
    from helpers import (
        TINY_PIPELINE_FLAGS,
        ade_examples,
        hem_args,
        offline_env,
        pipeline_script,
        reduce_ade_labels,
        run_pipeline,
        run_pipeline_process,
        script_main,
        tiny_bert,
        tiny_segformer,
        write_ade_parquet,
    )
    from hub_server import LoopbackHub, hub_client_env


datasets.disable_progress_bars()
pytestmark = pytest.mark.usefixtures("single_torch_thread")

TASK = "semantic_segmentation"  # scripts/run_semantic_segmentation.py on helpers.TINY_PIPELINE_FLAGS[TASK]
SCRIPT = pipeline_script(TASK)


def _history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


# ------------------------------------------------------------------------------------------------ ADE20K schema
@pytest.fixture(scope="module")
def ade_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ade")
    train_images, train_masks = ade_examples(12, seed=0)
    val_images, val_masks = ade_examples(6, seed=1)
    return {
        "train": write_ade_parquet(
            folder / "train-00000-of-00001.parquet", train_images, train_masks, scene_category=3
        ),
        "validation": write_ade_parquet(
            folder / "validation-00000-of-00001.parquet", val_images, val_masks, scene_category=3
        ),
        "train_masks": train_masks,
        "validation_masks": val_masks,
        "cache": str(folder / "cache"),
    }


@pytest.fixture
def fake_ade20k_hub(ade_files, monkeypatch):
    """`datasets.load_dataset` of the Hub's ADE20K answers with the local parquet files; other calls run as usual."""
    real_load_dataset = datasets.load_dataset
    calls = []

    def load_dataset(path, *args, **kwargs):
        if path != ADE20K_HUB_ID:
            return real_load_dataset(path, *args, **kwargs)
        calls.append(kwargs)
        files = {"train": ade_files["train"], "validation": ade_files["validation"]}
        return real_load_dataset("parquet", data_files=files, cache_dir=ade_files["cache"])

    monkeypatch.setattr(segmentation_module.datasets, "load_dataset", load_dataset)
    return calls


def test_local_ade_parquet_and_the_hub_dataset_load_the_same(ade_files, fake_ade20k_hub):
    hub = load_semantic_segmentation_data(SegmentationDataArguments(dataset_name="scene_parse_150"))
    assert fake_ade20k_hub[-1]["revision"] == "refs/convert/parquet"
    assert fake_ade20k_hub[-1]["data_dir"] == "scene_parsing"
    local = load_semantic_segmentation_data(
        SegmentationDataArguments(data_files=[ade_files["train"]], validation_files=[ade_files["validation"]])
    )
    assert hub.name == "scene_parse_150" and local.name == Path(ade_files["train"]).parent.name
    assert hub.do_reduce_labels is True and local.do_reduce_labels is False  # only ADE20K reduces by default
    assert hub.id2label[0] == "wall" and len(hub.id2label) == 150
    assert local.id2label is None  # no names known: counted from the masks at run time
    for split in ("train", "validation"):
        assert hub.dataset[split].column_names == local.dataset[split].column_names
        assert hub.dataset[split].features == local.dataset[split].features
        assert not hub.dataset[split].features["annotation"].decode  # the transforms decode (and name bad files)
        assert hub.dataset[split]["example_index"] == list(range(hub.dataset[split].num_rows))


def test_ade20k_end_to_end_reduce_labels_pixel_by_pixel_margins_and_card(ade_files, fake_ade20k_hub, tmp_path):
    output_dir = tmp_path / "ade-hem-plus"
    run_pipeline(TASK, output_dir, "--dataset_name", "scene_parse_150", "--loss_name", "hem+")

    config = json.loads((output_dir / "config.json").read_text())
    assert len(config["id2label"]) == 150 and config["id2label"]["0"] == "wall" and config["id2label"]["149"] == "flag"
    # HEM+ margins from the pixel histogram of the reduced training masks, S = number of training images.
    brute = np.bincount(
        np.concatenate([reduce_ade_labels(m).ravel() for m in ade_files["train_masks"]]), minlength=256
    )
    assert config["hem_class_counts"] == brute[:150].tolist()
    assert config["hem_num_margin_samples"] == 12

    # Evaluation at the native 32x32 size: the labels the metrics saw are the reduced masks, pixel by pixel.
    stored = np.load(output_dir / "predictions.npz")
    for index in range(4):
        np.testing.assert_array_equal(stored["labels"][index], reduce_ade_labels(ade_files["validation_masks"][index]))
    labelled = sum(int((reduce_ade_labels(m) != 255).sum()) for m in ade_files["validation_masks"])
    assert stored["confusion_matrix"].shape == (150, 150) and stored["confusion_matrix"].sum() == labelled
    assert stored["predictions"].shape == stored["labels"].shape == (4, 32, 32)

    results = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_mean_iou"] <= 1.0 and results["eval_samples"] == 6
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.datasets == ["scene_parse_150"]
    indexed = {result.metric_type: result for result in card.data.eval_results}
    assert indexed["mean_iou"].metric_value == pytest.approx(results["eval_mean_iou"], rel=1e-5)
    assert indexed["mean_iou"].dataset_name == "scene_parse_150" and indexed["mean_iou"].dataset_split == "validation"
    per_class = json.loads((output_dir / "per_class_iou.json").read_text())
    assert list(per_class)[:3] == ["wall", "building", "sky"]
    assert "### Per-class IoU" in card.text and "| wall |" in card.text
    assert "hem-plus-loss" in card.data.tags and "Per-class margin μ_c" in card.text


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.slow  # 60 training steps per loss
@pytest.mark.parametrize("loss_name", ["hem", "hem+", "ce", "dice"])
def test_tiny_segformer_trains_with_each_loss(tmp_path, loss_name):
    """120 training scenes, 4 epochs of batch 8 (60 steps); the background stays a class, so 60 steps suffice.

    What "trains" means must fit the loss. HEM's batch loss is the mean over the pixels that violate their margin, so
    it can rise while fewer and fewer pixels violate; for HEM and HEM+ the fraction of violating pixels must fall.
    For every loss the training pixel accuracy must rise, and CE's and Dice's own loss must fall.
    """
    output_dir = tmp_path / loss_name.replace("+", "plus")
    flags = ["--num_embedded_images", "150", "--num_train_epochs", "4", "--do_reduce_labels", "false"]
    run_pipeline(TASK, output_dir, *flags, "--loss_name", loss_name)
    steps = [entry for entry in _history(output_dir) if "loss" in entry and "hem/accuracy" in entry]
    assert len(steps) == 60

    def first_and_last(key):
        values = [entry[key] for entry in steps]
        return np.mean(values[:8]), np.mean(values[-8:])

    accuracy_before, accuracy_after = first_and_last("hem/accuracy")
    assert accuracy_after > accuracy_before + 0.1
    if loss_name in ("hem", "hem+"):
        violating_before, violating_after = first_and_last("hem/violating_fraction")
        assert violating_after < violating_before
    else:
        loss_before, loss_after = first_and_last("loss")
        assert loss_after < loss_before
    config = json.loads((output_dir / "config.json").read_text())
    assert config["hem_loss"] == loss_name
    assert (config["hem_margins"] is not None) == (loss_name in ("hem", "hem+"))


# ------------------------------------------------------------------------------------------------ metrics
class _FixedLogits(PreTrainedModel):
    """Returns its input, which the test sets to the wanted logits, at 1x1: upsampling gives a constant class map."""

    config_class = PretrainedConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.post_init()

    def forward(self, pixel_values, **kwargs):
        return SemanticSegmenterOutput(logits=pixel_values + 0 * self.unused)


def test_streamed_miou_matches_a_hand_computed_confusion_matrix(tmp_path):
    # Three images, one predicted class each (logits at 1x1, upsampled to the 2x2 labels), one ignored pixel or two.
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.5, 1.0]])[:, :, None, None]
    labels = torch.tensor([[[0, 0], [1, 255]], [[1, 1], [2, 2]], [[2, 255], [255, 0]]])
    # Rows: reference class, columns: predicted class, counted by hand from the three images above.
    by_hand = np.array([[2, 0, 1], [1, 2, 0], [0, 2, 1]])
    iou = [2 / (3 + 3 - 2), 2 / (3 + 4 - 2), 1 / (3 + 2 - 1)]

    config = PretrainedConfig(num_labels=3, semantic_loss_ignore_index=255)
    dataset = datasets.Dataset.from_dict({"pixel_values": logits.numpy(), "labels": labels.numpy()})
    metrics = SegmentationMetrics(3, ignore_index=255, id2label={0: "a", 1: "b", 2: "c"})
    trainer = HEMTrainer(
        model=_FixedLogits(config),
        args=hem_args(
            tmp_path,
            loss_name="ce",
            per_device_eval_batch_size=2,  # two batches, the second one short: the matrix must stream across them
            batch_eval_metrics=True,
            label_names=["labels"],  # the fixed-logits model takes no labels, so the Trainer cannot find them
        ),
        eval_dataset=dataset.with_format("torch"),
        compute_metrics=metrics,
        preprocess_logits_for_metrics=upsample_and_argmax,
    )
    result = trainer.evaluate()
    np.testing.assert_array_equal(metrics.last_result["confusion_matrix"], by_hand)
    assert result["eval_mean_iou"] == pytest.approx(np.mean(iou))
    assert result["eval_overall_accuracy"] == pytest.approx(5 / 9)
    assert result["eval_mean_accuracy"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1 / 3]))
    assert metrics.per_class_iou() == pytest.approx({"a": iou[0], "b": iou[1], "c": iou[2]})
    # Without batch_eval_metrics the same callable is called once on everything.
    once = SegmentationMetrics(3)
    from transformers import EvalPrediction

    once(EvalPrediction(predictions=upsample_and_argmax(logits, labels), label_ids=labels))
    np.testing.assert_array_equal(once.last_result["confusion_matrix"], by_hand)
    with pytest.raises(ValueError, match="class ids"):
        once(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy()))


def test_upsample_and_argmax_is_segformer_upsampling():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 5, 4, 6), torch.zeros(3, 16, 24, dtype=torch.long)
    expected = torch.nn.functional.interpolate(logits, size=(16, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_and_argmax((logits,), labels), expected.argmax(dim=1))


# ------------------------------------------------------------------------------------------------ bad input
def _bad_data(tmp_path, **changes) -> list[str]:
    """Flags of a 6 + 3 image local ADE-schema dataset with 3 classes (mask values 0..2), 32 px, after `changes`,
    for [`run_pipeline`] into `tmp_path / "out"`."""
    images, masks = ade_examples(6, size=32, num_values=3)
    image_bytes = {}
    if "small_mask" in changes:
        masks[changes["small_mask"]] = masks[changes["small_mask"]][:16, :24]
    if "bad_values" in changes:
        masks[1][4, 4], masks[1][5, 5] = changes["bad_values"]
    if "broken_image" in changes:
        image_bytes[changes["broken_image"]] = b"these bytes are no JPEG"
    train = write_ade_parquet(tmp_path / "train.parquet", images, masks, scene_category=3, image_bytes=image_bytes)
    val_images, val_masks = ade_examples(3, size=32, num_values=3, seed=1)
    validation = write_ade_parquet(tmp_path / "validation.parquet", val_images, val_masks, scene_category=3)
    id2label = tmp_path / "id2label.json"
    id2label.write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    return [
        "--data_files", train, "--validation_files", validation, "--id2label_file", str(id2label),
        "--image_size", "32", "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip


def test_mask_of_another_size_is_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"example 2 \(ADE_00002.jpg\): mask size 24x16 .* differs from image size 32x32"
    ):
        run_pipeline(TASK, tmp_path / "out", *_bad_data(tmp_path, small_mask=2), "--loss_name", "ce")


def test_label_values_out_of_range_are_listed(tmp_path):
    flags = _bad_data(tmp_path, bad_values=(7, 200))
    # HEM counts the training masks before training: the pixel histogram names the example and the values.
    with pytest.raises(ValueError, match=r"example 1 has values \[7, 200\] outside \[0, 3\)"):
        run_pipeline(TASK, tmp_path / "out", *flags)
    # CE counts nothing: the training transform finds them.
    with pytest.raises(ValueError, match=r"example 1 \(ADE_00001.jpg\) has label values \[7, 200\] outside 0..2"):
        run_pipeline(TASK, tmp_path / "out", *flags, "--loss_name", "ce")


def test_undecodable_image_is_named_or_skipped_with_a_count(tmp_path):
    flags = _bad_data(tmp_path, broken_image=3)
    with pytest.raises(UndecodableImageError, match="ADE_00003.jpg"):
        run_pipeline(TASK, tmp_path / "out", *flags, "--loss_name", "ce")
    run_pipeline(TASK, tmp_path / "out", *flags, "--skip_bad_examples", "true")
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["train_skipped_examples"] == 1 and results["eval_skipped_examples"] == 0
    assert results["train_samples"] == 5


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(ValueError, match="exclusive"):
        parse_semantic_segmentation_args(["--dataset_name", "scene_parse_150", "--train_dir", "x"])
    with pytest.raises(ValueError, match="min_scale"):
        parse_semantic_segmentation_args(["--min_scale", "2", "--max_scale", "1"])
    with pytest.raises(ValueError, match="max_embedded_digits must be an integer >= 1, got 0"):
        parse_semantic_segmentation_args(["--max_embedded_digits", "0"])
    with pytest.raises(SystemExit):
        parse_semantic_segmentation_args(["--segformer_size", "b9"])
    assert "invalid choice" in capsys.readouterr().err
    _, data_args, training_args = parse_semantic_segmentation_args([])
    assert data_args.uses_embedded_dataset and training_args.batch_eval_metrics and training_args.do_eval
    assert data_args.scale_range == (0.8, 1.25) and data_args.flip is False
    _, data_args, training_args = parse_semantic_segmentation_args(["--dataset_name", "scene_parse_150"])
    assert data_args.scale_range == (0.5, 2.0) and data_args.flip and training_args.learning_rate == 5e-5


# ------------------------------------------------------------------------------------------------ trainer and cards
def test_hem_trainer_writes_the_hem_card_for_segmenters_and_keeps_the_token_out_of_its_args(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "restored-after-the-test")
    args = hem_args(tmp_path / "segformer", margin=0.5, hub_token="hf_secret")
    trainer = HEMTrainer(model=tiny_segformer(num_labels=3), args=args, card_kwargs={"dataset_name": "d"})
    assert os.environ["HF_TOKEN"] == "hf_secret" and trainer.args.hub_token is None
    trainer.card_metrics = {"eval_mean_iou": 0.25, "eval_hem/violating_fraction": 0.5, "eval_runtime": 1.0}
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "segformer" / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.datasets == ["d"]
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("mean_iou", 0.25)]
    assert "Margin μ" in card.text

    # A model the HEM card cannot describe (no classification head) gets the stock card.
    bert = tiny_bert("MaskedLM", vocab_size=50, hidden_size=8, num_attention_heads=1, intermediate_size=8)
    other = HEMTrainer(model=bert, args=hem_args(tmp_path / "bert", margin=0.5))
    assert other.model_card_kwargs({}) is None
    other.create_model_card()
    assert "generated_from_trainer" in (tmp_path / "bert" / "README.md").read_text()


def test_one_pixel_histogram_behind_both_names():
    from hf_hem.counting import pixel_histogram as counts_only
    from hf_hem.data import mask_histogram as pixel_histogram

    masks = torch.tensor([[[0, 1], [-100, 2]], [[2, 2], [1, -100]]])
    counts, num_images = pixel_histogram([masks], 3, ignore_index=-100, progress=False)  # one (B, H, W) batch
    assert counts.tolist() == [1, 2, 3] and num_images == 2
    np.testing.assert_array_equal(counts_only([masks], 3, ignore_index=-100, progress=False), counts)
    doubled, _ = pixel_histogram(
        list(masks), 5, ignore_index=-100, transform=lambda m: np.where(m < 0, m, 2 * m), progress=False
    )
    assert doubled.tolist() == [1, 0, 2, 0, 3]
    with pytest.raises(ValueError, match=r"batch 0 has values \[-7\] outside \[0, 3\)"):
        pixel_histogram([torch.tensor([[[0, -7]]])], 3, ignore_index=-100, progress=False)


# ------------------------------------------------------------------------------------------------ compare
@pytest.mark.slow
def test_compare_segmentation_writes_report_and_mask_pictures(tmp_path, monkeypatch, capsys):
    from hf_hem.cli import main as cli_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output_dir = tmp_path / "compare"
    flags = [
        flag for flag in TINY_PIPELINE_FLAGS[TASK] if flag not in ("--disable_tqdm", "true", "--log_level", "error")
    ]
    assert (
        cli_main(
            [
                "compare",
                "--task",
                "segmentation",
                "--losses",
                "ce,hem,dice",
                "--seeds",
                "0",
                "--output_dir",
                str(output_dir),
                "--no_progress",
                *flags,
            ]
        )  # fmt: skip
        == 0
    )
    report = (output_dir / "report.md").read_text()
    # A couple of epochs leave convergence undecided: the report says so in its first line, above the title.
    smoke_line, title = report.splitlines()[0], report.split("\n\n")[1]
    assert smoke_line.startswith("> **Smoke run, not a verdict**") and "`hem (convergence undecided" in smoke_line
    assert title.startswith("# hf-hem compare: `ce` vs `hem` vs `dice`")
    assert "| Metric | better | `ce` | `hem` | `dice` |" in report
    assert "| Mean IoU | ↑ |" in report and "| Margin μ | |" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(links) == {"segmentation_masks.png", "per_class_iou.png", "learning_curves.png"}
    for link in links:
        content = (output_dir / link).read_bytes()
        assert content.startswith(b"\x89PNG\r\n\x1a\n") and len(content) > 5_000, link
    runs = json.loads((output_dir / "compare_results.json").read_text())["runs"]
    assert [run["loss_name"] for run in runs] == ["ce", "hem", "dice"]
    assert all(0.0 <= run["metrics"]["eval_mean_iou"] <= 1.0 for run in runs)


# ------------------------------------------------------------------------------------------------ subprocesses
def _labelled_validation_pixels(num_images: int, image_size: int) -> int:
    scenes = load_digits_segmentation_dataset(num_images=num_images, image_size=image_size, seed=42)
    return sum(int((np.asarray(mask) != 0).sum()) for mask in scenes["validation"]["annotation"])


@pytest.mark.slow
def test_script_subprocess_pushes_the_hem_card_to_a_loopback_hub(tmp_path):
    output_dir = tmp_path / "out"
    token = "hf_segmentationTokenThatMustStayOutOfFiles"
    with LoopbackHub(tmp_path / "hub") as hub:
        env = hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home", base_env=offline_env())
        env.pop("HF_TOKEN")
        run_pipeline_process(
            TASK, output_dir, "--push_to_hub", "true", "--hub_model_id", "user/digits-seg-hem", "--hub_token", token,
            env=env,
        )  # fmt: skip
        pushed = hub.files("user/digits-seg-hem")
        assert hub.unhandled_requests == [] and hub.server_errors == []
    readme = pushed["README.md"].decode()
    results = json.loads((output_dir / "all_results.json").read_text())
    card = ModelCard(readme)
    indexed = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert indexed["mean_iou"] == pytest.approx(results["eval_mean_iou"], rel=1e-5)
    assert {result.dataset_name for result in card.data.eval_results} == {"sklearn-digits-segmentation"}
    assert card.data.datasets is None and "### Per-class IoU" in readme
    assert "generated_from_trainer" not in readme and not any(path.startswith("checkpoint-") for path in pushed)
    assert "training_args.bin" in pushed and all(token.encode() not in content for content in pushed.values())
    # The streamed confusion matrix counted every labelled validation pixel exactly once.
    matrix = np.load(output_dir / "predictions.npz")["confusion_matrix"]
    assert matrix.sum() == _labelled_validation_pixels(40, 32)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    output_dir = tmp_path / "out"
    run_pipeline_process(TASK, output_dir, "--loss_name", "hem+", two_processes=True)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 32 training images, 2 processes x batch 8 per step
    card = ModelCard.load(output_dir / "README.md")
    assert "| `total_train_batch_size` | 16 |" in card.text
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_samples"] == 8 and 0.0 <= results["eval_mean_iou"] <= 1.0
    # Both processes stream their share of the validation set; gathered, every pixel is counted once.
    matrix = np.load(output_dir / "predictions.npz")["confusion_matrix"]
    assert matrix.sum() == _labelled_validation_pixels(40, 32)


def test_help_lists_model_data_and_training_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        script_main(SCRIPT)(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset_name", "--model_name_or_path", "--loss_name", "--learning_rate", "--output_dir"):
        assert flag in text, flag


def test_max_embedded_digits_sets_the_most_digits_of_a_scene():
    from hf_hem.pipelines._segmentation_data import load_semantic_segmentation_data

    model_args, data_args, _ = parse_semantic_segmentation_args(
        ["--max_embedded_digits", "1", "--num_embedded_images", "30", "--image_size", "32"]
    )
    scenes = load_semantic_segmentation_data(data_args, model_args, seed=0).dataset["train"]
    assert set(scenes["scene_category"]) == {1}
    digits_per_scene = [len(set(np.unique(np.asarray(mask)).tolist()) - {0}) for mask in scenes["annotation"]]
    assert max(digits_per_scene) == 1
    _, default_args, _ = parse_semantic_segmentation_args(["--num_embedded_images", "30", "--image_size", "32"])
    default_scenes = load_semantic_segmentation_data(default_args, model_args, seed=0).dataset["train"]
    assert max(default_scenes["scene_category"]) == 3
