"""Semantic-segmentation data: loading ADE20K-style datasets and a streaming pixel histogram of their masks.

Every source, the Hub's ADE20K parquet conversion, another Hub dataset, local parquet files or local image/mask
folders, comes out of [`load_segmentation_dataset`] in one schema: a `DatasetDict` with `train` (and usually
`validation`) splits whose columns `image` and `annotation` are `datasets.Image` features, so the transforms and the
training scripts have one code path.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature

from .columns import pick_column
from .transforms import UndecodableImageError, decode_image, decode_mask


__all__ = [
    "ADE20K_DATASET_NAMES",
    "ADE20K_HUB_ID",
    "ade20k_id2label",
    "bounded_map",
    "load_segmentation_dataset",
    "mask_histogram",
    "read_id2label",
]

logger = logging.getLogger(__name__)

ADE20K_HUB_ID = "zhoubolei/scene_parse_150"
ADE20K_DATASET_NAMES = ("scene_parse_150", ADE20K_HUB_ID)
ADE20K_DEFAULT_CONFIG = "scene_parsing"
# scene_parse_150 is a script dataset, which datasets >= 4 refuses to run; the Hub's automatic parquet conversion
# of it lives on this branch, one folder per config.
HUB_PARQUET_REVISION = "refs/convert/parquet"

IMAGE_COLUMN_CANDIDATES = ("image", "pixel_values", "img")
MASK_COLUMN_CANDIDATES = ("annotation", "label", "mask", "segmentation_mask", "semantic_map", "labels", "seg")
_SPLIT_ALIASES = {"training": "train", "val": "validation", "valid": "validation", "dev": "validation"}
_IMAGE_DIR_NAMES = ("images", "image", "img", "imgs")
_MASK_DIR_NAMES = ("annotations", "annotation", "masks", "mask", "labels", "label")
_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


# --------------------------------------------------------------------------------------------------------------------
# Label names


def ade20k_id2label(reduce_labels: bool = True) -> dict[int, str]:
    """The 150 ADE20K (SceneParsing) class names, shipped with the package, so no download is needed.

    Args:
        reduce_labels (`bool`, *optional*, defaults to `True`): Ids after [`~hf_hem.data.reduce_labels`]
            (`0 = "wall"` … `149 = "flag"`), as SegFormer's ADE20K checkpoints use. With `False`, the raw mask ids:
            `0 = "background"`, `1 = "wall"` … `150 = "flag"`.

    Returns:
        `dict[int, str]`.
    """
    text = resources.files(__package__).joinpath("ade20k_id2label.json").read_text(encoding="utf-8")
    id2label = {int(class_id): name for class_id, name in json.loads(text).items()}
    if reduce_labels:
        return id2label
    return {0: "background", **{class_id + 1: name for class_id, name in id2label.items()}}


def read_id2label(path: str | os.PathLike) -> dict[int, str]:
    """Read an `id2label.json` (`{"0": "name", ...}`, the format of the Hub's label files) with integer keys.

    Args:
        path (`str` or `os.PathLike`): The JSON file.

    Returns:
        `dict[int, str]`, sorted by id.
    """
    with open(path, encoding="utf-8") as file:
        raw = json.load(file)
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(
            f"{path} must hold a non-empty JSON object mapping class ids to names, got {type(raw).__name__}."
        )
    try:
        id2label = {int(class_id): str(name) for class_id, name in raw.items()}
    except ValueError as error:
        raise ValueError(f"{path}: every key must be an integer class id, got keys {list(raw)[:5]}…") from error
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"{path}: class ids must be 0..{len(id2label) - 1} without gaps, got {sorted(id2label)}.")
    return dict(sorted(id2label.items()))


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _load_parquet(data_files, cache_dir: str | None) -> DatasetDict:
    if isinstance(data_files, (str, os.PathLike)) and os.path.isdir(data_files):
        # A folder: datasets infers splits from file and folder names (train-*.parquet, validation/…).
        return datasets.load_dataset("parquet", data_dir=os.fspath(data_files), cache_dir=cache_dir)
    if isinstance(data_files, (str, os.PathLike)):
        data_files = {"train": [os.fspath(data_files)]}
    elif isinstance(data_files, Sequence):
        data_files = {"train": [os.fspath(file) for file in data_files]}
    elif isinstance(data_files, Mapping):
        data_files = {
            split: [os.fspath(files)] if isinstance(files, (str, os.PathLike)) else [os.fspath(f) for f in files]
            for split, files in data_files.items()
        }
    else:
        raise ValueError(
            f"data_files must be a parquet file, a folder, a list of files or a {{split: files}} dict; "
            f"got {type(data_files).__name__}."
        )
    for split, files in data_files.items():
        for file in files:
            if not file.endswith(".parquet") and not any(char in file for char in "*?["):
                raise ValueError(f"data_files[{split!r}] entry {file!r} is not a .parquet file.")
    return datasets.load_dataset("parquet", data_files=data_files, cache_dir=cache_dir)


def _find_subfolder(root: Path, names: Sequence[str], role: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise ValueError(
        f"{root} has no {role} folder; expected one of {list(names)} (images and masks are paired by relative path "
        f"without extension, e.g. images/a/x.jpg with annotations/a/x.png)."
    )


def _folder_pairs(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Image/mask path pairs of a folder, grouped by split when its images sit in split-named subfolders."""
    image_root = _find_subfolder(root, _IMAGE_DIR_NAMES, "image")
    mask_root = _find_subfolder(root, _MASK_DIR_NAMES, "mask")

    def by_stem(folder: Path) -> dict[Path, Path]:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)
        return {p.relative_to(folder).with_suffix(""): p for p in files}

    images, masks = by_stem(image_root), by_stem(mask_root)
    if not images:
        raise ValueError(f"no image files ({sorted(_IMAGE_EXTENSIONS)}) under {image_root}.")
    missing = [str(stem) for stem in images if stem not in masks]
    if missing:
        raise ValueError(f"{len(missing)} images under {image_root} have no mask under {mask_root}: {missing[:5]}")
    groups: dict[str, tuple[list[str], list[str]]] = {}
    first_parts = {stem.parts[0] for stem in images if len(stem.parts) > 1}
    split_layout = len(first_parts) > 1 and all(
        _SPLIT_ALIASES.get(p, p) in ("train", "validation") for p in first_parts
    )
    for stem, image_path in images.items():
        # ADEChallengeData2016 keeps images/training and images/validation side by side.
        split = _SPLIT_ALIASES.get(stem.parts[0], stem.parts[0]) if split_layout else "train"
        image_paths, mask_paths = groups.setdefault(split, ([], []))
        image_paths.append(str(image_path.resolve()))
        mask_paths.append(str(masks[stem].resolve()))
    return groups


