"""Semantic segmentation with HEM, end to end: the library behind `scripts/run_semantic_segmentation.py`.

The flow follows transformers' `examples/pytorch/semantic-segmentation/run_semantic_segmentation.py`, with what
HEM experiments need on top:

* **Data**: ADE20K (`--dataset_name scene_parse_150`, read from the Hub's parquet conversion because the original
  is a loading script current `datasets` refuses), another Hub dataset, local parquet files in the ADE20K schema
  (`--data_files`), image/mask folders (`--train_dir`), or, with none of these, the embedded default: synthetic
  scenes of scikit-learn digits in the ADE20K schema (offline, no download). All of them go through
  [`~hf_hem.data.load_segmentation_dataset`], so a local parquet file takes exactly the path of the Hub dataset.
* **Model**: a pretrained checkpoint (`--model_name_or_path nvidia/mit-b0`), or a SegFormer built from its config
  (`--segformer_size tiny` or `b0`) together with an image processor saved beside it, so the result loads with plain
  `AutoModelForSemanticSegmentation` + `AutoImageProcessor`.
* **Training**: [`~hf_hem.HEMTrainer`] with per-pixel HEM / HEM+ (or any loss of the registry): logits upsampled to
  the label size, the ignore index removed before any gather; HEM+ margins from a streamed pixel histogram of the
  training masks, computed once and stored in the model config.
* **Metrics without holding logits**: every evaluation batch is reduced to class ids at label size
  (`preprocess_logits_for_metrics`) and folded into a streaming confusion matrix (`batch_eval_metrics`), giving mIoU,
  mean accuracy, overall accuracy and per-class IoU; memory does not grow with the evaluation set.
* **Model cards**: the HEM card with mIoU as a real `model-index` entry and per-class IoU in the body, in the output
  folder, in every checkpoint and on the Hub with `--push_to_hub`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSemanticSegmentation, SegformerConfig

from ..counting import ClassCounts, resolve_class_counts
from ..data import (
    ADE20K_DATASET_NAMES,
    UndecodableImageError,
    ade20k_id2label,
    bounded_map,
    build_segmentation_transforms,
    collate_fn,
    decode_image,
    digits_segmentation_id2label,
    load_digits_segmentation_dataset,
    load_segmentation_dataset,
    mask_histogram,
    read_id2label,
)
from ..losses.registry import needs_class_counts
from ..metrics import StreamingConfusionMatrix
from ._common import (
    BaseModelArguments,
    PipelineRun,
    build_model_and_processor,
    check_integer,
    check_split_arguments,
    max_train_samples_field,
    parse_pipeline_args,
    peek_dataclass,
    pipeline_card_kwargs,
    train_and_validation,
    train_val_split_field,
    truncate,
)


logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_SEGMENTATION_DATASET_NAME",
    "EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS",
    "SEGFORMER_SIZES",
    "SEGMENTATION_TRAINING_DEFAULTS",
    "SegmentationData",
    "SegmentationDataArguments",
    "SegmentationMetrics",
    "SegmentationModelArguments",
    "build_segmentation_model_and_image_processor",
    "find_undecodable_examples",
    "load_semantic_segmentation_data",
    "parse_semantic_segmentation_args",
    "peek_segmentation_data_arguments",
    "run_semantic_segmentation",
    "scratch_segformer_config",
    "upsample_and_argmax",
]

#: Name under which the embedded synthetic digit scenes appear in model cards and reports.
EMBEDDED_SEGMENTATION_DATASET_NAME = "sklearn-digits-segmentation"

#: SegFormer sizes `--segformer_size` builds from a config (random weights): `tiny` trains in minutes on a CPU,
#: `b0` is the architecture of `nvidia/mit-b0`.
SEGFORMER_SIZES = ("tiny", "b0")

#: Defaults of every segmentation run: evaluation streams into a confusion matrix instead of keeping the logits.
SEGMENTATION_TRAINING_DEFAULTS = {"batch_eval_metrics": True}

#: Training defaults used when no dataset is given (the embedded digit scenes and a tiny SegFormer from config). They
#: replace the `TrainingArguments` defaults, which are meant for fine-tuning pretrained models; anything set on the
#: command line or in a config file still wins.
EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS = {
    # Sized with learning curves so that every loss of `hf-hem compare --task segmentation` (32-pixel scenes) levels
    # off, the cosine decay annealing the rate late in training, as the paper's step drops do; at 20 epochs and 2e-3
    # every loss was still climbing when training stopped (docs/semantic_segmentation.md).
    "num_train_epochs": 26.0,
    "learning_rate": 5e-3,
    "weight_decay": 0.01,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 25,
    "report_to": "none",
}

# Metrics that go onto the model card (after dropping the `eval_` prefix).
_CARD_METRIC_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "loss")
# How many validation examples `predictions.npz` keeps for pictures (`hf-hem compare`).
_NUM_PICTURED_EXAMPLES = 4
# Largest raw mask value when the number of classes is inferred from the masks (16-bit masks).
_MAX_RAW_MASK_VALUE = 65535


# --------------------------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class SegmentationModelArguments(BaseModelArguments):
    """Arguments for the model and image processor: a pretrained checkpoint, or a SegFormer from its config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint to fine-tune (Hub id or local folder, e.g. nvidia/mit-b0). Default: none, a SegFormer "
            "of --segformer_size is built from its config with random weights."
        },
    )
    segformer_size: str = field(
        default="tiny",
        metadata={
            "help": "SegFormer built from its config when --model_name_or_path is not given: 'tiny' (4 stages of "
            "16-128 channels, for CPUs) or 'b0' (the architecture of nvidia/mit-b0).",
            "choices": list(SEGFORMER_SIZES),
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Side of the square training crops and evaluation images. Default: the image processor's size "
            "(512 for SegFormer's ADE20K processor), 64 for the embedded digit scenes, 512 for a model from config."
        },
    )

    def __post_init__(self):
        if self.segformer_size not in SEGFORMER_SIZES:
            raise ValueError(f"segformer_size={self.segformer_size!r}; expected one of {', '.join(SEGFORMER_SIZES)}.")
        # SegFormer downsamples by 32 in its last stage (and by 8 again in its first attention layer).
        check_integer(self, "image_size", 32, " (SegFormer's total stride)", optional=True)


