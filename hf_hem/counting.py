"""Training-set label counts for HEM / HEM+ margins and logit-adjusted priors.

* [`count_labels`]: samples per class of a classification set, read from the Arrow label column of a
  `datasets.Dataset` (no image is decoded), or from any 1-D array of labels. A million rows take milliseconds.
* [`pixel_histogram`]: labelled pixels per class of a segmentation set, streamed mask by mask with a progress bar
  (a front of [`hf_hem.data.mask_histogram`], the one implementation).
* [`count_label_batches`]: labels of collated training batches (any `Mapping` with `labels`: scalar, token or pixel
  labels), without moving a random generator that training uses.
* [`resolve_class_counts`]: the one resolver behind [`HEMTrainer`] and the pipelines: counts from a named source
  (`"given"`, `"label_column"`, `"masks"`, `"batches"`), checked against the number of classes, with `S` for the
  margin formula.

All return `numpy.int64` arrays of shape `(num_classes,)` that [`margins_from_counts`] turns into margins.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch


_LABEL_COLUMN_CANDIDATES = ("labels", "label")


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    return int(num_classes)


def _is_hf_dataset(obj) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency, but counting arrays must not need it
        return False
    return isinstance(obj, datasets.Dataset)


def _describe_values(values: np.ndarray, limit: int = 10) -> str:
    unique = np.unique(values)
    shown = ", ".join(str(int(v)) for v in unique[:limit])
    return shown + (f", ... ({unique.size} distinct values)" if unique.size > limit else "")


def _bincount_checked(values: np.ndarray, num_classes: int, ignore_index: int | None, what: str) -> np.ndarray:
    """`np.bincount` of integer `values` with range checks; `ignore_index` entries are skipped."""
    if values.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer class indices, got dtype {values.dtype}.")
    if ignore_index is not None:
        values = values[values != ignore_index]
    if values.size == 0:
        return np.zeros(num_classes, dtype=np.int64)
    # min/max first: a full boolean mask is only built when something is out of range.
    low, high = values.min(), values.max()
    if low < 0 or high >= num_classes:
        bad = values[(values < 0) | (values >= num_classes)]
        ignored = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
        raise ValueError(
            f"{what} contain values [{_describe_values(bad)}] outside [0, {num_classes}){ignored}; "
            f"expected class indices for {num_classes} classes."
        )
    return np.bincount(values.astype(np.intp, copy=False), minlength=num_classes).astype(np.int64, copy=False)


def count_labels(
    dataset_or_column,
    num_classes: int,
    label_column: str | None = "label",
    *,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Samples per class of a classification training set.

    For a `datasets.Dataset` the label column is read straight from its Arrow table (respecting `select`,
    `shuffle` and `train_test_split` index mappings, ignoring any `set_transform`), so no image or text is decoded.

    Args:
        dataset_or_column (`datasets.Dataset`, `pyarrow.Array`, `pyarrow.ChunkedArray`, `numpy.ndarray`,
            `torch.Tensor` or `Sequence[int]`): the training set, or its label column.
        num_classes (`int`): number of classes `n`; every label must lie in `[0, n)`.
        label_column (`str`, *optional*, defaults to `"label"`): column to count for a `datasets.Dataset`. `None`
            picks `"labels"` or `"label"`, whichever is present.
        ignore_index (`int`, *optional*): label value of samples that take no part in training; not counted.

    Returns:
        `numpy.ndarray` of shape `(num_classes,)`, `int64`: the count of each class.

    Raises:
        `ValueError`: a missing label column (the message lists the columns present), null labels, non-integer
        labels, or labels outside `[0, num_classes)` (the message names them).

    Example:

    ```python
    >>> counts = count_labels(train_dataset, num_classes=10)  # CIFAR-10: [5000, 5000, ...]
    >>> margins = margins_from_counts(counts, per_class=True)   # HEM+
    ```
    """
    num_classes = _check_num_classes(num_classes)
    column = dataset_or_column
    what = "labels"
    if _is_hf_dataset(dataset_or_column):
        # Imported here: `hf_hem.data` imports datasets and PIL, which counting arrays must not need.
        from .data.columns import pick_column

        name = pick_column(dataset_or_column.column_names, label_column, _LABEL_COLUMN_CANDIDATES, "label")
        what = f"labels of column {name!r}"
        column = _arrow_label_column(dataset_or_column, name)
    values = _label_array(column, what)
    return _bincount_checked(values, num_classes, ignore_index, what)