def _load_folders(train_dir, validation_dir) -> DatasetDict:
    features = datasets.Features({"image": ImageFeature(), "annotation": ImageFeature()})
    groups = _folder_pairs(Path(train_dir))
    if validation_dir is not None:
        image_paths, mask_paths = [], []
        for split_images, split_masks in _folder_pairs(Path(validation_dir)).values():
            image_paths += split_images
            mask_paths += split_masks
        groups["validation"] = (image_paths, mask_paths)
    return DatasetDict(
        {
            split: Dataset.from_dict({"image": image_paths, "annotation": mask_paths}, features=features)
            for split, (image_paths, mask_paths) in groups.items()
        }
    )


def _pick_column(dataset: Dataset, explicit: str | None, candidates: Sequence[str], role: str, taken=()) -> str:
    columns = dataset.column_names
    if explicit is not None:
        if explicit not in columns:
            raise ValueError(f"the dataset has no {role} column {explicit!r}; its columns are {columns}.")
        return explicit
    for name in candidates:
        if name in columns and name not in taken:
            return name
    raise ValueError(
        f"cannot find the {role} column among {columns}; tried {list(candidates)}. Pass "
        f"{'image_column' if role == 'image' else 'mask_column'}=..."
    )


def _as_image_feature(dataset: Dataset, column: str, decode: bool) -> Dataset:
    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset if feature.decode == decode else dataset.cast_column(column, ImageFeature(decode=decode))
    # Parquet written without the datasets metadata stores images as struct<bytes, path>; local tables may hold paths.
    is_struct = isinstance(feature, dict) and {"bytes", "path"} <= set(feature)
    is_path = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
    if is_struct or is_path:
        return dataset.cast_column(column, ImageFeature(decode=decode))
    raise ValueError(
        f"column {column!r} must hold images (a datasets.Image feature, {{bytes, path}} structs or file paths), "
        f"got the feature {feature}."
    )