@dataclass
class SegmentationDataArguments:
    """Arguments for the data: where images and masks come from, their labels, augmentation, bad examples."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset: 'scene_parse_150' is ADE20K (read from its parquet conversion), or any dataset with "
            "image and mask columns (e.g. 'segments/sidewalk-semantic'). Default: none; without --dataset_name, "
            "--data_files and --train_dir the embedded synthetic digit scenes are used (offline)."
        },
    )
    dataset_config_name: str | None = field(
        default=None,
        metadata={"help": "Configuration of the dataset (for ADE20K, the parquet folder; default 'scene_parsing')."},
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Dataset revision. Default: 'refs/convert/parquet' for ADE20K, else main."}
    )
    data_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local parquet files in the ADE20K schema (image, annotation, scene_category), or one folder of "
            "them whose file names give the splits (train-*.parquet, validation-*.parquet)."
        },
    )
    validation_files: list[str] | None = field(
        default=None, metadata={"help": "Local parquet files of the validation split (with --data_files)."}
    )
    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with images/ and annotations/ (or masks/, labels/) subfolders, paired by relative path; "
            "an ADEChallengeData2016-style layout (images/training, images/validation) gives both splits."
        },
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Like --train_dir, for the validation split."})
    image_column_name: str | None = field(
        default=None, metadata={"help": "Image column. Default: the first of image, pixel_values, img."}
    )
    mask_column_name: str | None = field(
        default=None, metadata={"help": "Mask column. Default: the first of annotation, label, mask, ... present."}
    )
    id2label_file: str | None = field(
        default=None,
        metadata={
            "help": 'JSON file {"0": "wall", ...} with the class names (ids after --do_reduce_labels). Default: '
            "ADE20K's names (shipped), the digits, the dataset repo's id2label.json, or ids counted from the masks."
        },
    )
    num_labels: int | None = field(
        default=None,
        metadata={"help": "Number of classes, when there is no id2label file. Default: counted from the masks."},
    )
    do_reduce_labels: bool | None = field(
        default=None,
        metadata={
            "help": "Mask value 0 is background: it becomes the ignore index 255 and every other class id moves down "
            "by one, as ADE20K needs. Default: true for ADE20K and the embedded digit scenes, else false."
        },
    )
    train_val_split: float = train_val_split_field()
    max_train_samples: int | None = max_train_samples_field()
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the evaluation set to this many examples."}
    )
    min_scale: float | None = field(
        default=None,
        metadata={
            "help": "Smallest random rescaling of training pairs, relative to the crop size. Default: 0.5 (as the "
            "SegFormer recipe), 0.8 for the embedded digit scenes."
        },
    )
    max_scale: float | None = field(
        default=None,
        metadata={"help": "Largest random rescaling of training pairs. Default: 2.0, 1.25 for the embedded scenes."},
    )
    horizontal_flip: bool | None = field(
        default=None,
        metadata={"help": "Flip half of the training pairs horizontally. Default: true, false for the digit scenes."},
    )
    skip_bad_examples: bool = field(
        default=False,
        metadata={
            "help": "Leave out examples whose image or mask cannot be decoded (found in one pass before training and "
            "reported with their count) instead of stopping with an error naming the file."
        },
    )
    num_embedded_images: int = field(
        default=1000, metadata={"help": "Images of the embedded digit scenes (train and validation together)."}
    )

    def __post_init__(self):
        sources = {
            "dataset_name": self.dataset_name,
            "data_files": self.data_files,
            "train_dir": self.train_dir,
        }
        given = [name for name, value in sources.items() if value]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are exclusive; give one data source.")
        if self.validation_dir is not None and self.train_dir is None:
            raise ValueError(f"validation_dir={self.validation_dir!r} needs --train_dir as well.")
        if self.validation_files and not self.data_files:
            raise ValueError(f"validation_files={self.validation_files!r} needs --data_files as well.")
        check_split_arguments(self)
        check_integer(self, "num_labels", 2, optional=True)
        low, high = self.scale_range
        if not (0.0 < low <= high):
            raise ValueError(f"need 0 < min_scale <= max_scale, got min_scale={low}, max_scale={high}.")
        check_integer(self, "num_embedded_images", 10)

    @property
    def uses_embedded_dataset(self) -> bool:
        """`True` when no data source is given and the embedded digit scenes are used."""
        return not (self.dataset_name or self.data_files or self.train_dir)

    @property
    def scale_range(self) -> tuple[float, float]:
        """`(min_scale, max_scale)` with the defaults filled in (milder for the embedded digit scenes)."""
        low, high = (0.8, 1.25) if self.uses_embedded_dataset else (0.5, 2.0)
        return (
            low if self.min_scale is None else self.min_scale,
            high if self.max_scale is None else self.max_scale,
        )

    @property
    def flip(self) -> bool:
        """`horizontal_flip` with its default filled in: digits change meaning when mirrored, scenes do not."""
        return (not self.uses_embedded_dataset) if self.horizontal_flip is None else self.horizontal_flip

    @property
    def is_ade20k(self) -> bool:
        """`True` for ADE20K from the Hub (`scene_parse_150`)."""
        return self.dataset_name in ADE20K_DATASET_NAMES


def peek_segmentation_data_arguments(argv: Sequence[str] | None = None, file_values: dict[str, Any] | None = None):
    """The [`SegmentationDataArguments`] of a command line, ignoring every other flag and setting up nothing.

    Args:
        argv (`Sequence[str]`, *optional*): As for [`parse_semantic_segmentation_args`].
        file_values (`dict`, *optional*): Values of a config file already read.

    Returns:
        [`SegmentationDataArguments`]
    """
    return peek_dataclass(SegmentationDataArguments, argv, file_values)


def parse_semantic_segmentation_args(argv: Sequence[str] | None = None):
    """Parse the script's arguments into `(SegmentationModelArguments, SegmentationDataArguments, HEMConfig)`.

    Flags, a `.yaml`/`.json` config file, or the file followed by overriding flags. `do_train` and `do_eval` default
    to `True`, `batch_eval_metrics` to `True` (see [`SEGMENTATION_TRAINING_DEFAULTS`]); without a data source,
    [`EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS`] replace the `TrainingArguments` defaults. Anything given still wins.

    Args:
        argv (`Sequence[str]`, *optional*): Arguments without the program name. Defaults to `sys.argv[1:]`.

    Returns:
        `tuple[SegmentationModelArguments, SegmentationDataArguments, HEMConfig]`.
    """
    return parse_pipeline_args(
        SegmentationModelArguments,
        SegmentationDataArguments,
        argv,
        embedded_defaults=EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS,
        defaults=SEGMENTATION_TRAINING_DEFAULTS,
    )


# --------------------------------------------------------------------------------------------------------------------
# Data


class SegmentationData(NamedTuple):
    """What [`load_semantic_segmentation_data`] returns."""

    dataset: DatasetDict  # splits "train" and "validation", columns "image", "annotation", "example_index"
    name: str  # the dataset's name in cards and reports
    eval_split: str  # where the "validation" split comes from, e.g. "validation" or "train (15% held out)"
    id2label: dict[int, str] | None  # class names after label reduction; None when they must be counted
    do_reduce_labels: bool


def _local_name(path: str) -> str:
    """A readable dataset name for local data: the folder (or its parent for train/ and data/ folders)."""
    resolved = Path(path).resolve()
    folder = resolved if resolved.is_dir() else resolved.parent
    if folder.name.lower() in ("train", "training", "data") and folder.parent.name:
        folder = folder.parent
    return folder.name or "local-data"


def _hub_id2label(data_args: SegmentationDataArguments, token: str | None) -> dict[int, str] | None:
    """The `id2label.json` of a Hub dataset repo (as the transformers example reads it), or `None`."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(data_args.dataset_name, "id2label.json", repo_type="dataset", token=token)
    except Exception as error:  # offline, no such file, private repo: the ids are counted from the masks instead
        logger.info(f"No id2label.json in the dataset repo {data_args.dataset_name!r} ({type(error).__name__}).")
        return None
    return read_id2label(path)


