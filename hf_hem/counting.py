"""Training-set label counts for HEM / HEM+ margins and logit-adjusted priors.

* [`count_labels`]: samples per class of a classification set, read from the Arrow label column of a
  `datasets.Dataset` (no image is decoded), or from any 1-D array of labels. A million rows take milliseconds.
* [`pixel_histogram`]: labelled pixels per class of a segmentation set, streamed mask by mask with a progress bar
  (a counts-only front of [`hf_hem.data.pixel_histogram`], the one implementation).

Both return `numpy.int64` arrays of shape `(num_classes,)` that [`margins_from_counts`] turns into margins.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _resolve_column(column_names: list[str], requested: str | None, candidates: tuple[str, ...], what: str) -> str:
    if requested is not None:
        if requested not in column_names:
            raise ValueError(f"{what} column {requested!r} not found; columns present: {column_names}.")
        return requested
    for name in candidates:
        if name in column_names:
            return name
    raise ValueError(
        f"no {what} column found (looked for {list(candidates)}); columns present: {column_names}. "
        f"Pass the column name explicitly."
    )


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
        name = _resolve_column(list(dataset_or_column.column_names), label_column, _LABEL_COLUMN_CANDIDATES, "label")
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
) -> np.ndarray:
    """Labelled pixels per class of a segmentation training set, streamed one mask (or batch) at a time.

    The counts-only form of [`hf_hem.data.pixel_histogram`], which does the work (threaded decoding, one pass);
    use that one directly for the number of masks counted, ADE20K-style `reduce_labels` and skipping undecodable
    masks.

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

    Returns:
        `numpy.ndarray` of shape `(num_classes,)`, `int64`: labelled pixels of each class.

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
    from .data.segmentation import pixel_histogram as streamed_pixel_histogram

    counts, _ = streamed_pixel_histogram(
        masks_iterable_or_dataset,
        _check_num_classes(num_classes),
        ignore_index=ignore_index,
        mask_column=mask_column,
        progress=progress,
        transform=transform,
        total=total,
        batch_size=batch_size,
        desc=desc,
    )
    return counts
