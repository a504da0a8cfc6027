"""Pieces shared by the text pipelines (sequence and token classification), on top of `pipelines._common`.

* the text model arguments (`--model_name_or_path`, or `--model_type bert` built from its config, and
  `--tokenizer_name`), and the text data arguments (`--dataset_name` or `--train_file`/`--validation_file`,
  `--max_seq_length`, ...);
* loading the splits from the Hub, from csv/json/parquet files, or from an embedded synthetic dataset;
* the tokenizer: a pretrained one, or a WordPiece tokenizer built from the training texts (offline);
* the model: pretrained, or a small BERT from its config sized for the tokenizer;
* tokenizing the splits, and the training defaults for the embedded datasets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
from datasets import ClassLabel, DatasetDict, Value, load_dataset
from transformers import AutoConfig, AutoTokenizer, BertConfig

from ..data.embedded_text import build_wordpiece_tokenizer
from ._common import (
    BaseModelArguments,
    check_data_source,
    check_integer,
    check_model_type,
    check_split_arguments,
    eval_split_name_field,
    load_hub_dataset,
    max_train_samples_field,
    pick_eval_split,
    train_and_validation,
    train_val_split_field,
)


logger = logging.getLogger(__name__)

#: Model types `--model_type` can build from a config (no download).
TEXT_SCRATCH_MODEL_TYPES = ("bert",)

#: Training defaults for the embedded sentiment data and a model from config; anything given on the command line
#: wins. The embedded NER data trains the same way at twice the learning rate.
EMBEDDED_TEXT_TRAINING_DEFAULTS = {
    "num_train_epochs": 4.0,
    "learning_rate": 1e-3,
    "weight_decay": 0.01,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 10,
    "report_to": "none",
}

# Split names taken as the evaluation split, in order of preference, when `eval_split_name` is not given.
_EVAL_SPLIT_CANDIDATES = ("validation", "valid", "val", "dev", "test")
# File suffix -> `datasets` builder (and its options) for --train_file / --validation_file.
_LIST_FEATURES = tuple(
    getattr(datasets, name) for name in ("List", "LargeList", "Sequence") if hasattr(datasets, name)
)
_FILE_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


@dataclass
class TextModelArguments(BaseModelArguments):
    """Arguments for the model and tokenizer: a pretrained checkpoint, or a small BERT from its config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint to fine-tune (Hub id or local folder), e.g. 'bert-base-cased'. Default: none, a small "
            "model of --model_type is built from its config with random weights."
        },
    )
    model_type: str = field(
        default="bert",
        metadata={
            "help": "Architecture built from its config when --model_name_or_path is not given.",
            "choices": list(TEXT_SCRATCH_MODEL_TYPES),
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer name or path if not the same as --model_name_or_path. Default for a model from its "
            "config: a WordPiece tokenizer built from the training texts (offline)."
        },
    )
    tokenizer_vocab_size: int = field(
        default=2000,
        metadata={"help": "Vocabulary size of the WordPiece tokenizer built from the training texts."},
    )

    def __post_init__(self):
        check_model_type(self, TEXT_SCRATCH_MODEL_TYPES)
        check_integer(self, "tokenizer_vocab_size", 16)