def load_semantic_segmentation_data(
    data_args: SegmentationDataArguments, model_args: SegmentationModelArguments | None = None, seed: int = 0
) -> SegmentationData:
    """Load the data as a `DatasetDict` with `train` and `validation` splits in one schema, and its class names.

    Every source goes through [`~hf_hem.data.load_segmentation_dataset`] (except the embedded digit scenes, which are
    generated in that schema), with `decode=False`: images and masks stay encoded until the transforms decode them,
    so an undecodable file is reported with its name (or skipped, with `skip_bad_examples`).

    Args:
        data_args ([`SegmentationDataArguments`]): The data source and split settings.
        model_args ([`SegmentationModelArguments`], *optional*): `cache_dir`, `token`, and `image_size` for the
            embedded scenes.
        seed (`int`, *optional*, defaults to 0): Seed of the embedded scenes and of the train/validation split.

    Returns:
        [`SegmentationData`].
    """
    cache_dir = getattr(model_args, "cache_dir", None)
    token = getattr(model_args, "token", None)
    if data_args.uses_embedded_dataset:
        reduce = True if data_args.do_reduce_labels is None else data_args.do_reduce_labels
        image_size = getattr(model_args, "image_size", None) or 64
        scenes = load_digits_segmentation_dataset(
            num_images=data_args.num_embedded_images, image_size=image_size, seed=seed
        )
        scenes = DatasetDict(
            {name: split.add_column("example_index", np.arange(len(split))) for name, split in scenes.items()}
        )
        id2label = digits_segmentation_id2label(reduce_labels=reduce)
        return SegmentationData(scenes, EMBEDDED_SEGMENTATION_DATASET_NAME, "validation", id2label, reduce)

    common = {
        "image_column": data_args.image_column_name,
        "mask_column": data_args.mask_column_name,
        "cache_dir": cache_dir,
        "train_val_split": None,  # split below, so the report can say where the validation images come from
        "seed": seed,
        "decode": False,
    }
    if data_args.dataset_name:
        dataset = load_segmentation_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            revision=data_args.dataset_revision,
            token=token,
            **common,
        )
        name = "scene_parse_150" if data_args.is_ade20k else data_args.dataset_name
    elif data_args.data_files:
        files = data_args.data_files
        if data_args.validation_files:
            data_files = {"train": list(files), "validation": list(data_args.validation_files)}
        else:
            data_files = files[0] if len(files) == 1 else list(files)
        dataset = load_segmentation_dataset(data_files=data_files, **common)
        name = _local_name(files[0])
    else:
        dataset = load_segmentation_dataset(
            train_dir=data_args.train_dir, validation_dir=data_args.validation_dir, **common
        )
        name = _local_name(data_args.train_dir)
    eval_split = "validation" if "validation" in dataset else None
    dataset, eval_split = train_and_validation(dataset, eval_split, data_args.train_val_split, seed)

    reduce = data_args.do_reduce_labels
    if reduce is None:
        reduce = data_args.is_ade20k
    if data_args.id2label_file:
        id2label = read_id2label(data_args.id2label_file)
    elif data_args.is_ade20k:
        id2label = ade20k_id2label(reduce_labels=reduce)
    elif data_args.num_labels is not None:
        id2label = {index: str(index) for index in range(data_args.num_labels)}
    elif data_args.dataset_name:
        id2label = _hub_id2label(data_args, token)
    else:
        id2label = None
    if id2label is not None and data_args.num_labels is not None and len(id2label) != data_args.num_labels:
        raise ValueError(
            f"num_labels={data_args.num_labels} but the class names have {len(id2label)} entries; give one of them."
        )
    return SegmentationData(dataset, name, eval_split, id2label, reduce)


