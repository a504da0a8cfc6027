"""Image classification with HEM, end to end: the library behind `scripts/run_image_classification.py`.

The flow follows transformers' `examples/pytorch/image-classification/run_image_classification.py`, with the
pieces that example lacks for HEM experiments:

* **Data**: a Hub dataset (`--dataset_name`), image folders (`--train_dir`/`--validation_dir`), or, with neither,
  the embedded default: scikit-learn's handwritten digits, upscaled (offline, no download).
* **Model**: a pretrained checkpoint (`--model_name_or_path`), or a small model built from its config
  (`--model_type` resnet, vit, swin or convnext) together with an image processor saved beside it, so the result
  loads with plain `AutoModelForImageClassification` + `AutoImageProcessor`.
* **Unknown classes**: `--unknown_classes 8 9` holds classes out of training; after training their validation images
  are scored against the known ones (AUROC and FPR at 95% TPR of the maximum softmax probability and the maximum
  logit). `--ood_dataset_name`/`--ood_dir` scores a separate out-of-distribution set the same way.
* **Training**: [`~hf_hem.HEMTrainer`] with any loss of the registry (`--loss_name`), metrics without the network
  (accuracy, balanced accuracy, expected calibration error).
* **Model cards**: the HEM card of [`hf_hem.cards`], with real `model-index` entries, in the output folder, in every
  checkpoint folder, and on the Hub with `--push_to_hub`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch
import transformers
import yaml
from datasets import ClassLabel, DatasetDict, load_dataset
from datasets import Image as ImageFeature
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ConvNextConfig,
    HfArgumentParser,
    PrinterCallback,
    ProgressCallback,
    ResNetConfig,
    SwinConfig,
    TrainerCallback,
    ViTConfig,
    set_seed,
)

from ..cards import training_summary_from_args, write_model_card
from ..data import build_classification_transforms, collate_fn, load_digits_dataset
from ..losses.registry import MARGIN_LOSS_NAMES
from ..metrics import (
    accuracy,
    balanced_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    rejection_metrics,
    softmax,
)
from ..trainer.hem_config import HEMConfig
from ..trainer.hem_trainer import HEMTrainer


logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_DATASET_NAME",
    "EMBEDDED_TRAINING_DEFAULTS",
    "SCRATCH_MODEL_TYPES",
    "DataTrainingArguments",
    "HEMModelCardCallback",
    "ImageClassificationData",
    "ImageClassificationTrainer",
    "ModelArguments",
    "PushToHubError",
    "build_model_and_image_processor",
    "load_image_classification_data",
    "make_compute_metrics",
    "parse_image_classification_args",
    "peek_data_arguments",
    "run_image_classification",
    "scratch_model_config",
]

#: Model types `--model_type` can build from a config (no download), sized for small images.
SCRATCH_MODEL_TYPES = ("resnet", "vit", "swin", "convnext")

#: Name under which the embedded digits appear in model cards and reports.
EMBEDDED_DATASET_NAME = "sklearn-digits"

#: Training defaults used when no dataset is given (the embedded digits and a model from config). They replace the
#: `TrainingArguments` defaults, which are meant for fine-tuning pretrained models, and are overridden by anything set
#: on the command line or in a config file.
EMBEDDED_TRAINING_DEFAULTS = {
    "num_train_epochs": 10.0,
    "learning_rate": 3e-3,
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 10,
    "report_to": "none",
}

CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")

# Split names taken as the evaluation split, in order of preference, when `eval_split_name` is not given.
_EVAL_SPLIT_CANDIDATES = ("validation", "valid", "val", "test")
_OOD_SPLIT_CANDIDATES = ("test", "validation", "train")
_IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values")
# Metrics that go onto the model card (after dropping the `eval_` prefix); the `hem/*` training diagnostics and the
# Trainer's bookkeeping stay in the logs.
_CARD_METRIC_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "ece",
    "loss",
    "rejection_auroc_msp",
    "rejection_fpr95_msp",
    "rejection_auroc_mls",
    "rejection_fpr95_mls",
    "ood_auroc_msp",
    "ood_fpr95_msp",
    "ood_auroc_mls",
    "ood_fpr95_mls",
)


# --------------------------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class ModelArguments:
    """Arguments for the model and image processor: a pretrained checkpoint, or a small model from its config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint to fine-tune (Hub id or local folder). Default: none, a model of --model_type is built "
            "from its config with random weights."
        },
    )
    model_type: str = field(
        default="resnet",
        metadata={
            "help": "Architecture built from scratch when --model_name_or_path is not given.",
            "choices": list(SCRATCH_MODEL_TYPES),
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path if not the same as --model_name_or_path."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated scalar config overrides, e.g. 'hidden_size=128,num_hidden_layers=6' for vit "
            "(PretrainedConfig.update_from_string)."
        },
    )
    image_size: int = field(
        default=32,
        metadata={
            "help": "Side of the input images for a model built from its config, and of the embedded digits "
            "(upscaled from 8x8)."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store the models and datasets downloaded from the Hub."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "The model version to use (branch name, tag name or commit id)."}
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor name or path if not the same as --model_name_or_path."}
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token for private models and datasets. Default: the token of `hf auth login`."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the Hub (only for repos you trust)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialise the classification head when its size differs (a new number of classes)."},
    )

    def __post_init__(self):
        if self.model_name_or_path is None and self.model_type not in SCRATCH_MODEL_TYPES:
            raise ValueError(
                f"model_type={self.model_type!r} cannot be built from scratch; expected one of "
                f"{', '.join(SCRATCH_MODEL_TYPES)} (or give --model_name_or_path)."
            )
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}.")


