"""Token classification with HEM: the entity metrics, the label alignment, `HEMTrainer` on `(N, L, C)` logits, and
`scripts/run_token_classification.py` end to end and offline (local files; `conll2003` downloaded from, and the
model pushed to, the loopback Hub on two CPU processes).

The runs are tiny (a tiny BERT, 32 sentences, one epoch): they check that the pieces fit, not what the model learns.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard


try:  # tests/ may or may not become a package
    from .helpers import (
        TESTS_DIR,
        hem_args,
        launch_two_processes,
        offline_env,
        pipeline_script,
        run_pipeline,
        run_pipeline_process,
        script_main,
        tiny_bert,
    )
    from .hub_server import DUMMY_TOKEN, LoopbackHub, hub_client_env
except ImportError:
    from helpers import (
        TESTS_DIR,
        hem_args,
        launch_two_processes,
        offline_env,
        pipeline_script,
        run_pipeline,
        run_pipeline_process,
        script_main,
        tiny_bert,
    )
    from hub_server import DUMMY_TOKEN, LoopbackHub, hub_client_env

from hf_hem import hem_loss
from hf_hem.counting import resolve_class_counts
from hf_hem.data.embedded_text import (
    CONLL_NER_NAMES,
    SPECIAL_TOKENS,
    build_wordpiece_tokenizer,
    load_embedded_ner_dataset,
)
from hf_hem.margins import margins_from_counts
from hf_hem.metrics.token_classification import entity_spans, token_classification_metrics
from hf_hem.pipelines import token_classification as token_module
from hf_hem.pipelines.token_classification import align_labels_with_tokens


pytestmark = pytest.mark.usefixtures("single_torch_thread")

TASK = "token_classification"  # scripts/run_token_classification.py on helpers.TINY_PIPELINE_FLAGS[TASK]
SCRIPT = pipeline_script(TASK)
DDP_SCRIPT = TESTS_DIR / "scripts" / "ddp_token_check.py"
POS_NAMES = ["NN", "VB", "DT", "."]
CHUNK_NAMES = ["O", "B-NP", "I-NP"]


def conll_features():
    """The `datasets.Features` of `conll2003` on the Hub (`pos_tags`/`chunk_tags` with fewer names)."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.List(datasets.Value("string")),
            "pos_tags": datasets.List(datasets.ClassLabel(names=POS_NAMES)),
            "chunk_tags": datasets.List(datasets.ClassLabel(names=CHUNK_NAMES)),
            "ner_tags": datasets.List(datasets.ClassLabel(names=list(CONLL_NER_NAMES))),
        }
    )


def conll_split(num_rows: int, seed: int) -> datasets.Dataset:
    rows = load_embedded_ner_dataset(num_train=num_rows, num_validation=1, seed=seed)["train"].to_dict()
    rows["pos_tags"] = [[index % 4 for index in range(len(tokens))] for tokens in rows["tokens"]]
    rows["chunk_tags"] = [[index % 3 for index in range(len(tokens))] for tokens in rows["tokens"]]
    return datasets.Dataset.from_dict(rows, features=conll_features())


def conll_readme(split_bytes: dict[str, int]) -> str:
    """The dataset card of the loopback `eriktks/conll2003`: features as `sequence:`/`class_label:` YAML, as the
    real card writes them, and the default config's parquet files."""
    tag_yaml = {
        name: "\n".join(f"          '{index}': {tag}" for index, tag in enumerate(tags))
        for name, tags in (("pos_tags", POS_NAMES), ("chunk_tags", CHUNK_NAMES), ("ner_tags", CONLL_NER_NAMES))
    }
    features = "\n".join(
        f"  - name: {name}\n    sequence:\n      class_label:\n        names:\n{tags}"
        for name, tags in tag_yaml.items()
    )
    splits = "\n".join(
        f"  - name: {split}\n    num_bytes: {size}\n    num_examples: {rows}"
        for (split, size), rows in zip(split_bytes.items(), (40, 16))
    )
    return (
        "---\nlanguage:\n- en\npretty_name: CoNLL-2003\ndataset_info:\n  features:\n  - name: id\n    dtype: string\n"
        f"  - name: tokens\n    sequence: string\n{features}\n  splits:\n{splits}\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: validation\n    path: data/validation-*\n---\n\n# CoNLL-2003 (loopback copy)\n"
    )