def find_undecodable_examples(
    dataset: Dataset, columns: Sequence[str] = ("image", "annotation"), num_threads: int | None = None
) -> list[int]:
    """Row positions of a dataset whose image or mask PIL cannot decode, found in one threaded pass.

    The columns must hold encoded values (`datasets.Image(decode=False)`, as [`load_semantic_segmentation_data`]
    leaves them) or decoded images; nothing else of the dataset is read.

    Args:
        dataset (`datasets.Dataset`): The split to check.
        columns (`Sequence[str]`, *optional*, defaults to `("image", "annotation")`): Columns to decode.
        num_threads (`int`, *optional*): Decoding threads; defaults to the number of CPUs (at most 8).

    Returns:
        `list[int]`: positions (for `dataset.select`) of the undecodable rows, in order.
    """
    from datasets import Image as ImageFeature

    raw = dataset.with_format(None).select_columns(list(columns))
    for column in columns:
        feature = raw.features[column]
        if isinstance(feature, ImageFeature) and feature.decode:
            raw = raw.cast_column(column, ImageFeature(decode=False))

    def undecodable(item: tuple[int, dict]) -> int | None:
        position, row = item
        for column in columns:
            try:
                decode_image(row[column], f"example {position}")
            except UndecodableImageError:
                return position
        return None

    num_threads = num_threads or max(1, min(8, os.cpu_count() or 1))
    rows = ((position, row) for position, row in enumerate(raw))
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        # Bounded: `pool.map` would read every encoded image into memory before the first one is decoded.
        results = bounded_map(pool, undecodable, rows, max_in_flight=8 * num_threads)
        return [position for position in results if position is not None]


