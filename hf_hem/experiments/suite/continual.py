"""Class-incremental learning: task splits, and the average-accuracy and forgetting summaries of an accuracy matrix.

The accuracy matrix `a` has `a[i, j]` = accuracy on task `j`'s test set after training on tasks `0..i`. Entries
above the diagonal (tasks not trained yet) are never used by these summaries and may be NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class IncrementalTask(NamedTuple):
    """One task of [`class_incremental_splits`]."""

    classes: np.ndarray
    """Class ids of the task, in the order drawn."""
    indices: np.ndarray
    """Positions (ascending) of the samples whose label is one of `classes`."""


def class_incremental_splits(labels, num_tasks: int, seed: int | None = None, class_order=None) -> list:
    """Splits the classes into `num_tasks` disjoint groups, one per task, and the samples with them.

    Classes are taken in `class_order` (default: ascending ids, or a random permutation when `seed` is given) and cut
    into `num_tasks` consecutive groups; when `num_tasks` does not divide the number of classes, the first tasks get
    one class more.

    Args:
        labels (array-like of `int`): class id per sample, shape `(N,)`.
        num_tasks (`int`): number of tasks, between 1 and the number of distinct classes.
        seed (`int`, *optional*): shuffle the class order with this seed; ignored when `class_order` is given.
        class_order (`Sequence[int]`, *optional*): explicit order; must be a permutation of the classes in `labels`.

    Returns:
        `list[IncrementalTask]` of length `num_tasks`.

    Example:

    ```python
    >>> [task.classes.tolist() for task in class_incremental_splits([0, 1, 2, 3, 4, 0], num_tasks=2)]
    [[0, 1, 2], [3, 4]]
    ```
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be a non-empty 1-D integer array, got shape {labels.shape}, {labels.dtype}.")
    classes = np.unique(labels)
    if not isinstance(num_tasks, (int, np.integer)) or not 1 <= num_tasks <= classes.size:
        raise ValueError(
            f"`num_tasks` must be an integer in [1, {classes.size}] (the number of classes), got {num_tasks!r}."
        )
    if class_order is not None:
        order = np.asarray(class_order)
        if order.ndim != 1 or sorted(order.tolist()) != classes.tolist():
            raise ValueError(f"`class_order` must be a permutation of {classes.tolist()}, got {list(class_order)}.")
    elif seed is not None:
        order = np.random.default_rng(seed).permutation(classes)
    else:
        order = classes
    return [
        IncrementalTask(group, np.flatnonzero(np.isin(labels, group))) for group in np.array_split(order, num_tasks)
    ]


def _check_accuracy_matrix(acc_matrix) -> np.ndarray:
    matrix = np.asarray(acc_matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"`acc_matrix` must be a non-empty square (T, T) matrix, got shape {matrix.shape}.")
    lower = np.tril(np.ones(matrix.shape, dtype=bool))
    if not np.all(np.isfinite(matrix[lower])):
        raise ValueError("`acc_matrix` must be finite on and below the diagonal (tasks already trained).")
    return matrix


def average_accuracy(acc_matrix) -> np.ndarray:
    r"""Average accuracy over the tasks seen so far, after each task.

    `A_i = mean_{j <= i} a[i, j]`; `A_{T-1}` is the usual "final average accuracy".

    Args:
        acc_matrix (array-like of `float`): `(T, T)` accuracy matrix.

    Returns:
        `np.ndarray` of shape `(T,)`.
    """
    matrix = _check_accuracy_matrix(acc_matrix)
    return np.array([matrix[i, : i + 1].mean() for i in range(matrix.shape[0])])


def forgetting(acc_matrix) -> float:
    r"""Average forgetting after the last task (Chaudhry et al., 2018).

    `F = mean_{j < T-1} (max_{j <= l < T-1} a[l, j] - a[T-1, j])`: for every task but the last, the drop from its
    best accuracy while it was known to its accuracy at the end. Rows `l < j` (before task `j` was trained) are left
    out of the max; in class-incremental learning they are near 0 and cannot change it.

    Args:
        acc_matrix (array-like of `float`): `(T, T)` accuracy matrix.

    Returns:
        `float`; NaN when `T == 1` (no earlier task to forget).
    """
    matrix = _check_accuracy_matrix(acc_matrix)
    last = matrix.shape[0] - 1
    if last == 0:
        return float("nan")
    drops = [matrix[j:last, j].max() - matrix[last, j] for j in range(last)]
    return float(np.mean(drops))
