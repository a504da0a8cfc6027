"""`scripts/run_image_classification.py` and `hf_hem.pipelines.image_classification`, end to end and offline.

The runs are tiny (64 training images, one epoch) so that the file stays fast: they check that the pieces fit
(data, model, trainer, metrics, cards, Hub), not what the model learns.
"""

import json
import math
import subprocess
import sys
import textwrap
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard


try:  # tests/ may or may not become a package
    from .helpers import offline_env, pipeline_script, run_pipeline, run_pipeline_process, script_main
    from .hub_server import LoopbackHub, hub_client_env
except ImportError:
    from helpers import offline_env, pipeline_script, run_pipeline, run_pipeline_process, script_main
    from hub_server import LoopbackHub, hub_client_env


TASK = "image_classification"  # scripts/run_image_classification.py on helpers.TINY_PIPELINE_FLAGS[TASK]
SCRIPT = pipeline_script(TASK)
REJECTION_KEYS = (
    "eval_rejection_auroc_msp",
    "eval_rejection_fpr95_msp",
    "eval_rejection_auroc_mls",
    "eval_rejection_fpr95_mls",
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny in-process run of the script on the embedded digits, digits 8 and 9 held out, with a checkpoint."""
    output_dir = tmp_path_factory.mktemp("digits") / "resnet-hem"
    return run_pipeline(TASK, output_dir, "--unknown_classes", "8", "9", "--save_strategy", "epoch")


# ------------------------------------------------------------------------------------------------ in-process run
def test_run_writes_model_metrics_and_unknown_class_rejection(trained_run):
    results = json.loads((trained_run / "all_results.json").read_text())
    for key in ("train_loss", "eval_accuracy", "eval_balanced_accuracy", "eval_ece", *REJECTION_KEYS):
        assert key in results, key
        assert math.isfinite(results[key])
    for key in ("eval_accuracy", "eval_ece", *REJECTION_KEYS):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["train_samples"] == 64
    assert results["eval_samples"] == 40
    assert results["eval_unknown_samples"] == 40  # capped by max_eval_samples too

    predictions = np.load(trained_run / "predictions.npz")
    assert list(predictions["class_names"]) == [str(digit) for digit in range(8)]
    assert list(predictions["unknown_class_names"]) == ["8", "9"]
    assert predictions["eval_logits"].shape == (40, 8)
    assert predictions["unknown_logits"].shape == (40, 8)
    assert set(np.unique(predictions["eval_labels"])) <= set(range(8))  # known classes only, in the model's ids
    accuracy = float((predictions["eval_logits"].argmax(1) == predictions["eval_labels"]).mean())
    assert accuracy == pytest.approx(results["eval_accuracy"])


def test_checkpoint_loads_with_plain_auto_classes(trained_run):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_hem.data import build_classification_transforms, load_digits_dataset

    model = AutoModelForImageClassification.from_pretrained(trained_run).eval()
    processor = AutoImageProcessor.from_pretrained(trained_run)
    assert model.config.model_type == "resnet"
    assert model.config.id2label == {index: str(index) for index in range(8)}
    assert model.config.hem_loss == "hem" and len(model.config.hem_margins) == 8

    # The saved processor reproduces the evaluation transform the model was validated with.
    images = load_digits_dataset(seed=0)["validation"]["image"][:6]
    from_processor = processor(images=images, return_tensors="pt")["pixel_values"]
    transform = build_classification_transforms(processor, train=False, label_column=None)
    from_transform = torch.as_tensor(np.stack(transform({"image": images})["pixel_values"]))
    torch.testing.assert_close(from_processor, from_transform, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert model(pixel_values=from_processor).logits.shape == (6, 8)


def test_model_card_model_index_parses_back(trained_run):
    results = json.loads((trained_run / "all_results.json").read_text())
    card = ModelCard.load(trained_run / "README.md")
    assert card.data.tags[:2] == ["hf-hem", "hem-loss"]
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.datasets is None and {result.dataset_name for result in card.data.eval_results} == {
        "sklearn-digits"
    }
    indexed = {result.metric_name: result for result in card.data.eval_results}
    assert indexed["Accuracy"].metric_type == "accuracy"
    assert indexed["Accuracy"].metric_value == pytest.approx(results["eval_accuracy"], rel=1e-5)
    rejection = indexed["Unknown-class rejection AUROC (MSP)"]
    assert rejection.metric_type == "roc_auc"
    assert rejection.metric_value == pytest.approx(results["eval_rejection_auroc_msp"], rel=1e-5)
    assert "Margin μ" in card.text and "generated_from_trainer" not in str(card)


def test_every_checkpoint_has_an_hem_card(trained_run):
    checkpoints = sorted(trained_run.glob("checkpoint-*"))
    assert [path.name for path in checkpoints] == ["checkpoint-4"]  # 64 images / batch 16, one epoch
    card = ModelCard.load(checkpoints[0] / "README.md")
    assert "hf-hem" in card.data.tags
    # The epoch's evaluation ran before the save, so the checkpoint card indexes its accuracy.
    history = json.loads((checkpoints[0] / "trainer_state.json").read_text())["log_history"]
    epoch_accuracy = next(entry["eval_accuracy"] for entry in history if "eval_accuracy" in entry)
    indexed = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert indexed["Accuracy"] == pytest.approx(epoch_accuracy, rel=1e-5)


# ------------------------------------------------------------------------------------------------ config files
@pytest.mark.parametrize(("model_type", "loss_name"), [("vit", "hem+"), ("swin", "ce"), ("convnext", "logitnorm")])
def test_yaml_config_trains_every_architecture(tmp_path, monkeypatch, model_type, loss_name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tmp_path / "run.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            model_type: {model_type}
            loss_name: {loss_name}
            unknown_classes: [8, 9]
            max_train_samples: 48
            max_eval_samples: 24
            num_train_epochs: 3
            per_device_train_batch_size: 16
            disable_tqdm: true
            output_dir: {tmp_path / "out"}
            """
        )
    )
    # Flags after the file override it.
    assert script_main(SCRIPT)([str(config), "--num_train_epochs", "1"]) == 0
    model_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert model_config["model_type"] == model_type
    assert model_config["hem_loss"] == loss_name
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # one epoch of 48 images in batches of 16, not three
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert all(key in results for key in REJECTION_KEYS)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert ("hem-loss" in card.data.tags) == (loss_name == "hem+")
    if loss_name == "hem+":
        assert "Per-class margin μ_c" in card.text