@dataclass
class DataTrainingArguments:
    """Arguments for the data: where it comes from, which classes are held out as unknown, and augmentation."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset to train on (e.g. 'cifar10', 'AI-Lab-Makerere/beans'). Default: none; without "
            "--dataset_name and --train_dir the embedded scikit-learn digits are used (offline)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the dataset."})
    train_dir: str | None = field(
        default=None, metadata={"help": "Image folder with the training images, one sub-folder per class."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Image folder with the validation images, one sub-folder per class."}
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Share of train held out for validation when there is no validation split."}
    )
    eval_split_name: str | None = field(
        default=None,
        metadata={"help": "Split to evaluate on. Default: the first of validation, valid, val, test that exists."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the training set to this many examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the evaluation set (and the unknown and OOD sets) to this many examples."},
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    # The label column is `--label_column_name` of HEMConfig (the same flag as in the transformers examples; it also
    # names the column HEMTrainer counts margins from): `label` or `labels` when not given.
    unknown_classes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Classes held out of training and scored as unknown after training (names or class ids, e.g. "
            "'--unknown_classes 8 9'). Their validation images give the unknown-class rejection metrics."
        },
    )
    ood_dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset of out-of-distribution images, scored as unknown."}
    )
    ood_dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the OOD dataset."})
    ood_dir: str | None = field(default=None, metadata={"help": "Image folder of out-of-distribution images."})
    ood_split: str | None = field(
        default=None, metadata={"help": "Split of the OOD dataset. Default: the first of test, validation, train."}
    )
    ood_image_column_name: str | None = field(
        default=None, metadata={"help": "Image column of the OOD dataset. Default: as --image_column_name."}
    )
    min_crop_scale: float | None = field(
        default=None,
        metadata={
            "help": "Smallest area share of the random resized crop. Default: 0.08 (as torchvision), 0.7 for the "
            "embedded digits."
        },
    )
    horizontal_flip: bool | None = field(
        default=None,
        metadata={"help": "Random horizontal flips in training. Default: true, false for the embedded digits."},
    )

    def __post_init__(self):
        if self.dataset_name is not None and (self.train_dir is not None or self.validation_dir is not None):
            raise ValueError(
                f"dataset_name={self.dataset_name!r} and train_dir/validation_dir are exclusive; give one data source."
            )
        if self.validation_dir is not None and self.train_dir is None:
            raise ValueError(f"validation_dir={self.validation_dir!r} needs --train_dir as well.")
        if self.ood_dataset_name is not None and self.ood_dir is not None:
            raise ValueError(
                f"ood_dataset_name={self.ood_dataset_name!r} and ood_dir={self.ood_dir!r} are exclusive; give one."
            )
        if not (isinstance(self.train_val_split, (int, float)) and 0.0 < self.train_val_split < 1.0):
            raise ValueError(f"train_val_split must be strictly between 0 and 1, got {self.train_val_split!r}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        if self.min_crop_scale is not None and not (0.0 < self.min_crop_scale <= 1.0):
            raise ValueError(f"min_crop_scale must be in (0, 1], got {self.min_crop_scale!r}.")
        if self.unknown_classes is not None:
            self.unknown_classes = _split_class_list(self.unknown_classes)

    @property
    def uses_embedded_dataset(self) -> bool:
        """`True` when no data source is given and the embedded digits are used."""
        return self.dataset_name is None and self.train_dir is None


def _split_class_list(values) -> list[str] | None:
    """`['8,9']`, `['8', '9']`, `[8, 9]` and `'8,9'` all become `['8', '9']`."""
    if isinstance(values, (str, int)):
        values = [values]
    tokens = [token.strip() for value in values for token in str(value).split(",")]
    tokens = [token for token in tokens if token]
    return tokens or None


# --------------------------------------------------------------------------------------------------------------------
# Argument parsing (command line, config file, embedded defaults)


def _enable_cpu_distributed_without_gpus() -> None:
    """Make a multi-process launch on a machine without GPUs train with CPU DDP (gloo).

    `accelerate launch --multi_gpu --num_processes 2` (or a `MULTI_GPU` config) starts the processes through torchrun
    even without GPUs, but `TrainingArguments` only initialises a CPU process group when `use_cpu` or
    `ACCELERATE_USE_CPU` is set; otherwise every process trains alone on the full data. The device is set up while
    the arguments are parsed, so this must run first.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and not torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in os.environ:
        os.environ["ACCELERATE_USE_CPU"] = "true"


def _read_config_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of argument names to values, got {type(values)}.")
    return values