@dataclass
class TextDataArguments:
    """Data arguments both text pipelines have: the data source, the splits and the sequence length."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset to train on (e.g. 'glue' with --dataset_config_name sst2, or 'conll2003'). Default: "
            "none; without --dataset_name and --train_file an embedded synthetic dataset is used (offline)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the dataset."})
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: a csv, tsv, json(l) or parquet file."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation data in the same format as --train_file."}
    )
    train_val_split: float = train_val_split_field()
    eval_split_name: str | None = eval_split_name_field(_EVAL_SPLIT_CANDIDATES)
    max_train_samples: int | None = max_train_samples_field()
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the evaluation set to this many examples (debugging, quick runs)."}
    )
    max_seq_length: int = field(
        default=128,
        metadata={"help": "Longest tokenized input; longer inputs are truncated, shorter ones padded per batch."},
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={"help": "Pad every input to --max_seq_length instead of to the longest input of its batch."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenizing the dataset."}
    )

    def __post_init__(self):
        check_data_source(self, "train_file", "validation_file")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and Path(path).suffix.lower() not in _FILE_BUILDERS:
                raise ValueError(
                    f"{name}={path!r} must be a {', '.join(sorted(_FILE_BUILDERS))} file (got suffix "
                    f"{Path(path).suffix!r})."
                )
        check_integer(self, "max_seq_length", 4, " (room for [CLS], [SEP] and text)")
        check_split_arguments(self)

    @property
    def uses_embedded_dataset(self) -> bool:
        """`True` when no data source is given and the embedded synthetic dataset is used."""
        return self.dataset_name is None and self.train_file is None


class TextData(NamedTuple):
    """The splits of a text run and how the model card names them."""

    dataset: DatasetDict  # splits "train" and "validation"
    name: str  # the dataset's name in cards and reports
    on_hub: bool  # whether `name` is a Hub dataset id
    eval_split: str  # where the "validation" split comes from, e.g. "validation" or "train (15% held out)"


def _load_files(data_args: TextDataArguments, cache_dir: str | None):
    files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        files["validation"] = data_args.validation_file
    suffixes = {Path(path).suffix.lower() for path in files.values()}
    if len(suffixes) != 1:
        raise ValueError(f"train_file and validation_file must have the same format, got {list(files.values())}.")
    builder, options = _FILE_BUILDERS[suffixes.pop()]
    for name, path in files.items():
        if not os.path.isfile(path):
            raise ValueError(f"{name}_file={path!r} does not exist.")
    return load_dataset(builder, data_files=files, cache_dir=cache_dir, **options)


def load_text_data(
    data_args: TextDataArguments,
    model_args: BaseModelArguments,
    embedded: Callable[[int], DatasetDict],
    embedded_name: str,
    seed: int = 0,
    stratify_column: str | None = None,
) -> TextData:
    """The `train` and `validation` splits of a text run: from the Hub, from files, or embedded.

    Args:
        data_args ([`TextDataArguments`]): The data source and split settings.
        model_args ([`BaseModelArguments`]): `cache_dir` and `token` for the Hub.
        embedded (`Callable[[int], DatasetDict]`): Builds the embedded dataset from a seed.
        embedded_name (`str`): Its name in cards and reports.
        seed (`int`, *optional*, defaults to 0): Seed of the embedded data and of the held-out validation share.
        stratify_column (`str`, *optional*): `ClassLabel` column to stratify that share by.

    Returns:
        [`TextData`].
    """
    if data_args.uses_embedded_dataset:
        return TextData(embedded(seed), embedded_name, False, "validation")
    if data_args.dataset_name is not None:
        loaded, dataset_id = load_hub_dataset(data_args.dataset_name, data_args.dataset_config_name, model_args)
        # A local folder in the Hub layout is not a Hub id: name it by its folder, without a Hub link.
        local = os.path.isdir(data_args.dataset_name)
        name = Path(data_args.dataset_name).resolve().name if local else dataset_id
        on_hub = not local
    else:
        loaded = _load_files(data_args, model_args.cache_dir)
        path = Path(data_args.train_file).resolve()
        name, on_hub = path.parent.name if path.stem.lower() in ("train", "training") else path.stem, False
    if "train" not in loaded:
        raise ValueError(f"the dataset has no 'train' split; splits: {list(loaded)}.")
    eval_split = pick_eval_split(loaded, data_args.eval_split_name, _EVAL_SPLIT_CANDIDATES)
    splits, eval_split = train_and_validation(loaded, eval_split, data_args.train_val_split, seed, stratify_column)
    return TextData(splits, name, on_hub, eval_split)


def load_tokenizer(model_args: TextModelArguments, training_texts: Callable[[], Iterable], max_length: int, **build):
    """The tokenizer of a run: `--tokenizer_name`'s, the checkpoint's, or one trained on `training_texts()`.

    Args:
        model_args ([`TextModelArguments`]): Where the tokenizer comes from.
        training_texts (`Callable[[], Iterable]`): The training texts (strings or word lists), read only when a
            tokenizer is built.
        max_length (`int`): `model_max_length` of a built tokenizer.
        build: More arguments of [`~hf_hem.data.embedded_text.build_wordpiece_tokenizer`] (e.g. `lowercase`).

    Returns:
        `transformers.PreTrainedTokenizerFast` (or the checkpoint's tokenizer class).
    """
    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is not None:
        return AutoTokenizer.from_pretrained(
            name, trust_remote_code=model_args.trust_remote_code, **model_args.hub_kwargs()
        )
    return build_wordpiece_tokenizer(
        training_texts(), vocab_size=model_args.tokenizer_vocab_size, model_max_length=max_length, **build
    )


def scratch_text_config(model_type: str, tokenizer, num_labels: int, id2label, label2id, max_length: int):
    """A small config of `model_type` (2 layers of width 64), its vocabulary and positions fitted to `tokenizer`."""
    if model_type != "bert":
        raise ValueError(
            f"model_type={model_type!r} cannot be built from scratch; expected one of {TEXT_SCRATCH_MODEL_TYPES}."
        )
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=max(max_length, 16),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        num_labels=num_labels,
        id2label=id2label,
        label2id=label2id,
    )


def build_text_model(
    model_args: TextModelArguments,
    model_class,
    tokenizer,
    id2label: dict[int, str],
    label2id: dict[str, int],
    max_length: int,
    finetuning_task: str,
):
    """A model of `model_class` predicting `id2label`: pretrained, or built from its config for `tokenizer`.

    As `pipelines._common.build_model_and_processor` for images: a checkpoint's (or `config_name`'s) config gets the
    classes, `finetuning_task` and `config_overrides`, and the head is re-initialised where its size differs with
    `--ignore_mismatched_sizes`; without a checkpoint the config is `config_name`'s or [`scratch_text_config`].
    """
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}
    hub_kwargs = model_args.hub_kwargs()
    trust = model_args.trust_remote_code
    if model_args.model_name_or_path is None:
        if model_args.config_name is not None:
            config = AutoConfig.from_pretrained(
                model_args.config_name, **labels, trust_remote_code=trust, **hub_kwargs
            )
        else:
            config = scratch_text_config(
                model_args.model_type, tokenizer, len(id2label), id2label, label2id, max_length
            )
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
        config.finetuning_task = finetuning_task
        return model_class.from_config(config, trust_remote_code=trust)
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        **labels,
        finetuning_task=finetuning_task,
        trust_remote_code=trust,
        **hub_kwargs,
    )
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    return model_class.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        trust_remote_code=trust,
        **hub_kwargs,
    )


def class_names_of(dataset_dict: DatasetDict, column: str, nested: bool) -> tuple[list[str], dict[Any, int]]:
    """Class names in class-id order and the map raw label value -> class id.

    `ClassLabel` columns (or lists of them, `nested`) keep their names and ids; plain values (strings or integers)
    are sorted and numbered. Fewer than 2 classes (tags, when `nested`) raise a `ValueError`: HEM's margins separate
    a class from the others.
    """
    feature = dataset_dict["train"].features[column]
    inner = getattr(feature, "feature", feature) if nested else feature
    if isinstance(inner, ClassLabel):
        names, raw_to_id = list(inner.names), {index: index for index in range(len(inner.names))}
    else:
        names, raw_to_id = _plain_class_values(dataset_dict, column, nested)
    if len(names) < 2:
        what, kind = ("tag", "tag(s)") if nested else ("label", "class(es)")
        raise ValueError(f"{what} column {column!r} holds {len(names)} {kind} {names}; HEM needs at least 2.")
    return names, raw_to_id


def _plain_class_values(dataset_dict: DatasetDict, column: str, nested: bool) -> tuple[list[str], dict[Any, int]]:
    """`class_names_of` for a column of plain values: every value of every split, sorted and numbered."""
    values = set()
    for split in dataset_dict.values():
        column_values = split.with_format("arrow")[column]
        if nested:
            import pyarrow.compute as pc

            column_values = pc.list_flatten(column_values)
        values.update(column_values.to_pylist())
    if None in values:
        raise ValueError(f"label column {column!r} has missing (null) labels; every example needs a label.")
    kinds = {type(value) for value in values}
    if float in kinds:
        raise ValueError(
            f"label column {column!r} holds floats (a regression target such as glue/stsb); HEM trains classifiers, "
            "expected integer class ids or class names."
        )
    ordered = sorted(values, key=lambda value: (str(type(value)), value))
    return [str(value) for value in ordered], {value: index for index, value in enumerate(ordered)}


def check_label_shape(dataset, column: str, nested: bool) -> None:
    """Raises a `ValueError` naming `column` and the expected shape when its rows do not fit the head.

    Sequence classification takes one label per row (`nested=False`, shape `(num_rows,)`); token classification a
    list of labels per row (`nested=True`, shape `(num_rows, num_words)`). Strings are accepted for token labels:
    the token pipeline splits them on white space (csv files).
    """
    feature = dataset.features[column]
    is_list = isinstance(feature, (list, *_LIST_FEATURES))
    if is_list and not nested:
        raise ValueError(
            f"label column {column!r} holds a list of labels per row ({feature}), but a sequence classifier takes one "
            "label per row (expected a column of shape (num_rows,): class ids or names). Token labels go to "
            "scripts/run_token_classification.py."
        )
    text = isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    if nested and not is_list and not text:
        raise ValueError(
            f"label column {column!r} holds one label per row ({feature}), but a token classifier takes one label "
            "per word (expected a list column of shape (num_rows, num_words), e.g. conll2003's ner_tags). Labels of "
            "whole texts go to scripts/run_text_classification.py."
        )


def tokenize_splits(training_args, data_args: TextDataArguments, tokenize: Callable, train_dataset, eval_dataset):
    """`(train_dataset, eval_dataset)` through `tokenize` (batched, in `--preprocessing_num_workers` processes), every
    original column dropped, the main process first so the others read its cache."""
    with training_args.main_process_first(desc="tokenizing the dataset"):
        return tuple(
            split.map(
                tokenize,
                batched=True,
                remove_columns=split.column_names,
                num_proc=data_args.preprocessing_num_workers,
                desc=f"Tokenizing the {name} split",
            )
            for name, split in (("training", train_dataset), ("validation", eval_dataset))
        )
