"""Arguments of the semantic segmentation pipeline: model, data, and the training defaults that go with them.

Part of [`hf_hem.pipelines.semantic_segmentation`], which re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import ADE20K_DATASET_NAMES
from ._common import (
    BaseModelArguments,
    check_integer,
    check_split_arguments,
    max_train_samples_field,
    parse_pipeline_args,
    peek_dataclass,
    train_val_split_field,
)


__all__ = [
    "EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS",
    "SEGFORMER_SIZES",
    "SEGMENTATION_TRAINING_DEFAULTS",
    "SegmentationDataArguments",
    "SegmentationModelArguments",
    "parse_semantic_segmentation_args",
    "peek_segmentation_data_arguments",
]

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
    max_embedded_digits: int = field(
        default=3,
        metadata={
            "help": "Most digits pasted into one embedded scene (1 to this many, later ones occluding earlier ones). "
            "Fewer digits make an easier problem: less occlusion and fewer neighbouring digits to tell apart."
        },
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
        check_integer(self, "max_embedded_digits", 1)

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