def load_segmentation_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | os.PathLike | None = None,
    validation_dir: str | os.PathLike | None = None,
    data_files=None,
    *,
    image_column: str | None = None,
    mask_column: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    train_val_split: float | None = 0.15,
    seed: int = 0,
    decode: bool = True,
    add_example_index: bool = True,
) -> DatasetDict:
    """Load a semantic-segmentation dataset into one schema: splits `train`/`validation`, columns `image`/`annotation`.

    Exactly one source is used:

    * `dataset_name="scene_parse_150"` (or `"zhoubolei/scene_parse_150"`): ADE20K from the Hub's parquet
      conversion (`revision="refs/convert/parquet"`, folder `dataset_config_name`, default `"scene_parsing"`),
      because the original is a loading script that `datasets` 4+ no longer runs;
    * any other `dataset_name`: `datasets.load_dataset(dataset_name, dataset_config_name, revision=revision)`;
    * `data_files`: local parquet in the same schema (a file, a folder, a list, or a `{split: files}` dict);
    * `train_dir` (and optionally `validation_dir`): folders with an `images/` and an `annotations/` (or `masks/`,
      `labels/`) subfolder, paired by relative path without extension. A folder laid out like
      `ADEChallengeData2016` (`images/training`, `images/validation`) gives both splits.

    Then, for every source alike: the image and mask columns are found (or taken from `image_column` /
    `mask_column`) and renamed to `image` and `annotation`; columns holding `{bytes, path}` structs or paths are cast
    to `datasets.Image`; split names `val`/`valid`/`dev` become `validation`; an `example_index` column (row number
    in the source split) is added so errors can name examples; and without a validation split, `train_val_split` of
    `train` is held out.

    Args:
        dataset_name (`str`, *optional*): Hub dataset id.
        dataset_config_name (`str`, *optional*): Hub config name (for ADE20K: the parquet folder).
        train_dir (`str`, *optional*), validation_dir (`str`, *optional*): Local image/mask folders.
        data_files (`str`, `list` or `dict`, *optional*): Local parquet files.
        image_column (`str`, *optional*), mask_column (`str`, *optional*): Source column names, when the defaults
            (`image`/`pixel_values`/`img` and `annotation`/`label`/`mask`/…) do not find them.
        revision (`str`, *optional*): Hub revision; for ADE20K it defaults to the parquet branch.
        cache_dir (`str`, *optional*), token (`str` or `bool`, *optional*): Passed to `datasets.load_dataset`.
        train_val_split (`float`, *optional*, defaults to 0.15): Share of `train` held out as `validation` when the
            source has no validation split; `None` or 0 to keep no validation split.
        seed (`int`, *optional*, defaults to 0): Seed of that split.
        decode (`bool`, *optional*, defaults to `True`): Whether the `image`/`annotation` columns decode to PIL
            images. `False` leaves `{bytes, path}` dicts, which the segmentation transforms and
            [`mask_histogram`] decode themselves, naming (or skipping) undecodable files.
        add_example_index (`bool`, *optional*, defaults to `True`): Add the `example_index` column.

    Returns:
        `datasets.DatasetDict`.
    """
    sources = [dataset_name is not None, data_files is not None, train_dir is not None]
    if sum(sources) != 1:
        raise ValueError(
            "pass exactly one data source: dataset_name (Hub), data_files (local parquet) or train_dir (folders); got "
            f"dataset_name={dataset_name!r}, data_files={data_files!r}, train_dir={train_dir!r}."
        )
    if validation_dir is not None and train_dir is None:
        raise ValueError("validation_dir needs train_dir.")
    if train_val_split is not None and not 0.0 <= train_val_split < 1.0:
        raise ValueError(f"train_val_split must be in [0, 1), got {train_val_split!r}.")

    if dataset_name is not None:
        hub_kwargs = {"cache_dir": cache_dir, "token": token}
        if dataset_name in ADE20K_DATASET_NAMES:
            raw = datasets.load_dataset(
                ADE20K_HUB_ID,
                data_dir=dataset_config_name or ADE20K_DEFAULT_CONFIG,
                revision=revision or HUB_PARQUET_REVISION,
                **hub_kwargs,
            )
        else:
            raw = datasets.load_dataset(dataset_name, dataset_config_name, revision=revision, **hub_kwargs)
    elif data_files is not None:
        raw = _load_parquet(data_files, cache_dir)
    else:
        raw = _load_folders(train_dir, validation_dir)
    if not isinstance(raw, DatasetDict):
        raw = DatasetDict({"train": raw})

    splits = {}
    for split_name, split in raw.items():
        name = _SPLIT_ALIASES.get(split_name, split_name)
        # The parquet conversion of very large datasets names its splits "partial-train" etc.
        name = name.removeprefix("partial-")
        name = _SPLIT_ALIASES.get(name, name)
        if name in splits:
            raise ValueError(f"splits {list(raw)} map to the same name {name!r}.")
        splits[name] = split
    if "train" not in splits:
        raise ValueError(f"the dataset has no train split; its splits are {list(raw)}.")

    normalised = {}
    for name, split in splits.items():
        image_source = _pick_column(split, image_column, IMAGE_COLUMN_CANDIDATES, "image")
        mask_source = _pick_column(split, mask_column, MASK_COLUMN_CANDIDATES, "mask", taken=(image_source,))
        if image_source == mask_source:
            raise ValueError(f"image_column and mask_column are both {image_source!r}.")
        renames = {image_source: "image", mask_source: "annotation"}
        clashes = [c for c in ("image", "annotation") if c in split.column_names and c not in renames]
        if clashes:
            # e.g. mask_column="label" while an unrelated "annotation" column exists: keep it under another name.
            split = split.rename_columns({c: f"original_{c}" for c in clashes})
        split = split.rename_columns({src: dst for src, dst in renames.items() if src != dst})
        split = _as_image_feature(split, "image", decode)
        split = _as_image_feature(split, "annotation", decode)
        if add_example_index and "example_index" not in split.column_names:
            split = split.add_column("example_index", np.arange(split.num_rows, dtype=np.int64))
        normalised[name] = split

    if "validation" not in normalised and train_val_split:
        held_out = normalised["train"].train_test_split(test_size=train_val_split, seed=seed)
        normalised["train"], normalised["validation"] = held_out["train"], held_out["test"]
    return DatasetDict(normalised)


