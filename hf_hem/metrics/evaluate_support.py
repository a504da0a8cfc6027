"""What the bundled `evaluate` modules (`evaluate_modules/*/*.py`) have in common.

`evaluate.load(path)` copies a module's file alone into its cache and imports it from there, so the modules cannot
import their neighbours relatively; they import this module from the installed `hf_hem` instead. Importing it
imports `evaluate` and `datasets`, which is why `hf_hem.metrics` itself does not.

This module holds no `evaluate.EvaluationModule` subclass, on purpose: `evaluate` takes the first such class in a
module's namespace as its metric, so a shared base class imported into a module would stand in for the module's own.
"""

from __future__ import annotations

import datasets
import evaluate


__all__ = ["metric_info"]


def _feature(dtype: str | list):
    # A one-item list is a sequence per example, as in the `datasets` notation of features; nested lists nest them
    # (`[["int64"]]`: a 2-D map per example).
    if isinstance(dtype, list):
        (item,) = dtype
        return datasets.Sequence(_feature(item))
    return datasets.Value(dtype)


def metric_info(description: str, inputs_description: str, **features: str | list) -> evaluate.MetricInfo:
    """The `evaluate.MetricInfo` of a bundled module, for its `_info`.

    Args:
        description (`str`): What the metric computes (the module's `_DESCRIPTION`).
        inputs_description (`str`): Its arguments, results and an example (the module's `_KWARGS_DESCRIPTION`).
        features (`str` or `list`): One keyword per input of `compute`: a dtype such as `"int64"` for one value
            per example, a one-item list such as `["float64"]` for a sequence per example, `[["int64"]]` for a 2-D
            array per example.

    Returns:
        `evaluate.MetricInfo` without a citation (the metrics are `hf_hem.metrics`' own).

    Example:

    ```python
    >>> metric_info("Accuracy.", "Args: ...", predictions="int64", references="int64").features
    {'predictions': Value('int64'), 'references': Value('int64')}
    ```
    """
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({name: _feature(dtype) for name, dtype in features.items()}),
    )