def _split_config_file(argv: Sequence[str] | None) -> tuple[list[str], dict[str, Any]]:
    """`(remaining flags, values of the leading config file)`; the file is optional."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        return argv[1:], _read_config_file(argv[0])
    return argv, {}


def peek_data_arguments(argv: Sequence[str] | None = None, file_values: dict[str, Any] | None = None):
    """The [`DataTrainingArguments`] of a command line, ignoring every other flag and setting up nothing.

    Args:
        argv (`Sequence[str]`, *optional*): As for [`parse_image_classification_args`] (a leading config file is read
            unless `file_values` is given).
        file_values (`dict`, *optional*): Values of a config file already read.

    Returns:
        [`DataTrainingArguments`]
    """
    if file_values is None:
        argv, file_values = _split_config_file(argv)
    # Constructing HEMConfig sets up devices (and a process group under a launcher), so only this dataclass is parsed.
    data_parser = HfArgumentParser(DataTrainingArguments)
    data_fields = {f.name for f in fields(DataTrainingArguments)}
    data_parser.set_defaults(**{key: value for key, value in file_values.items() if key in data_fields})
    namespace, _ = data_parser.parse_known_args(list(argv))
    return DataTrainingArguments(**{name: getattr(namespace, name) for name in data_fields})


def parse_image_classification_args(argv: Sequence[str] | None = None):
    """Parse the script's arguments into `(ModelArguments, DataTrainingArguments, HEMConfig)`.

    Accepted forms, as in the transformers examples plus overrides:

    * `--flag value ...`: every field of the three dataclasses;
    * `config.yaml` or `config.json` alone: all arguments from the file;
    * `config.yaml --flag value ...`: the file, then the flags on top.

    `do_train` and `do_eval` default to `True` (switch one off with `--do_train false`). Without a data source,
    [`EMBEDDED_TRAINING_DEFAULTS`] replace the `TrainingArguments` defaults. Anything given still wins.

    Args:
        argv (`Sequence[str]`, *optional*): Arguments without the program name. Defaults to `sys.argv[1:]`.

    Returns:
        `tuple[ModelArguments, DataTrainingArguments, HEMConfig]`.
    """
    _enable_cpu_distributed_without_gpus()
    argv, file_values = _split_config_file(argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, HEMConfig))
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ValueError(f"config file has unknown arguments {unknown}; expected fields of the script's arguments.")

    # Train and evaluate unless told otherwise (`--do_train false`); the transformers examples need both flags.
    defaults: dict[str, Any] = {"do_train": True, "do_eval": True}
    if peek_data_arguments(argv, file_values).uses_embedded_dataset:
        defaults.update(EMBEDDED_TRAINING_DEFAULTS)
    defaults.update(file_values)
    parser.set_defaults(**defaults)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


# --------------------------------------------------------------------------------------------------------------------
# Data


def _pick_eval_split(dataset_dict, requested: str | None) -> str | None:
    if requested is not None:
        if requested not in dataset_dict:
            raise ValueError(
                f"eval_split_name={requested!r} is not a split of the dataset; splits: {list(dataset_dict)}."
            )
        return requested
    return next((name for name in _EVAL_SPLIT_CANDIDATES if name in dataset_dict), None)


class ImageClassificationData(NamedTuple):
    """What [`load_image_classification_data`] returns."""

    dataset: DatasetDict  # splits "train" and "validation"
    name: str  # the dataset's name in cards and reports
    label_column: str
    eval_split: str  # where the "validation" split comes from, e.g. "test" or "train (15% held out)"


def load_image_classification_data(
    data_args: DataTrainingArguments, model_args: ModelArguments, label_column: str | None = None, seed: int = 0
):
    """Load the training data as a `DatasetDict` with `train` and `validation` splits.

    Args:
        data_args ([`DataTrainingArguments`]): The data source and split settings.
        model_args ([`ModelArguments`]): `cache_dir`, `token`, and `image_size` for the embedded digits.
        label_column (`str`, *optional*): Column holding the labels; `label` or `labels` when not given.
        seed (`int`, *optional*, defaults to 0): Seed of the train/validation split when the dataset has none.

    Returns:
        [`ImageClassificationData`]: the splits, the dataset's name for cards and reports, the label column, and
        the split the validation images come from.
    """
    if data_args.uses_embedded_dataset:
        digits = load_digits_dataset(image_size=model_args.image_size, seed=seed)
        return ImageClassificationData(digits, EMBEDDED_DATASET_NAME, "label", "validation")
    if data_args.dataset_name is not None:
        loaded = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
        name = data_args.dataset_name
    else:
        data_files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        loaded = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)
        # `data/beans/train` is better named by its parent than by "train".
        train_path = Path(data_args.train_dir).resolve()
        name = train_path.parent.name if train_path.name.lower() in ("train", "training") else train_path.name
    if "train" not in loaded:
        raise ValueError(f"the dataset has no 'train' split; splits: {list(loaded)}.")
    eval_split = _pick_eval_split(loaded, data_args.eval_split_name)
    columns = loaded["train"].column_names
    if label_column is None:
        label_column = next((name for name in ("label", "labels") if name in columns), None)
    for column, flag in ((data_args.image_column_name, "--image_column_name"), (label_column, "--label_column_name")):
        if column is None or column not in columns:
            raise ValueError(f"column {column!r} not found in the training split; columns: {columns}. Set {flag}.")
    if eval_split is None:
        stratify = label_column if isinstance(loaded["train"].features[label_column], ClassLabel) else None
        split = loaded["train"].train_test_split(data_args.train_val_split, seed=seed, stratify_by_column=stratify)
        splits = DatasetDict({"train": split["train"], "validation": split["test"]})
        return ImageClassificationData(splits, name, label_column, f"train ({data_args.train_val_split:.0%} held out)")
    splits = DatasetDict({"train": loaded["train"], "validation": loaded[eval_split]})
    return ImageClassificationData(splits, name, label_column, eval_split)


def _class_names(dataset_dict, label_column: str) -> tuple[list[str], dict[Any, str]]:
    """Class names in class-id order and the map raw label value -> name (ClassLabel ids or plain values)."""
    feature = dataset_dict["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), dict(enumerate(feature.names))
    values = set()
    for split in dataset_dict.values():
        values.update(split.with_format("arrow")[label_column].to_pylist())
    if None in values:
        raise ValueError(f"label column {label_column!r} has missing (null) labels; every image needs a label.")
    ordered = sorted(values)
    return [str(value) for value in ordered], {value: str(value) for value in ordered}


def _resolve_unknown_classes(names: list[str], tokens: list[str] | None) -> list[str]:
    """Unknown class names from names or class ids given on the command line."""
    if not tokens:
        return []
    unknown = []
    for token in tokens:
        if token in names:
            unknown.append(token)
        elif token.lstrip("-").isdigit() and 0 <= int(token) < len(names):
            unknown.append(names[int(token)])
        else:
            raise ValueError(
                f"unknown class {token!r} is neither a class name nor a class id; classes: {names} "
                f"(ids 0..{len(names) - 1})."
            )
    unknown = list(dict.fromkeys(unknown))
    if len(names) - len(unknown) < 2:
        raise ValueError(
            f"holding out {unknown} leaves {len(names) - len(unknown)} known classes; at least 2 must remain."
        )
    return unknown


def _filter_by_label(dataset, label_column: str, keep_values: set):
    """Rows whose raw label is in `keep_values`; reads only the label column (images are not decoded)."""
    return dataset.filter(
        lambda labels: [label in keep_values for label in labels],
        input_columns=[label_column],
        batched=True,
        batch_size=10_000,
    )


def _truncate(dataset, max_samples: int | None, seed: int):
    if max_samples is None or len(dataset) <= max_samples:
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def _load_ood_dataset(data_args: DataTrainingArguments, model_args: ModelArguments):
    """The out-of-distribution images as `(dataset, image column)`, or `(None, None)` when none is configured."""
    if data_args.ood_dataset_name is None and data_args.ood_dir is None:
        return None, None
    if data_args.ood_dataset_name is not None:
        loaded = load_dataset(
            data_args.ood_dataset_name,
            data_args.ood_dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    else:
        if not os.path.isdir(data_args.ood_dir):
            raise ValueError(f"ood_dir={data_args.ood_dir!r} is not a folder.")
        loaded = load_dataset("imagefolder", data_dir=data_args.ood_dir, cache_dir=model_args.cache_dir)
    if data_args.ood_split is not None:
        if data_args.ood_split not in loaded:
            raise ValueError(f"ood_split={data_args.ood_split!r} is not a split of the OOD dataset: {list(loaded)}.")
        split = data_args.ood_split
    else:
        split = next(name for name in (*_OOD_SPLIT_CANDIDATES, *loaded) if name in loaded)
    dataset = loaded[split]
    column = data_args.ood_image_column_name
    if column is None:
        candidates = [data_args.image_column_name, *_IMAGE_COLUMN_CANDIDATES]
        candidates += [name for name, feature in dataset.features.items() if isinstance(feature, ImageFeature)]
        column = next((name for name in candidates if name in dataset.column_names), None)
    if column is None or column not in dataset.column_names:
        raise ValueError(
            f"no image column {column!r} in the OOD dataset; columns: {dataset.column_names}. "
            "Set --ood_image_column_name."
        )
    return dataset, column


# --------------------------------------------------------------------------------------------------------------------
# Model


def scratch_model_config(model_type: str, image_size: int, num_labels: int, id2label=None, label2id=None):
    """A small config of `model_type`, sized for `image_size` inputs and trainable in minutes on a CPU.

    Args:
        model_type (`str`): One of [`SCRATCH_MODEL_TYPES`].
        image_size (`int`): Input side in pixels.
        num_labels (`int`): Number of classes.
        id2label (`dict[int, str]`, *optional*), label2id (`dict[str, int]`, *optional*): Class names.

    Returns:
        [`~transformers.PretrainedConfig`]: e.g. a 3-stage basic-block ResNet with 32/64/128 channels.
    """
    common = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id, "num_channels": 3}
    if model_type == "resnet":
        # Stride-4 stem, then 3 stages: 32 px inputs end at 2x2 before pooling.
        return ResNetConfig(
            embedding_size=32,
            hidden_sizes=[32, 64, 128],
            depths=[1, 1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
            **common,
        )
    if model_type == "convnext":
        return ConvNextConfig(patch_size=2, num_stages=3, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], **common)
    if model_type == "vit":
        return ViTConfig(
            image_size=image_size,
            patch_size=max(2, image_size // 8),
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            **common,
        )
    if model_type == "swin":
        patch_size = max(2, image_size // 16)
        window = max(2, min(4, image_size // patch_size // 2))
        return SwinConfig(
            image_size=image_size,
            patch_size=patch_size,
            embed_dim=32,
            depths=[2, 2],
            num_heads=[2, 4],
            window_size=window,
            **common,
        )
    raise ValueError(f"model_type={model_type!r} cannot be built from scratch; expected one of {SCRATCH_MODEL_TYPES}.")


def _scratch_image_processor(image_size: int):
    """A plain resize-rescale-normalise processor; saved beside the model so `AutoImageProcessor` loads it."""
    try:  # transformers >= 5 without torchvision: the PIL backend, named explicitly to avoid a fallback warning
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil as ProcessorClass
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as ProcessorClass

    return ProcessorClass(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_model_and_image_processor(model_args: ModelArguments, id2label: dict[int, str], label2id: dict[str, int]):
    """The model (pretrained or from config) and its image processor.

    Args:
        model_args ([`ModelArguments`]): Where the model comes from.
        id2label (`dict[int, str]`), label2id (`dict[str, int]`): The classes the model predicts.

    Returns:
        `tuple[PreTrainedModel, BaseImageProcessor]`.
    """
    num_labels = len(id2label)
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    if model_args.model_name_or_path is None:
        if model_args.config_name is not None:
            config = AutoConfig.from_pretrained(
                model_args.config_name, num_labels=num_labels, id2label=id2label, label2id=label2id, **hub_kwargs
            )
        else:
            config = scratch_model_config(model_args.model_type, model_args.image_size, num_labels, id2label, label2id)
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
        config.finetuning_task = "image-classification"
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=model_args.trust_remote_code)
        if model_args.image_processor_name is not None:
            image_processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name, **hub_kwargs)
        else:
            image_processor = _scratch_image_processor(model_args.image_size)
        return model, image_processor

    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=num_labels,
        id2label=id2label,
        label2id=label2id,
        finetuning_task="image-classification",
        trust_remote_code=model_args.trust_remote_code,
        **hub_kwargs,
    )
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        trust_remote_code=model_args.trust_remote_code,
        **hub_kwargs,
    )
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
        **hub_kwargs,
    )
    return model, image_processor


# --------------------------------------------------------------------------------------------------------------------
# Transforms and metrics


class _RelabelledTransform:
    """Runs a batch transform, then maps raw labels (ClassLabel ids or values) to the known-class ids.

    A class (not a closure) so that DataLoader workers can pickle it.
    """

    def __init__(self, transform: Callable, raw_to_id: dict | None):
        self.transform = transform
        self.raw_to_id = raw_to_id

    def __call__(self, batch):
        output = self.transform(batch)
        if self.raw_to_id is not None and "labels" in output:
            output["labels"] = [self.raw_to_id[value] for value in output["labels"]]
        return output


def _logits_array(predictions) -> np.ndarray:
    # Models that also return hidden states give a tuple; the logits come first.
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return np.asarray(predictions, dtype=np.float64)


def make_compute_metrics(num_labels: int, n_bins: int = 15) -> Callable:
    """`compute_metrics` for the Trainer: accuracy, balanced accuracy and expected calibration error (NumPy only).

    Args:
        num_labels (`int`): Number of (known) classes.
        n_bins (`int`, *optional*, defaults to 15): Confidence bins of the calibration error.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: keys `accuracy`, `balanced_accuracy`, `ece`.
    """

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = _logits_array(eval_prediction.predictions)
        labels = np.asarray(eval_prediction.label_ids).astype(np.int64)
        predictions = logits.argmax(axis=-1)
        return {
            "accuracy": accuracy(predictions, labels),
            "balanced_accuracy": balanced_accuracy(predictions, labels, num_classes=num_labels),
            "ece": expected_calibration_error(softmax(logits), labels, n_bins=n_bins),
        }

    return compute_metrics


def _rejection_summary(known_logits: np.ndarray, unknown_logits: np.ndarray, prefix: str) -> dict[str, float]:
    """MSP and max-logit AUROC / FPR@95%TPR of known vs unknown, named `<prefix>_auroc_msp` etc."""
    values = rejection_metrics(known_logits, unknown_logits)
    summary = {}
    for score in ("msp", "mls"):
        summary[f"{prefix}_auroc_{score}"] = values[f"{score}_auroc"]
        summary[f"{prefix}_fpr95_{score}"] = values[f"{score}_fpr95"]
    return summary


# --------------------------------------------------------------------------------------------------------------------
# Model cards and Hub


class PushToHubError(RuntimeError):
    """Pushing to the Hub failed after training; the message names the local folder that holds the trained model."""


def _scrub(text: str, secrets: Sequence[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _latest_eval_metrics(log_history: list[dict]) -> dict[str, float]:
    for entry in reversed(log_history):
        if any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return {}


def _card_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    selected = {}
    for key, value in metrics.items():
        short = key[len("eval_") :] if key.startswith("eval_") else None
        if short in _CARD_METRIC_KEYS and isinstance(value, (int, float)) and math.isfinite(value):
            selected[short] = float(value)
    return selected


class HEMModelCardCallback(TrainerCallback):
    """Writes the HEM model card (`README.md`) into every checkpoint folder, and into the output folder.

    The card in the output folder is what checkpoint pushes (`hub_strategy`) upload, so the Hub never shows the stock
    Trainer card while training runs. Only the main process writes.

    Args:
        card_kwargs (`Callable[[dict[str, float]], dict]`): Given the latest evaluation metrics (`eval_*` keys, may be
            empty), returns the keyword arguments of [`hf_hem.cards.write_model_card`].
    """

    def __init__(self, card_kwargs: Callable[[dict[str, float]], dict]):
        self.card_kwargs = card_kwargs

    def _write(self, folder: str, metrics: dict) -> None:
        write_model_card(folder, **self.card_kwargs(metrics))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and args.should_save and args.output_dir:
            self._write(args.output_dir, {})

    def on_save(self, args, state, control, **kwargs):
        if not (state.is_world_process_zero and args.should_save):
            return
        metrics = _latest_eval_metrics(state.log_history)
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(checkpoint):
            self._write(checkpoint, metrics)
        self._write(args.output_dir, metrics)


class ImageClassificationTrainer(HEMTrainer):
    """[`~hf_hem.HEMTrainer`] that writes HEM model cards and survives an unreachable Hub until the final push.

    * `create_model_card` (called by `push_to_hub`) writes the HEM card of [`hf_hem.cards`], not the stock one;
    * every checkpoint gets the card too ([`HEMModelCardCallback`]);
    * if the Hub repo cannot be created when training starts, training goes on and checkpoint pushes are
      skipped; the final `push_to_hub` tries again and raises if the Hub is still unreachable;
    * `save_model` only saves to disk (the stock one also pushes); push with `push_to_hub`.

    Args:
        card_kwargs (`Callable[[dict[str, float]], dict]`): As for [`HEMModelCardCallback`].
        final_metrics (`Callable[[], dict[str, float]]`, *optional*): Metrics for the card written by
            `push_to_hub`; defaults to the latest evaluation in the log history.
        **kwargs: Arguments of [`~hf_hem.HEMTrainer`].
    """

    # Base `Trainer.__init__` calls `init_hf_repo` before this class's `__init__` body runs.
    _defer_hub_errors = True

    def __init__(self, *args, card_kwargs: Callable[[dict], dict], final_metrics=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_kwargs = card_kwargs
        self.final_metrics = final_metrics
        self.add_callback(HEMModelCardCallback(card_kwargs))

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:
            if not self._defer_hub_errors:
                raise
            self.hub_model_id = None
            secrets = [token, self.args.hub_token]
            logger.warning(
                "Could not create the Hub repo %r (%s: %s). Training continues, checkpoints are not pushed, and "
                "the push is retried at the end.",
                self.args.hub_model_id,
                type(error).__name__,
                _scrub(str(error), secrets),
            )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.hub_model_id is None:
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def push_to_hub(self, *args, **kwargs):
        self._defer_hub_errors = False
        return super().push_to_hub(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # `Trainer.save_model` also pushes when `push_to_hub` is set, before the final evaluation and card exist,
        # and then the pipeline pushes again. Saving here only writes to disk; the one final push is explicit
        # (`push_to_hub`), and the model is on disk even when that push fails.
        super().save_model(output_dir, _internal_call=True)

    def create_model_card(self, *args, **kwargs) -> None:
        """Writes the HEM card to `output_dir/README.md` (the stock card's arguments are not used)."""
        if not self.is_world_process_zero():
            return
        metrics = self.final_metrics() if self.final_metrics is not None else None
        if metrics is None:
            metrics = _latest_eval_metrics(self.state.log_history)
        write_model_card(self.args.output_dir, **self.card_kwargs(metrics))


def _loss_settings(trainer, training_args) -> dict[str, Any]:
    """What the card shows about the loss: the margins actually used, their scale and counts."""
    name = training_args.loss_name
    margins = trainer.margins
    counts = trainer.class_counts
    settings: dict[str, Any] = {}
    if name in MARGIN_LOSS_NAMES and margins is not None:
        if training_args.per_class_margins:
            settings["margins"] = [float(value) for value in margins]
        else:
            settings["margin"] = float(margins[0])
        if training_args.margin is None:
            settings["margin_scale"] = training_args.margin_scale
            if counts is not None:
                settings["num_train_samples"] = int(training_args.num_margin_samples or np.sum(counts))
    elif name == "la":
        settings["tau"] = training_args.la_tau
    elif name == "logitnorm":
        settings["temperature"] = training_args.logitnorm_temperature
    elif name == "focal":
        settings["gamma"] = training_args.focal_gamma
    if counts is not None and (name in ("hem+", "la") or training_args.per_class_margins):
        settings["class_counts"] = [int(value) for value in counts]
    return settings


# --------------------------------------------------------------------------------------------------------------------
# The pipeline


def _setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("hf_hem").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def run_image_classification(
    model_args: ModelArguments, data_args: DataTrainingArguments, training_args, *, callbacks: Sequence | None = None
) -> dict:
    """Train and evaluate an image classifier with the loss of `training_args`, save it with its card, and push.

    Training runs when `training_args.do_train` is set, evaluation when `do_eval` is ([`parse_image_classification_args`]
    sets both by default); with neither (nor `do_predict`) set, both run. The output folder receives the model, its image
    processor, the HEM model card (`README.md`), `all_results.json`, and `predictions.npz` (validation logits and
    labels, and the logits of the unknown-class and OOD images) for plots such as `hf-hem compare`'s.

    Args:
        model_args ([`ModelArguments`]): Model and image processor.
        data_args ([`DataTrainingArguments`]): Data, unknown classes, OOD set, augmentation.
        training_args ([`HEMConfig`]): Training and loss settings.
        callbacks (`Sequence[TrainerCallback]`, *optional*): Extra Trainer callbacks. A `ProgressCallback` among them
            replaces the Trainer's own progress display (`hf-hem compare` uses this for its nested progress bars).

    Returns:
        `dict[str, float]`: the metrics also saved in `all_results.json`: `train_*`, `eval_accuracy`,
        `eval_balanced_accuracy`, `eval_ece`, `eval_loss`, and with unknown classes `eval_rejection_auroc_msp`,
        `eval_rejection_fpr95_msp`, `eval_rejection_auroc_mls`, `eval_rejection_fpr95_mls` (`eval_ood_*` likewise for
        an OOD set).

    Raises:
        [`PushToHubError`]: `--push_to_hub` failed; the model is saved locally and the message says where.
    """
    _setup_logging(training_args)
    do_train, do_eval = training_args.do_train, training_args.do_eval
    if not (do_train or do_eval or training_args.do_predict):
        do_train = do_eval = True
    # The transforms read the raw image column, which the Trainer would otherwise drop as unused by the model.
    training_args.remove_unused_columns = False
    if training_args.hub_token:
        # The Trainer pickles its arguments into training_args.bin, which every push uploads: the token moves to the
        # process environment, where huggingface_hub looks for it on each request.
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # nothing to pin for; avoids a warning per DataLoader
    set_seed(training_args.seed)

    # ---- data ----
    with training_args.main_process_first(desc="loading the dataset"):
        dataset, dataset_name, label_column, eval_split = load_image_classification_data(
            data_args, model_args, label_column=training_args.label_column_name, seed=training_args.seed
        )
        names, raw_to_name = _class_names(dataset, label_column)
        unknown_names = _resolve_unknown_classes(names, data_args.unknown_classes)
        known_names = [name for name in names if name not in unknown_names]
        raw_to_id = {raw: known_names.index(name) for raw, name in raw_to_name.items() if name not in unknown_names}
        known_raw = set(raw_to_id)
        unknown_raw = {raw for raw, name in raw_to_name.items() if name in unknown_names}
        train_dataset = dataset["train"]
        eval_dataset = dataset["validation"]
        unknown_dataset = None
        if unknown_names:
            train_dataset = _filter_by_label(train_dataset, label_column, known_raw)
            unknown_dataset = _filter_by_label(eval_dataset, label_column, unknown_raw)
            eval_dataset = _filter_by_label(eval_dataset, label_column, known_raw)
        train_dataset = _truncate(train_dataset, data_args.max_train_samples, training_args.seed)
        eval_dataset = _truncate(eval_dataset, data_args.max_eval_samples, training_args.seed)
        if unknown_dataset is not None:
            unknown_dataset = _truncate(unknown_dataset, data_args.max_eval_samples, training_args.seed)
        ood_dataset, ood_image_column = _load_ood_dataset(data_args, model_args)
        if ood_dataset is not None:
            ood_dataset = _truncate(ood_dataset, data_args.max_eval_samples, training_args.seed)
    if len(train_dataset) == 0:
        raise ValueError("the training set is empty after holding out the unknown classes.")
    if unknown_dataset is not None and len(unknown_dataset) == 0:
        raise ValueError(f"the evaluation split has no image of the unknown classes {unknown_names}.")

    id2label = dict(enumerate(known_names))
    label2id = {name: index for index, name in id2label.items()}
    logger.info(
        "Dataset %s: %d training and %d validation images of %d known classes%s.",
        dataset_name,
        len(train_dataset),
        len(eval_dataset),
        len(known_names),
        f"; unknown classes {unknown_names} ({len(unknown_dataset)} validation images)" if unknown_names else "",
    )

    # ---- model ----
    model, image_processor = build_model_and_image_processor(model_args, id2label, label2id)

    # ---- transforms ----
    embedded = data_args.uses_embedded_dataset
    min_crop_scale = data_args.min_crop_scale or (0.7 if embedded else 0.08)
    horizontal_flip = data_args.horizontal_flip if data_args.horizontal_flip is not None else not embedded
    image_column = data_args.image_column_name

    def transform(train: bool, with_labels: bool, column: str = image_column):
        base = build_classification_transforms(
            image_processor,
            train=train,
            image_column=column,
            label_column=label_column if with_labels else None,
            crop_scale=(min_crop_scale, 1.0),
            horizontal_flip=horizontal_flip,
            seed=training_args.seed if train else None,
        )
        return _RelabelledTransform(base, raw_to_id if with_labels else None)

    train_dataset.set_transform(transform(train=True, with_labels=True))
    eval_dataset.set_transform(transform(train=False, with_labels=True))
    if unknown_dataset is not None:
        unknown_dataset.set_transform(transform(train=False, with_labels=False))
    if ood_dataset is not None:
        ood_dataset.set_transform(transform(train=False, with_labels=False, column=ood_image_column))

    # ---- margins: counted on the known classes, in the ids the model predicts ----
    if training_args.class_counts is None:
        raw_labels = train_dataset.with_format("arrow")[label_column].to_pylist()
        ids = np.fromiter((raw_to_id[value] for value in raw_labels), dtype=np.int64, count=len(raw_labels))
        training_args.class_counts = np.bincount(ids, minlength=len(known_names)).tolist()

    # Filled in as the run goes: the trainer (for its margins), and after evaluation the metrics for the card.
    card_state: dict[str, Any] = {"trainer": None, "metrics": None, "per_class_accuracy": None}

    def card_kwargs(metrics: dict) -> dict:
        trainer = card_state["trainer"]
        hub_model_id = trainer.hub_model_id or training_args.hub_model_id
        model_name = (hub_model_id or Path(training_args.output_dir or "model").resolve().name).split("/")[-1]
        return {
            "model_name": model_name,
            "base_model": model_args.model_name_or_path,
            "hub_model_id": hub_model_id,
            "dataset_name": dataset_name,
            "dataset_config": data_args.dataset_config_name,
            "eval_split": eval_split,
            "task": "image-classification",
            "loss_name": training_args.loss_name,
            "loss_settings": _loss_settings(trainer, training_args),
            "metrics": _card_metrics(metrics),
            "per_class_table": card_state["per_class_accuracy"],
            "class_names": known_names,
            "tags": ["image-classification", "vision"],
            "training_summary": training_summary_from_args(training_args),
        }

    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if do_train else None,
        eval_dataset=eval_dataset if (do_eval or training_args.eval_strategy != "no") else None,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=make_compute_metrics(len(known_names)),
        card_kwargs=card_kwargs,
        final_metrics=lambda: card_state["metrics"],
    )
    card_state["trainer"] = trainer
    for callback in callbacks or ():
        if isinstance(callback, (ProgressCallback, PrinterCallback)):
            for existing in list(trainer.callback_handler.callbacks):
                if type(existing) in (ProgressCallback, PrinterCallback):
                    trainer.remove_callback(existing)
        trainer.add_callback(callback)

    results: dict[str, float] = {}
    if do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        train_metrics = dict(train_result.metrics)
        train_metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        results.update(train_metrics)
    elif training_args.should_save:
        trainer.save_model()

    if do_eval:
        known = trainer.predict(eval_dataset, metric_key_prefix="eval")
        eval_metrics = dict(known.metrics)
        eval_metrics["eval_samples"] = len(eval_dataset)
        known_logits = _logits_array(known.predictions)
        known_labels = np.asarray(known.label_ids).astype(np.int64)
        arrays = {"eval_logits": known_logits, "eval_labels": known_labels}
        if unknown_dataset is not None:
            unknown_logits = _logits_array(trainer.predict(unknown_dataset, metric_key_prefix="unknown").predictions)
            eval_metrics.update(
                {
                    f"eval_{key}": value
                    for key, value in _rejection_summary(known_logits, unknown_logits, "rejection").items()
                }
            )
            eval_metrics["eval_unknown_samples"] = len(unknown_dataset)
            arrays["unknown_logits"] = unknown_logits
        if ood_dataset is not None:
            ood_logits = _logits_array(trainer.predict(ood_dataset, metric_key_prefix="ood").predictions)
            eval_metrics.update(
                {f"eval_{key}": value for key, value in _rejection_summary(known_logits, ood_logits, "ood").items()}
            )
            eval_metrics["eval_ood_samples"] = len(ood_dataset)
            arrays["ood_logits"] = ood_logits
        trainer.log(eval_metrics)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        results.update(eval_metrics)
        card_state["metrics"] = eval_metrics
        accuracies = per_class_accuracy(known_logits.argmax(axis=-1), known_labels, num_classes=len(known_names))
        card_state["per_class_accuracy"] = {
            name: float(value) for name, value in zip(known_names, accuracies) if np.isfinite(value)
        }
        if trainer.is_world_process_zero() and training_args.output_dir:
            np.savez(
                os.path.join(training_args.output_dir, "predictions.npz"),
                class_names=np.asarray(known_names),
                unknown_class_names=np.asarray(unknown_names),
                **arrays,
            )

    if trainer.is_world_process_zero() and training_args.should_save:
        trainer.create_model_card()
        with open(os.path.join(training_args.output_dir, "hem_run.json"), "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "dataset_name": dataset_name,
                    "model": model_args.model_name_or_path or f"{model_args.model_type} (from config)",
                    "loss_name": training_args.loss_name,
                    "known_classes": known_names,
                    "unknown_classes": unknown_names,
                    "num_train_samples": len(train_dataset),
                },
                handle,
                indent=2,
            )

    if training_args.push_to_hub:
        try:
            trainer.push_to_hub(commit_message="End of training")
        except Exception as error:
            secrets = [training_args.hub_token, model_args.token, os.environ.get("HF_TOKEN")]
            message = (
                f"Pushing to the Hub repo {training_args.hub_model_id or trainer.hub_model_id!r} failed "
                f"({type(error).__name__}: {_scrub(str(error), secrets)}). The trained model is saved locally in "
                f"{os.path.abspath(training_args.output_dir)}; push it later with `hf upload` or `trainer.push_to_hub()`."
            )
            raise PushToHubError(message) from None
    return results
