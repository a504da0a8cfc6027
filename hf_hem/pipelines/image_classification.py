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
  checkpoint folder, and on the Hub with `--push_to_hub` ([`~hf_hem.HEMTrainer`] writes and pushes it; this module
  adds the dataset, the metrics to show and the per-class accuracy).

The argument parsing, the run skeleton and the final push are shared with the other pipelines
(`hf_hem.pipelines._common`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from datasets import ClassLabel, DatasetDict, load_dataset
from datasets import Image as ImageFeature
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    SwinConfig,
    ViTConfig,
)

from ..cards import HEMModelCardCallback
from ..counting import count_labels
from ..data import build_classification_transforms, load_digits_dataset
from ..metrics import rejection_metrics
from ..models import tiny_resnet_config
from ..trainer.hem_trainer import HEMTrainer
from ._common import (
    BaseModelArguments,
    PipelineRun,
    PushToHubError,
    build_model_and_processor,
    check_data_source,
    check_integer,
    check_model_type,
    check_split_arguments,
    eval_split_name_field,
    label_maps,
    load_hub_dataset,
    logits_array,
    make_classification_metrics,
    max_train_samples_field,
    parse_pipeline_args,
    peek_dataclass,
    per_class_accuracy_table,
    pick_eval_split,
    pipeline_card_kwargs,
    train_and_validation,
    train_val_split_field,
    truncate,
)


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
    # 15, not 10: at 10 epochs one of three CE seeds of `hf-hem compare` still moved by more than the convergence
    # tolerance over its last evaluations (docs/image_classification.md); at 15 all six runs levelled off.
    "num_train_epochs": 15.0,
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
class ModelArguments(BaseModelArguments):
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
    image_size: int = field(
        default=32,
        metadata={
            "help": "Side of the input images for a model built from its config, and of the embedded digits "
            "(upscaled from 8x8)."
        },
    )

    def __post_init__(self):
        check_model_type(self, SCRATCH_MODEL_TYPES)
        check_integer(self, "image_size", 8)


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
    train_val_split: float = train_val_split_field()
    eval_split_name: str | None = eval_split_name_field(_EVAL_SPLIT_CANDIDATES)
    max_train_samples: int | None = max_train_samples_field()
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the evaluation set (and the unknown and OOD sets) to this many examples."},
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    # A data argument, as in transformers' run_image_classification.py; the margins are counted from it here, in the
    # class ids the model predicts, and handed to the trainer as class counts.
    label_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the labels. Default: 'label' or 'labels', whichever is present."},
    )
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
        check_data_source(self, "train_dir", "validation_dir")
        if self.ood_dataset_name is not None and self.ood_dir is not None:
            raise ValueError(
                f"ood_dataset_name={self.ood_dataset_name!r} and ood_dir={self.ood_dir!r} are exclusive; give one."
            )
        check_split_arguments(self)
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


def peek_data_arguments(argv: Sequence[str] | None = None, file_values: dict[str, Any] | None = None):
    """The [`DataTrainingArguments`] of a command line, ignoring every other flag and setting up nothing.

    Args:
        argv (`Sequence[str]`, *optional*): As for [`parse_image_classification_args`] (a leading config file is read
            unless `file_values` is given).
        file_values (`dict`, *optional*): Values of a config file already read.

    Returns:
        [`DataTrainingArguments`]
    """
    return peek_dataclass(DataTrainingArguments, argv, file_values)


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
    return parse_pipeline_args(ModelArguments, DataTrainingArguments, argv, EMBEDDED_TRAINING_DEFAULTS)


# --------------------------------------------------------------------------------------------------------------------
# Data


class ImageClassificationData(NamedTuple):
    """What [`load_image_classification_data`] returns."""

    dataset: DatasetDict  # splits "train" and "validation"
    name: str  # the dataset's name in cards and reports
    label_column: str
    eval_split: str  # where the "validation" split comes from, e.g. "test" or "train (15% held out)"


