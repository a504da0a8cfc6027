"""The HEM model card for every head `HEMTrainer` trains: text (sequence), token and audio classification and
multiple choice get the same card as image classification and segmentation (loss, margins, `model-index` metrics).

The card's metadata is parsed back (`huggingface_hub.ModelCard`, `metadata_load`) and checked by the loopback Hub's
`/api/validate-yaml` (`tests/hub_server.py`), the route `push_to_hub` and `ModelCard.validate` call.
"""

import json
import subprocess
import sys
import textwrap
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard, metadata_load

from hf_hem.cards import card_task_for_model, generate_model_card
from hf_hem.trainer import HEMTrainer


try:  # tests/ may or may not become a package
    from .helpers import hem_args, tiny_bert, with_repo_on_pythonpath
    from .hub_server import DUMMY_TOKEN, LoopbackHub, hub_client_env, run_hub_server
except ImportError:
    from helpers import hem_args, tiny_bert, with_repo_on_pythonpath
    from hub_server import DUMMY_TOKEN, LoopbackHub, hub_client_env, run_hub_server


pytestmark = pytest.mark.usefixtures("single_torch_thread")

LABELS = ["negative", "neutral", "positive"]
TAGS = ["O", "B-PER", "I-PER"]


def _bert(head, **config):
    return tiny_bert(head, vocab_size=50, hidden_size=8, num_attention_heads=1, intermediate_size=8, **config)


def _named(labels):
    return {"id2label": dict(enumerate(labels)), "label2id": {label: index for index, label in enumerate(labels)}}


def sequence_classifier():
    from transformers import BertForSequenceClassification

    return _bert(BertForSequenceClassification, **_named(LABELS))


def token_classifier():
    from transformers import BertForTokenClassification

    return _bert(BertForTokenClassification, **_named(TAGS))


def multiple_choice_model():
    from transformers import BertForMultipleChoice

    return _bert(BertForMultipleChoice)


def audio_classifier():
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=1,
        **_named(["dog", "cat", "bird"]),
    )
    return Wav2Vec2ForSequenceClassification(config)


# task -> (model factory, what the trainer logs at evaluation, the model-index entries expected from it)
HEADS = {
    "text-classification": (sequence_classifier, {"eval_accuracy": 0.75}, [("accuracy", "Accuracy", 0.75)]),
    # As `run_ner.py` logs seqeval's scores without `--return_entity_level_metrics`.
    "token-classification": (
        token_classifier,
        {"eval_precision": 0.5, "eval_recall": 0.25, "eval_f1": 0.333333, "eval_accuracy": 0.9},
        [
            ("precision", "Precision", 0.5),
            ("recall", "Recall", 0.25),
            ("f1", "F1", 0.333333),
            ("accuracy", "Token accuracy", 0.9),
        ],
    ),
    "multiple-choice": (multiple_choice_model, {"eval_accuracy": 0.625}, [("accuracy", "Accuracy", 0.625)]),
    "audio-classification": (audio_classifier, {"eval_accuracy": 0.5}, [("accuracy", "Accuracy", 0.5)]),
}
# Three classes (three choices for the multiple-choice head): HEM+ margins from these counts differ per class.
CLASS_COUNTS = [40, 10, 5]


@pytest.fixture(scope="module")
def hub_endpoint(tmp_path_factory):
    with run_hub_server(tmp_path_factory.mktemp("hub")) as endpoint:
        yield endpoint