# --------------------------------------------------------------------------------------------------------------------
# Pixel histogram


def _resolve_mask_column(column_names: Sequence[str], requested: str | None) -> str:
    return pick_column(column_names, requested, MASK_COLUMN_CANDIDATES, "mask", hint="Pass mask_column=...")


def _mask_values(data, mask_column: str | None, batch_size: int) -> tuple[Iterator, int | None]:
    """(index, stored mask value) pairs, reading encoded bytes straight from Arrow when the column is an Image."""
    if isinstance(data, DatasetDict):
        raise ValueError(f"pass one split (e.g. dataset['train']), not a DatasetDict with splits {list(data)}.")
    if isinstance(data, (Dataset, datasets.IterableDataset)):
        if data.column_names is not None:
            mask_column = _resolve_mask_column(data.column_names, mask_column)
        elif mask_column is None:
            raise ValueError("this IterableDataset does not list its columns; pass mask_column=...")
        # Drop any set_transform and other columns; leave masks encoded so threads decode them in parallel.
        data = data.with_format(None).select_columns([mask_column])
        features = data.features
        if features is not None and isinstance(features[mask_column], ImageFeature) and features[mask_column].decode:
            data = data.cast_column(mask_column, ImageFeature(decode=False))
        length = data.num_rows if isinstance(data, Dataset) else None
        if isinstance(data, Dataset):
            rows = (value for batch in data.iter(batch_size=batch_size) for value in batch[mask_column])
        else:
            rows = (example[mask_column] for example in data)
        return enumerate(rows), length
    length = len(data) if hasattr(data, "__len__") else None
    if not hasattr(data, "__iter__") and hasattr(data, "__getitem__") and length is not None:
        data = (data[index] for index in range(length))  # a map-style dataset without __iter__

    def rows():
        column = mask_column
        for item in data:
            if isinstance(item, Mapping) and not _is_storage(item):
                if column is None:
                    column = _resolve_mask_column(list(item.keys()), None)
                elif column not in item:
                    raise ValueError(f"an item has no mask key {column!r}; keys present: {list(item.keys())}.")
                item = item[column]
            yield item

    return enumerate(rows()), length


