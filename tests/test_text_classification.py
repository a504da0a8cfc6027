"""Sequence classification with HEM beyond images: `scripts/run_text_classification.py` end to end and offline (local
files; `glue`/`sst2` downloaded from, and the model pushed to, the loopback Hub), the bad inputs it rejects, and
`HEMTrainer` on an audio classifier and a multiple-choice model.

The runs are tiny (a tiny BERT, 32 sentences, one epoch): they check that the pieces fit, not what the model learns.
"""

import io
import json
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard


try:  # tests/ may or may not become a package
    from .helpers import (
        hem_args,
        offline_env,
        pipeline_script,
        run_pipeline,
        run_pipeline_process,
        script_main,
        tiny_bert,
    )
    from .hub_server import LoopbackHub, hub_client_env
except ImportError:
    from helpers import (
        hem_args,
        offline_env,
        pipeline_script,
        run_pipeline,
        run_pipeline_process,
        script_main,
        tiny_bert,
    )
    from hub_server import LoopbackHub, hub_client_env

from hf_hem.data.embedded_text import SENTIMENT_NAMES, load_embedded_sentiment_dataset
from hf_hem.margins import margins_from_counts
from hf_hem.pipelines import text_classification as text_module


pytestmark = pytest.mark.usefixtures("single_torch_thread")

TASK = "text_classification"  # scripts/run_text_classification.py on helpers.TINY_PIPELINE_FLAGS[TASK]
SCRIPT = pipeline_script(TASK)


GLUE_README = textwrap.dedent(
    """\
    ---
    pretty_name: GLUE (General Language Understanding Evaluation benchmark)
    task_categories:
    - text-classification
    dataset_info:
    - config_name: sst2
      features:
      - name: sentence
        dtype: string
      - name: label
        dtype:
          class_label:
            names:
              '0': negative
              '1': positive
      - name: idx
        dtype: int32
      splits:
      - name: train
        num_bytes: {train_bytes}
        num_examples: 40
      - name: validation
        num_bytes: {validation_bytes}
        num_examples: 16
      - name: test
        num_bytes: {test_bytes}
        num_examples: 8
    configs:
    - config_name: sst2
      data_files:
      - split: train
        path: sst2/train-*
      - split: validation
        path: sst2/validation-*
      - split: test
        path: sst2/test-*
    ---

    # GLUE (loopback copy: the sst2 config only)
    """
)


@pytest.fixture(scope="module")
def glue_repo_files():
    """`{path: bytes}` of a tiny `nyu-mll/glue` in the Hub's layout: config `sst2` (`sentence`, `label` ClassLabel
    negative/positive, `idx`) as `sst2/{train,validation,test}-00000-of-00001.parquet`, and a README whose YAML
    declares the config's files and features as the real repo's does. The test split is unlabelled (-1), as GLUE's."""
    splits = load_embedded_sentiment_dataset(num_train=40, num_validation=24, seed=5)
    splits["test"] = splits["validation"].select(range(16, 24)).map(lambda row: {"label": -1})
    splits["validation"] = splits["validation"].select(range(16))
    files, sizes = {}, {}
    for split in ("train", "validation", "test"):
        assert splits[split].features["label"].names == ["negative", "positive"]
        buffer = io.BytesIO()
        splits[split].to_parquet(buffer)
        files[f"sst2/{split}-00000-of-00001.parquet"] = buffer.getvalue()
        sizes[f"{split}_bytes"] = len(buffer.getvalue())
    files["README.md"] = GLUE_README.format(**sizes).encode()
    return files


# ------------------------------------------------------------------------------------------------ the script
@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    return run_pipeline(TASK, tmp_path_factory.mktemp("sentiment") / "bert-hem")