def test_parser_help_and_embedded_defaults(capsys):
    from hf_hem.pipelines import EMBEDDED_TRAINING_DEFAULTS, parse_image_classification_args

    with pytest.raises(SystemExit) as exit_info:
        parse_image_classification_args(["--help"])
    assert exit_info.value.code == 0
    assert "--unknown_classes" in capsys.readouterr().out

    _, data_args, training_args = parse_image_classification_args(["--unknown_classes", "8,9"])
    assert data_args.uses_embedded_dataset and data_args.unknown_classes == ["8", "9"]
    assert training_args.do_train and training_args.do_eval
    assert training_args.learning_rate == EMBEDDED_TRAINING_DEFAULTS["learning_rate"]
    _, _, training_args = parse_image_classification_args(["--learning_rate", "0.1"])
    assert training_args.learning_rate == 0.1
    # A real dataset keeps the TrainingArguments defaults.
    _, data_args, training_args = parse_image_classification_args(["--dataset_name", "cifar10"])
    assert not data_args.uses_embedded_dataset and training_args.learning_rate == 5e-5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset_name", "beans", "--train_dir", "x"], "exclusive"),
        (["--train_val_split", "1.5"], "train_val_split"),
        (["--model_type", "bert"], "invalid choice"),
    ],
)
def test_bad_arguments_are_rejected(argv, message, capsys):
    from hf_hem.pipelines import parse_image_classification_args

    with pytest.raises((ValueError, SystemExit)) as error_info:
        parse_image_classification_args(argv)
    text = str(error_info.value) if error_info.type is ValueError else capsys.readouterr().err
    assert message in text


def test_unknown_class_name_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"unknown class '42'.*classes: \['0', '1'"):
        run_pipeline(TASK, tmp_path, "--unknown_classes", "42")


def test_config_file_with_unknown_key_is_rejected(tmp_path):
    from hf_hem.pipelines import parse_image_classification_args

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"dataset": "beans"}))
    with pytest.raises(ValueError, match=r"unknown arguments \['dataset'\]"):
        parse_image_classification_args([str(config)])


