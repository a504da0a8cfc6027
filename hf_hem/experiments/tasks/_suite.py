"""What the five benchmark-suite tasks share (`hf-hem benchmark`): their base class, one run's training and
inference helpers, and the table and plot helpers of their reports.

A suite task trains through `train_fn` (by default [`~hf_hem.experiments.suite.training.train_model`], with the
backend `settings.trainer` names) and builds models through `model_fn` (by default the tiny ResNet of
[`~hf_hem.models.tiny_resnet`]); both come from the front door as `RunContext.options` (see
[`~hf_hem.experiments.suite.training.run_options`]), so both can be swapped. The data split is fixed by
`split_seed`; the run's `seed` sets the weight initialisation, the batch order and, for `imbalance`, which samples the
long-tailed subset keeps. Synthetic OOD sets and corrupted test sets depend on `split_seed` only, so every loss and
seed sees the same inputs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...metrics import accuracy
from ..curves import curves_from_history
from ..plots.palette import PALETTE, new_canvas
from ..records import RunRecord, RunSpec
from ..stats import comparison_table
from ..suite.benchmark_data import ArraySplits, load_benchmark_data
from ..suite.settings import COMMON_SETTINGS, RECIPE_SETTINGS, BenchmarkSettings
from ..suite.training import predict_logits, run_options
from ..summary import Summary
from ..task import BENCHMARK, Plot, RunContext, Task


__all__ = ["SuiteRun", "SuiteTask"]


@dataclass
class SuiteRun:
    """What a suite task needs to run one cell: the settings, how to build and train a model, and the cell's margin.

    Attributes:
        settings ([`BenchmarkSettings`]): The settings.
        train_fn (`Callable`): `train_fn(model, (images, labels), loss_name, seed, **training_kwargs) -> model`.
        model_fn (`Callable`): `model_fn(num_labels, num_channels, seed) -> model`.
        progress (`bool`, defaults to `False`): Progress bars of the training.
        margin (`float`, *optional*): The fixed margin of a cell of a margin sweep (`--margins`), handed to
            `train_fn` as the `HEMConfig` field `loss_kwargs={"margin": ...}`; `None`: the loss's own margin rule.
    """

    settings: BenchmarkSettings
    train_fn: Callable
    model_fn: Callable
    progress: bool = False
    margin: float | None = None

    def data(self) -> ArraySplits:
        """The train and test arrays of the settings (loaded once per process)."""
        s = self.settings
        return load_benchmark_data(
            s.dataset,
            s.image_size,
            s.num_channels,
            s.split_seed,
            s.test_fraction,
            s.image_column,
            s.label_column,
            s.max_train_samples,
            s.max_test_samples,
        )

    def new_model(self, num_labels: int, seed: int):
        """A new model of `num_labels` classes, initialised under `seed`."""
        return self.model_fn(num_labels, self.settings.num_channels, seed)

    def train(
        self,
        model,
        images,
        labels,
        loss_name: str,
        seed: int,
        epochs: int | None = None,
        num_classes: int | None = None,
        class_counts=None,
        curve_fn: Callable | None = None,
        history: list | None = None,
    ):
        """Trains `model` with the settings' recipe; with `history`, `curve_fn(model)` is evaluated after every epoch
        and each epoch's entry appended to it (see [`~hf_hem.experiments.suite.training.train_model`]), when
        `train_fn` takes a `history` argument."""
        s = self.settings
        extra = {}
        if history is not None and _accepts_history(self.train_fn):
            extra = {"eval_fn": curve_fn, "history": history}
        if self.margin is not None:
            extra["loss_kwargs"] = {"margin": self.margin}
        return self.train_fn(
            model,
            (images, labels),
            loss_name,
            seed,
            epochs=epochs or s.epochs,
            num_classes=num_classes,
            class_counts=class_counts,
            progress=self.progress,
            **{name: getattr(s, name) for name in RECIPE_SETTINGS},
            **extra,
        )

    def logits(self, model, images) -> np.ndarray:
        """The model's logits on `images`, in batches of `eval_batch_size`."""
        return predict_logits(model, images, self.settings.eval_batch_size)

    def train_on_all_classes(self, data: ArraySplits, loss_name: str, seed: int):
        """`(model, curves)`: a new model trained on the whole training split, the recipe of the tasks that then test
        it on changed test images; its learning curve is the accuracy on the clean test split."""
        model = self.new_model(data.num_classes, seed)

        def curve_fn(model):
            return {"accuracy": accuracy(self.logits(model, data.test_images).argmax(1), data.test_labels)}

        history = []
        self.train(model, data.train_images, data.train_labels, loss_name, seed, curve_fn=curve_fn, history=history)
        return model, curves_from_history(history)