def _is_storage(item: Mapping) -> bool:
    return set(item) <= {"bytes", "path"}


def _as_mask_array(value, name: str) -> np.ndarray:
    """A decoded integer mask `(H, W)`, a batch of masks `(B, H, W)`, or class labels `()`/`(B,)`, as an array."""
    if isinstance(value, np.ndarray):
        array = value
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor; torch is not imported for this
        array = value.detach().cpu().numpy()
    elif isinstance(value, (list, tuple)):
        array = np.asarray(value)
    else:
        return decode_mask(value, name)
    if array.ndim > 3:
        raise ValueError(
            f"the mask of {name} has shape {array.shape}; expected a mask (H, W) or a batch of masks (B, H, W)."
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"the mask of {name} must hold integer class ids, got dtype {array.dtype}.")
    return array


def _value_counts(array: np.ndarray, largest_allowed: int, ignore_index: int | None) -> tuple[np.ndarray, list]:
    """`(counts indexed by mask value, out-of-range values)` of an integer mask; negative ignore values are dropped.

    Values above `largest_allowed` (other than `ignore_index`) are reported instead of counted, so a stray huge value
    cannot make `np.bincount` allocate gigabytes.
    """
    values = array.ravel()
    if values.size == 0:
        return np.zeros(largest_allowed + 1, dtype=np.int64), []
    low, high = values.min(), values.max()
    if low < 0 or high > largest_allowed:
        outside = (values < 0) | (values > largest_allowed)
        if ignore_index is not None:
            outside &= values != ignore_index
        if outside.any():
            return np.zeros(0, dtype=np.int64), np.unique(values[outside]).tolist()
        if low < 0:  # only a negative ignore index (e.g. -100) is below zero: leave it out
            values = values[values >= 0]
    return np.bincount(values, minlength=largest_allowed + 1).astype(np.int64, copy=False), []


def bounded_map(pool: ThreadPoolExecutor, function, items: Iterable, max_in_flight: int) -> Iterator:
    """Like `pool.map`, in order, but never more than `max_in_flight` items pending: memory stays flat on streams.

    `pool.map` submits every item before yielding the first result, so on a stream it would read (and hold) the
    whole stream at once.

    Args:
        pool (`ThreadPoolExecutor`): the pool the calls run on.
        function (`Callable`): called as `function(item)`.
        items (`Iterable`): consumed lazily, at most `max_in_flight` items ahead of the caller.
        max_in_flight (`int`): most submitted calls whose results have not been yielded yet.

    Returns:
        `Iterator`: the results, in the order of `items`.
    """
    pending = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= max_in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# The old private name, kept until every caller uses `bounded_map`.