def test_label_column_name_is_a_data_argument_and_class_counts_column_is_refused(tmp_path, monkeypatch):
    """`--label_column_name` belongs to the script's data arguments (as in transformers' example), so the label
    column it names is the one loaded; the trainer's `--class_counts_column` would be ignored here and is refused."""
    from hf_hem.pipelines import parse_image_classification_args
    from hf_hem.pipelines.image_classification import load_image_classification_data

    _, data_args, training_args = parse_image_classification_args(["--label_column_name", "fine_label"])
    assert data_args.label_column_name == "fine_label" and training_args.class_counts_column is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_image_folders(tmp_path / "data")
    model_args, data_args, _ = parse_image_classification_args(
        ["--train_dir", str(tmp_path / "data" / "train"), "--label_column_name", "fine_label"]
    )
    with pytest.raises(ValueError, match=r"column 'fine_label' not found.*Set --label_column_name"):
        load_image_classification_data(data_args, model_args)
    data_args.label_column_name = "label"
    assert load_image_classification_data(data_args, model_args).label_column == "label"
    with pytest.raises(ValueError, match="class_counts_column='label' has no effect in the pipeline scripts"):
        run_pipeline(TASK, tmp_path / "out", "--class_counts_column", "label")


# ------------------------------------------------------------------------------------------------ subprocess
def _write_image_folders(root: Path) -> None:
    """Digits 0-2 as PNG class folders (train/validation), and an OOD folder of noise images."""
    from hf_hem.data import load_digits_dataset

    digits = load_digits_dataset(seed=0)
    for split, folder in (("train", "train"), ("validation", "validation")):
        count = {label: 0 for label in range(3)}
        for example in digits[split]:
            label = example["label"]
            if label in count and count[label] < (12 if split == "train" else 6):
                path = root / folder / f"digit{label}" / f"{count[label]}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                example["image"].save(path)
                count[label] += 1
    rng = np.random.default_rng(0)
    (root / "ood").mkdir()
    from PIL import Image

    for index in range(8):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(root / "ood" / f"{index}.png")


@pytest.mark.slow
def test_script_runs_as_subprocess_on_image_folders_with_ood_set(tmp_path):
    _write_image_folders(tmp_path / "data")
    output_dir = tmp_path / "out"
    run_pipeline_process(
        TASK, output_dir,
        "--train_dir", str(tmp_path / "data" / "train"),
        "--validation_dir", str(tmp_path / "data" / "validation"),
        "--ood_dir", str(tmp_path / "data" / "ood"),
        "--model_type", "resnet", "--image_size", "32",
        "--learning_rate", "1e-3", "--horizontal_flip", "false",
    )  # fmt: skip
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["train_samples"] == 36 and results["eval_samples"] == 18 and results["eval_ood_samples"] == 8
    assert 0.0 <= results["eval_ood_auroc_msp"] <= 1.0
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "digit0", "1": "digit1", "2": "digit2"}
    card = ModelCard.load(output_dir / "README.md")
    # Local data: named after the folder above train/ in the model index, with no link to a Hub dataset.
    assert card.data.datasets is None and "huggingface.co/datasets" not in card.text
    assert {result.dataset_name for result in card.data.eval_results} == {"data"}


def test_image_folder_without_validation_split_holds_out_part_of_train(tmp_path):
    _write_image_folders(tmp_path / "data")
    output_dir = tmp_path / "out"
    flags = ["--train_dir", str(tmp_path / "data" / "train"), "--train_val_split", "0.25", "--model_type", "vit"]
    run_pipeline(TASK, output_dir, *flags)
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["train_samples"] + results["eval_samples"] == 36  # 12 images of each of 3 classes
    assert results["eval_samples"] == 9  # a stratified quarter: 3 per class
    labels = np.load(output_dir / "predictions.npz")["eval_labels"]
    assert np.bincount(labels).tolist() == [3, 3, 3]
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.eval_results[0].dataset_split == "train (25% held out)"