def _drop_undecodable(dataset: Dataset, split: str) -> tuple[Dataset, int]:
    bad = set(find_undecodable_examples(dataset))
    if not bad:
        return dataset, 0
    index_column = dataset.select_columns(["example_index"])
    names = [int(index_column[position]["example_index"]) for position in sorted(bad)[:10]]
    logger.warning(
        f"Skipping {len(bad)} undecodable examples of the {split} split (example_index {names}"
        f"{', ...' if len(bad) > 10 else ''})."
    )
    return dataset.select([position for position in range(len(dataset)) if position not in bad]), len(bad)


def _count_classes(train_dataset: Dataset, do_reduce_labels: bool, skip_bad: bool) -> tuple[dict[int, str], Any]:
    """Class ids counted from the training masks (no names known): ids `0 .. largest id` (after label reduction).

    Returns the names and the raw histogram, which also gives the HEM+ pixel counts without a second pass.
    """
    raw_counts, num_images = mask_histogram(
        train_dataset,
        _MAX_RAW_MASK_VALUE + 1,
        ignore_index=None,
        mask_column="annotation",
        skip_bad=skip_bad,
        desc="Counting the classes of the training masks",
    )
    present = np.flatnonzero(raw_counts)
    present = present[present != 255]  # the ignore index, whatever the masks use it for
    if do_reduce_labels:
        present = present[present != 0]
        num_labels = int(present.max()) if present.size else 0
    else:
        num_labels = int(present.max()) + 1 if present.size else 0
    if num_labels < 2:
        raise ValueError(
            f"the training masks hold raw values {np.flatnonzero(raw_counts)[:10].tolist()}, which give "
            f"{num_labels} class(es) (do_reduce_labels={do_reduce_labels}); expected at least 2. Check the mask column "
            "and --do_reduce_labels, or pass --num_labels / --id2label_file."
        )
    if num_labels > 254:
        raise ValueError(
            f"the training masks hold raw values up to {int(present.max())}, past the ignore index 255; pass "
            "--num_labels or --id2label_file (and --do_reduce_labels as needed)."
        )
    logger.warning(
        f"No class names given: {num_labels} classes counted from the training masks (ids 0..{num_labels - 1}). "
        "Pass --id2label_file for names."
    )
    offset = 1 if do_reduce_labels else 0
    counts = raw_counts[offset : offset + num_labels].copy()
    return {index: str(index) for index in range(num_labels)}, (counts, num_images)


# --------------------------------------------------------------------------------------------------------------------
# Model


def scratch_segformer_config(size: str, num_labels: int, id2label=None, label2id=None) -> SegformerConfig:
    """A SegFormer config with random weights: `tiny` for CPUs, or `b0` (the architecture of `nvidia/mit-b0`).

    Args:
        size (`str`): One of [`SEGFORMER_SIZES`].
        num_labels (`int`): Number of classes.
        id2label (`dict[int, str]`, *optional*), label2id (`dict[str, int]`, *optional*): Class names.

    Returns:
        [`~transformers.SegformerConfig`] with `semantic_loss_ignore_index=255`.
    """
    common = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id, "semantic_loss_ignore_index": 255}
    if size == "b0":
        return SegformerConfig(**common)  # SegformerConfig's defaults are MiT-b0
    if size == "tiny":
        return SegformerConfig(
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 1, 2, 4],
            decoder_hidden_size=64,
            drop_path_rate=0.0,
            **common,
        )
    raise ValueError(f"size={size!r}; expected one of {', '.join(SEGFORMER_SIZES)}.")


def _scratch_image_processor(image_size: int, do_reduce_labels: bool):
    """SegFormer's processor (ImageNet statistics) at `image_size`, saved beside a model built from its config."""
    try:  # transformers >= 5 without torchvision: the PIL backend, named explicitly to avoid a fallback warning
        from transformers.models.segformer.image_processing_pil_segformer import (
            SegformerImageProcessorPil as ProcessorClass,
        )
    except ImportError:  # pragma: no cover - older transformers
        from transformers import SegformerImageProcessor as ProcessorClass

    return ProcessorClass(size={"height": image_size, "width": image_size}, do_reduce_labels=do_reduce_labels)


