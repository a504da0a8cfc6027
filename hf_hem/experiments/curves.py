"""Learning curves read from a run: the Trainer's `log_history`, or the per-epoch history of a plain training loop.

A curve is a JSON-friendly dict `{"epoch": [...], "value": [...]}`; the curves of one run are a dict from the metric
name to its curve (e.g. `"loss"`, `"hem/violating_fraction"`, `"eval_mean_iou"`), kept in
[`~hf_hem.experiments.records.RunRecord`]`.curves`. Judging them is `hf_hem.experiments.convergence`, drawing them
`hf_hem.experiments.plots.curves`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path


__all__ = ["curves_from_history", "curves_from_log_history", "read_trainer_curves"]

# Entries of an evaluation log that are bookkeeping, not metrics of the model.
_EVAL_BOOKKEEPING = ("_runtime", "_samples_per_second", "_steps_per_second", "_samples")
_TRAIN_KEYS = ("loss", "hem/violating_fraction", "learning_rate")


def curves_from_log_history(log_history: Sequence[Mapping]) -> dict[str, dict[str, list[float]]]:
    """The learning curves in a Trainer's `state.log_history` (`trainer_state.json`).

    Training logs give `loss`, `hem/violating_fraction` (margin losses) and `learning_rate`; evaluation logs give
    every `eval_*` metric (their runtime and throughput entries left out). The Trainer's final summary
    (`train_runtime`, `train_loss`) is no point of a curve and is skipped.

    Returns:
        `dict[str, dict[str, list[float]]]`: `curves[metric] = {"epoch": [...], "value": [...]}`, in log order.
    """
    curves: dict[str, dict[str, list[float]]] = {}

    def add(key, epoch, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        curve = curves.setdefault(key, {"epoch": [], "value": []})
        curve["epoch"].append(float(epoch))
        curve["value"].append(float(value))

    for entry in log_history:
        epoch = entry.get("epoch")
        if epoch is None or "train_runtime" in entry:
            continue
        if any(key.startswith("eval_") for key in entry):
            for key, value in entry.items():
                if key.startswith("eval_") and not key.endswith(_EVAL_BOOKKEEPING):
                    add(key, epoch, value)
        else:
            for key in _TRAIN_KEYS:
                if key in entry:
                    add(key, epoch, entry[key])
    return curves


def curves_from_history(history: Sequence[Mapping], epoch_offset: float = 0) -> dict[str, dict[str, list[float]]]:
    """The learning curves in the per-epoch `history` of the benchmark suite's training loop: one curve per key
    besides `epoch`, epochs shifted by `epoch_offset` (to chain several trainings, e.g. the tasks of continual
    learning). Entries without a key leave a gap in that key's curve only."""
    curves: dict[str, dict[str, list[float]]] = {}
    for entry in history:
        epoch = float(entry["epoch"]) + epoch_offset
        for key, value in entry.items():
            if key == "epoch" or value is None or isinstance(value, bool):
                continue
            curve = curves.setdefault(key, {"epoch": [], "value": []})
            curve["epoch"].append(epoch)
            curve["value"].append(float(value))
    return curves


def read_trainer_curves(output_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """[`curves_from_log_history`] of the `trainer_state.json` in `output_dir`; `{}` when there is none."""
    path = Path(output_dir) / "trainer_state.json"
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return curves_from_log_history(state.get("log_history", []))