# ------------------------------------------------------------------------------------------------ Hub
_DOWNLOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from huggingface_hub import ModelCard
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    repo_id = sys.argv[1]
    model = AutoModelForImageClassification.from_pretrained(repo_id)
    processor = AutoImageProcessor.from_pretrained(repo_id)
    card = ModelCard.load(repo_id)
    print(json.dumps({
        "labels": [model.config.id2label[index] for index in range(model.config.num_labels)],
        "hem_loss": model.config.hem_loss,
        "size": dict(processor.size),
        "tags": card.data.tags,
        "metrics": {result.metric_name: result.metric_value for result in card.data.eval_results},
    }))
    """
)


@pytest.mark.slow
def test_push_to_loopback_hub_and_round_trip(tmp_path):
    output_dir = tmp_path / "out"
    token = "hf_pushTokenThatMustStayOutOfFiles"  # the loopback Hub accepts any token
    with LoopbackHub(tmp_path / "hub") as hub:
        env = hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home", base_env=offline_env())
        env.pop("HF_TOKEN")
        trained = run_pipeline_process(
            TASK, output_dir, "--unknown_classes", "8", "9", "--save_strategy", "epoch",
            "--push_to_hub", "true", "--hub_model_id", "user/digits-hem", "--hub_token", token, env=env,
        )  # fmt: skip
        # A fresh cache: everything below comes from the server.
        download_env = hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home_2", base_env=offline_env())
        downloaded = subprocess.run(
            [sys.executable, "-c", _DOWNLOAD_SCRIPT, "user/digits-hem"],
            env=download_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert downloaded.returncode == 0, downloaded.stderr[-4000:]
        pushed = hub.files("user/digits-hem")
        assert hub.unhandled_requests == [] and hub.server_errors == []

    result = json.loads(downloaded.stdout.strip().splitlines()[-1])
    assert result["labels"] == [str(digit) for digit in range(8)]
    assert result["hem_loss"] == "hem"
    assert result["size"] == {"height": 32, "width": 32}
    assert result["tags"][:2] == ["hf-hem", "hem-loss"]
    local = json.loads((output_dir / "all_results.json").read_text())
    assert result["metrics"]["Accuracy"] == pytest.approx(local["eval_accuracy"], rel=1e-5)
    assert result["metrics"]["Unknown-class rejection AUROC (MSP)"] == pytest.approx(
        local["eval_rejection_auroc_msp"], rel=1e-5
    )
    # The final push carries the HEM card (not the stock Trainer card) and no checkpoint folders.
    assert pushed["README.md"] == (output_dir / "README.md").read_bytes()
    assert b"generated_from_trainer" not in pushed["README.md"]
    assert pushed["model.safetensors"] == (output_dir / "model.safetensors").read_bytes()
    assert not any(path.startswith("checkpoint-") for path in pushed)
    # The token reached the server (writes need one) but no log and no pushed file, training_args.bin included.
    assert token not in trained.stdout + trained.stderr
    assert "training_args.bin" in pushed
    for path, content in pushed.items():
        assert token.encode() not in content, path


class _FailingHub(BaseHTTPRequestHandler):
    """A Hub that is down: every request gets a 500."""

    def _fail(self):
        body = b'{"error": "the Hub is down"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _fail

    def log_message(self, format, *args):
        pass


@pytest.mark.slow
def test_failed_push_keeps_the_model_and_exits_nonzero(tmp_path):
    secret = "hf_secretTokenThatMustNotLeak123"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingHub)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        env = hub_client_env(endpoint, hf_home=tmp_path / "hf_home", base_env=offline_env())
        env["HF_TOKEN"] = secret
        output_dir = tmp_path / "out"
        completed = run_pipeline_process(
            TASK, output_dir, "--push_to_hub", "true", "--hub_model_id", "user/never-pushed", env=env, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
    assert completed.returncode != 0
    assert str(output_dir.resolve()) in completed.stderr
    assert "user/never-pushed" in completed.stderr
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()
    logs = completed.stdout + completed.stderr
    assert secret not in logs
    for path in output_dir.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".json", ".txt"):
            assert secret not in path.read_text(errors="ignore"), path


# ------------------------------------------------------------------------------------------------ accelerate
@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    output_dir = tmp_path / "out"
    run_pipeline_process(TASK, output_dir, "--unknown_classes", "8", "9", two_processes=True)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    # Two processes share the 64 images: 2 steps of 2 x 16 images, not 4 steps of 16.
    assert state["global_step"] == 2
    card = ModelCard.load(output_dir / "README.md")
    assert "| `total_train_batch_size` | 32 |" in card.text
    results = json.loads((output_dir / "all_results.json").read_text())
    # Predictions are gathered from both processes: every validation image is scored exactly once.
    assert results["eval_samples"] == 40 and results["eval_unknown_samples"] == 40
    assert np.load(output_dir / "predictions.npz")["eval_logits"].shape == (40, 8)
    assert all(0.0 <= results[key] <= 1.0 for key in REJECTION_KEYS)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["vit", "swin", "convnext"])
def test_accelerate_launch_trains_every_architecture(tmp_path, model_type):
    output_dir = tmp_path / "out"
    run_pipeline_process(TASK, output_dir, "--model_type", model_type, "--loss_name", "hem", two_processes=True)
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == model_type
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2  # 2 processes x 16 images
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_samples"] == 40 and 0.0 <= results["eval_accuracy"] <= 1.0


def test_help_lists_model_data_and_training_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        script_main(SCRIPT)(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset_name", "--model_name_or_path", "--loss_name", "--learning_rate", "--output_dir"):
        assert flag in text, flag