_bounded_map = bounded_map


def _describe_values(values: list, limit: int = 10) -> str:
    shown = ", ".join(str(int(value)) for value in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]" + (
        f" ({len(values)} distinct values)" if len(values) > limit else ""
    )


def mask_histogram(
    dataset_or_iterable,
    num_classes: int,
    ignore_index: int | None = 255,
    mask_column: str | None = None,
    reduce_labels: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
    skip_bad: bool = False,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    total: int | None = None,
    batch_size: int = 256,
    desc: str = "Pixel histogram",
) -> tuple[np.ndarray, int]:
    """Pixels per class over all masks of a dataset, streamed: one pass, memory independent of the dataset size.

    Masks are decoded with PIL in a thread pool (PIL releases the GIL while decoding) and counted with PIL's
    histogram or `np.bincount`. A `datasets.Dataset` is read from its Arrow storage without decoding in the main
    thread and without its `set_transform`. The counts feed HEM+ margins:
    `margins_from_counts(counts, num_samples=num_images)`. This is the one implementation behind
    [`hf_hem.counting.pixel_histogram`] and the margin counting of [`~hf_hem.HEMTrainer`].

    Args:
        dataset_or_iterable (`datasets.Dataset`, `datasets.IterableDataset` or iterable): Rows with a mask column
            (dicts too, e.g. the items of a map-style torch dataset), or the masks themselves: PIL images, integer
            NumPy arrays or torch tensors `(H, W)`, batches of them `(B, H, W)` (such as collated `labels`), nested
            lists, paths, bytes or `{bytes, path}` dicts. Class labels `(B,)` of a classification batch are counted
            too (each label is one sample).
        num_classes (`int`): Number of classes counted (after `reduce_labels`).
        ignore_index (`int`, *optional*, defaults to 255): Mask value left out of the counts (negative values such as
            -100 work too); `None` for none.
        mask_column (`str`, *optional*): Column (or dict key) holding the masks. Defaults to the first present of
            `"annotation"`, `"label"`, `"mask"`, `"segmentation_mask"`, `"semantic_map"`, `"labels"`, `"seg"`.
        reduce_labels (`bool`, *optional*, defaults to `False`): Count as after [`~hf_hem.data.reduce_labels`]: raw
            0 (background) is ignored and raw value `c + 1` counts for class `c`.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar (one tick per item: a mask, or a batch).
        num_threads (`int`, *optional*): Decoding threads; defaults to the number of CPUs (at most 8).
        skip_bad (`bool`, *optional*, defaults to `False`): Skip undecodable masks (logged with their count) instead
            of raising.
        transform (`Callable[[np.ndarray], np.ndarray]`, *optional*): Applied to each decoded mask (or batch) before
            counting, e.g. a custom relabelling, so the counts match what the model trains on. It runs in the
            decoding threads, so it must be thread-safe (NumPy functions are).
        total (`int`, *optional*): Number of items, for the progress bar of an iterable without a length.
        batch_size (`int`, *optional*, defaults to 256): Rows read at a time from a `datasets.Dataset`.
        desc (`str`, *optional*, defaults to `"Pixel histogram"`): Progress bar label.

    Returns:
        `tuple[np.ndarray, int]`: `counts` (int64, shape `(num_classes,)`) and the number of masks counted (every
        mask of a `(B, H, W)` batch counts; for class labels, the number of labels).

    Raises:
        `ValueError`: a mask holds values that are neither a class nor `ignore_index` (naming the example and the
            values), a missing mask column (listing the columns present), or inconsistent arguments.
        [`~hf_hem.data.UndecodableImageError`]: a mask cannot be decoded and `skip_bad` is `False`.

    Example:

    ```python
    >>> from hf_hem.data import load_digits_segmentation_dataset, mask_histogram
    >>> data = load_digits_segmentation_dataset(num_images=50)
    >>> counts, num_images = mask_histogram(data["train"], num_classes=10, reduce_labels=True, progress=False)
    >>> counts.shape, num_images
    ((10,), 40)
    ```
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    num_classes = int(num_classes)
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}.")
        ignore_index = int(ignore_index)
        class_values = range(1, num_classes + 1) if reduce_labels else range(num_classes)
        if ignore_index in class_values:
            raise ValueError(
                f"ignore_index {ignore_index} is also the raw mask value of a class (classes are raw values "
                f"{class_values.start}..{class_values.stop - 1}); choose an ignore index outside that range."
            )
    if num_threads is None:
        num_threads = max(1, min(8, os.cpu_count() or 1))
    elif isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if transform is not None and not callable(transform):
        raise ValueError(f"transform must be a callable mapping a mask array to a mask array, got {transform!r}.")

    offset = 1 if reduce_labels else 0  # raw mask value of class 0
    largest_allowed = max(offset + num_classes - 1, ignore_index if ignore_index is not None else -1)
    if reduce_labels:
        expected = f"0 (background) or 1..{num_classes} (classes 0..{num_classes - 1})"
    else:
        expected = f"class ids 0..{num_classes - 1}"
    if ignore_index is not None:
        expected += f" or the ignore index {ignore_index}"

    def checked(index: int, raw: np.ndarray, bad: list, masks: int, name: str):
        """`(index, class counts, number of masks)` from the counts of every raw value, or an error naming them."""
        if not bad:
            values = np.flatnonzero(raw)
            allowed = (values >= offset) & (values < offset + num_classes)
            if reduce_labels:
                allowed |= values == 0
            if ignore_index is not None:
                allowed |= values == ignore_index
            bad = values[~allowed].tolist()
        if bad:
            raise ValueError(
                f"the mask of {name} has values {_describe_values(bad)} outside [{offset}, {offset + num_classes}) "
                f"that are not ignored; expected {expected}. Check num_classes and reduce_labels."
            )
        return index, raw[offset : offset + num_classes], masks

    def count_one(item) -> tuple[int, np.ndarray | None, int]:
        index, value = item
        name = f"example {index}"
        try:
            if transform is None and not isinstance(value, (np.ndarray, list, tuple)) and not hasattr(value, "cpu"):
                image = decode_image(value, name)
                if image.mode in ("L", "P"):
                    # PIL's C histogram counts 8-bit values ~5x faster than converting to NumPy and bincount.
                    return checked(index, np.asarray(image.histogram(), dtype=np.int64), [], 1, name)
                value = image
            array = _as_mask_array(value, name)
        except UndecodableImageError:
            if skip_bad:
                return index, None, 0
            raise
        if transform is not None:
            array = _as_mask_array(np.asarray(transform(array)), name)
        if array.ndim in (1, 3):
            name = f"batch {index}"
        # Samples in this item: one mask, every mask of a (B, H, W) batch, or every label of a (B,) batch.
        samples = 1 if array.ndim in (0, 2) else array.shape[0]
        raw, bad = _value_counts(array, largest_allowed, ignore_index)
        return checked(index, raw, bad, samples, name)

    items, length = _mask_values(dataset_or_iterable, mask_column, batch_size)
    if total is None:
        total = length
    counts = np.zeros(num_classes, dtype=np.int64)
    num_images, skipped = 0, []
    from tqdm.auto import tqdm

    with (
        ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="pixel-histogram") as pool,
        tqdm(total=total, desc=desc, unit="mask", disable=not progress) as bar,
    ):
        try:
            for index, class_counts, masks in bounded_map(pool, count_one, items, max_in_flight=8 * num_threads):
                if class_counts is None:
                    skipped.append(index)
                else:
                    # A mask whose raw values stop below the last class gives a shorter slice.
                    counts[: class_counts.size] += class_counts
                    num_images += masks
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if skipped:
        logger.warning("mask_histogram skipped %d undecodable masks (examples %s).", len(skipped), skipped[:10])
    return counts, num_images