def _arrow_label_column(dataset, name: str):
    """The label column as Arrow, in dataset order: no transform runs and no other column is read."""
    table_column = dataset.data.column(name)
    # select()/shuffle()/train_test_split() keep the full table plus an indices mapping; taking the mapped rows of
    # the one column is ~40x faster than the generic row query, which gathers every column first.
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        return table_column.take(indices.column(0))
    if len(table_column) == len(dataset):
        return table_column
    # An index mapping this code does not know about: the public (slower) path honours it.
    return dataset.with_format("arrow")[name]


def _label_array(column, what: str) -> np.ndarray:
    """A 1-D integer numpy view of a label column, whatever container holds it."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover
        pa = None
    if pa is not None and isinstance(column, (pa.Array, pa.ChunkedArray)):
        if column.null_count:
            raise ValueError(f"{what} contain {column.null_count} null values; every sample needs a label.")
        if not pa.types.is_integer(column.type):
            raise ValueError(f"{what} must hold integer class indices, got Arrow type {column.type}.")
        values = column.to_numpy()
    elif torch.is_tensor(column):
        values = column.detach().cpu().numpy()
    else:
        values = np.asarray(column)
    if values.ndim != 1:
        raise ValueError(
            f"{what} must be one class index per sample (1-D), got shape {values.shape}; "
            "for segmentation masks use pixel_histogram()."
        )
    return values


def pixel_histogram(
    masks_iterable_or_dataset,
    num_classes: int,
    ignore_index: int | None = 255,
    mask_column: str | None = None,
    transform: Callable | None = None,
    progress: bool = True,
    *,
    total: int | None = None,
    batch_size: int = 64,
    desc: str = "Counting label pixels",
    reduce_labels: bool = False,
    skip_bad: bool = False,
    num_threads: int | None = None,
    return_num_masks: bool = False,
) -> np.ndarray | tuple[np.ndarray, int]:
    """Labelled pixels per class of a segmentation training set, streamed one mask (or batch) at a time.

    A front of [`hf_hem.data.mask_histogram`], which does the work (threaded decoding, one pass).

    Args:
        masks_iterable_or_dataset (`datasets.Dataset` or iterable): a `datasets.Dataset` (masks are read from
            `mask_column`, other columns are not decoded, `set_transform` is ignored), a map-style dataset whose
            items are dicts, or any iterable of masks. A mask is a `PIL.Image`, `numpy.ndarray`, `torch.Tensor` or
            nested list of shape `(H, W)`; a batch `(B, H, W)` works too.
        num_classes (`int`): number of classes `n`; every non-ignored pixel must lie in `[0, n)`.
        ignore_index (`int`, *optional*, defaults to 255): pixel value that is not counted (after `transform`).
        mask_column (`str`, *optional*): column (or dict key) holding the mask. Defaults to the first present of
            `"annotation"`, `"label"`, `"mask"`, `"segmentation_mask"`, `"semantic_map"`, `"labels"`, `"seg"`.
        transform (`Callable`, *optional*): applied to each mask (as a numpy array) before counting, for example
            a label reduction `lambda m: np.where((m == 0) | (m == 255), 255, m - 1)` so counts match what the model
            trains on. It runs in worker threads, so it must be thread-safe.
        progress (`bool`, defaults to `True`): show a tqdm progress bar; it counts the items of the iterable
            (masks, or batches of masks).
        total (`int`, *optional*): number of items, for the progress bar of a plain iterable.
        batch_size (`int`, defaults to 64): rows read at a time from a `datasets.Dataset`.
        desc (`str`): progress bar label.
        reduce_labels (`bool`, defaults to `False`): ADE20K-style label reduction (0 -> ignored, others - 1).
        skip_bad (`bool`, defaults to `False`): skip undecodable masks with a warning instead of raising.
        num_threads (`int`, *optional*): decoding threads.
        return_num_masks (`bool`, defaults to `False`): also return the number of masks counted (`S` for
            segmentation margins).

    Returns:
        `numpy.ndarray` of shape `(num_classes,)`, `int64`: labelled pixels of each class; with
        `return_num_masks`, the tuple `(counts, num_masks)`.

    Raises:
        `ValueError`: a missing mask column (the message lists the columns present) or pixel values outside
        `[0, num_classes)` that are not `ignore_index` (the message names them).

    Example:

    ```python
    >>> pixels = pixel_histogram(ade20k_train, num_classes=150, mask_column="annotation",
    ...                          transform=lambda m: np.where((m == 0) | (m == 255), 255, m - 1))
    >>> margins = margins_from_counts(pixels, per_class=True, num_samples=len(ade20k_train))
    ```
    """
    from .data.segmentation import mask_histogram

    counts, num_masks = mask_histogram(
        masks_iterable_or_dataset,
        _check_num_classes(num_classes),
        ignore_index=ignore_index,
        mask_column=mask_column,
        reduce_labels=reduce_labels,
        progress=progress,
        num_threads=num_threads,
        skip_bad=skip_bad,
        transform=transform,
        total=total,
        batch_size=batch_size,
        desc=desc,
    )
    return (counts, num_masks) if return_num_masks else counts


_GENERATOR_TYPES = (np.random.Generator, np.random.RandomState, random.Random, torch.Generator)


def _random_state_holders(owners: Iterable, depth: int = 5, max_children: int = 64) -> tuple[list, list]:
    """The random generators reachable from `owners` (a few attribute levels deep) and the plain objects on the way.

    Returns `(generators, objects)`: every `numpy`/`random`/`torch` generator found, and the objects (transforms,
    their helpers) whose attributes may hold one, such as a generator that is built lazily on first use.
    """
    generators, objects, seen = [], [], set()

    def visit(obj, level):
        if obj is None or id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor, np.ndarray)):
            return
        seen.add(id(obj))
        if isinstance(obj, _GENERATOR_TYPES):
            generators.append(obj)
            return
        if level == 0:
            return
        if isinstance(obj, Mapping):
            children = list(obj.values())[:max_children]
        elif isinstance(obj, (list, tuple)):
            children = list(obj)[:max_children]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            module = type(obj).__module__ or ""
            if not module.startswith(("datasets", "pyarrow", "torch")):
                objects.append(obj)
            children = list(vars(obj).values())[:max_children]
        else:
            children = []
        for child in children:
            visit(child, level - 1)

    for obj in owners:
        visit(obj, depth)
    return generators, objects


def _generator_state(generator):
    if isinstance(generator, np.random.Generator):
        return generator.bit_generator.state
    return generator.getstate() if isinstance(generator, random.Random) else generator.get_state()


def _set_generator_state(generator, state) -> None:
    if isinstance(generator, np.random.Generator):
        generator.bit_generator.state = state
    elif isinstance(generator, random.Random):
        generator.setstate(state)
    else:
        generator.set_state(state)


@contextlib.contextmanager
def preserved_random_state(*owners):
    """Runs a block (a counting pass through random transforms) without moving a random generator training uses.

    Restores the global generators (`random`, `numpy`, `torch`, CUDA), every generator reachable from `owners`
    (e.g. a dataset and its transform: hf_hem's transforms keep their own generator) and the attributes of the
    plain objects on the way (so a generator built lazily during the block is dropped again). A run that counts
    then sees the same augmentations as a run given its counts or resumed from a checkpoint.
    """
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    generators, objects = _random_state_holders(owners)
    generator_states = [(generator, _generator_state(generator)) for generator in generators]
    attributes = [(obj, dict(vars(obj))) for obj in objects]
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for obj, saved in attributes:
            vars(obj).clear()
            vars(obj).update(saved)
        for generator, state in generator_states:
            _set_generator_state(generator, state)


def count_label_batches(
    batches: Iterable,
    num_classes: int,
    *,
    ignore_index: int | None = -100,
    progress: bool = False,
    total: int | None = None,
    desc: str = "Counting training labels for the margins",
) -> tuple[np.ndarray, int, bool]:
    """Labels per class over collated training batches, exactly as the model will see them.

    Args:
        batches (`Iterable`): batches that are `Mapping`s with a `labels` entry (a `dict`, a `BatchEncoding`, ...),
            or label tensors: `(B,)` scalar labels, `(B, L)` token labels, `(B, H, W)` masks.
        num_classes (`int`): number of classes; every non-ignored label must lie in `[0, num_classes)`.
        ignore_index (`int`, *optional*, defaults to -100): label value that is not counted.
        progress, total, desc: the tqdm progress bar.

    Returns:
        `(counts, num_samples, dense)`: counts per class, the number of samples (rows) seen, and whether the
        labels had more than one value per sample (tokens or pixels).
    """
    seen = {"samples": 0, "dense": False}

    def label_batches():
        for batch in batches:
            labels = batch.get("labels") if isinstance(batch, Mapping) else batch
            if not torch.is_tensor(labels) and not isinstance(labels, np.ndarray):
                keys = list(batch.keys()) if isinstance(batch, Mapping) else type(batch).__name__
                raise ValueError(f"training batches have no 'labels' to count; batch keys: {keys}.")
            seen["samples"] += int(labels.shape[0])
            seen["dense"] = seen["dense"] or labels.ndim > 1
            yield labels

    counts = pixel_histogram(
        label_batches(), num_classes, ignore_index=ignore_index, progress=progress, total=total, desc=desc
    )
    return counts, seen["samples"], seen["dense"]


def find_label_column(dataset, num_classes: int, requested: str | None = None, nested: bool = False) -> str | None:
    """The Arrow column of `dataset` that [`count_labels`] can count, or `None` when the labels must be counted
    through the data pipeline (masks, or labels that only a `set_transform` produces).

    Args:
        dataset (`datasets.Dataset`): the training set.
        num_classes (`int`): the model's number of classes, checked against a `ClassLabel` column.
        requested (`str`, *optional*): the label column; `None` looks for `"labels"`, then `"label"`.
        nested (`bool`, defaults to `False`): the labels are one per token (a list column), as for token
            classification.

    Raises:
        `ValueError`: a requested column that is missing, no label column at all (the message lists the columns and
        the keys the transform produces), a `ClassLabel` with another number of classes, or labels that do not fit
        the head (a list column where one label per sample is expected, or the reverse).
    """
    import datasets

    columns = list(dataset.column_names)
    if requested is not None and requested not in columns:
        raise ValueError(
            f"class_counts_column={requested!r} is not a column of train_dataset; columns present: {columns}."
        )
    name = requested or next((c for c in _LABEL_COLUMN_CANDIDATES if c in columns), None)
    if name is None:
        transformed = None
        if dataset.format.get("type") == "custom" and len(dataset):
            with preserved_random_state(dataset):  # a peek through random transforms must not move their generator
                transformed = list(dataset[:1].keys())
            if "labels" in transformed:
                return None  # the labels are produced by set_transform: count them through the pipeline
        extra = f"; keys produced by its transform: {transformed}" if transformed is not None else ""
        raise ValueError(
            f"train_dataset has no label column (looked for 'labels' and 'label'); columns present: {columns}"
            f"{extra}. Set class_counts_column= to the column holding the class labels."
        )
    feature = dataset.features[name]
    list_types = tuple(t for t in (getattr(datasets, "List", None), getattr(datasets, "Sequence", None)) if t)
    is_list = isinstance(feature, (list, *list_types))
    inner = (feature[0] if feature else None) if isinstance(feature, list) else getattr(feature, "feature", feature)
    if isinstance(inner, datasets.ClassLabel) and inner.num_classes != num_classes:
        raise ValueError(
            f"train_dataset column {name!r} has {inner.num_classes} classes but the model has num_labels="
            f"{num_classes}; build the model with num_labels={inner.num_classes} "
            "(and id2label/label2id from the dataset's ClassLabel names)."
        )
    scalar = isinstance(inner, datasets.ClassLabel) or (
        isinstance(inner, datasets.Value) and inner.dtype.startswith(("int", "uint"))
    )
    if scalar and is_list and not nested:
        raise ValueError(
            f"train_dataset column {name!r} holds a list of labels per row, but the model takes one label per "
            "sample (expected an integer column of shape (num_rows,)); token classification models take one label "
            "per token."
        )
    if scalar and nested and not is_list:
        raise ValueError(
            f"train_dataset column {name!r} holds one label per row, but the model takes one label per token "
            "(expected a list column of shape (num_rows, num_tokens))."
        )
    return name if scalar else None


@dataclass(frozen=True)
class ClassCounts:
    """Resolved class counts.

    Args:
        counts (`numpy.ndarray`): `(num_classes,)` int64 counts per class.
        num_samples (`float`, *optional*): `S` of the margin formula; `None` means `sum(counts)`.
        source (`str`): where the counts came from (`"given"`, `"label_column"`, `"masks"`, `"batches"`).
    """

    counts: np.ndarray
    num_samples: float | None
    source: str


COUNT_SOURCES = ("given", "label_column", "masks", "batches")


def resolve_class_counts(
    source: str,
    num_classes: int,
    *,
    class_counts=None,
    num_samples: float | None = None,
    dataset=None,
    label_column: str | None = None,
    nested: bool = False,
    ignore_index: int | None = -100,
    mask_column: str | None = None,
    mask_transform: Callable | None = None,
    reduce_labels: bool = False,
    skip_bad: bool = False,
    batches: Iterable | None = None,
    generator_owners: tuple = (),
    progress: bool = False,
    total: int | None = None,
) -> ClassCounts:
    """Class counts from one explicitly named source: the one resolver behind [`HEMTrainer`] and the pipelines.

    Sources:

    * `"given"`: `class_counts` as passed (checked: one non-negative integer per class, not all zero).
    * `"label_column"`: the Arrow column `label_column` of the `datasets.Dataset` `dataset` (no transform runs;
      `nested=True` counts one label per token of a list column).
    * `"masks"`: a pixel histogram of the segmentation masks of `dataset` (`mask_column`, optional
      `reduce_labels` / `mask_transform`, `skip_bad`); `S` is the number of masks (images).
    * `"batches"`: collated batches `batches` (e.g. a DataLoader over the training set with its transforms), with
      every random generator restored afterwards ([`preserved_random_state`] over `generator_owners`); `S` is the
      number of images when the labels are dense masks, and the number of labelled tokens for token labels
      (`nested=True`: tokens are classified one by one, like images).

    Args:
        num_samples (`float`, *optional*): `S` when known (overrides what the source says).

    Returns:
        [`ClassCounts`].
    """
    num_classes = _check_num_classes(num_classes)
    if source == "given":
        counts = np.asarray(class_counts.detach().cpu() if torch.is_tensor(class_counts) else class_counts)
        if counts.ndim != 1 or counts.size != num_classes:
            raise ValueError(
                f"class_counts has {counts.size} entries but the model has num_labels={num_classes}; expected one "
                "count per class."
            )
        if counts.dtype.kind not in "iu" or (counts < 0).any() or counts.sum() == 0:
            raise ValueError(
                f"class_counts must be integers >= 0, not all zero, got {counts.tolist()}; expected the training "
                "samples (segmentation: labelled pixels) per class."
            )
        return ClassCounts(counts.astype(np.int64), num_samples, source)
    if source == "label_column":
        if nested:
            counts = _count_nested_labels(dataset, num_classes, label_column, ignore_index)
        else:
            counts = count_labels(dataset, num_classes, label_column, ignore_index=ignore_index)
        return ClassCounts(counts, num_samples, source)
    if source == "masks":
        counts, num_masks = pixel_histogram(
            dataset,
            num_classes,
            ignore_index=ignore_index,
            mask_column=mask_column,
            transform=mask_transform,
            reduce_labels=reduce_labels,
            skip_bad=skip_bad,
            progress=progress,
            return_num_masks=True,
        )
        return ClassCounts(counts, num_samples if num_samples is not None else num_masks, source)
    if source == "batches":
        with preserved_random_state(*generator_owners):
            counts, rows, dense = count_label_batches(
                batches, num_classes, ignore_index=ignore_index, progress=progress, total=total
            )
        if num_samples is None and dense and not nested:
            num_samples = rows  # segmentation: S is the number of images, not of pixels (method page, section 2)
        return ClassCounts(counts, num_samples, source)
    raise ValueError(f"source={source!r} is not a counting source; expected one of {', '.join(COUNT_SOURCES)}.")


def _count_nested_labels(dataset, num_classes: int, label_column: str | None, ignore_index: int | None) -> np.ndarray:
    """Token labels of a list column: every labelled token counts once (`ignore_index`, e.g. -100, does not)."""
    import pyarrow.compute as pc

    from .data.columns import pick_column

    name = pick_column(dataset.column_names, label_column, _LABEL_COLUMN_CANDIDATES, "label")
    column = _arrow_label_column(dataset, name)
    what = f"token labels of column {name!r}"
    flat = pc.list_flatten(column)
    return _bincount_checked(_label_array(flat, what), num_classes, ignore_index, what)