def load_image_classification_data(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int = 0):
    """Load the training data as a `DatasetDict` with `train` and `validation` splits.

    Args:
        data_args ([`DataTrainingArguments`]): The data source and split settings.
        model_args ([`ModelArguments`]): `cache_dir`, `token`, and `image_size` for the embedded digits.
        seed (`int`, *optional*, defaults to 0): Seed of the train/validation split when the dataset has none.

    Returns:
        [`ImageClassificationData`]: the splits, the dataset's name for cards and reports, the label column, and
        the split the validation images come from.
    """
    if data_args.uses_embedded_dataset:
        digits = load_digits_dataset(image_size=model_args.image_size, seed=seed)
        return ImageClassificationData(digits, EMBEDDED_DATASET_NAME, "label", "validation")
    if data_args.dataset_name is not None:
        loaded, name = load_hub_dataset(data_args.dataset_name, data_args.dataset_config_name, model_args)
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
    eval_split = pick_eval_split(loaded, data_args.eval_split_name, _EVAL_SPLIT_CANDIDATES)
    columns = loaded["train"].column_names
    label_column = data_args.label_column_name
    if label_column is None:
        label_column = next((name for name in ("label", "labels") if name in columns), None)
    for column, flag in ((data_args.image_column_name, "--image_column_name"), (label_column, "--label_column_name")):
        if column is None or column not in columns:
            raise ValueError(f"column {column!r} not found in the training split; columns: {columns}. Set {flag}.")
    splits, eval_split = train_and_validation(loaded, eval_split, data_args.train_val_split, seed, label_column)
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


def _load_ood_dataset(data_args: DataTrainingArguments, model_args: ModelArguments):
    """The out-of-distribution images as `(dataset, image column)`, or `(None, None)` when none is configured."""
    if data_args.ood_dataset_name is None and data_args.ood_dir is None:
        return None, None
    if data_args.ood_dataset_name is not None:
        loaded, _ = load_hub_dataset(data_args.ood_dataset_name, data_args.ood_dataset_config_name, model_args)
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
        return tiny_resnet_config(embedding_size=32, hidden_sizes=(32, 64, 128), depths=(1, 1, 1), **common)
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
    return build_model_and_processor(
        model_args,
        AutoModelForImageClassification,
        id2label,
        label2id,
        scratch_config=lambda: scratch_model_config(
            model_args.model_type, model_args.image_size, len(id2label), id2label, label2id
        ),
        scratch_image_processor=lambda: _scratch_image_processor(model_args.image_size),
        finetuning_task="image-classification",
    )


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


def make_compute_metrics(num_labels: int, n_bins: int = 15) -> Callable:
    """`compute_metrics` for the Trainer: accuracy, balanced accuracy and expected calibration error (NumPy only).

    Args:
        num_labels (`int`): Number of (known) classes.
        n_bins (`int`, *optional*, defaults to 15): Confidence bins of the calibration error.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: keys `accuracy`, `balanced_accuracy`, `ece`.
    """
    return make_classification_metrics(num_labels, n_bins)


def _rejection_summary(known_logits: np.ndarray, unknown_logits: np.ndarray, prefix: str) -> dict[str, float]:
    """MSP and max-logit AUROC / FPR@95%TPR of known vs unknown, named `<prefix>_auroc_msp` etc."""
    values = rejection_metrics(known_logits, unknown_logits)
    summary = {}
    for score in ("msp", "mls"):
        summary[f"{prefix}_auroc_{score}"] = values[f"{score}_auroc"]
        summary[f"{prefix}_fpr95_{score}"] = values[f"{score}_fpr95"]
    return summary


# --------------------------------------------------------------------------------------------------------------------
# Model cards


#: Kept for code written against the first release: the card and Hub behaviour now live in `HEMTrainer` itself.
ImageClassificationTrainer = HEMTrainer


