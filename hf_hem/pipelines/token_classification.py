"""Token classification (NER, POS tagging, ...) with HEM, end to end: the library behind
`scripts/run_token_classification.py`.

The flags follow transformers' `examples/pytorch/token-classification/run_ner.py`:

* **Data**: a Hub dataset (`--dataset_name conll2003`), json(l)/parquet/csv files (`--train_file`/
  `--validation_file`), or, with neither, an embedded synthetic NER dataset in the schema of `conll2003` (offline).
  Rows hold a list of words (`--text_column_name`, default `tokens`) and a list of tags (`--label_column_name`,
  default `ner_tags`): `ClassLabel` ids, integer ids or tag names. In csv files both are strings of
  white-space-separated words and tags.
* **Labels**: each word's tag goes to its first sub-token; the other sub-tokens get -100 and take no part in the
  loss, the margins or the metrics, unless `--label_all_tokens` labels them too (a `B-X` word's later pieces get
  `I-X`). Special tokens always get -100.
* **Model and tokenizer**: a pretrained checkpoint (`--model_name_or_path`; its tokenizer must be a fast one, for
  the word ids), or a small BERT from its config with a WordPiece tokenizer built from the training words.
* **Training**: [`~hf_hem.HEMTrainer`]: every labelled token is one sample of the loss (logits `(N, L, C)`), the
  margins come from the token label counts (`S` = labelled training tokens).
* **Metrics**: entity-level precision, recall and F1 (CoNLL conventions, [`hf_hem.metrics.token_classification`],
  computed locally) and token accuracy; the card's `model-index` carries them, and its per-type table the F1 of
  each entity type.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from ..counting import resolve_class_counts
from ..data.columns import pick_column
from ..data.embedded_text import load_embedded_ner_dataset
from ..metrics.token_classification import token_classification_metrics
from ._common import PipelineRun, PushToHubError, label_maps, parse_pipeline_args, pipeline_card_kwargs, truncate
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
    "EMBEDDED_NER_DATASET_NAME",
    "EMBEDDED_NER_TRAINING_DEFAULTS",
    "PushToHubError",
    "TokenClassificationDataArguments",
    "TokenClassificationModelArguments",
    "align_labels_with_tokens",
    "make_token_classification_metrics",
    "parse_token_classification_args",
    "run_token_classification",
]

#: Name under which the embedded NER data appears in model cards and reports.
EMBEDDED_NER_DATASET_NAME = "hf-hem-synthetic-ner"

#: Training defaults for the embedded data and a model from config; anything given on the command line wins. Those
#: of the embedded sentiment data, at twice the learning rate.
EMBEDDED_NER_TRAINING_DEFAULTS = {**EMBEDDED_TEXT_TRAINING_DEFAULTS, "learning_rate": 2e-3}

_TEXT_COLUMN_CANDIDATES = ("tokens", "words")
_LABEL_COLUMN_CANDIDATES = ("ner_tags", "labels", "tags", "label")
_CARD_METRIC_KEYS = ("precision", "recall", "f1", "accuracy", "loss")


@dataclass
class TokenClassificationModelArguments(TextModelArguments):
    """Arguments for the model and tokenizer (see [`TextModelArguments`]); the tokenizer must be a fast one."""


@dataclass
class TokenClassificationDataArguments(TextDataArguments):
    """Arguments for the data: source, word and tag columns, sub-token labelling, splits and sequence length."""

    text_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the list of words of each row. Default: 'tokens' or 'words'."},
    )
    # A data argument, as in transformers' run_ner.py; the tags become ids in `labels`, and the margins are counted
    # from those.
    label_column_name: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the list of tags of each row. Default: the first of ner_tags, labels, tags, "
            "label that exists."
        },
    )
    label_all_tokens: bool = field(
        default=False,
        metadata={
            "help": "Label every sub-token of a word (later pieces of a B-X word get I-X) instead of only the first; "
            "the others get -100 and are left out of the loss and the metrics."
        },
    )
    return_entity_level_metrics: bool = field(
        default=False,
        metadata={"help": "Also report precision, recall and F1 of every entity type (eval_<TYPE>_f1, ...)."},
    )


def parse_token_classification_args(argv: Sequence[str] | None = None):
    """Parse the script's arguments into `(TokenClassificationModelArguments, TokenClassificationDataArguments,
    HEMConfig)`: flags, a `.yaml`/`.json` file alone, or the file followed by flags that override it.

    `do_train` and `do_eval` default to `True`. Without a data source, [`EMBEDDED_NER_TRAINING_DEFAULTS`] replace
    the `TrainingArguments` defaults. Anything given still wins.
    """
    return parse_pipeline_args(
        TokenClassificationModelArguments, TokenClassificationDataArguments, argv, EMBEDDED_NER_TRAINING_DEFAULTS
    )


def _split_strings(dataset_dict, columns: Sequence[str]):
    """Rows whose word or tag column is one string (csv files) get it split on white space."""
    for column in columns:
        feature = dataset_dict["train"].features[column]
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            dataset_dict = dataset_dict.map(
                lambda values, column=column: {column: [str(value or "").split() for value in values]},
                input_columns=[column],
                batched=True,
                desc=f"Splitting {column!r} on white space",
            )
    return dataset_dict


def _continuation_ids(names: Sequence[str]) -> list[int]:
    """For each tag id the id later sub-tokens of its word get with `label_all_tokens`: `B-X` -> `I-X` if it exists."""
    ids = {name: index for index, name in enumerate(names)}
    result = []
    for index, name in enumerate(names):
        inside = "I" + name[1:] if name.startswith(("B-", "B_")) else None
        result.append(ids.get(inside, index))
    return result


def align_labels_with_tokens(
    word_ids: Sequence[int | None], word_labels: Sequence[int], continuation: Sequence[int] | None = None
) -> list[int]:
    """Per-token labels from per-word labels: the first sub-token of a word gets its label, special tokens -100.

    Args:
        word_ids (`Sequence[int | None]`): The word of each token (`BatchEncoding.word_ids()`), `None` for special
            tokens.
        word_labels (`Sequence[int]`): One label id per word.
        continuation (`Sequence[int]`, *optional*): With it, the later sub-tokens of a word get
            `continuation[label]` (`label_all_tokens`); without it, -100.

    Returns:
        `list[int]`: one label per token.

    Example:

    ```python
    >>> align_labels_with_tokens([None, 0, 0, 1, None], [1, 0])  # "Oluwaseun" is 2 pieces
    [-100, 1, -100, 0, -100]
    ```
    """
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(-100)
        elif word != previous:
            labels.append(int(word_labels[word]))
        else:
            labels.append(-100 if continuation is None else int(continuation[word_labels[word]]))
        previous = word
    return labels


def make_token_classification_metrics(
    id2label: dict[int, str], per_type: bool = False, state: dict | None = None
) -> Callable:
    """`compute_metrics` for the Trainer: entity-level precision, recall, F1 and token accuracy over the labelled
    tokens (those whose label is not -100).

    Args:
        id2label (`dict[int, str]`): Tag names (IOB2 etc., see [`hf_hem.metrics.token_classification`]).
        per_type (`bool`, *optional*, defaults to `False`): Also return `<TYPE>_precision`, `<TYPE>_recall`,
            `<TYPE>_f1` and `<TYPE>_number` of every entity type.
        state (`dict`, *optional*): Receives the per-type scores of the latest call under `"per_type"`.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: keys `precision`, `recall`, `f1`, `accuracy`.
    """

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        predictions = np.asarray(logits).argmax(axis=-1)
        labels = np.asarray(eval_prediction.label_ids)
        references, predicted = [], []
        for row_predictions, row_labels in zip(predictions, labels):
            keep = row_labels != -100
            references.append([id2label[int(label)] for label in row_labels[keep]])
            predicted.append([id2label[int(label)] for label in row_predictions[keep]])
        scores = token_classification_metrics(references, predicted)
        if state is not None:
            state["per_type"] = scores["per_type"]
        metrics = {key: float(scores[key]) for key in ("precision", "recall", "f1", "accuracy")}
        if per_type:
            for kind, values in scores["per_type"].items():
                metrics.update({f"{kind}_{key}": float(value) for key, value in values.items()})
        return metrics

    return compute_metrics


def run_token_classification(
    model_args: TokenClassificationModelArguments,
    data_args: TokenClassificationDataArguments,
    training_args,
    *,
    callbacks: Sequence | None = None,
) -> dict:
    """Train and evaluate a token classifier with the loss of `training_args`, save it with its card, and push.

    The output folder receives the model, its tokenizer, the HEM card (`README.md`), `all_results.json`,
    `hem_run.json` and `per_type_scores.json` (entity-level scores of each type).

    Args:
        model_args ([`TokenClassificationModelArguments`]): Model and tokenizer.
        data_args ([`TokenClassificationDataArguments`]): Data, columns, sub-token labelling, sequence length.
        training_args ([`HEMConfig`]): Training and loss settings.
        callbacks (`Sequence[TrainerCallback]`, *optional*): Extra Trainer callbacks.

    Returns:
        `dict[str, float]`: the metrics saved in `all_results.json` (`train_*`, `eval_precision`, `eval_recall`,
        `eval_f1`, `eval_accuracy`, `eval_loss`, ...).

    Raises:
        [`PushToHubError`]: `--push_to_hub` failed; the model is saved locally and the message says where.
        `ValueError`: missing columns, one label per row instead of one per word, a slow tokenizer.
    """
    run = PipelineRun(model_args, training_args, callbacks, logger)

    # ---- data ----
    with training_args.main_process_first(desc="loading the dataset"):
        data = load_text_data(
            data_args,
            model_args,
            lambda seed: load_embedded_ner_dataset(seed=seed),
            EMBEDDED_NER_DATASET_NAME,
            seed=training_args.seed,
        )
    dataset = data.dataset
    columns = dataset["train"].column_names
    text_column = pick_column(
        columns, data_args.text_column_name, _TEXT_COLUMN_CANDIDATES, "word", hint="Set --text_column_name."
    )
    label_column = pick_column(
        columns, data_args.label_column_name, _LABEL_COLUMN_CANDIDATES, "tag", hint="Set --label_column_name."
    )
    check_label_shape(dataset["train"], label_column, nested=True)
    with training_args.main_process_first(desc="splitting strings"):
        dataset = _split_strings(dataset, [text_column, label_column])
    names, raw_to_id = class_names_of(dataset, label_column, nested=True)
    id2label, label2id = label_maps(names)
    train_dataset = truncate(dataset["train"], data_args.max_train_samples, training_args.seed)
    eval_dataset = truncate(dataset["validation"], data_args.max_eval_samples, training_args.seed)
    logger.info(
        "Dataset %s: %d training and %d validation sentences, %d tags %s.",
        data.name,
        len(train_dataset),
        len(eval_dataset),
        len(names),
        names,
    )

    # ---- tokenizer and model ----
    max_length = data_args.max_seq_length
    tokenizer = load_tokenizer(model_args, lambda: dataset["train"][text_column], max_length)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} is not a fast tokenizer; token classification needs the word "
            "ids only fast tokenizers give (see https://huggingface.co/docs/transformers/fast_tokenizers)."
        )
    model = build_text_model(
        model_args, AutoModelForTokenClassification, tokenizer, id2label, label2id, max_length, "token-classification"
    )

    # ---- tokenization and label alignment ----
    padding = "max_length" if data_args.pad_to_max_length else False
    continuation = _continuation_ids(names) if data_args.label_all_tokens else None

    def tokenize(batch):
        encoded = tokenizer(
            batch[text_column], padding=padding, max_length=max_length, truncation=True, is_split_into_words=True
        )
        encoded["labels"] = []
        for row, (words, tags) in enumerate(zip(batch[text_column], batch[label_column])):
            if len(words) != len(tags):
                raise ValueError(
                    f"a row has {len(words)} words in {text_column!r} but {len(tags)} tags in {label_column!r}; "
                    "expected one tag per word."
                )
            word_labels = [raw_to_id[tag] for tag in tags]
            encoded["labels"].append(align_labels_with_tokens(encoded.word_ids(row), word_labels, continuation))
        return encoded

    train_dataset, eval_dataset = tokenize_splits(training_args, data_args, tokenize, train_dataset, eval_dataset)

    # ---- margins: every labelled token (as the loss sees it) counts once; S = labelled training tokens ----
    class_counts = None
    if run.do_train and training_args.class_counts is None:
        counted = resolve_class_counts(
            "label_column", len(names), dataset=train_dataset, label_column="labels", nested=True, ignore_index=-100
        )
        class_counts = counted.counts

    metric_state: dict[str, Any] = {"per_type": None}
    card_state: dict[str, Any] = {"per_type_f1": None}

    def card_kwargs(metrics: dict) -> dict:
        kwargs = pipeline_card_kwargs(
            model_args,
            data_args,
            data.name,
            data.eval_split,
            "token-classification",
            metrics,
            _CARD_METRIC_KEYS,
            data.on_hub,
        )
        return {
            **kwargs,
            "per_class_table": card_state["per_type_f1"],
            "per_class_metric": "Entity F1",
            "class_names": names,
        }

    trainer = run.build_trainer(
        model,
        tokenizer,
        train_dataset,
        eval_dataset,
        data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=-100),
        compute_metrics=make_token_classification_metrics(
            id2label, per_type=data_args.return_entity_level_metrics, state=metric_state
        ),
        card_kwargs=card_kwargs,
        class_counts=class_counts,
    )
    run.train(len(train_dataset))

    if run.do_eval:
        output = trainer.predict(eval_dataset, metric_key_prefix="eval")
        run.save_eval_metrics({**output.metrics, "eval_samples": len(eval_dataset)})
        per_type = metric_state["per_type"] or {}
        card_state["per_type_f1"] = {kind: values["f1"] for kind, values in per_type.items()} or None
        if trainer.is_world_process_zero() and training_args.output_dir:
            with open(os.path.join(training_args.output_dir, "per_type_scores.json"), "w", encoding="utf-8") as handle:
                json.dump(per_type, handle, indent=2)

    return run.finish(
        data.name,
        model_args.model_type,
        len(train_dataset),
        tags=names,
        label_all_tokens=data_args.label_all_tokens,
    )