def _accepts_history(train_fn) -> bool:
    """Whether a `train_fn` can record learning curves: it takes `history` (or any keyword)."""
    try:
        parameters = inspect.signature(train_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "history" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class SuiteTask(Task):
    """Base class of the benchmark-suite tasks: settings are a [`BenchmarkSettings`], a run is [`evaluate`].

    Subclasses set the [`~hf_hem.experiments.task.Task`] attributes, `settings_used` (the settings besides
    `COMMON_SETTINGS` that change their numbers) and `epochs_setting` (the field `--until_converged` grows), and
    implement [`evaluate`]. Their learning curves are evaluated after every training epoch on the test split: they
    show training progress and select nothing.
    """

    front_door = BENCHMARK
    default_losses = ("ce", "hem")
    settings_used: tuple[str, ...] = ()
    epochs_setting = "epochs"
    curve_key = "accuracy"
    curve_label = "test accuracy"

    def default_seeds(self, settings) -> list[int]:
        return [0, 1, 2]

    def fingerprint(self, settings: BenchmarkSettings) -> dict:
        """The settings that change this task's numbers (a changed one makes finished runs stale)."""
        return settings.to_dict(set(COMMON_SETTINGS) | set(self.settings_used))

    def epochs(self, settings: BenchmarkSettings) -> int:
        return getattr(settings, self.epochs_setting)

    def with_epochs(self, settings: BenchmarkSettings, epochs: float) -> BenchmarkSettings:
        # Whole epochs: the learning-rate drops fall on epochs, and `train_model` takes an integer.
        return dataclasses.replace(settings, **{self.epochs_setting: math.ceil(epochs - 1e-9)})

    def run(self, spec: RunSpec, settings: BenchmarkSettings, context: RunContext) -> RunRecord:
        options = run_options(settings, context.options.get("train_fn"), context.options.get("model_fn"))
        run = SuiteRun(settings, options["train_fn"], options["model_fn"], context.progress, spec.margin)
        metrics, extras, curves = self.evaluate(spec.loss, spec.seed, run)
        return RunRecord(self.name, spec, metrics, curves, self.fingerprint(settings), extras=extras)

    def evaluate(self, loss_name: str, seed: int, run: SuiteRun) -> tuple[dict, dict, dict]:
        """Trains and tests one (loss, seed): `(metrics, extras, curves)`, `metrics` flat `{name: float}`, `extras`
        JSON-able details for `runs/` and the plots, `curves` the learning curves (see
        [`~hf_hem.experiments.curves.curves_from_history`])."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------------------------
# Report helpers


def prefixed(prefix: str, metrics: dict) -> dict:
    """`{"prefix/name": value}`."""
    return {f"{prefix}/{name}": value for name, value in metrics.items()}


def score_table(stats: dict, columns: Sequence[str], metric_of_column: Callable[[str], str], digits: int = 3) -> str:
    """A table with one row per run label and, in column `c`, the metric `metric_of_column(c)`."""
    reshaped = {
        label: {column: entries[metric_of_column(column)] for column in columns if metric_of_column(column) in entries}
        for label, entries in stats.items()
    }
    return comparison_table(reshaped, list(columns), digits)


def table_sections(tables: Sequence[tuple[str, str]]) -> list[str]:
    """`### title`, the table, for each `(title, markdown table)`."""
    lines: list[str] = []
    for title, table in tables:
        lines += ([""] if lines else []) + [f"### {title}", "", table]
    return lines


def save_plot(figure, path: Path, caption: str) -> list[Plot]:
    """Finishes a task's figure (the runs' legend on its last panel), writes it to `path`; returns its [`Plot`]."""
    figure.axes[-1].legend()
    figure.savefig(path, dpi=110)
    return [Plot(path, caption)]


def mean_and_std(entries: dict, metrics: Sequence[str]) -> tuple[list, list]:
    """Means over seeds of `metrics` in one label's summary `entries`, and their standard deviations as error bars
    want them: a missing metric has a NaN mean, and the NaN std of a single seed draws no bar."""
    found = [entries.get(metric) for metric in metrics]
    means = [np.nan if entry is None else entry["mean"] for entry in found]
    stds = [0.0 if entry is None or np.isnan(entry["std"]) else entry["std"] for entry in found]
    return means, stds


def error_bar_lines(axis, x, summary: Summary, metrics_of: Callable[[dict], Sequence[str]]) -> None:
    """One line per run label on `axis` (palette colours, in run order): the mean over seeds of the label's metrics
    `metrics_of(entries)` at the positions `x`, with ± std error bars."""
    for color, label in zip(PALETTE, summary.labels):
        entries = summary.stats[label]
        metrics = metrics_of(entries)
        means, stds = mean_and_std(entries, metrics)
        axis.errorbar(x[: len(metrics)], means, yerr=stds, marker="o", capsize=3, color=color, label=label)


def grouped_metric_bars(
    summary: Summary,
    metrics: Sequence[str],
    tick_labels: Sequence[str],
    title: str,
    ylabel: str,
    path: Path,
    caption: str,
    ylim: tuple[float, float] | None = None,
) -> list[Plot]:
    """One group of bars (one per run label, palette colours) per metric, mean ± std over seeds, saved to `path`."""
    labels = summary.labels
    positions = np.arange(len(metrics))
    width = 0.8 / max(len(labels), 1)
    figure = new_canvas(max(6, 1.1 * len(metrics) * max(len(labels), 2) / 2 + 2), 4)
    axis = figure.subplots()
    for index, (color, label) in enumerate(zip(PALETTE, labels)):
        means, stds = mean_and_std(summary.stats[label], metrics)
        offset = (index - (len(labels) - 1) / 2) * width
        axis.bar(positions + offset, means, width, yerr=stds, capsize=3, color=color, label=label)
    axis.set_xticks(positions, tick_labels, rotation=20, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if ylim is not None:
        axis.set_ylim(*ylim)
    return save_plot(figure, path, caption)
