"""Across-seed statistics and markdown tables: mean ± std, Welch's t-test against a baseline.

One convention for every report of the library (`hf-hem benchmark` and `hf-hem compare`): the spread is the sample
standard deviation (`ddof=1`), which is NaN for a single seed and then shown as the mean alone; a value that is
missing or undefined prints as [`MISSING_VALUE`] (`"n/a"`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats


def _finite_values(values, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite, got {array.tolist()}.")
    return array


#: How a missing or undefined value prints in every table.
MISSING_VALUE = "n/a"


def mean_std(values, omit_nonfinite: bool = False) -> tuple[float, float]:
    """Mean and sample standard deviation (`ddof=1`) of per-seed values.

    Args:
        values (array-like of `float`): per-seed values.
        omit_nonfinite (`bool`, *optional*, defaults to `False`): leave out `None`, NaN and infinite values (a metric
            undefined in one seed) instead of raising; only the remaining seeds count.

    Returns:
        `tuple[float, float]`: `(mean, std)`; `std` is NaN for a single value, both are NaN for none.
    """
    if omit_nonfinite:
        values = [value for value in values if value is not None and math.isfinite(value)]
    array = _finite_values(values)
    if array.size == 0:
        return float("nan"), float("nan")
    std = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return float(array.mean()), std


class WelchResult(NamedTuple):
    """Result of [`welch_t_test`]."""

    statistic: float
    p_value: float
    note: str
    """Empty when the test ran; otherwise why `p_value` is NaN."""


def welch_t_test(values, baseline_values) -> WelchResult:
    """Two-sided Welch's t-test (unequal variances) of `values` against `baseline_values`.

    Uses `scipy.stats.ttest_ind(equal_var=False)`. The p-value is NaN, with a `note`, when a group has fewer than
    two values or both groups have zero variance (then the t statistic is undefined: identical constants, or two
    different constants that no amount of seeds would make uncertain).

    Args:
        values (array-like of `float`): per-seed values of the method.
        baseline_values (array-like of `float`): per-seed values of the baseline.

    Returns:
        [`WelchResult`].
    """
    first, second = _finite_values(values, "values"), _finite_values(baseline_values, "baseline_values")
    if first.size < 2 or second.size < 2:
        return WelchResult(
            float("nan"), float("nan"), f"needs >= 2 values per group, got {first.size} and {second.size}"
        )
    if first.std() == 0 and second.std() == 0:
        return WelchResult(float("nan"), float("nan"), "both groups have zero variance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(first, second, equal_var=False)
    return WelchResult(float(result.statistic), float(result.pvalue), "")


def format_mean_std(mean: float, std: float = math.nan, digits: int = 3) -> str:
    """`"0.912 ± 0.004"`; a NaN std (one seed) prints as `"0.912"` alone, a NaN mean as [`MISSING_VALUE`]."""
    if math.isnan(mean):
        return MISSING_VALUE
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_p_value(p_value: float) -> str:
    """`"p=0.031"`, `"p<0.001"`, or `"p=n/a"` for NaN."""
    if math.isnan(p_value):
        return f"p={MISSING_VALUE}"
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured markdown table; cells are converted with `str` and `|` is escaped.

    Example:

    ```python
    >>> print(markdown_table(["loss", "acc"], [["ce", "0.9"]]))
    | loss | acc |
    | --- | --- |
    | ce | 0.9 |
    ```
    """
    if not headers:
        raise ValueError("`headers` must not be empty.")
    for index, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {index} has {len(row)} cells but there are {len(headers)} headers.")

    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(row) for row in rows)])


def summarize(values: Mapping[str, Mapping[str, Sequence[float]]], baseline: str | None = "ce") -> dict:
    """Mean, std, count and Welch p-value against `baseline` for every (method, metric).

    Args:
        values (`Mapping[str, Mapping[str, Sequence[float]]]`): `values[method][metric]` = per-seed values.
        baseline (`str`, *optional*, defaults to `"ce"`): method to test against; `None` or absent: no tests.

    Returns:
        `dict`: `summary[method][metric] = {"mean", "std", "n", "values", "p_value", "note"}`; the baseline's own
        p-values are NaN with the note `"baseline"`.
    """
    summary = {}
    for method, metrics in values.items():
        summary[method] = {}
        for metric, per_seed in metrics.items():
            per_seed = _finite_values(per_seed, f"{method}/{metric}")
            mean, std = mean_std(per_seed)
            entry = {"mean": mean, "std": std, "n": int(per_seed.size), "values": per_seed.tolist()}
            if baseline is None or baseline not in values or metric not in values[baseline]:
                entry.update(p_value=float("nan"), note="no baseline")
            elif method == baseline:
                entry.update(p_value=float("nan"), note="baseline")
            else:
                test = welch_t_test(per_seed, values[baseline][metric])
                entry.update(p_value=test.p_value, note=test.note)
            summary[method][metric] = entry
    return summary


def comparison_table(
    summary: Mapping[str, Mapping[str, Mapping]],
    metrics: Sequence[str] | None = None,
    digits: int = 3,
    metric_labels: Mapping[str, str] | None = None,
    extra_columns: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Markdown table, one row per method, one column per metric: `mean ± std (p=…)` with p against the baseline.

    Args:
        summary: output of [`summarize`].
        metrics (`Sequence[str]`, *optional*): columns, in order; defaults to the first method's metrics.
        digits (`int`, defaults to 3): decimals.
        metric_labels (`Mapping[str, str]`, *optional*): column titles for metric keys.
        extra_columns (`Mapping[str, Mapping[str, str]]`, *optional*): more columns after the metrics,
            `extra_columns[title][method]` = the cell (e.g. whether the runs converged); a missing cell is
            [`MISSING_VALUE`].

    Returns:
        `str`: the table.
    """
    if not summary:
        raise ValueError("`summary` is empty: nothing to tabulate.")
    metrics = list(metrics if metrics is not None else next(iter(summary.values())))
    labels = metric_labels or {}
    rows = []
    for method, entries in summary.items():
        row = [method]
        for metric in metrics:
            entry = entries.get(metric)
            if entry is None:
                row.append(MISSING_VALUE)
                continue
            cell = format_mean_std(entry["mean"], entry["std"], digits)
            if entry.get("note") not in ("baseline", "no baseline"):
                cell += f" ({format_p_value(entry['p_value'])})"
            row.append(cell)
        row += [column.get(method, MISSING_VALUE) for column in (extra_columns or {}).values()]
        rows.append(row)
    headers = ["loss", *(labels.get(metric, metric) for metric in metrics), *(extra_columns or {})]
    return markdown_table(headers, rows)
