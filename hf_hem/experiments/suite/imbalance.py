"""Long-tailed training subsets drawn from a balanced labelled set."""

from __future__ import annotations

import numpy as np


IMBALANCE_PROFILES = ("exponential", "step")


def long_tailed_counts(
    num_classes: int, max_count: int, imbalance_ratio: float, profile: str = "exponential"
) -> np.ndarray:
    r"""Samples per class of a long-tailed profile, head class first.

    * `"exponential"`: class `c` keeps `floor(max_count * imbalance_ratio ** (-c / (C - 1)))` samples, so class 0
      keeps `max_count` and class `C - 1` keeps `max_count / imbalance_ratio`.
    * `"step"`: the first `ceil(C / 2)` classes keep `max_count`, the others `floor(max_count / imbalance_ratio)`.

    Every class keeps at least one sample.

    Args:
        num_classes (`int`): `C`, at least 1.
        max_count (`int`): samples of the head class, at least 1.
        imbalance_ratio (`float`): `rho = n_max / n_min`, at least 1.
        profile (`str`, defaults to `"exponential"`): `"exponential"` or `"step"`.

    Returns:
        `np.ndarray` of shape `(C,)`, int64.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"`num_classes` must be an integer >= 1, got {num_classes!r}.")
    if not isinstance(max_count, (int, np.integer)) or max_count < 1:
        raise ValueError(f"`max_count` must be an integer >= 1, got {max_count!r}.")
    if not np.isfinite(imbalance_ratio) or imbalance_ratio < 1:
        raise ValueError(f"`imbalance_ratio` must be a finite number >= 1, got {imbalance_ratio!r}.")
    if profile not in IMBALANCE_PROFILES:
        raise ValueError(f"`profile` must be one of {IMBALANCE_PROFILES}, got {profile!r}.")
    positions = np.arange(num_classes)
    if profile == "exponential":
        exponent = positions / (num_classes - 1) if num_classes > 1 else np.zeros(1)
        # The small epsilon keeps exact integers (e.g. 100 * 100**-1 = 1.0 computed as 0.999...) from rounding down.
        counts = np.floor(max_count * float(imbalance_ratio) ** (-exponent) + 1e-9)
    else:
        head = positions < (num_classes + 1) // 2
        counts = np.where(head, max_count, np.floor(max_count / float(imbalance_ratio) + 1e-9))
    return np.maximum(counts, 1).astype(np.int64)


def long_tailed_indices(
    labels,
    imbalance_ratio: float,
    profile: str = "exponential",
    seed: int = 0,
    *,
    max_count: int | None = None,
    class_order=None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Indices of a long-tailed subset of a (roughly) balanced labelled set.

    Class `class_order[k]` keeps `n_max * rho ** (-k / (C - 1))` samples (see [`long_tailed_counts`]), drawn
    uniformly without replacement.

    Args:
        labels (array-like of `int`): class ids `0..C-1` of the full set, shape `(N,)`; `C = max(labels) + 1`.
        imbalance_ratio (`float`): `rho`, head count over tail count (1 keeps the set balanced at `n_max` per class).
        profile (`str`, defaults to `"exponential"`): `"exponential"` or `"step"`.
        seed (`int`, defaults to 0): random seed of the sampling.
        max_count (`int`, *optional*): `n_max`. Defaults to the size of the smallest class, so every class can supply
            its share; a larger value raises if some class has too few samples.
        class_order (`Sequence[int]`, *optional*): classes from head to tail; defaults to `0, 1, ..., C-1`.

    Returns:
        `tuple(np.ndarray, np.ndarray)`: the selected indices (ascending, int64) and the per-class counts
        (shape `(C,)`, indexed by class id).

    Example:

    ```python
    >>> labels = np.repeat(np.arange(3), 100)
    >>> indices, counts = long_tailed_indices(labels, imbalance_ratio=100)
    >>> counts
    array([100,  10,   1])
    ```
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be a non-empty 1-D integer array, got shape {labels.shape}, {labels.dtype}.")
    if labels.min() < 0:
        raise ValueError(f"`labels` must be class ids >= 0, got minimum {labels.min()}.")
    num_classes = int(labels.max()) + 1
    available = np.bincount(labels, minlength=num_classes)
    if class_order is None:
        class_order = np.arange(num_classes)
    class_order = np.asarray(class_order)
    if sorted(class_order.tolist()) != list(range(num_classes)):
        raise ValueError(f"`class_order` must be a permutation of 0..{num_classes - 1}, got {class_order.tolist()}.")
    if max_count is None:
        max_count = int(available.min())
        if max_count == 0:
            raise ValueError(f"classes {np.flatnonzero(available == 0).tolist()} have no samples in `labels`.")
    counts = np.zeros(num_classes, dtype=np.int64)
    counts[class_order] = long_tailed_counts(num_classes, max_count, imbalance_ratio, profile)
    short = np.flatnonzero(counts > available)
    if short.size:
        raise ValueError(
            f"classes {short.tolist()} have {available[short].tolist()} samples but the profile asks for "
            f"{counts[short].tolist()}; lower `max_count` (currently {max_count})."
        )
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=count, replace=False) for label, count in enumerate(counts)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64), counts


def shot_thresholds(class_counts) -> tuple[int, int]:
    """`(many, few)` thresholds that split classes into thirds by training count, for `shot_group_accuracy`.

    With the usual `many=100, few=20` a small data set has no many-shot class at all; these thresholds instead put the
    `ceil(C/3)` largest classes in *many*, the `floor(C/3)` smallest in *few* and the rest in *medium* (ties can move
    classes between groups).

    Args:
        class_counts (array-like of `int`): training samples per class.

    Returns:
        `tuple[int, int]`: `(many, few)`: many-shot means `count > many`, few-shot means `count < few`.
    """
    counts = np.sort(np.asarray(class_counts, dtype=np.int64))[::-1]
    if counts.ndim != 1 or counts.size < 3:
        raise ValueError(f"`class_counts` needs at least 3 classes to form three groups, got {counts.size}.")
    num_many = -(-counts.size // 3)
    num_few = counts.size // 3
    many = int(counts[num_many])  # count of the largest class not in "many"
    few = int(counts[counts.size - num_few - 1]) if num_few else int(counts[-1])  # smallest class not in "few"
    return many, few
