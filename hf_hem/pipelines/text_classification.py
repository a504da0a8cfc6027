"""Text classification with HEM, end to end: the library behind `scripts/run_text_classification.py`.

The flags follow transformers' `examples/pytorch/text-classification/run_glue.py`, so GLUE-style runs read the same:

* **Data**: a Hub dataset (`--dataset_name glue --dataset_config_name sst2`), csv/tsv/json(l)/parquet files
  (`--train_file`/`--validation_file`), or, with neither, an embedded synthetic sentiment dataset in the schema of
  `glue`/`sst2` (offline, no download). `--text_column_names` names one column (`sentence`) or a pair
  (`sentence1,sentence2`); without it the usual GLUE names are tried. The label column is `--label_column_name`
  (a `ClassLabel`, integer ids or class names).
* **Model and tokenizer**: a pretrained checkpoint (`--model_name_or_path`, `--tokenizer_name`), or a small BERT
  built from its config (`--model_type bert`) with a WordPiece tokenizer built from the training texts, both saved
  so the result loads with plain `AutoModelForSequenceClassification` + `AutoTokenizer`.
* **Training**: [`~hf_hem.HEMTrainer`] with any loss of the registry (`--loss_name`); margins from the training
  label counts; metrics without the network (accuracy, balanced accuracy, macro F1, expected calibration error).
* **Model cards**: the HEM card with real `model-index` entries (accuracy, ...) in the output folder and, with
  `--push_to_hub`, on the Hub.

The argument parsing, the run skeleton and the final push are those of the image pipelines (`pipelines._common`);
the text pieces shared with token classification are in `pipelines._text_common`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from ..counting import resolve_class_counts
from ..data.columns import pick_column
from ..data.embedded_text import load_embedded_sentiment_dataset
from ._common import (
    PipelineRun,
    PushToHubError,
    label_maps,
    logits_array,
    make_classification_metrics,
    parse_pipeline_args,
    per_class_accuracy_table,
    pipeline_card_kwargs,
    truncate,
)
from ._text_common import (
    EMBEDDED_TEXT_TRAINING_DEFAULTS,
    TextDataArguments,
    TextModelArguments,
    build_text_model,
    check_label_shape,
    class_names_of,
    load_text_data,
    load_tokenizer,
    tokenize_splits,
)


logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_TEXT_DATASET_NAME",
    "EMBEDDED_TEXT_TRAINING_DEFAULTS",
    "PushToHubError",
    "TextClassificationDataArguments",
    "TextClassificationModelArguments",
    "make_text_classification_metrics",
    "parse_text_classification_args",
    "run_text_classification",
]

#: Name under which the embedded sentiment data appears in model cards and reports.
EMBEDDED_TEXT_DATASET_NAME = "hf-hem-synthetic-sentiment"

# Text columns tried, in order, when --text_column_names is not given (the names GLUE-style datasets use).
_TEXT_COLUMN_CANDIDATES = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("sentence",),
    ("text",),
)
_LABEL_COLUMN_CANDIDATES = ("label", "labels")
_CARD_METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "ece", "loss")


@dataclass
class TextClassificationModelArguments(TextModelArguments):
    """Arguments for the model and tokenizer (see [`TextModelArguments`])."""


@dataclass
class TextClassificationDataArguments(TextDataArguments):
    """Arguments for the data: source, text columns, splits and sequence length."""

    text_column_names: str | None = field(
        default=None,
        metadata={
            "help": "The text column, or two comma-separated columns for sentence pairs (e.g. 'sentence' or "
            "'sentence1,sentence2'). Default: the first of sentence1+sentence2, question1+question2, "
            "premise+hypothesis, question+sentence, sentence, text that exists."
        },
    )
    # A data argument, as in transformers' run_classification.py; the labels become class ids in `labels`, and the
    # margins are counted from those.
    label_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the labels. Default: 'label' or 'labels', whichever is present."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.text_column_names is not None:
            names = [name.strip() for name in str(self.text_column_names).split(",") if name.strip()]
            if not 1 <= len(names) <= 2:
                raise ValueError(
                    f"text_column_names={self.text_column_names!r} must name one column or two comma-separated "
                    "columns (a sentence pair)."
                )
            self.text_column_names = ",".join(names)

    @property
    def text_columns(self) -> list[str] | None:
        """`text_column_names` as a list (`None` when not given)."""
        return None if self.text_column_names is None else self.text_column_names.split(",")


def parse_text_classification_args(argv: Sequence[str] | None = None):
    """Parse the script's arguments into `(TextClassificationModelArguments, TextClassificationDataArguments,
    HEMConfig)`: flags, a `.yaml`/`.json` file alone, or the file followed by flags that override it.

    `do_train` and `do_eval` default to `True`. Without a data source, [`EMBEDDED_TEXT_TRAINING_DEFAULTS`] replace
    the `TrainingArguments` defaults. Anything given still wins.
    """
    return parse_pipeline_args(
        TextClassificationModelArguments, TextClassificationDataArguments, argv, EMBEDDED_TEXT_TRAINING_DEFAULTS
    )


def _resolve_text_columns(columns: list[str], requested: list[str] | None) -> list[str]:
    if requested is not None:
        missing = [name for name in requested if name not in columns]
        if missing:
            raise ValueError(
                f"text column(s) {missing} not found in the training split; columns: {columns}. Set "
                "--text_column_names."
            )
        return requested
    for candidate in _TEXT_COLUMN_CANDIDATES:
        if all(name in columns for name in candidate):
            return list(candidate)
    raise ValueError(
        f"no text column found in the training split (tried sentence, text, sentence1+sentence2, ...); columns: "
        f"{columns}. Set --text_column_names."
    )


def make_text_classification_metrics(num_labels: int, n_bins: int = 15) -> Callable:
    """`compute_metrics` for the Trainer: accuracy, balanced accuracy, macro F1 and expected calibration error.

    Args:
        num_labels (`int`): Number of classes.
        n_bins (`int`, *optional*, defaults to 15): Confidence bins of the calibration error.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: keys `accuracy`, `balanced_accuracy`, `macro_f1`, `ece`.
    """
    return make_classification_metrics(num_labels, n_bins, with_macro_f1=True)


def run_text_classification(
    model_args: TextClassificationModelArguments,
    data_args: TextClassificationDataArguments,
    training_args,
    *,
    callbacks: Sequence | None = None,
) -> dict:
    """Train and evaluate a sequence classifier with the loss of `training_args`, save it with its card, and push.

    The output folder receives the model, its tokenizer, the HEM card (`README.md`), `all_results.json`,
    `hem_run.json` and `predictions.npz` (validation logits and labels).

    Args:
        model_args ([`TextClassificationModelArguments`]): Model and tokenizer.
        data_args ([`TextClassificationDataArguments`]): Data, columns, sequence length.
        training_args ([`HEMConfig`]): Training and loss settings.
        callbacks (`Sequence[TrainerCallback]`, *optional*): Extra Trainer callbacks.

    Returns:
        `dict[str, float]`: the metrics saved in `all_results.json` (`train_*`, `eval_accuracy`,
        `eval_balanced_accuracy`, `eval_macro_f1`, `eval_ece`, `eval_loss`, ...).

    Raises:
        [`PushToHubError`]: `--push_to_hub` failed; the model is saved locally and the message says where.
        `ValueError`: missing columns, a label column with a list per row, float (regression) labels.
    """
    run = PipelineRun(model_args, training_args, callbacks, logger)

    # ---- data ----
    with training_args.main_process_first(desc="loading the dataset"):
        data = load_text_data(
            data_args,
            model_args,
            lambda seed: load_embedded_sentiment_dataset(seed=seed),
            EMBEDDED_TEXT_DATASET_NAME,
            seed=training_args.seed,
            stratify_column=data_args.label_column_name or "label",
        )
    dataset = data.dataset
    columns = dataset["train"].column_names
    label_column = pick_column(
        columns, data_args.label_column_name, _LABEL_COLUMN_CANDIDATES, "label", hint="Set --label_column_name."
    )
    # One label per row, checked before anything is tokenized: a list column belongs to token classification.
    check_label_shape(dataset["train"], label_column, nested=False)
    text_columns = _resolve_text_columns(columns, data_args.text_columns)
    names, raw_to_id = class_names_of(dataset, label_column, nested=False)
    id2label, label2id = label_maps(names)
    train_dataset = truncate(dataset["train"], data_args.max_train_samples, training_args.seed)
    eval_dataset = truncate(dataset["validation"], data_args.max_eval_samples, training_args.seed)
    logger.info(
        "Dataset %s: %d training and %d validation examples of %d classes; text columns %s.",
        data.name,
        len(train_dataset),
        len(eval_dataset),
        len(names),
        text_columns,
    )

    # ---- tokenizer and model ----
    max_length = data_args.max_seq_length
    tokenizer = load_tokenizer(
        model_args,
        lambda: (text for column in text_columns for text in dataset["train"][column]),
        max_length,
        lowercase=True,
    )
    model = build_text_model(
        model_args,
        AutoModelForSequenceClassification,
        tokenizer,
        id2label,
        label2id,
        max_length,
        "text-classification",
    )

    # ---- tokenization: the labels become class ids in `labels`; every other column is dropped ----
    padding = "max_length" if data_args.pad_to_max_length else False

    def tokenize(batch):
        texts = [batch[column] for column in text_columns]
        encoded = tokenizer(*texts, padding=padding, max_length=max_length, truncation=True)
        encoded["labels"] = [raw_to_id[value] for value in batch[label_column]]
        return encoded

    train_dataset, eval_dataset = tokenize_splits(training_args, data_args, tokenize, train_dataset, eval_dataset)

    # ---- margins: counted once here, in the ids the model predicts ----
    class_counts = None
    if run.do_train and training_args.class_counts is None:
        class_counts = resolve_class_counts("label_column", len(names), dataset=train_dataset, label_column="labels")
        class_counts = class_counts.counts

    card_state: dict[str, Any] = {"per_class_accuracy": None}

    def card_kwargs(metrics: dict) -> dict:
        kwargs = pipeline_card_kwargs(
            model_args,
            data_args,
            data.name,
            data.eval_split,
            "text-classification",
            metrics,
            _CARD_METRIC_KEYS,
            data.on_hub,
        )
        return {**kwargs, "per_class_table": card_state["per_class_accuracy"], "class_names": names}

    trainer = run.build_trainer(
        model,
        tokenizer,
        train_dataset,
        eval_dataset,
        data_collator=None if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer),
        compute_metrics=make_text_classification_metrics(len(names)),
        card_kwargs=card_kwargs,
        class_counts=class_counts,
    )
    run.train(len(train_dataset))

    if run.do_eval:
        output = trainer.predict(eval_dataset, metric_key_prefix="eval")
        run.save_eval_metrics({**output.metrics, "eval_samples": len(eval_dataset)})
        logits = logits_array(output.predictions)
        labels = np.asarray(output.label_ids).astype(np.int64)
        card_state["per_class_accuracy"] = per_class_accuracy_table(logits, labels, names)
        if trainer.is_world_process_zero() and training_args.output_dir:
            np.savez(
                os.path.join(training_args.output_dir, "predictions.npz"),
                class_names=np.asarray(names),
                eval_logits=logits,
                eval_labels=labels,
            )

    return run.finish(data.name, model_args.model_type, len(train_dataset), classes=names, text_columns=text_columns)
