"""The experiments layer: one task contract, one runner, one summary and one report behind `hf-hem compare` and
`hf-hem benchmark`.

* `task`: the contract ([`Task`], [`Metric`], [`Plot`], [`RunContext`]); `tasks`: the task table.
* `records`: [`RunSpec`] (one cell of a plan) and [`RunRecord`] (what it gave, JSON in and out).
* `runner`: the plan (losses x seeds x margins), resume by fingerprint, `until_converged`.
* `summary`: mean ± std, Welch's t-test against the baseline, convergence per loss.
* `report`: the markdown reports; `plots`: the figures; `cli`: the two front doors.
"""

from .records import RunRecord, RunSpec
from .task import Metric, Plot, RunContext, Task


__all__ = ["Metric", "Plot", "RunContext", "RunRecord", "RunSpec", "Task"]
