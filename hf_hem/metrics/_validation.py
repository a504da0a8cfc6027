"""Input conversion and checks shared by the metric functions."""

import numpy as np


def to_numpy(values) -> np.ndarray:
    """Converts array-likes, including torch tensors on any device, to a NumPy array without copying when possible."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor, without importing torch
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.float()  # NumPy has no bfloat16
    return np.asarray(values)


def as_labels(values, name: str, ndim: int | None = 1) -> np.ndarray:
    """Returns `values` as an int64 array; raises `ValueError` for non-integer values or the wrong number of dims."""
    array = to_numpy(values)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"`{name}` must be a {ndim}-D array of integer labels, got shape {array.shape}.")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(f"`{name}` must hold integer labels, got dtype {array.dtype}.")
    return array.astype(np.int64, copy=False)


def as_scores(values, name: str, ndim: int = 1) -> np.ndarray:
    """Returns `values` as a finite float64 array with `ndim` dims; raises `ValueError` otherwise."""
    array = to_numpy(values)
    if array.ndim != ndim:
        raise ValueError(f"`{name}` must be a {ndim}-D array, got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"`{name}` must hold numbers, got dtype {array.dtype}.")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite, got {int(np.sum(~np.isfinite(array)))} NaN/inf values.")
    return array


def check_same_length(first: np.ndarray, second: np.ndarray, first_name: str, second_name: str) -> None:
    if len(first) != len(second):
        raise ValueError(
            f"`{first_name}` and `{second_name}` must have the same length, got {len(first)} and {len(second)}."
        )
    if len(first) == 0:
        raise ValueError(f"`{first_name}` and `{second_name}` are empty; at least one sample is needed.")


def check_label_range(labels: np.ndarray, num_classes: int, name: str) -> None:
    """Raises `ValueError` listing the labels outside `[0, num_classes)`."""
    bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
    if bad.size:
        raise ValueError(f"`{name}` must lie in [0, {num_classes}), got out-of-range values {bad[:10].tolist()}.")


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
    return int(num_classes)