@pytest.fixture(scope="module")
def conll_repo_files():
    """`{path: bytes}` of a tiny `eriktks/conll2003` in the Hub's layout (`data/train-*.parquet`,
    `data/validation-*.parquet`, and a README whose YAML declares the ClassLabel tag names)."""
    files, sizes = {}, {}
    for split, rows, seed in (("train", 40, 1), ("validation", 16, 2)):
        buffer = io.BytesIO()
        conll_split(rows, seed=seed).to_parquet(buffer)
        files[f"data/{split}-00000-of-00001.parquet"] = buffer.getvalue()
        sizes[split] = len(buffer.getvalue())
    files["README.md"] = conll_readme(sizes).encode()
    return files


def token_batch_dataset(num_rows: int = 8, length: int = 10, num_labels: int = 5, seed: int = 0):
    """Pre-padded rows: `input_ids`, `attention_mask` and `labels` with -100 at special, padding and sub-tokens."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, 64, size=(num_rows, length))
    attention = np.ones((num_rows, length), dtype=np.int64)
    labels = rng.integers(0, num_labels, size=(num_rows, length))
    labels[:, 0] = -100  # [CLS]
    for row in range(num_rows):
        pad = int(rng.integers(0, 4))
        if pad:
            attention[row, -pad:] = 0
            input_ids[row, -pad:] = 0
            labels[row, -pad:] = -100
        labels[row, rng.integers(1, length - pad)] = -100  # a later sub-token
    return datasets.Dataset.from_dict({"input_ids": input_ids, "attention_mask": attention, "labels": labels})


# ------------------------------------------------------------------------------------------------ entity metrics
def test_entity_spans_follow_conll_conventions():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC", "I-ORG"]) == [("PER", 0, 2), ("LOC", 3, 4), ("ORG", 4, 5)]
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]
    assert entity_spans(["I-LOC", "I-LOC", "O", "I-LOC"]) == [("LOC", 0, 2), ("LOC", 3, 4)]  # IOB1
    assert entity_spans(["S-MISC", "B-ORG", "E-ORG", "I-ORG"]) == [("MISC", 0, 1), ("ORG", 1, 3), ("ORG", 3, 4)]
    assert entity_spans(["PER", "PER", "O"]) == [("PER", 0, 2)]  # no prefix: read as I-
    assert entity_spans(["O", "O"]) == [] and entity_spans([]) == []


def test_entity_metrics_match_a_hand_count():
    references = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],  # PER(0,2), LOC(3,4)
        ["B-ORG", "I-ORG", "I-ORG", "O"],  # ORG(0,3)
        ["O", "B-MISC"],  # MISC(1,2)
    ]
    predictions = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right, ORG(3,4) wrong
        ["B-ORG", "I-ORG", "O", "O"],  # ORG(0,2): wrong end
        ["O", "B-MISC"],  # MISC right
    ]
    scores = token_classification_metrics(references, predictions)
    # 2 correct of 4 predicted and of 4 true entities; 9 of 11 tokens right.
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["accuracy"] == pytest.approx(9 / 11)
    assert scores["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert scores["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert scores["per_type"]["ORG"]["precision"] == 0.0 and scores["per_type"]["ORG"]["number"] == 1
    # One entity missed out of two, nothing wrongly predicted: P = 1, R = 1/2, F1 = 2/3.
    scores = token_classification_metrics([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    assert (scores["precision"], scores["recall"]) == (1.0, 0.5) and scores["f1"] == pytest.approx(2 / 3)
    nothing = token_classification_metrics([["O", "O"]], [["O", "O"]])
    assert (nothing["precision"], nothing["recall"], nothing["f1"], nothing["accuracy"]) == (0.0, 0.0, 0.0, 1.0)


def test_entity_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="sequence 0 has 2 reference and 1 predicted"):
        token_classification_metrics([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="1 reference and 2 predicted sequences"):
        token_classification_metrics([["O"]], [["O"], ["O"]])


# ------------------------------------------------------------------------------------------------ alignment
def test_labels_go_to_the_first_sub_token_unless_label_all_tokens():
    word_ids = [None, 0, 0, 0, 1, 2, 2, None]
    tags = [1, 0, 5]  # B-PER, O, B-LOC
    assert align_labels_with_tokens(word_ids, tags) == [-100, 1, -100, -100, 0, 5, -100, -100]
    continuation = token_module._continuation_ids(list(CONLL_NER_NAMES))
    assert continuation == [0, 2, 2, 4, 4, 6, 6, 8, 8]  # B-X -> I-X, everything else unchanged
    assert align_labels_with_tokens(word_ids, tags, continuation) == [-100, 1, 2, 2, 0, 5, 6, -100]


def test_wordpiece_tokenizer_splits_rare_words_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    words = load_embedded_ner_dataset(num_train=64, num_validation=1)["train"]["tokens"]
    tokenizer = build_wordpiece_tokenizer(words, vocab_size=120)
    rare = "Krzysztofowicz"  # not a training word; its letters are
    assert rare not in tokenizer.get_vocab()
    encoded = tokenizer([rare, "Wojciechowski", "visited", "Paris"], is_split_into_words=True)
    word_ids = encoded.word_ids()
    assert word_ids[0] is None and word_ids[-1] is None
    assert word_ids.count(0) > 1  # a rare name is split into pieces
    assert tokenizer.unk_token_id not in encoded["input_ids"]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("Paris", "Berlin")["input_ids"] == tokenizer("Paris", "Berlin")["input_ids"]
    assert reloaded("Paris", "Berlin")["token_type_ids"][-2:] == [1, 1]


@pytest.mark.slow  # three fresh Python processes
def test_wordpiece_tokenizer_is_the_same_in_every_process():
    """A seeded run must repeat: the vocabulary may not depend on a process's hash seeds (the `tokenizers` trainer's
    tie-breaking did, so three processes gave three vocabularies of the same texts)."""
    script = (
        "import hashlib, json\n"
        "from hf_hem.data.embedded_text import build_wordpiece_tokenizer, load_embedded_ner_dataset\n"
        "words = load_embedded_ner_dataset(seed=0)['train']['tokens']\n"
        "for size in (120, 1000):\n"
        "    vocab = build_wordpiece_tokenizer(words, vocab_size=size).get_vocab()\n"
        "    print(hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest())\n"
    )
    env = offline_env()
    outputs = {
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(outputs) == 1, outputs
    words = load_embedded_ner_dataset(seed=0)["train"]["tokens"]
    vocab = build_wordpiece_tokenizer(words, vocab_size=120).get_vocab()
    assert len(vocab) == 120 and [vocab[token] for token in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))


# ------------------------------------------------------------------------------------------------ HEMTrainer
def test_nested_label_counts_equal_a_hand_count():
    dataset = token_batch_dataset(num_rows=12, num_labels=5)
    hand = np.zeros(5, dtype=np.int64)
    for row in dataset["labels"]:
        for label in row:
            if label != -100:
                hand[label] += 1
    counted = resolve_class_counts("label_column", 5, dataset=dataset, label_column="labels", nested=True)
    np.testing.assert_array_equal(counted.counts, hand)
    from hf_hem.trainer import HEMTrainer

    trainer = HEMTrainer(
        model=tiny_bert("TokenClassification", num_labels=5), args=hem_args("unused"), train_dataset=dataset
    )
    np.testing.assert_array_equal(trainer.class_counts, hand)
    # S = labelled tokens: every token is one sample of the loss.
    torch.testing.assert_close(trainer.margins, margins_from_counts(hand, per_class=False))


def test_trainer_loss_equals_per_token_hem_on_the_labelled_tokens(tmp_path):
    from transformers.data.data_collator import default_data_collator

    from hf_hem.trainer import HEMTrainer

    dataset = token_batch_dataset(num_rows=8, num_labels=5).with_format("torch")
    batch = default_data_collator([dataset[index] for index in range(8)])
    model = tiny_bert("TokenClassification", num_labels=5)
    args = hem_args(
        tmp_path,
        margin_scale=20.0,
        per_device_train_batch_size=8,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        optim="sgd",
        learning_rate=0.1,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
    )
    trainer = HEMTrainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    margin = float(trainer.margins[0])

    def reference():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        keep = batch["labels"].reshape(-1) != -100
        return hem_loss(logits.reshape(-1, 5)[keep], batch["labels"].reshape(-1)[keep], margin)

    model.eval()
    with torch.no_grad():
        expected = reference()
        loss = trainer.compute_loss(model, dict(batch))
    assert float(expected) > 0
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)

    # One training step optimises exactly that loss: same logged loss, same gradients.
    model.train()
    model.zero_grad()
    reference().backward()
    expected_gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    recorded = {}

    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            recorded.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    model.zero_grad()
    trainer.add_callback(Recorder())
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
    for name, gradient in expected_gradients.items():
        torch.testing.assert_close(recorded[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_labels_with_more_classes_than_num_labels_name_the_column():
    from hf_hem.trainer import HEMTrainer

    dataset = token_batch_dataset(num_rows=4, num_labels=7)
    with pytest.raises(ValueError, match=r"token labels of column 'labels'.*outside \[0, 5\).*num_labels=5"):
        HEMTrainer(
            model=tiny_bert("TokenClassification", num_labels=5), args=hem_args("unused"), train_dataset=dataset
        )


def test_scalar_label_column_for_a_token_model_is_rejected_by_the_trainer():
    from hf_hem.trainer import HEMTrainer

    dataset = datasets.Dataset.from_dict({"input_ids": [[5, 6], [7, 8]], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"column 'label' holds one label per row.*\(num_rows, num_tokens\)"):
        HEMTrainer(
            model=tiny_bert("TokenClassification", num_labels=5), args=hem_args("unused"), train_dataset=dataset
        )


# ------------------------------------------------------------------------------------------------ the script
@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    return run_pipeline(TASK, tmp_path_factory.mktemp("ner") / "bert-hem")


def test_embedded_run_saves_a_plain_checkpoint_with_token_margins_and_card(embedded_run):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    results = json.loads((embedded_run / "all_results.json").read_text())
    for key in ("eval_precision", "eval_recall", "eval_f1", "eval_accuracy"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["train_samples"] == 32 and results["eval_samples"] == 16

    model = AutoModelForTokenClassification.from_pretrained(embedded_run)
    tokenizer = AutoTokenizer.from_pretrained(embedded_run)
    assert [model.config.id2label[index] for index in range(9)] == list(CONLL_NER_NAMES)
    # The margins were counted from the aligned token labels: first sub-tokens only, by hand here.
    train = token_module.truncate(load_embedded_ner_dataset(seed=42)["train"], 32, 42)
    hand = np.zeros(9, dtype=np.int64)
    for words, tags in zip(train["tokens"], train["ner_tags"]):
        word_ids = tokenizer(words, is_split_into_words=True, truncation=True, max_length=32).word_ids()
        seen = set()
        for word in word_ids:
            if word is not None and word not in seen:
                seen.add(word)
                hand[tags[word]] += 1
    assert model.config.hem_class_counts == hand.tolist()
    assert model.config.hem_num_margin_samples is None  # S = sum of the counts: labelled training tokens
    inputs = tokenizer(["John", "Smith", "visited", "Paris"], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, inputs["input_ids"].shape[1], 9)

    card = ModelCard.load(embedded_run / "README.md")
    assert card.data.pipeline_tag == "token-classification"
    indexed = {result.metric_type: result.metric_value for result in card.data.eval_results}
    for key in ("precision", "recall", "f1", "accuracy"):
        assert indexed[key] == pytest.approx(results[f"eval_{key}"], rel=1e-5)
    assert "AutoModelForTokenClassification" in card.text and "is_split_into_words=True" in card.text


@pytest.mark.parametrize("suffix", ["json", "parquet", "csv"])
def test_local_files_train_and_load_back(tmp_path, suffix):
    from transformers import AutoModelForTokenClassification

    names = list(CONLL_NER_NAMES)
    for split, count, seed in (("train", 24, 3), ("validation", 8, 4)):
        rows = load_embedded_ner_dataset(num_train=count, num_validation=1, seed=seed)["train"].to_dict()
        # Tag names as strings: files carry no ClassLabel.
        rows["ner_tags"] = [[names[tag] for tag in tags] for tags in rows["ner_tags"]]
        if suffix == "csv":  # one string of words / tags per row
            rows = {
                "tokens": [" ".join(t) for t in rows["tokens"]],
                "ner_tags": [" ".join(t) for t in rows["ner_tags"]],
            }
        frame = datasets.Dataset.from_dict(rows)
        path = tmp_path / f"{split}.{suffix}"
        {"json": frame.to_json, "parquet": frame.to_parquet, "csv": frame.to_csv}[suffix](str(path))
    output_dir = tmp_path / "out"
    flags = ["--train_file", str(tmp_path / f"train.{suffix}"), "--validation_file"]
    flags += [str(tmp_path / f"validation.{suffix}"), "--label_all_tokens", "true"]
    run_pipeline(TASK, output_dir, *flags)
    model = AutoModelForTokenClassification.from_pretrained(output_dir)
    # The files hold tag names, not ids: the model's tags are the names that occur, sorted.
    tags = list(model.config.label2id)
    assert tags == sorted(tags) and "O" in tags and set(tags) <= set(names)
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.datasets is None  # local files: named, not linked
    assert {result.dataset_name for result in card.data.eval_results} == {tmp_path.name}


def test_scalar_tag_column_and_missing_columns_are_rejected(tmp_path):
    path = tmp_path / "train.json"
    datasets.Dataset.from_dict({"tokens": [["a", "b"], ["c"]], "ner_tags": [0, 1]}).to_json(str(path))
    with pytest.raises(ValueError, match=r"'ner_tags' holds one label per row.*\(num_rows, num_words\)"):
        run_pipeline(TASK, tmp_path / "out", "--train_file", str(path))
    with pytest.raises(ValueError, match=r"tag column 'tags' not found.*'ner_tags'"):
        run_pipeline(TASK, tmp_path / "o", "--train_file", str(path), "--label_column_name", "tags")


# ------------------------------------------------------------------------------------------------ Hub round trip
_DOWNLOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from huggingface_hub import ModelCard, snapshot_download
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    folder = snapshot_download(sys.argv[1])
    model = AutoModelForTokenClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["John", "Smith", "visited", "Paris"], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        shape = list(model(**inputs).logits.shape)
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
def test_conll2003_from_the_loopback_hub_on_two_processes_pushes_a_plain_checkpoint(
    conll_repo_files, tmp_path, hub_reachable
):
    """The dataset is uploaded as a user would (`create_repo(repo_type="dataset")` + a commit), then
    `accelerate launch` runs the script on two CPU processes with `--dataset_name eriktks/conll2003`: both ranks
    load it from the Hub, train, and the main one pushes; the pushed repo downloads as a plain checkpoint."""
    output_dir = tmp_path / "out"
    hf_home = tmp_path / "hf_home"
    with LoopbackHub(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.endpoint, token=DUMMY_TOKEN)
        api.create_repo("eriktks/conll2003", repo_type="dataset")
        operations = [CommitOperationAdd(path, content) for path, content in conll_repo_files.items()]
        api.create_commit("eriktks/conll2003", operations, commit_message="Upload conll2003", repo_type="dataset")
        uploaded = hub.files("eriktks/conll2003", repo_type="dataset")
        assert {path: uploaded[path] for path in conll_repo_files} == conll_repo_files
        hub.requests.clear()
        # HF_HOME and HF_DATASETS_CACHE under tmp_path: nothing reaches the user's caches.
        env = hub_client_env(hub.endpoint, hf_home=hf_home, base_env=offline_env())
        env["HF_DATASETS_CACHE"] = str(hf_home / "datasets")
        run_pipeline_process(
            TASK, output_dir, "--dataset_name", "eriktks/conll2003", "--loss_name", "hem+",
            "--push_to_hub", "true", "--hub_model_id", "user/bert-hem-conll2003", env=env, two_processes=True,
            timeout=300,
        )  # fmt: skip
        download_env = hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home_2", base_env=offline_env())
        downloaded = subprocess.run(
            [sys.executable, "-c", _DOWNLOAD, "user/bert-hem-conll2003"],
            env=download_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert downloaded.returncode == 0, downloaded.stderr[-4000:]
        pushed = hub.files("user/bert-hem-conll2003")
        served = [(method, path, status) for method, path, status in hub.requests if "/datasets/" in path]
        assert hub.unhandled_requests == [] and hub.server_errors == []

    # The data came through the dataset routes (info, tree listing, downloads of the card and both shards).
    for route in ("/api/datasets/eriktks/conll2003/revision/", "/api/datasets/eriktks/conll2003/tree/"):
        assert any(path.startswith(route) and status == 200 for _, path, status in served), route
    resolved = {path.split("/resolve/")[1].split("/", 1)[1] for method, path, _ in served if method == "GET"
                and "/resolve/" in path}  # fmt: skip
    assert resolved == {"README.md", "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"}
    assert (hf_home / "datasets" / "eriktks___conll2003").is_dir()
    # Two processes share the 32 sentences: one step of 2 x 16.
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 1
    # The ClassLabel names of the README's features became the model's tags.
    config = json.loads((output_dir / "config.json").read_text())
    assert [config["id2label"][str(index)] for index in range(9)] == list(CONLL_NER_NAMES)
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.datasets == ["eriktks/conll2003"]
    indexed = {result.metric_type: result for result in card.data.eval_results}
    assert set(indexed) == {"precision", "recall", "f1", "accuracy"}
    assert indexed["f1"].dataset_name == "eriktks/conll2003" and indexed["f1"].dataset_split == "validation"

    result = json.loads(downloaded.stdout.strip().splitlines()[-1])
    assert result["class"] == "BertForTokenClassification" and result["labels"] == list(CONLL_NER_NAMES)
    assert result["hem_loss"] == "hem+" and result["shape"][0] == 1 and result["shape"][2] == 9
    assert result["datasets"] == ["eriktks/conll2003"]
    local = json.loads((output_dir / "all_results.json").read_text())
    for key in ("precision", "recall", "f1"):
        assert result["metrics"][key] == pytest.approx(local[f"eval_{key}"], rel=1e-5)
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors", "README.md"} <= set(pushed)
    assert b"generated_from_trainer" not in pushed["README.md"]


# ------------------------------------------------------------------------------------------------ two processes
@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    model = tiny_bert("TokenClassification", num_labels=5)
    model.config.to_json_file(tmp_path / "config.json")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    # Rows of different numbers of labelled tokens, so the ranks' counts differ and only the global count is right.
    dataset = token_batch_dataset(num_rows=8, num_labels=5, seed=3)
    data = {key: torch.tensor(dataset[key]) for key in ("input_ids", "attention_mask", "labels")}
    torch.save(data, tmp_path / "data.pt")
    launch_two_processes(DDP_SCRIPT, tmp_path)

    counts = np.bincount(data["labels"][data["labels"] != -100].numpy(), minlength=5)
    for case, loss_name in (("hem", "hem"), ("hem_plus", "hem+"), ("ce", "ce")):
        saved = torch.load(tmp_path / f"{case}.pt")
        assert saved["world_size"] == 2
        ranks = [torch.load(tmp_path / f"{case}_rank{rank}_labels.pt") for rank in (0, 1)]
        assert sorted(torch.cat(ranks).reshape(-1).tolist()) == sorted(data["labels"].reshape(-1).tolist())
        model.train()
        model.zero_grad()
        logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        keep = data["labels"].reshape(-1) != -100
        flat_logits, flat_labels = logits.reshape(-1, 5)[keep], data["labels"].reshape(-1)[keep]
        margins = margins_from_counts(counts, scale=4.0, per_class=loss_name == "hem+")
        if loss_name == "ce":
            loss = torch.nn.functional.cross_entropy(flat_logits, flat_labels)
        else:
            loss = hem_loss(flat_logits, flat_labels, margins if loss_name == "hem+" else float(margins[0]))
        loss.backward()
        if loss_name != "ce":
            torch.testing.assert_close(saved["margins"], margins)
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(
                saved["gradients"][name], parameter.grad, rtol=0, atol=1e-6, msg=f"{case} {name}"
            )
        assert saved["logged_loss"] == pytest.approx(float(loss.detach()), rel=1e-5), case


@pytest.mark.slow
def test_accelerate_launch_runs_the_script_on_two_cpu_processes(tmp_path):
    output_dir = tmp_path / "out"
    run_pipeline_process(TASK, output_dir, two_processes=True, timeout=300)
    # Two processes share the 32 sentences: 1 step of 2 x 16, not 2 steps of 16.
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 1
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_samples"] == 16 and 0.0 <= results["eval_f1"] <= 1.0
    assert "| `total_train_batch_size` | 32 |" in ModelCard.load(output_dir / "README.md").text


def test_help_lists_the_token_flags(capsys):
    with pytest.raises(SystemExit):
        script_main(SCRIPT)(["--help"])
    text = capsys.readouterr().out
    for flag in ("--text_column_name", "--label_column_name", "--label_all_tokens", "--max_seq_length", "--loss_name"):
        assert flag in text, flag
    assert os.path.isfile(SCRIPT)