def build_segmentation_model_and_image_processor(
    model_args: SegmentationModelArguments,
    id2label: dict[int, str],
    do_reduce_labels: bool,
    default_image_size: int = 512,
):
    """The segmentation model (pretrained or from config) and its image processor.

    Args:
        model_args ([`SegmentationModelArguments`]): Where the model comes from.
        id2label (`dict[int, str]`): The classes the model predicts (after label reduction).
        do_reduce_labels (`bool`): Stored in the image processor, so the saved processor describes the labels.
        default_image_size (`int`, *optional*, defaults to 512): Processor size of a model from config when
            `model_args.image_size` is not set.

    Returns:
        `tuple[PreTrainedModel, BaseImageProcessor]`.
    """
    label2id = {name: index for index, name in id2label.items()}
    model, image_processor = build_model_and_processor(
        model_args,
        AutoModelForSemanticSegmentation,
        id2label,
        label2id,
        scratch_config=lambda: scratch_segformer_config(model_args.segformer_size, len(id2label), id2label, label2id),
        scratch_image_processor=lambda: _scratch_image_processor(
            model_args.image_size or default_image_size, do_reduce_labels
        ),
    )
    if model_args.image_size is not None and hasattr(image_processor, "size"):
        image_processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    if hasattr(image_processor, "do_reduce_labels"):
        image_processor.do_reduce_labels = do_reduce_labels
    return model, image_processor


# --------------------------------------------------------------------------------------------------------------------
# Metrics


def upsample_and_argmax(logits, labels: torch.Tensor) -> torch.Tensor:
    """`preprocess_logits_for_metrics`: class ids at the label size, computed one image at a time.

    The logits are upsampled as SegFormer's loss does (bilinear, `align_corners=False`), so the metrics score the
    predictions the loss trains. Going image by image keeps the transient float tensor to one image's
    `(C, H, W)` instead of the batch's.

    Args:
        logits (`torch.Tensor` or `tuple`): Model logits `(N, C, h, w)` (the first entry of a tuple).
        labels (`torch.Tensor`): Labels `(N, H, W)`, giving the output size.

    Returns:
        `torch.Tensor` of shape `(N, H, W)`, `int64`.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.dim() != 4 or labels.dim() != 3:
        raise ValueError(
            f"expected logits (N, C, h, w) and labels (N, H, W), got shapes {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    size = labels.shape[-2:]
    predictions = torch.empty((logits.shape[0], *size), dtype=torch.long, device=logits.device)
    for index in range(logits.shape[0]):
        image_logits = logits[index : index + 1]
        if image_logits.shape[-2:] != size:
            image_logits = F.interpolate(image_logits.float(), size=size, mode="bilinear", align_corners=False)
        predictions[index] = image_logits[0].argmax(dim=0)
    return predictions


class SegmentationMetrics:
    """`compute_metrics` for the Trainer: a streaming confusion matrix over evaluation batches.

    With `batch_eval_metrics=True` the Trainer calls it once per batch (gathered over processes) with
    `compute_result=False`, and on the last batch with `compute_result=True`; nothing but the `(C, C)` matrix is kept.
    Without it, it is called once with all predictions. Predictions must be class ids at label size
    ([`upsample_and_argmax`] as `preprocess_logits_for_metrics`).

    Args:
        num_labels (`int`): Number of classes.
        ignore_index (`int`, *optional*, defaults to 255): Label value of pixels left out.
        id2label (`dict[int, str]`, *optional*): Class names for `per_class_iou`.

    Attributes:
        last_result (`dict` or `None`): Everything the latest finished evaluation computed: `mean_iou`,
            `mean_accuracy`, `overall_accuracy`, `per_category_iou`, `per_category_accuracy` and `confusion_matrix`.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, id2label: dict[int, str] | None = None):
        self.confusion = StreamingConfusionMatrix(num_labels, ignore_index=ignore_index)
        self.id2label = dict(id2label or {})
        self.last_result: dict[str, Any] | None = None

    def __call__(self, eval_prediction, compute_result: bool = True) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        labels = eval_prediction.label_ids
        if (
            torch.is_tensor(predictions)
            and predictions.is_floating_point()
            or (isinstance(predictions, np.ndarray) and np.issubdtype(predictions.dtype, np.floating))
        ):
            raise ValueError(
                "SegmentationMetrics needs class ids, got float predictions (logits?); pass "
                "preprocess_logits_for_metrics=upsample_and_argmax to the Trainer."
            )
        self.confusion.update(predictions, labels)
        if not compute_result:
            return {}
        result = self.confusion.compute()
        result["confusion_matrix"] = self.confusion.confusion_matrix.copy()
        self.last_result = result
        self.confusion.reset()
        return {key: result[key] for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}

    def per_class_iou(self) -> dict[str, float] | None:
        """`{class name: IoU}` of the latest evaluation, classes without any pixel left out; `None` before one."""
        if self.last_result is None:
            return None
        return {
            self.id2label.get(index, str(index)): float(value)
            for index, value in enumerate(self.last_result["per_category_iou"])
            if math.isfinite(value)
        }