def test_embedded_run_saves_a_plain_checkpoint_margins_and_card(embedded_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    results = json.loads((embedded_run / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_balanced_accuracy", "eval_macro_f1", "eval_ece"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["train_samples"] == 32 and results["eval_samples"] == 16
    model = AutoModelForSequenceClassification.from_pretrained(embedded_run)
    tokenizer = AutoTokenizer.from_pretrained(embedded_run)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    train = text_module.truncate(load_embedded_sentiment_dataset(seed=42)["train"], 32, 42)
    assert model.config.hem_class_counts == np.bincount(train["label"], minlength=2).tolist()
    with torch.no_grad():
        assert model(**tokenizer("the film is great", return_tensors="pt")).logits.shape == (1, 2)
    stored = np.load(embedded_run / "predictions.npz")
    accuracy = float((stored["eval_logits"].argmax(1) == stored["eval_labels"]).mean())
    assert accuracy == pytest.approx(results["eval_accuracy"])

    card = ModelCard.load(embedded_run / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.tags[:2] == ["hf-hem", "hem-loss"]
    indexed = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert indexed["accuracy"] == pytest.approx(results["eval_accuracy"], rel=1e-5)
    assert "AutoModelForSequenceClassification" in card.text and "AutoTokenizer" in card.text
    assert "from PIL import Image" not in card.text


@pytest.mark.parametrize("suffix", ["csv", "json", "parquet"])
def test_sentence_pairs_from_local_files_train_and_load_back(tmp_path, suffix):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for split, count, seed in (("train", 24, 1), ("validation", 8, 2)):
        rows = load_embedded_sentiment_dataset(num_train=count, num_validation=2, seed=seed)["train"]
        # Class names as strings and a second text column: a sentence-pair task from files.
        frame = datasets.Dataset.from_dict(
            {
                "premise": rows["sentence"],
                "hypothesis": ["the review is about a film"] * count,
                "verdict": [SENTIMENT_NAMES[label] for label in rows["label"]],
            }
        )
        path = tmp_path / f"{split}.{suffix}"
        {"json": frame.to_json, "parquet": frame.to_parquet, "csv": frame.to_csv}[suffix](str(path))
    output_dir = tmp_path / "out"
    flags = ["--train_file", str(tmp_path / f"train.{suffix}"), "--validation_file"]
    flags += [str(tmp_path / f"validation.{suffix}"), "--text_column_names", "premise,hypothesis"]
    run_pipeline(TASK, output_dir, *flags, "--label_column_name", "verdict")
    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}  # sorted class names
    encoded = tokenizer("a great film", "the review is about a film", return_tensors="pt")
    assert encoded["token_type_ids"][0, -1] == 1  # the pair reached the model as two segments
    with torch.no_grad():
        assert model(**encoded).logits.shape == (1, 2)
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.datasets is None and {r.dataset_name for r in card.data.eval_results} == {tmp_path.name}


def test_bad_inputs_name_the_column_and_the_expected_shape(tmp_path):
    path = tmp_path / "train.json"
    datasets.Dataset.from_dict({"sentence": ["a b", "c"], "label": [[0, 1], [1]]}).to_json(str(path))
    with pytest.raises(ValueError, match=r"'label' holds a list of labels per row.*\(num_rows,\)"):
        run_pipeline(TASK, tmp_path / "a", "--train_file", str(path))
    datasets.Dataset.from_dict({"sentence": ["a b", "c"], "label": [0.5, 1.5]}).to_json(str(path))
    with pytest.raises(ValueError, match="'label' holds floats"):
        run_pipeline(TASK, tmp_path / "b", "--train_file", str(path))
    with pytest.raises(ValueError, match=r"text column\(s\) \['body'\] not found"):
        run_pipeline(TASK, tmp_path / "c", "--train_file", str(path), "--text_column_names", "body")
    with pytest.raises(ValueError, match="one column or two"):
        text_module.parse_text_classification_args(["--text_column_names", "a,b,c", "--output_dir", "x"])


def test_trainer_rejects_list_labels_and_labels_beyond_num_labels():
    from hf_hem.trainer import HEMTrainer

    model = tiny_bert("SequenceClassification", num_labels=2)
    lists = datasets.Dataset.from_dict({"input_ids": [[5, 6], [7]], "label": [[0, 1], [1]]})
    with pytest.raises(ValueError, match=r"column 'label' holds a list of labels per row.*\(num_rows,\)"):
        HEMTrainer(model=model, args=hem_args("unused"), train_dataset=lists)
    too_many = datasets.Dataset.from_dict({"input_ids": [[5, 6], [7, 8]], "label": [0, 4]})
    with pytest.raises(ValueError, match=r"column 'label'.*\[4\] outside \[0, 2\).*num_labels=2"):
        HEMTrainer(model=model, args=hem_args("unused"), train_dataset=too_many)


# ------------------------------------------------------------------------------------------------ Hub round trip
_DOWNLOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from huggingface_hub import ModelCard, snapshot_download
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = snapshot_download(sys.argv[1])
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        shape = list(model(**tokenizer("a superb film", return_tensors="pt")).logits.shape)
    card = ModelCard.load(sys.argv[1])
    print(json.dumps({
        "class": type(model).__name__,
        "labels": [model.config.id2label[index] for index in range(model.config.num_labels)],
        "hem_loss": model.config.hem_loss,
        "shape": shape,
        "datasets": card.data.datasets,
        "metrics": {result.metric_type: result.metric_value for result in card.data.eval_results},
    }))
    """
)


@pytest.mark.slow
def test_glue_sst2_from_the_loopback_hub_trains_pushes_and_downloads(glue_repo_files, tmp_path):
    """`--dataset_name glue --dataset_config_name sst2`, as a user types it: the script asks the Hub for the dataset
    (`glue` redirects to `nyu-mll/glue`), loads the sst2 config's parquet shards with their ClassLabel names, trains,
    pushes, and the pushed repo downloads as a plain transformers checkpoint."""
    output_dir = tmp_path / "out"
    hf_home = tmp_path / "hf_home"
    with LoopbackHub(tmp_path / "hub") as hub:
        hub.add_dataset("nyu-mll/glue", glue_repo_files, aliases=("glue",))
        # HF_HOME and HF_DATASETS_CACHE under tmp_path: nothing reaches the user's caches.
        env = hub_client_env(hub.endpoint, hf_home=hf_home, base_env=offline_env())
        env["HF_DATASETS_CACHE"] = str(hf_home / "datasets")
        run_pipeline_process(
            TASK, output_dir, "--dataset_name", "glue", "--dataset_config_name", "sst2",
            "--push_to_hub", "true", "--hub_model_id", "user/bert-hem-sst2", env=env,
        )  # fmt: skip
        download_env = hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home_2", base_env=offline_env())
        downloaded = subprocess.run(
            [sys.executable, "-c", _DOWNLOAD, "user/bert-hem-sst2"],
            env=download_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert downloaded.returncode == 0, downloaded.stderr[-4000:]
        pushed = hub.files("user/bert-hem-sst2")
        served = [(method, path, status) for method, path, status in hub.requests if "/datasets/" in path]
        assert hub.unhandled_requests == [] and hub.server_errors == []

    # The dataset came through the dataset routes: the bare name redirected, the card and the three sst2 shards
    # downloaded from the canonical repo.
    assert ("GET", "/api/datasets/glue", 307) in served and ("GET", "/api/datasets/nyu-mll/glue", 200) in served
    resolved = [path.split("/resolve/")[1] for method, path, _ in served if method == "GET" and "/resolve/" in path]
    shards = {f"sst2/{split}-00000-of-00001.parquet" for split in ("train", "validation", "test")}
    assert {path.split("/", 1)[1] for path in resolved} == {"README.md"} | shards
    assert any("/api/datasets/nyu-mll/glue/tree/" in path for _, path, _ in served)
    assert (hf_home / "datasets" / "nyu-mll___glue" / "sst2").is_dir()
    # The ClassLabel names of the README's features reached the script, which took its classes from them.
    run = json.loads((output_dir / "hem_run.json").read_text())
    assert run["text_columns"] == ["sentence"] and run["classes"] == ["negative", "positive"]
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.datasets == ["nyu-mll/glue"]
    accuracy = next(result for result in card.data.eval_results if result.metric_type == "accuracy")
    assert (accuracy.dataset_name, accuracy.dataset_config, accuracy.dataset_split) == (
        "nyu-mll/glue",
        "sst2",
        "validation",
    )

    result = json.loads(downloaded.stdout.strip().splitlines()[-1])
    assert result["class"] == "BertForSequenceClassification" and result["labels"] == ["negative", "positive"]
    assert result["hem_loss"] == "hem" and result["shape"] == [1, 2] and result["datasets"] == ["nyu-mll/glue"]
    local = json.loads((output_dir / "all_results.json").read_text())
    assert local["train_samples"] == 32 and local["eval_samples"] == 16
    assert result["metrics"]["accuracy"] == pytest.approx(local["eval_accuracy"], rel=1e-5)
    assert {"tokenizer.json", "model.safetensors", "README.md"} <= set(pushed)
    assert b"generated_from_trainer" not in pushed["README.md"]


# ------------------------------------------------------------------------------------------------ other heads
def _train_and_check(model, dataset, tmp_path, loss_name, steps=6):
    from transformers.data.data_collator import default_data_collator

    from hf_hem.trainer import HEMTrainer

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = hem_args(
        tmp_path / loss_name,
        loss_name=loss_name,
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        margin_scale=20.0,
    )
    trainer = HEMTrainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps and all(np.isfinite(losses)), losses
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert changed, "no parameter was updated"
    return losses


@pytest.mark.parametrize("loss_name", ["hem", "hem+", "ce"])
def test_hem_trainer_trains_an_audio_classifier(tmp_path, loss_name):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=8,
        num_labels=3,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )
    model = Wav2Vec2ForSequenceClassification(config)
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 3
    waveforms = rng.normal(size=(24, 800)).astype(np.float32) * (1 + labels[:, None])  # loudness = class
    dataset = datasets.Dataset.from_dict({"input_values": waveforms, "label": labels}).with_format("torch")
    _train_and_check(model, dataset, tmp_path, loss_name)


def tiny_multiple_choice(num_labels: int = 2):
    """A `BertForMultipleChoice` with BERT's default `num_labels=2`, whatever the number of choices of the data."""
    return tiny_bert("MultipleChoice", num_labels=num_labels, vocab_size=32, max_position_embeddings=16)


def multiple_choice_dataset(num_choices: int = 4, num_rows: int = 24, labels=None):
    """Rows of `num_choices` token sequences; the right choice holds token 31 (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    labels = np.arange(num_rows) % num_choices if labels is None else np.asarray(labels)
    input_ids = rng.integers(5, 31, size=(len(labels), num_choices, 6))
    input_ids[np.arange(len(labels)), labels.clip(0, num_choices - 1), 1] = 31
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "label": labels}
    ).with_format("torch")


@pytest.mark.parametrize("loss_name", ["hem", "hem+", "ce"])
def test_hem_trainer_trains_a_multiple_choice_model(tmp_path, loss_name):
    from hf_hem.trainer import HEMTrainer

    num_choices = 4
    # config.num_labels (2, BERT's default) is not the number of choices: the classes are the 4 choices.
    model = tiny_multiple_choice(num_labels=2)
    # Unbalanced answer positions, so that per-choice counts and HEM+ margins differ between choices.
    labels = np.array([0] * 10 + [1] * 7 + [2] * 5 + [3] * 2)
    dataset = multiple_choice_dataset(num_choices, labels=labels)
    with torch.no_grad():
        assert model(input_ids=dataset[:2]["input_ids"]).logits.shape == (2, num_choices)
    counted = HEMTrainer(model=model, args=hem_args(tmp_path / "count", loss_name=loss_name), train_dataset=dataset)
    np.testing.assert_array_equal(counted.class_counts, [10, 7, 5, 2])
    if loss_name != "ce":
        expected = margins_from_counts([10, 7, 5, 2], per_class=loss_name == "hem+")
        torch.testing.assert_close(counted.margins, expected)
        assert counted.margins.shape == (num_choices,)
        assert (len(set(counted.margins.tolist())) == num_choices) == (loss_name == "hem+")
    losses = _train_and_check(model, dataset.shuffle(seed=0), tmp_path, loss_name, steps=9)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_multiple_choice_labels_beyond_the_choices_name_the_value_and_the_choices():
    from hf_hem.trainer import HEMTrainer

    # Label 4 with 4 choices: out of range, although config.num_labels is 5 here.
    dataset = multiple_choice_dataset(4, labels=[0, 1, 2, 3, 4, 1])
    with pytest.raises(ValueError, match=r"\[4\] outside \[0, 4\).*multiple-choice head.*4 choices.*\[0, 4\)"):
        HEMTrainer(model=tiny_multiple_choice(num_labels=5), args=hem_args("unused"), train_dataset=dataset)
    one_sequence = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9, 10]], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"input_ids of shape \(num_choices, seq_len\).*single sequence of length 3"):
        HEMTrainer(model=tiny_multiple_choice(), args=hem_args("unused"), train_dataset=one_sequence)
    # Without rows to read the choices from, class_counts give them (one count per choice position).
    trainer = HEMTrainer(model=tiny_multiple_choice(), args=hem_args("unused"), class_counts=[3, 3, 2, 1, 1])
    assert trainer.margins.shape == (5,)


def test_help_lists_the_text_flags(capsys):
    with pytest.raises(SystemExit):
        script_main(SCRIPT)(["--help"])
    text = capsys.readouterr().out
    for flag in ("--text_column_names", "--label_column_name", "--max_seq_length", "--tokenizer_name", "--loss_name"):
        assert flag in text, flag
