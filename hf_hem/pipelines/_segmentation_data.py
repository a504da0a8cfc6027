"""Data of the semantic segmentation pipeline: loading every source into one schema, and finding bad examples.

Part of [`hf_hem.pipelines.semantic_segmentation`], which re-exports every public name here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from datasets import Dataset, DatasetDict

from ..data import (
    UndecodableImageError,
    ade20k_id2label,
    bounded_map,
    decode_image,
    digits_segmentation_id2label,
    load_digits_segmentation_dataset,
    load_segmentation_dataset,
    mask_histogram,
    read_id2label,
)
from ._common import train_and_validation
from ._segmentation_args import SegmentationDataArguments, SegmentationModelArguments


logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_SEGMENTATION_DATASET_NAME",
    "SegmentationData",
    "find_undecodable_examples",
    "load_semantic_segmentation_data",
]

#: Name under which the embedded synthetic digit scenes appear in model cards and reports.
EMBEDDED_SEGMENTATION_DATASET_NAME = "sklearn-digits-segmentation"

# Largest raw mask value when the number of classes is inferred from the masks (16-bit masks).
_MAX_RAW_MASK_VALUE = 65535


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
            num_images=data_args.num_embedded_images,
            image_size=image_size,
            seed=seed,
            max_digits=data_args.max_embedded_digits,
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