# --------------------------------------------------------------------------------------------------------------------
# The pipeline


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
    run = PipelineRun(model_args, training_args, callbacks, logger)

    # ---- data ----
    with training_args.main_process_first(desc="loading the dataset"):
        dataset, dataset_name, label_column, eval_split = load_image_classification_data(
            data_args, model_args, seed=training_args.seed
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
        train_dataset = truncate(train_dataset, data_args.max_train_samples, training_args.seed)
        eval_dataset = truncate(eval_dataset, data_args.max_eval_samples, training_args.seed)
        if unknown_dataset is not None:
            unknown_dataset = truncate(unknown_dataset, data_args.max_eval_samples, training_args.seed)
        ood_dataset, ood_image_column = _load_ood_dataset(data_args, model_args)
        if ood_dataset is not None:
            ood_dataset = truncate(ood_dataset, data_args.max_eval_samples, training_args.seed)
    if len(train_dataset) == 0:
        raise ValueError("the training set is empty after holding out the unknown classes.")
    if unknown_dataset is not None and len(unknown_dataset) == 0:
        raise ValueError(f"the evaluation split has no image of the unknown classes {unknown_names}.")

    id2label, label2id = label_maps(known_names)
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

    # ---- margins: counted on the known classes, in the ids the model predicts; the trainer takes the counts ----
    class_counts = None
    if training_args.class_counts is None:
        raw_labels = train_dataset.with_format("arrow")[label_column].to_pylist()
        ids = np.fromiter((raw_to_id[value] for value in raw_labels), dtype=np.int64, count=len(raw_labels))
        class_counts = count_labels(ids, len(known_names))

    # Filled in after the final evaluation: the per-class accuracies for the card.
    card_state: dict[str, Any] = {"per_class_accuracy": None}

    def card_kwargs(metrics: dict) -> dict:
        # The trainer fills in the model, loss, margins, classes and hyper-parameters; this adds what only the
        # pipeline knows.
        return {
            **pipeline_card_kwargs(
                model_args, data_args, dataset_name, eval_split, "image-classification", metrics, _CARD_METRIC_KEYS
            ),
            "per_class_table": card_state["per_class_accuracy"],
            "class_names": known_names,
        }

    trainer = run.build_trainer(
        model,
        image_processor,
        train_dataset,
        eval_dataset,
        compute_metrics=make_compute_metrics(len(known_names)),
        card_kwargs=card_kwargs,
        class_counts=class_counts if run.do_train else None,
    )
    run.train(len(train_dataset))

    if run.do_eval:
        known = trainer.predict(eval_dataset, metric_key_prefix="eval")
        eval_metrics = dict(known.metrics)
        eval_metrics["eval_samples"] = len(eval_dataset)
        known_logits = logits_array(known.predictions)
        known_labels = np.asarray(known.label_ids).astype(np.int64)
        arrays = {"eval_logits": known_logits, "eval_labels": known_labels}
        if unknown_dataset is not None:
            unknown_logits = logits_array(trainer.predict(unknown_dataset, metric_key_prefix="unknown").predictions)
            eval_metrics.update(
                {
                    f"eval_{key}": value
                    for key, value in _rejection_summary(known_logits, unknown_logits, "rejection").items()
                }
            )
            eval_metrics["eval_unknown_samples"] = len(unknown_dataset)
            arrays["unknown_logits"] = unknown_logits
        if ood_dataset is not None:
            ood_logits = logits_array(trainer.predict(ood_dataset, metric_key_prefix="ood").predictions)
            eval_metrics.update(
                {f"eval_{key}": value for key, value in _rejection_summary(known_logits, ood_logits, "ood").items()}
            )
            eval_metrics["eval_ood_samples"] = len(ood_dataset)
            arrays["ood_logits"] = ood_logits
        run.save_eval_metrics(eval_metrics)
        card_state["per_class_accuracy"] = per_class_accuracy_table(known_logits, known_labels, known_names)
        if trainer.is_world_process_zero() and training_args.output_dir:
            run.results.arrays.update(
                class_names=np.asarray(known_names), unknown_class_names=np.asarray(unknown_names), **arrays
            )
            np.savez(os.path.join(training_args.output_dir, "predictions.npz"), **run.results.arrays)

    return run.finish(
        dataset_name,
        model_args.model_type,
        len(train_dataset),
        known_classes=known_names,
        unknown_classes=unknown_names,
    )