def _hub_accepts(endpoint: str, readme: str) -> tuple[int, str]:
    """What the loopback Hub's `/api/validate-yaml` answers for a README (as `push_to_hub` sends it)."""
    request = urllib.request.Request(
        f"{endpoint}/api/validate-yaml",
        data=json.dumps({"content": readme, "repoType": "model"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {DUMMY_TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _card_of(trainer, metrics: dict) -> tuple[ModelCard, str]:
    trainer.card_metrics = {**metrics, "eval_loss": 0.42, "eval_runtime": 1.5, "eval_hem/violating_fraction": 0.3}
    trainer.create_model_card()
    readme = trainer.args.output_dir + "/README.md"
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    return ModelCard(text), text


@pytest.mark.parametrize("task", list(HEADS))
def test_every_head_gets_the_hem_card_with_its_margin_and_metrics(tmp_path, hub_endpoint, task):
    make_model, metrics, expected_index = HEADS[task]
    args = hem_args(tmp_path / task, loss_name="hem", margin=0.5)
    trainer = HEMTrainer(model=make_model(), args=args, card_kwargs={"dataset_name": "local-data"})
    card, text = _card_of(trainer, metrics)

    assert card.data.pipeline_tag == task
    assert card.data.tags[:2] == ["hf-hem", "hem-loss"] and task in card.data.tags
    assert "with the **HEM** loss" in text and "| Margin μ | 0.5 |" in text
    indexed = [(r.task_type, r.metric_type, r.metric_name, r.metric_value) for r in card.data.eval_results]
    assert indexed == [(task, *entry) for entry in expected_index]  # the loss and hem/* diagnostics stay out
    # The YAML header parses on its own and the Hub accepts it.
    metadata = metadata_load(tmp_path / task / "README.md")
    assert metadata["model-index"][0]["results"][0]["task"]["type"] == task
    assert _hub_accepts(hub_endpoint, text)[0] == 200


# Token classifiers had the HEM card before; their HEM+ margins are covered by tests/test_token_classification.py.
@pytest.mark.parametrize("task", ["text-classification", "multiple-choice", "audio-classification"])
def test_hem_plus_card_lists_the_per_class_margins_of_every_head(tmp_path, task):
    make_model, metrics, _ = HEADS[task]
    args = hem_args(tmp_path / task, loss_name="hem+")
    trainer = HEMTrainer(model=make_model(), args=args, class_counts=CLASS_COUNTS)
    card, text = _card_of(trainer, metrics)

    margins = [float(value) for value in trainer.margins]
    assert len(set(margins)) == 3  # per-class margins: rarer classes get larger ones
    assert card.data.pipeline_tag == task and "with the **HEM+** loss" in text
    assert "**Per-class margin μ_c** (3 classes)" in text
    summary = f"min {margins[0]:.4g}, median {margins[1]:.4g}, max {margins[2]:.4g}"
    assert summary in text
    if task == "multiple-choice":  # the classes are choice positions, shown by index, not as LABEL_0, LABEL_1
        assert f"| 2 | {margins[2]:.4g} |" in text and "LABEL_" not in text
    else:
        names = LABELS if task == "text-classification" else ["dog", "cat", "bird"]
        assert f"| {names[2]} | {margins[2]:.4g} |" in text
    assert card.data.eval_results is None  # no dataset named: metrics are shown, not indexed
    assert "Training samples per class" in text


def test_token_card_indexes_seqeval_overall_and_entity_scores(tmp_path, hub_endpoint):
    """`run_ner.py --return_entity_level_metrics` logs seqeval's result flattened: `overall_*` and `<TYPE>_*`."""
    metrics = {
        "eval_overall_precision": 0.5,
        "eval_overall_recall": 0.4,
        "eval_overall_f1": 0.444444,
        "eval_overall_accuracy": 0.8,
        "eval_PER_precision": 0.6,
        "eval_PER_recall": 0.3,
        "eval_PER_f1": 0.4,
        "eval_PER_number": 10,
    }
    trainer = HEMTrainer(
        model=token_classifier(),
        args=hem_args(tmp_path / "ner", margin=0.5),
        card_kwargs={"dataset_name": "conll2003", "eval_split": "validation"},
    )
    card, text = _card_of(trainer, metrics)
    indexed = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert indexed == {
        ("precision", "Precision"): 0.5,
        ("recall", "Recall"): 0.4,
        ("f1", "F1"): 0.444444,
        ("accuracy", "Token accuracy"): 0.8,
        ("precision", "PER Precision"): 0.6,
        ("recall", "PER Recall"): 0.3,
        ("f1", "PER F1"): 0.4,
    }
    assert "| PER entities (`number`) | 10 |" in text  # a count: in the table, not in the index
    assert _hub_accepts(hub_endpoint, text)[0] == 200


def test_card_task_comes_from_transformers_auto_model_lists():
    from transformers import BertForMaskedLM, BertForSequenceClassification

    class MyClassifier(BertForSequenceClassification):  # a user's subclass keeps its head's task
        pass

    assert card_task_for_model(MyClassifier(sequence_classifier().config)) == "text-classification"
    assert card_task_for_model(audio_classifier()) == "audio-classification"  # ...ForSequenceClassification too
    # A wrapped model known only by its saved architecture.
    saved = SimpleNamespace(config=SimpleNamespace(architectures=["BertForTokenClassification"]))
    assert card_task_for_model(saved) == "token-classification"
    assert card_task_for_model(_bert(BertForMaskedLM)) is None
    assert card_task_for_model(None) is None


def test_a_model_without_a_classification_head_keeps_the_stock_card_unless_the_script_names_the_task(tmp_path):
    from transformers import BertForMaskedLM

    args = hem_args(tmp_path / "mlm", margin=0.5)
    trainer = HEMTrainer(model=_bert(BertForMaskedLM, num_labels=3), args=args)
    assert trainer.model_card_kwargs({}) is None
    trainer.create_model_card()
    assert "generated_from_trainer" in (tmp_path / "mlm" / "README.md").read_text()
    # `tasks=` as transformers' example scripts pass it names the card's task when the head does not.
    trainer.create_model_card(tasks="text-classification")
    card = ModelCard.load(tmp_path / "mlm" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "hf-hem" in card.data.tags


@pytest.mark.parametrize(
    ("task", "snippet"),
    [
        ("multiple-choice", "AutoModelForMultipleChoice.from_pretrained"),
        ("audio-classification", "AutoFeatureExtractor.from_pretrained"),
    ],
)
def test_quick_start_of_the_new_tasks_compiles(task, snippet):
    text = str(generate_model_card(model_name="m", task=task, loss_name="hem", loss_settings={"margin": 0.3}))
    assert snippet in text
    code = text.split("## Quick start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    compile(code, f"quick start of {task}", "exec")


# The client half of the push test, in a fresh interpreter: huggingface_hub reads HF_ENDPOINT when it is imported.
_PUSH_SCRIPT = textwrap.dedent(
    """
    import sys

    from helpers import hem_args  # tests/ is on PYTHONPATH
    from test_cards import audio_classifier, multiple_choice_model

    from hf_hem.trainer import HEMTrainer

    for name, make_model in (("mc-hem", multiple_choice_model), ("audio-hem", audio_classifier)):
        args = hem_args(
            f"{sys.argv[1]}/{name}", margin=0.5, push_to_hub=True, hub_model_id=f"user/{name}", save_strategy="no"
        )
        trainer = HEMTrainer(model=make_model(), args=args, card_kwargs={"dataset_name": "user/toy"})
        trainer.card_metrics = {"eval_accuracy": 0.75, "eval_loss": 0.5}
        trainer.push_to_hub(commit_message="End of training")
    """
)


@pytest.mark.slow
def test_hem_trainer_pushes_the_hem_card_of_multiple_choice_and_audio_heads(tmp_path):
    script = tmp_path / "push.py"
    script.write_text(_PUSH_SCRIPT)
    with LoopbackHub(tmp_path / "hub") as hub:
        env = with_repo_on_pythonpath(hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home"), tests_dir=True)
        env["OMP_NUM_THREADS"] = "1"
        completed = subprocess.run(
            [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240
        )
        assert completed.returncode == 0, completed.stderr[-4000:]
        assert hub.unhandled_requests == [] and hub.server_errors == []
        pushed = {name: hub.files(f"user/{name}") for name in ("mc-hem", "audio-hem")}
        validated = [status for _, path, status in hub.requests if path.startswith("/api/validate-yaml")]
    assert len(validated) >= 2 and set(validated) == {200}  # the Hub's check of each README before its commit
    for name, task in (("mc-hem", "multiple-choice"), ("audio-hem", "audio-classification")):
        assert {"config.json", "model.safetensors", "README.md"} <= set(pushed[name])
        card = ModelCard(pushed[name]["README.md"].decode())
        assert card.data.pipeline_tag == task and card.data.tags[:2] == ["hf-hem", "hem-loss"]
        assert [(r.task_type, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
            (task, "accuracy", 0.75)
        ]
        assert "| Margin μ | 0.5 |" in card.text and "generated_from_trainer" not in card.text
