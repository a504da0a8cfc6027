"""One record type for every run of `hf-hem compare` and `hf-hem benchmark`, with JSON in and out.

A [`RunSpec`] is one cell of a plan (loss x seed x margin); a [`RunRecord`] is what running it gave. The JSON of a
record keeps the layout of the benchmark's run files (`runs/<loss>_seed<k>.json`, format version 2), with fields
added (`margin`, `attempts`), so runs written before the experiments layer are read back and reused:

```json
{"format_version": 2, "task": "ood", "loss": "hem", "seed": 0, "margin": null,
 "settings": {...the fingerprint...}, "metrics": {...}, "details": {"curves": {...}, ...extras},
 "elapsed_seconds": 12.3, "attempts": [{"epochs": 30, "converged": true, "spread": 0.004}],
 "hf_hem_version": "...", "finished_at": "..."}
```
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


__all__ = ["RECORD_FORMAT_VERSION", "RunRecord", "RunSpec", "jsonable", "load_record", "write_json"]

#: 2: runs record their learning curves (`details["curves"]`); runs of version 1 have none and are redone.
RECORD_FORMAT_VERSION = 2


@dataclass(frozen=True)
class RunSpec:
    """One cell of a plan: a loss, a seed, and the margin of a margin sweep (`None`: the loss's own margin rule).

    Attributes:
        loss (`str`): A registry name (see [`~hf_hem.get_loss`]).
        seed (`int`): The seed of the run.
        margin (`float`, *optional*): `--margin` of this run in a sweep (`--margins`).
    """

    loss: str
    seed: int
    margin: float | None = None

    @property
    def label(self) -> str:
        """The run's column in reports: its loss, and its margin in a sweep (`"hem μ=1"`)."""
        return self.loss if self.margin is None else f"{self.loss} μ={self.margin:g}"

    @property
    def slug(self) -> str:
        """A file-name-safe name without the seed: `"hem-plus"`, `"hem-m0.5"`."""
        name = self.loss.replace("+", "-plus")
        return name if self.margin is None else f"{name}-m{self.margin:g}"


def jsonable(value):
    """`value` in strict JSON form: NaN and infinities become `null`, NumPy scalars and arrays Python numbers and
    lists, tuples lists, `Path`s strings."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, payload) -> None:
    """Write `jsonable(payload)` through a temporary file and a rename: an interrupted run never leaves half a file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _metric_value(value) -> float | int:
    # Strict JSON has no NaN: an undefined metric was written as null and reads back as NaN. Counts stay integers.
    if value is None:
        return float("nan")
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """What one run gave: metrics, learning curves, the settings' fingerprint, and arrays for the plots.

    Attributes:
        task (`str`): The task's name.
        spec ([`RunSpec`]): The cell of the plan.
        metrics (`dict[str, float]`): Final metrics (NaN: undefined in this run).
        curves (`dict`): Learning curves, `{name: {"epoch": [...], "value": [...]}}` (see
            [`~hf_hem.experiments.curves.curves_from_log_history`]).
        fingerprint (`dict`): The task's [`~hf_hem.experiments.task.Task.fingerprint`] of the settings it ran with
            (with `--until_converged`, of the settings it started from).
        wall_time_s (`float`): Seconds the run took (every attempt).
        extras (`dict`): JSON-able facts of the run besides metrics (margins, class names, per-class IoU, the
            `curve_segments` of chained trainings...).
        arrays (`dict[str, np.ndarray]`): In memory only, for the plots (scores, predictions, masks); never written.
        attempts (`list[dict]`): One entry per training of the cell: `{"epochs", "converged", "spread"}`; more than
            one when `--until_converged` reran it with more epochs.
        hf_hem_version (`str`): The version that ran it.
        finished_at (`str`): ISO time it finished.
    """

    task: str
    spec: RunSpec
    metrics: dict[str, float]
    curves: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    extras: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    attempts: list[dict] = field(default_factory=list)
    hf_hem_version: str = ""
    finished_at: str = field(default_factory=_now)

    @property
    def label(self) -> str:
        """[`RunSpec.label`]."""
        return self.spec.label

    @property
    def loss(self) -> str:
        return self.spec.loss

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def margin(self) -> float | None:
        return self.spec.margin

    def to_json(self) -> dict:
        """The record as strict-JSON data, in the benchmark run-file layout (arrays left out)."""
        return jsonable(
            {
                "format_version": RECORD_FORMAT_VERSION,
                "task": self.task,
                "loss": self.spec.loss,
                "seed": self.spec.seed,
                "margin": self.spec.margin,
                "settings": self.fingerprint,
                "metrics": self.metrics,
                "details": {**self.extras, "curves": self.curves},
                "elapsed_seconds": self.wall_time_s,
                "attempts": self.attempts,
                "hf_hem_version": self.hf_hem_version,
                "finished_at": self.finished_at,
            }
        )

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        """The record of [`to_json`] data, or of a benchmark run file written before the experiments layer."""
        if data.get("format_version") != RECORD_FORMAT_VERSION:
            raise ValueError(
                f"run record format_version={data.get('format_version')!r}; expected {RECORD_FORMAT_VERSION}."
            )
        details = dict(data.get("details") or {})
        curves = details.pop("curves", None) or {}
        margin = data.get("margin")
        return cls(
            task=data["task"],
            spec=RunSpec(data["loss"], int(data["seed"]), None if margin is None else float(margin)),
            metrics={key: _metric_value(value) for key, value in (data.get("metrics") or {}).items()},
            curves=curves,
            fingerprint=data.get("settings") or {},
            wall_time_s=float(data.get("elapsed_seconds") or 0.0),
            extras=details,
            attempts=list(data.get("attempts") or []),
            hf_hem_version=data.get("hf_hem_version", ""),
            finished_at=data.get("finished_at", ""),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write [`to_json`] to `path` atomically."""
        write_json(path, self.to_json())


def load_record(path: str | os.PathLike, fingerprint: dict | None = None) -> RunRecord | None:
    """The record at `path`, or `None` when there is none, it is unreadable, of another format, or (with
    `fingerprint`) was run with other settings: then the run has to be done (again)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = RunRecord.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if fingerprint is not None and data.get("settings") != jsonable(fingerprint):
        return None
    return record