def _pictured_examples(trainer, eval_dataset, image_processor, count: int) -> dict[str, np.ndarray]:
    """Images, labels and predicted class ids of the first `count` validation examples, for pictures."""
    subset = eval_dataset.select(range(min(count, len(eval_dataset))))
    batch = collate_fn([subset[index] for index in range(len(subset))])
    model = trainer.model
    model.eval()
    with torch.no_grad():
        pixel_values = batch["pixel_values"].to(trainer.args.device)
        logits = model(pixel_values=pixel_values).logits
        predictions = upsample_and_argmax(logits, batch["labels"]).cpu().numpy()
    mean = np.asarray(getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5), dtype=np.float32)
    std = np.asarray(getattr(image_processor, "image_std", None) or (0.5, 0.5, 0.5), dtype=np.float32)
    pixels = batch["pixel_values"].numpy().transpose(0, 2, 3, 1) * std + mean
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return {"images": images, "labels": batch["labels"].numpy(), "predictions": predictions}


# --------------------------------------------------------------------------------------------------------------------
# The pipeline


def run_semantic_segmentation(
    model_args: SegmentationModelArguments,
    data_args: SegmentationDataArguments,
    training_args,
    *,
    callbacks: Sequence | None = None,
) -> dict:
    """Train and evaluate a semantic segmenter with the loss of `training_args`, save it with its card, and push.

    Training runs when `training_args.do_train` is set, evaluation when `do_eval` is (both by default). The output
    folder receives the model, its image processor, the HEM model card (`README.md`), `all_results.json`,
    `per_class_iou.json` and `predictions.npz` (a few validation images with their labels and predicted masks, for
    pictures such as `hf-hem compare --task segmentation`'s).

    Args:
        model_args ([`SegmentationModelArguments`]): Model and image processor.
        data_args ([`SegmentationDataArguments`]): Data, labels, augmentation.
        training_args ([`HEMConfig`]): Training and loss settings.
        callbacks (`Sequence[TrainerCallback]`, *optional*): Extra Trainer callbacks. A `ProgressCallback` among them
            replaces the Trainer's own progress display.

    Returns:
        `dict[str, float]`: the metrics also saved in `all_results.json`: `train_*`, `eval_mean_iou`,
        `eval_mean_accuracy`, `eval_overall_accuracy`, `eval_loss`, the `eval_hem/*` diagnostics, and
        `train_skipped_examples` / `eval_skipped_examples` with `skip_bad_examples`.

    Raises:
        `ValueError`: bad input, naming the example: a mask whose size differs from its image, label values that are
            neither a class nor the ignore index (listing them); [`~hf_hem.data.UndecodableImageError`]: an image or
            mask that cannot be decoded (naming the file), unless `skip_bad_examples`.
        [`~hf_hem.pipelines.PushToHubError`]: `--push_to_hub` failed; the model is saved locally.
    """
    run = PipelineRun(model_args, training_args, callbacks, logger)

    # ---- data ----
    pixel_counts = None
    with training_args.main_process_first(desc="loading the dataset"):
        dataset, dataset_name, eval_split, id2label, do_reduce_labels = load_semantic_segmentation_data(
            data_args, model_args, seed=training_args.seed
        )
        train_dataset = truncate(dataset["train"], data_args.max_train_samples, training_args.seed)
        eval_dataset = truncate(dataset["validation"], data_args.max_eval_samples, training_args.seed)
        skipped = {}
        if data_args.skip_bad_examples:
            train_dataset, skipped["train_skipped_examples"] = _drop_undecodable(train_dataset, "train")
            eval_dataset, skipped["eval_skipped_examples"] = _drop_undecodable(eval_dataset, "validation")
        if id2label is None:
            id2label, pixel_counts = _count_classes(train_dataset, do_reduce_labels, data_args.skip_bad_examples)
    if len(train_dataset) == 0 or len(eval_dataset) == 0:
        raise ValueError(
            f"the train ({len(train_dataset)}) and validation ({len(eval_dataset)}) splits must both hold examples."
        )
    num_labels = len(id2label)
    class_names = [id2label[index] for index in range(num_labels)]
    logger.info(
        f"Dataset {dataset_name}: {len(train_dataset)} training and {len(eval_dataset)} validation images, "
        f"{num_labels} classes, do_reduce_labels={do_reduce_labels}."
    )

    # ---- model ----
    default_size = 64 if data_args.uses_embedded_dataset else 512
    model, image_processor = build_segmentation_model_and_image_processor(
        model_args, id2label, do_reduce_labels, default_image_size=default_size
    )
    ignore_index = training_args.loss_ignore_index
    if ignore_index is None:
        ignore_index = int(getattr(model.config, "semantic_loss_ignore_index", 255))
    if not 0 <= ignore_index <= 255 or ignore_index < num_labels:
        raise ValueError(
            f"the ignore index {ignore_index} must lie in [num_labels={num_labels}, 255], where masks and padding "
            "can hold it."
        )

    # ---- transforms (they decode, check and name bad examples) ----
    image_size = model_args.image_size or (default_size if data_args.uses_embedded_dataset else None)

    def transform(train: bool):
        return build_segmentation_transforms(
            image_processor,
            train=train,
            num_labels=num_labels,
            do_reduce_labels=do_reduce_labels,
            ignore_index=ignore_index,
            size=image_size,
            scale_range=data_args.scale_range,
            horizontal_flip=data_args.flip,
            skip_bad=data_args.skip_bad_examples,
            seed=training_args.seed if train else None,
        )

    train_dataset.set_transform(transform(train=True))
    eval_dataset.set_transform(transform(train=False))

    # ---- margins: pixel counts of the training masks, at their native size, streamed once ----
    counts = None
    if (
        run.do_train
        and needs_class_counts(training_args.loss_name, training_args.margin)
        and training_args.class_counts is None
    ):
        if pixel_counts is None:
            counts = resolve_class_counts(
                "masks",
                num_labels,
                dataset=train_dataset,
                ignore_index=ignore_index,
                mask_column="annotation",
                reduce_labels=do_reduce_labels,
                skip_bad=data_args.skip_bad_examples,
                num_samples=training_args.num_margin_samples,
                progress=training_args.should_log and not training_args.disable_tqdm,
            )
        else:
            counts = resolve_class_counts(
                "given", num_labels, class_counts=pixel_counts[0], num_samples=training_args.num_margin_samples
            )
            counts = ClassCounts(counts.counts, counts.num_samples or pixel_counts[1], "masks")

    # ---- trainer ----
    compute_metrics = SegmentationMetrics(num_labels, ignore_index=ignore_index, id2label=id2label)

    def card_kwargs(metrics: dict) -> dict:
        # The trainer fills in the model, loss, margins, classes and hyper-parameters; this adds what only the
        # pipeline knows. The per-class table is the latest evaluation's, like the metrics of `metrics`.
        return {
            **pipeline_card_kwargs(
                model_args, data_args, dataset_name, eval_split, "image-segmentation", metrics, _CARD_METRIC_KEYS
            ),
            "per_class_table": compute_metrics.per_class_iou() if metrics else None,
            "class_names": class_names,
        }

    trainer = run.build_trainer(
        model,
        image_processor,
        train_dataset,
        eval_dataset,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=upsample_and_argmax,
        card_kwargs=card_kwargs,
        # S = images, not pixels (docs/method.md, section 2): the counts come with the number of masks counted.
        class_counts=None if counts is None else counts.counts,
        num_margin_samples=None if counts is None else counts.num_samples,
    )
    run.train(len(train_dataset))

    if run.do_eval:
        run.save_eval_metrics(
            {**trainer.evaluate(eval_dataset), "eval_samples": len(eval_dataset), **skipped}, logged=True
        )
        if trainer.is_world_process_zero() and training_args.should_save:
            per_class = {name: None for name in class_names}
            per_class.update(compute_metrics.per_class_iou() or {})
            with open(os.path.join(training_args.output_dir, "per_class_iou.json"), "w", encoding="utf-8") as handle:
                json.dump(per_class, handle, indent=2)
            pictured = _pictured_examples(trainer, eval_dataset, image_processor, _NUM_PICTURED_EXAMPLES)
            run.results.arrays.update(
                class_names=np.asarray(class_names),
                confusion_matrix=compute_metrics.last_result["confusion_matrix"],
                **pictured,
            )
            np.savez(os.path.join(training_args.output_dir, "predictions.npz"), **run.results.arrays)
    elif skipped:
        run.results.update(skipped)

    return run.finish(
        dataset_name,
        f"segformer-{model_args.segformer_size}",
        len(train_dataset),
        classes=class_names,
        do_reduce_labels=do_reduce_labels,
        ignore_index=ignore_index,
        image_size=image_size,
    )
