"""`hf-hem compare`: the same model trained with cross-entropy and with HEM (and other losses), side by side.

Every loss is trained on the same data, with the same model, augmentation and seeds, through the pipeline of the task:
[`~hf_hem.pipelines.run_image_classification`] (`--task classification`, the default) or
[`~hf_hem.pipelines.semantic_segmentation.run_semantic_segmentation`] (`--task segmentation`). The result is a folder
with one sub-folder per run (a plain `transformers` checkpoint with its HEM model card) and `report.md`: a markdown
table of the metrics side by side and PNG plots. For classification: score histograms of known vs unknown images, ROC
curves of the rejection, a reliability diagram and per-class accuracy. For segmentation: validation images with their
ground truth and every loss's predicted masks, and per-class IoU.

Without a dataset it runs on the embedded defaults, offline, on two CPU cores: scikit-learn's digits with a small
ResNet and the digits 8 and 9 held out as unknown classes (a few minutes), or synthetic scenes of those digits with a
tiny SegFormer (CE, HEM, HEM+ and Dice, two seeds each, a few minutes). Every report shows the learning curves of
every run and says, per loss, whether its runs converged (see `hf_hem.evaluation.curves`); `--margins` sweeps the
margin of the margin losses and plots the metrics against it:

```bash
hf-hem compare                                   # CE vs HEM on the embedded digits
hf-hem compare --losses ce,hem,logitnorm --seeds 0,1,2 --model_type vit
hf-hem compare --dataset_name cifar10 --image_column_name img --unknown_classes 8 9 --model_type resnet
hf-hem compare --task segmentation               # CE vs HEM vs HEM+ vs Dice on the embedded digit scenes
hf-hem compare --losses ce,hem --margins 0.1,0.2,0.5,1.0   # accuracy and rejection against HEM's margin
hf-hem compare --task segmentation --dataset_name scene_parse_150 --model_name_or_path nvidia/mit-b0
```

Any flag of `scripts/run_image_classification.py` (or, with `--task segmentation`, of
`scripts/run_semantic_segmentation.py`) is passed on to every run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .evaluation.curves import (
    DEFAULT_CRITERION,
    check_convergence,
    convergence_cell,
    plot_learning_curves,
    read_trainer_curves,
)
from .evaluation.stats import MISSING_VALUE, format_mean_std, mean_std


__all__ = [
    "COMPARE_SEGMENTATION_IMAGE_SIZE",
    "DEFAULT_LOSSES",
    "DEFAULT_SEGMENTATION_LOSSES",
    "DEFAULT_TASK",
    "DEFAULT_UNKNOWN_CLASSES",
    "REPORT_SECTIONS",
    "Section",
    "TASKS",
    "TASK_ADAPTERS",
    "ClassificationAdapter",
    "CompareRun",
    "MetricRow",
    "Plot",
    "ReportContext",
    "SegmentationAdapter",
    "TaskAdapter",
    "TaskPipeline",
    "add_compare_parser",
    "get_task_adapter",
    "run_compare",
    "run_compare_command",
    "write_report",
    "write_segmentation_report",
]

DEFAULT_LOSSES = ("ce", "hem")
#: Losses compared by `--task segmentation` by default: the paper's segmentation comparison, and HEM+ (per-class
#: margins from pixel frequencies), since segmentation classes are never balanced.
DEFAULT_SEGMENTATION_LOSSES = ("ce", "hem", "hem+", "dice")
#: Side of the embedded digit scenes in `hf-hem compare --task segmentation` (the script's own default is 64): at 32
#: pixels an epoch costs about half as much, so every default loss gets enough epochs to level off within minutes on
#: two CPU cores (docs/semantic_segmentation.md shows the curves).
COMPARE_SEGMENTATION_IMAGE_SIZE = 32
#: The task of `hf-hem compare` without `--task`; the only one whose reproduce command leaves `--task` out.
DEFAULT_TASK = "classification"
#: Digits held out as unknown on the embedded default, unless `--unknown_classes` says otherwise.
DEFAULT_UNKNOWN_CLASSES = ("8", "9")
# Flags that compare sets for every run itself.
_RESERVED_FLAGS = ("--loss_name", "--seed", "--output_dir")
_PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974")
_KNOWN_COLOR, _UNKNOWN_COLOR, _OOD_COLOR = "#4C72B0", "#DD8452", "#8C8C8C"


@dataclass
class CompareRun:
    """One training run of a comparison.

    Attributes:
        loss_name (`str`): The loss it was trained with.
        seed (`int`): Its seed.
        output_dir (`Path`): Its folder (model, card, `all_results.json`, `predictions.npz`).
        metrics (`dict[str, float]`): What the task's pipeline returned (its `all_results.json`).
        predictions (`dict[str, np.ndarray]`): The arrays of `predictions.npz`, plus what
            [`TaskAdapter.read_outputs`] adds. Classification: `eval_logits`, `eval_labels`, and `unknown_logits` /
            `ood_logits` when there are unknown classes / an OOD set; `class_names`, `unknown_class_names`.
            Segmentation: `images`, `labels`, `predictions`, `class_names`, `confusion_matrix`, `per_class_iou`.
        margins (`list[float]`, *optional*): The margins of a margin loss, from the saved model config.
        wall_time (`float`): Seconds the run took, data loading and evaluation included.
        curves (`dict`): The run's learning curves, `curves[metric] = {"epoch": [...], "value": [...]}`, read from the
            `log_history` of its `trainer_state.json` (see `hf_hem.evaluation.curves.curves_from_log_history`).
        margin_override (`float`, *optional*): The `--margin` of this run in a margin sweep (`--margins`); `None`
            when the loss used its own margin rule.
    """

    loss_name: str
    seed: int
    output_dir: Path
    metrics: dict[str, float]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    margins: list[float] | None = None
    wall_time: float = 0.0
    curves: dict = field(default_factory=dict)
    margin_override: float | None = None

    @property
    def label(self) -> str:
        """The column of the run in the report: its loss, and its margin in a margin sweep (`hem μ=0.5`)."""
        return self.loss_name if self.margin_override is None else f"{self.loss_name} μ={self.margin_override:g}"


# --------------------------------------------------------------------------------------------------------------------
# The task adapter interface


class MetricRow(NamedTuple):
    """One metric of a report: its key in `all_results.json`, its label, and whether higher is better."""

    key: str
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class Plot:
    """One PNG of a report: `draw(runs, path)` writes it from one run per loss (those of the first seed), or from every
    run of every seed with `all_seeds=True` (learning curves, margin sweeps: plots of means and spreads over seeds).
    A `draw` that returns `None` wrote nothing, and the report leaves the plot out."""

    file_name: str
    caption: str
    draw: Callable[[list[CompareRun], Path], Path | None]
    all_seeds: bool = False


@dataclass
class ReportContext:
    """Everything a section of `report.md` is written from; [`write_report`] builds it once per report.

    Attributes:
        task ([`TaskAdapter`]): The task of the runs.
        runs (`list[CompareRun]`): Every run, all seeds.
        losses (`list[str]`): The run labels (the loss, and its margin in a margin sweep: [`CompareRun.label`]), in
            the order they were first run: the columns of the tables.
        seeds (`list[int]`): The seeds, sorted.
        shown (`list[CompareRun]`): One run per loss, of the first seed: what the plots show.
        plots (`list[Plot]`): The plots already written to `output_dir`.
        setup (`dict`): What was compared (see [`TaskAdapter.describe_setup`]); empty when unknown.
        output_dir (`Path`): The folder of `report.md`.
    """

    task: TaskAdapter
    runs: list[CompareRun]
    losses: list[str]
    seeds: list[int]
    shown: list[CompareRun]
    plots: list[Plot]
    setup: dict
    output_dir: Path

    def mean_std(self, loss: str, key: str) -> tuple[float, float] | None:
        """Mean and std over seeds of metric `key` for `loss` (see `hf_hem.evaluation.stats.mean_std`); `None` when
        no run of `loss` has it."""
        values = [run.metrics[key] for run in self.runs if run.label == loss and key in run.metrics]
        return mean_std(values, omit_nonfinite=True) if values else None

    def convergence(self, loss: str) -> list:
        """[`~hf_hem.evaluation.curves.Convergence`] of every seed of `loss` on the task's `convergence_key`."""
        key = self.task.convergence_key
        return [
            check_convergence(run.curves[key]["value"], DEFAULT_CRITERION)
            for run in self.runs
            if run.label == loss and key in run.curves
        ]


class TaskPipeline(NamedTuple):
    """The entry points of a task's pipeline (the code behind its `scripts/run_*.py`)."""

    peek_data_arguments: Callable
    """`peek_data_arguments(argv) -> data_args`: the data arguments alone, without building the training arguments."""
    parse_args: Callable
    """`parse_args(argv) -> (model_args, data_args, training_args)`."""
    run: Callable
    """`run(model_args, data_args, training_args, callbacks=[...]) -> metrics`: one training and evaluation run."""
    embedded_dataset_name: str
    """The name of the embedded default dataset."""


#: A section of `report.md`: its markdown lines (no leading or trailing blank line), or none to leave it out.
Section = Callable[[ReportContext], list[str]]


class TaskAdapter:
    """What `hf-hem compare` needs to know about one task: how its runs are launched and read back, and what its
    report shows. [`run_compare`] and [`write_report`] are the same for every task and ask the adapter for the rest.

    A new task subclasses it, fills the class attributes and the methods that raise `NotImplementedError`, and is
    added to [`TASK_ADAPTERS`]; a new report section is a [`Section`] function added to [`REPORT_SECTIONS`] (every
    task) or returned by one adapter's [`~TaskAdapter.sections`].

    Attributes:
        name (`str`): The canonical `--task` value.
        aliases (`tuple[str, ...]`): Other `--task` values meaning the same task.
        default_losses (`tuple[str, ...]`): The losses compared without `--losses`.
        metric_rows (`tuple[MetricRow, ...]`): The rows of the results table, in order; a row that a run lacks is
            left out.
        summary_keys (`tuple[MetricRow, ...]`): The metrics of the "In short" comparison against cross-entropy.
        required_predictions (`tuple[str, ...]`): Arrays of `predictions.npz` the report cannot do without.
        progress_keys (`tuple[str, ...]`): Logged values shown next to the progress bar of a run.
        curve_metrics (`tuple[MetricRow, ...]`): The panels of the learning-curve plot: logged keys (`loss`,
            `hem/violating_fraction`, `eval_*`); a key that no run logged is left out.
        convergence_key (`str`): The logged metric whose learning curve decides whether a run converged.
        sweep_keys (`tuple[MetricRow, ...]`): The panels of the margin-sweep plot (`--margins`).
        seed_draws (`str`): What each seed draws besides the initialisation on the embedded dataset.
        metrics_note (`str`): The paragraph under the results table that explains its metrics.
        single_seed_note (`str`): The caution under the "In short" comparison when there is one seed.
        folder_contents (`str`): What each run's folder holds, for the table of runs.
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    default_losses: tuple[str, ...] = DEFAULT_LOSSES
    metric_rows: tuple[MetricRow, ...] = ()
    summary_keys: tuple[MetricRow, ...] = ()
    required_predictions: tuple[str, ...] = ()
    progress_keys: tuple[str, ...] = ("loss",)
    curve_metrics: tuple[MetricRow, ...] = (
        MetricRow("loss", "training loss", False),
        MetricRow("hem/violating_fraction", "violating fraction (training)", False),
    )
    convergence_key: str = "eval_loss"
    sweep_keys: tuple[MetricRow, ...] = ()
    margin_samples_unit: str = "samples"
    seed_draws: str = "train/validation split"
    metrics_note: str = ""
    single_seed_note: str = ""
    folder_contents: str = ""

    # -- Running ------------------------------------------------------------------------------------------------

    def pipeline(self) -> TaskPipeline:
        """The task's pipeline; imported on first use, since the pipelines pull in transformers and datasets."""
        raise NotImplementedError

    def default_seeds(self, embedded: bool) -> list[int]:
        """The seeds without `--seeds`; `embedded` is whether the runs use the embedded dataset."""
        return [0]

    def run_args(self, script_args: Sequence[str], data_args) -> list[str]:
        """Flags added to every run's `script_args` (defaults that only hold for compare)."""
        return []

    def read_outputs(self, output_dir: Path) -> dict:
        """Outputs of a finished run besides `predictions.npz`, merged into [`CompareRun`]`.predictions`."""
        return {}

    # -- Describing the set-up ----------------------------------------------------------------------------------

    def describe_setup(self, model_args, data_args, training_args, runs: list[CompareRun], base_args) -> dict:
        """What was compared, for the top of the report and `compare_results.json`.

        The keys every task has: `dataset`, `model`, `seed_draws_split`, `epochs`, `batch_size`, `learning_rate`,
        `num_train_samples`, `num_eval_samples` and `command`; [`setup_fields`] adds the task's own.
        """
        if data_args.uses_embedded_dataset:
            dataset = self.embedded_dataset_text(model_args)
        elif data_args.dataset_name:
            dataset = f"`{data_args.dataset_name}`" + (
                f" (config `{data_args.dataset_config_name}`)" if data_args.dataset_config_name else ""
            )
        else:
            dataset = self.local_dataset_text(data_args)
        model = (
            f"`{model_args.model_name_or_path}` (fine-tuned)"
            if model_args.model_name_or_path
            else self.model_from_config_text(model_args)
        )
        return {
            "dataset": dataset,
            "model": model,
            **self.setup_fields(data_args, runs),
            "seed_draws_split": data_args.uses_embedded_dataset,
            "epochs": training_args.num_train_epochs,
            "batch_size": training_args.per_device_train_batch_size,
            "learning_rate": training_args.learning_rate,
            "num_train_samples": runs[0].metrics.get("train_samples"),
            "num_eval_samples": runs[0].metrics.get("eval_samples"),
            "command": " ".join(["hf-hem", "compare", *_command_flags(self, runs, base_args)]),
        }

    def embedded_dataset_text(self, model_args) -> str:
        """How the report names the embedded dataset (`pipeline().embedded_dataset_name`)."""
        raise NotImplementedError

    def local_dataset_text(self, data_args) -> str:
        """How the report names local data (no `--dataset_name`)."""
        raise NotImplementedError

    def model_from_config_text(self, model_args) -> str:
        """How the report names a model built from its config (no `--model_name_or_path`)."""
        raise NotImplementedError

    def setup_fields(self, data_args, runs: list[CompareRun]) -> dict:
        """The task's own entries of [`describe_setup`] (e.g. its classes)."""
        return {}

    # -- The report ---------------------------------------------------------------------------------------------

    def plots(self, shown: list[CompareRun]) -> list[Plot]:
        """The plots of the report for these runs (one per loss, first seed), in report order."""
        return []

    def data_lines(self, setup: dict) -> list[str]:
        """The set-up bullets above the model line: the data, the classes."""
        return []

    def sections(self) -> Sequence[Section]:
        """The sections of `report.md`, in order."""
        return REPORT_SECTIONS

    def run_fields(self, run: CompareRun) -> dict:
        """Entries of a run in `compare_results.json` besides its name, seed, folder, time, margins and metrics."""
        return {}


# --------------------------------------------------------------------------------------------------------------------
# Running


def _progress_callback(description: str, enabled: bool, keys: Sequence[str] = ("loss",)):
    """A Trainer progress display for one run: a step bar with the logged `keys` as postfix, nothing printed per log."""
    from tqdm.auto import tqdm
    from transformers import ProgressCallback

    class _RunProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.current_step = 0
            if enabled and state.is_world_process_zero:
                self.training_bar = tqdm(
                    total=state.max_steps, desc=f"  {description}", unit="step", leave=False, dynamic_ncols=True
                )

        def on_step_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                super().on_step_end(args, state, control, **kwargs)

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            pass  # evaluations take a second or two here; their bars would only clutter the display

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs:
                shown = {key: logs[key] for key in keys if isinstance(logs.get(key), float)}
                if shown:
                    self.training_bar.set_postfix({key: f"{value:.4g}" for key, value in shown.items()})

        def on_train_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                self.training_bar.close()
                self.training_bar = None

    return _RunProgress()


def _has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(token == flag or token.startswith(flag + "=") for token in argv)


def _read_run(
    task: TaskAdapter,
    output_dir: Path,
    loss_name: str,
    seed: int,
    metrics: dict,
    wall_time: float,
    margin_override: float | None = None,
) -> CompareRun:
    from .losses.registry import MARGIN_LOSS_NAMES

    predictions = {}
    prediction_file = output_dir / "predictions.npz"
    if prediction_file.is_file():
        with np.load(prediction_file) as stored:
            predictions = {key: stored[key] for key in stored.files}
    predictions.update(task.read_outputs(output_dir))
    margins = None
    config_file = output_dir / "config.json"
    if loss_name in MARGIN_LOSS_NAMES and config_file.is_file():
        margins = json.loads(config_file.read_text(encoding="utf-8")).get("hem_margins")
    curves = read_trainer_curves(output_dir)
    return CompareRun(
        loss_name, seed, output_dir, dict(metrics), predictions, margins, wall_time, curves, margin_override
    )


def run_compare(
    losses: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    output_dir: str | os.PathLike = "hem-compare",
    script_args: Sequence[str] = (),
    config_file: str | None = None,
    progress: bool = True,
    num_threads: int | None = None,
    task: str | TaskAdapter = DEFAULT_TASK,
    margins: Sequence[float] | None = None,
) -> Path:
    """Train one model per loss and seed on the same data, then write `report.md` with its plots.

    Args:
        losses (`Sequence[str]`, *optional*): Registry names (see [`~hf_hem.get_loss`]). Defaults to `("ce", "hem")`
            for classification and `("ce", "hem", "hem+", "dice")` for segmentation.
        seeds (`Sequence[int]`, *optional*): Every loss is trained once per seed (the seed also draws the embedded
            dataset's train/validation split); the table shows mean ± standard deviation over seeds, the plots the
            first seed. Defaults to `(0, 1, 2)` on the embedded digits, whose runs take seconds, `(0, 1)` on the
            embedded scenes, else `(0,)`.
        output_dir (`str` or `os.PathLike`, *optional*, defaults to `"hem-compare"`): Receives `report.md`, the
            PNGs, `compare_results.json` and one folder per run (`<loss>` or `<loss>-seed<k>`).
        script_args (`Sequence[str]`, *optional*): Flags of the task's script (`scripts/run_image_classification.py`
            or `scripts/run_semantic_segmentation.py`) for every run (data, model, training settings). `--loss_name`,
            `--seed` and `--output_dir` are set by this function.
        config_file (`str`, *optional*): A `.yaml`/`.json` config of the script, applied before `script_args`.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.
        num_threads (`int`, *optional*): PyTorch CPU threads during the runs. Defaults to 1 for the embedded digits
            on a machine without GPU: the model is so small that more threads gain little, and on a busy machine
            threads that wait for each other make training many times slower.
        task (`str` or [`TaskAdapter`], *optional*, defaults to `"classification"`): `"classification"` or
            `"segmentation"` (see [`TASKS`] for aliases), or an adapter.
        margins (`Sequence[float]`, *optional*): A margin sweep: every single-margin loss among `losses` (`hem`,
            `mm`, ...) is trained once per margin and seed with `--margin` set, and the report adds a plot of the task
            metrics against the margin (the paper's Fig. 10 on your data). Other losses (`ce`, ...) are trained once
            per seed as references; `hem+`, whose margins come per class from the counts, cannot be swept.

    Returns:
        `Path`: the written `report.md`.
    """
    from .losses.registry import LOSS_NAMES

    task = get_task_adapter(task)
    losses = task.default_losses if losses is None else losses
    losses = [loss.strip().lower() for loss in losses if loss.strip()]
    if not losses:
        raise ValueError("losses is empty; expected registry names such as 'ce,hem'.")
    bad = [loss for loss in losses if loss not in LOSS_NAMES]
    if bad:
        raise ValueError(f"unknown losses {bad}; valid names are: {', '.join(LOSS_NAMES)}.")
    if len(set(losses)) != len(losses):
        raise ValueError(f"losses {losses} name a loss twice; each loss is trained once per seed.")
    margins = _check_margins(margins, losses)
    script_args = list(script_args)
    if margins and _has_flag(script_args, "--margin"):
        raise ValueError("--margin and --margins both set the margin; a sweep takes --margins alone.")
    for flag in _RESERVED_FLAGS:
        if _has_flag(script_args, flag):
            raise ValueError(
                f"{flag} is set by compare for every run; use --losses, --seeds and --output_dir instead."
            )
    base_args = ([config_file] if config_file else []) + script_args
    data_args = task.pipeline().peek_data_arguments(base_args)
    embedded = data_args.uses_embedded_dataset
    seeds = list(seeds) if seeds is not None else task.default_seeds(embedded)
    if not seeds or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed; a repeated run would only duplicate results.")
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
    script_args += task.run_args(script_args, data_args)
    if not _has_flag(script_args, "--log_level"):
        script_args += ["--log_level", "warning"]  # the progress bars and the report say what matters

    import torch

    if num_threads is None and embedded and not torch.cuda.is_available():
        num_threads = 1
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_all(task, losses, seeds, output_dir, script_args, config_file, base_args, progress, margins)
    finally:
        torch.set_num_threads(previous_threads)


def _check_margins(margins, losses) -> list[float]:
    """The sweep's margins, checked: positive finite numbers, no repeats, and a loss that can be swept."""
    from .losses.registry import MARGIN_LOSS_NAMES

    if margins is None:
        return []
    margins = [float(margin) for margin in margins]
    if not margins or any(not math.isfinite(margin) or margin <= 0 for margin in margins):
        raise ValueError(f"margins must be positive numbers, got {margins!r}.")
    if len(set(margins)) != len(margins):
        raise ValueError(f"margins {margins} repeat a margin.")
    if "hem+" in losses:
        raise ValueError("hem+ takes its per-class margins from the class counts and cannot be swept; leave it out.")
    if not any(loss in MARGIN_LOSS_NAMES for loss in losses):
        raise ValueError(f"--margins needs a margin loss among the losses (e.g. hem), got {losses}.")
    return margins


def _run_plan(losses, seeds, margins) -> list[tuple[int, str, float | None]]:
    """`(seed, loss, margin)` of every run: margin losses once per margin of a sweep, the others once."""
    from .losses.registry import MARGIN_LOSS_NAMES

    plan = []
    for seed in seeds:
        for loss in losses:
            swept = margins if margins and loss in MARGIN_LOSS_NAMES else [None]
            plan += [(seed, loss, margin) for margin in swept]
    return plan


def _run_all(
    task: TaskAdapter, losses, seeds, output_dir, script_args, config_file, base_args, progress, margins=()
) -> Path:
    import datasets
    import transformers
    from tqdm.auto import tqdm

    pipeline = task.pipeline()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs: list[CompareRun] = []
    plan = _run_plan(losses, seeds, margins)
    with tqdm(plan, desc="hf-hem compare", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        for seed, loss, margin in bar:
            name = loss if margin is None else f"{loss}-m{margin:g}"
            name = name if len(seeds) == 1 else f"{name}-seed{seed}"
            bar.set_postfix_str(f"training {name}")
            run_dir = output_dir / name.replace("+", "plus")
            argv = ([config_file] if config_file else []) + script_args
            argv += ["--loss_name", loss, "--seed", str(seed), "--output_dir", str(run_dir)]
            if margin is not None:
                argv += ["--margin", repr(margin)]
            model_args, run_data_args, training_args = pipeline.parse_args(argv)
            callbacks = [_progress_callback(name, progress, task.progress_keys)]
            start = time.perf_counter()
            # The Trainer prints its metric tables to stdout; the report has them, so they are kept off the console.
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = pipeline.run(model_args, run_data_args, training_args, callbacks=callbacks)
            runs.append(_read_run(task, run_dir, loss, seed, metrics, time.perf_counter() - start, margin))
        bar.set_postfix_str("writing the report")
    setup = task.describe_setup(model_args, run_data_args, training_args, runs, base_args)
    return write_report(runs, output_dir, setup=setup, progress=progress, task=task)


def _command_flags(task: TaskAdapter, runs: list[CompareRun], base_args) -> list[str]:
    losses = list(dict.fromkeys(run.loss_name for run in runs))
    seeds = list(dict.fromkeys(run.seed for run in runs))
    flags = ([] if task.name == DEFAULT_TASK else ["--task", task.name]) + ["--losses", ",".join(losses)]
    swept = list(dict.fromkeys(run.margin_override for run in runs if run.margin_override is not None))
    if swept:
        flags += ["--margins", ",".join(f"{margin:g}" for margin in swept)]
    if seeds != [0]:
        flags += ["--seeds", ",".join(str(seed) for seed in seeds)]
    return flags + [str(arg) for arg in base_args]


# --------------------------------------------------------------------------------------------------------------------
# The report


def write_report(
    runs: list[CompareRun],
    output_dir: str | os.PathLike,
    setup: dict | None = None,
    progress: bool = True,
    task: str | TaskAdapter = DEFAULT_TASK,
) -> Path:
    """Write `report.md`, its PNG plots and `compare_results.json` for a list of runs of one task.

    Args:
        runs (`list[CompareRun]`): The runs, e.g. from [`run_compare`]; every run needs the task's
            `required_predictions` (classification: `eval_logits` and `eval_labels`, and the rejection plots
            `unknown_logits`; segmentation: `images`, `labels` and `predictions`).
        output_dir (`str` or `os.PathLike`): Folder of the report.
        setup (`dict`, *optional*): What was compared (dataset, model, classes, command), shown at the top.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar over the plots.
        task (`str` or [`TaskAdapter`], *optional*, defaults to `"classification"`): The task of the runs.

    Returns:
        `Path`: the written `report.md`.
    """
    from tqdm.auto import tqdm

    task = get_task_adapter(task)
    if not runs:
        raise ValueError("write_report needs at least one run.")
    if len({(run.label, run.seed) for run in runs}) != len(runs):
        raise ValueError("write_report got two runs of the same loss and seed.")
    for run in runs:
        missing = [key for key in task.required_predictions if key not in run.predictions]
        if missing:
            raise ValueError(
                f"run {run.output_dir} has no {missing} predictions in predictions.npz; was it evaluated (do_eval)?"
            )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    losses = list(dict.fromkeys(run.label for run in runs))
    first_seed = runs[0].seed
    # The first seed of every loss; a loss that lacks the first seed shows its own first run.
    shown = [
        next((run for run in runs if run.label == loss and run.seed == first_seed), None)
        or next(run for run in runs if run.label == loss)
        for loss in losses
    ]
    setup = dict(setup or {})
    plots = []
    for plot in tqdm(
        _all_plots(task, shown, runs, setup), desc="plots", unit="plot", disable=not progress, leave=False
    ):
        if plot.draw(runs if plot.all_seeds else shown, output_dir / plot.file_name) is not None:
            plots.append(plot)

    seeds = sorted({run.seed for run in runs})
    context = ReportContext(task, runs, losses, seeds, shown, plots, setup, output_dir)
    convergence = {loss: context.convergence(loss) for loss in losses}
    lines: list[str] = []
    for section in task.sections():
        block = section(context)
        if block:
            lines += ([""] if lines else []) + block
    report = output_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = {
        "setup": setup,
        "runs": [
            {
                "loss_name": run.loss_name,
                "seed": run.seed,
                "output_dir": str(run.output_dir),
                "wall_time": run.wall_time,
                "margins": run.margins,
                "margin_override": run.margin_override,
                "metrics": run.metrics,
                "curves": run.curves,
                **task.run_fields(run),
            }
            for run in runs
        ],
        "convergence": {
            "criterion": {**dataclasses.asdict(DEFAULT_CRITERION), "metric": task.convergence_key},
            "losses": {loss: [result._asdict() for result in results] for loss, results in convergence.items()},
        },
    }
    (output_dir / "compare_results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return report


def _setup_section(context: ReportContext) -> list[str]:
    """The title, then what was compared: data, model and schedule, seeds, the command that reproduces it."""
    setup, seeds = context.setup, context.seeds
    lines = ["# hf-hem compare: " + " vs ".join(f"`{loss}`" for loss in context.losses), ""]
    if setup:
        epochs = setup.get("epochs")
        lines += context.task.data_lines(setup)
        lines.append(
            f"- **Model**: {setup.get('model')}; {epochs:g} epoch{'' if epochs == 1 else 's'}, "
            f"batch size {setup.get('batch_size')}, learning rate {setup.get('learning_rate'):g}; identical for every "
            "loss."
        )
    seed_note = f"; each seed also draws its own {context.task.seed_draws}" if setup.get("seed_draws_split") else ""
    lines.append(
        f"- **Seeds**: {', '.join(str(seed) for seed in seeds)}{seed_note}"
        + (" (mean ± standard deviation over seeds; plots show the first seed)." if len(seeds) > 1 else ".")
    )
    if setup.get("command"):
        lines.append(f"- **Reproduce**: `{setup['command']}`")
    return lines


def _results_section(context: ReportContext) -> list[str]:
    return ["## Results", "", *_table(context), "", context.task.metrics_note]


def _summary_section(context: ReportContext) -> list[str]:
    summary = _summary(context)
    if not summary:
        return []
    lines = ["## In short", "", *summary]
    if len(context.seeds) == 1 and context.task.single_seed_note:
        lines += ["", context.task.single_seed_note]
    return lines


def _plots_section(context: ReportContext) -> list[str]:
    task_plots = [plot for plot in context.plots if plot.file_name not in _OWN_SECTION_PLOTS]
    if not task_plots:
        return []
    lines = ["## Plots"]
    for plot in task_plots:
        lines += ["", f"### {plot.caption}", "", f"![{plot.caption}]({plot.file_name})"]
    return lines


def _curves_section(context: ReportContext) -> list[str]:
    """The learning curves, the convergence criterion, and which losses had not converged."""
    plot = next((plot for plot in context.plots if plot.file_name == LEARNING_CURVES_FILE), None)
    if plot is None:
        return []
    label = next(
        (row.label for row in context.task.curve_metrics if row.key == context.task.convergence_key),
        context.task.convergence_key,
    )
    lines = [
        "## Learning curves",
        "",
        f"![{plot.caption}]({plot.file_name})",
        "",
        f"Every evaluation of every run, mean over seeds with a band of ± one standard deviation. *Converged* in the "
        f"results table: {DEFAULT_CRITERION.describe(f'the validation {label}')}; the spread is the largest over "
        "seeds. A schedule that anneals the learning rate to zero flattens every curve at its end, converged or "
        "not; rerunning with more `--num_train_epochs` tells the two apart.",
    ]
    unconverged = [
        loss for loss in context.losses if any(result.converged is False for result in context.convergence(loss))
    ]
    if unconverged:
        lines += [
            "",
            "**Not converged**: " + ", ".join(f"`{loss}`" for loss in unconverged) + ". Their metrics were still "
            "moving at the end of training, so the table compares unfinished runs; train longer "
            "(`--num_train_epochs`) before reading a difference between losses from it.",
        ]
    return lines


def _sweep_section(context: ReportContext) -> list[str]:
    plot = next((plot for plot in context.plots if plot.file_name == MARGIN_SWEEP_FILE), None)
    if plot is None:
        return []
    lines = ["## Margin sweep", "", f"![{plot.caption}]({plot.file_name})", ""]
    text = (
        "Each margin loss trained once per margin and seed with `--margin` fixed (points: mean over seeds, bars: ± one "
        "standard deviation); losses without a margin are the horizontal lines."
    )
    samples = _rule_samples(context.runs, context.setup)
    if samples:
        text += (
            f" The paper's rule μ = sqrt(2000 / S) gives {math.sqrt(2000 / samples):.3f} for S = {samples} training "
            f"{context.task.margin_samples_unit} (dotted line)."
        )
    return lines + [text]


def _runs_section(context: ReportContext) -> list[str]:
    lines = ["## Runs", "", "| Run | Folder |", "|---|---|"]
    for run in context.runs:
        relative = os.path.relpath(run.output_dir, context.output_dir)
        lines.append(f"| `{run.label}`, seed {run.seed} | [`{relative}/`]({relative}/README.md) |")
    return lines + ["", f"Each folder holds {context.task.folder_contents}."]


#: The sections of every task's `report.md`, in order (see [`TaskAdapter.sections`]).
REPORT_SECTIONS: tuple[Section, ...] = (
    _setup_section,
    _results_section,
    _summary_section,
    _curves_section,
    _sweep_section,
    _plots_section,
    _runs_section,
)

#: The learning-curve plot of every report (see [`TaskAdapter.curve_metrics`]).
LEARNING_CURVES_FILE = "learning_curves.png"
#: The margin-sweep plot of a report with `--margins`.
MARGIN_SWEEP_FILE = "margin_sweep.png"
_OWN_SECTION_PLOTS = (LEARNING_CURVES_FILE, MARGIN_SWEEP_FILE)


def _runs_by_label(runs: list[CompareRun]) -> dict[str, list[CompareRun]]:
    grouped: dict[str, list[CompareRun]] = {}
    for run in runs:
        grouped.setdefault(run.label, []).append(run)
    return grouped


def _rule_samples(runs: list[CompareRun], setup: dict) -> float | None:
    """S of the paper's margin rule sqrt(2000 / S) for a sweep's reference line: the training samples (images for
    segmentation), unless the command changed the rule (`--margin_scale`, `--num_margin_samples`) or S is unknown."""
    command = str(setup.get("command", ""))
    if "--margin_scale" in command or "--num_margin_samples" in command:
        return None
    return setup.get("num_train_samples") or runs[0].metrics.get("train_samples")


def _all_plots(task: TaskAdapter, shown: list[CompareRun], runs: list[CompareRun], setup: dict) -> list[Plot]:
    """The learning curves (every report), the margin sweep (with `--margins`), then the task's own plots."""
    plots = [
        Plot(
            LEARNING_CURVES_FILE,
            "Learning curves",
            functools.partial(_draw_learning_curves, metrics=task.curve_metrics),
            all_seeds=True,
        )
    ]
    if any(run.margin_override is not None for run in runs) and task.sweep_keys:
        samples = _rule_samples(runs, setup)
        plots.append(
            Plot(
                MARGIN_SWEEP_FILE,
                "Metrics against the margin",
                functools.partial(plot_margin_sweep, keys=task.sweep_keys, rule_samples=samples),
                all_seeds=True,
            )
        )
    return plots + task.plots(shown)


def _draw_learning_curves(runs: list[CompareRun], path: Path, metrics: Sequence[MetricRow]) -> Path | None:
    curves = {label: [run.curves for run in group] for label, group in _runs_by_label(runs).items()}
    return plot_learning_curves(curves, [(row.key, row.label) for row in metrics], path)


def plot_margin_sweep(
    runs: list[CompareRun], path: Path, keys: Sequence[MetricRow], rule_samples: float | None = None
) -> Path | None:
    """Task metrics against the margin of a sweep: one line per margin loss, mean ± std over seeds (log-scaled
    margin axis); every loss without a swept margin is a horizontal reference line.

    Args:
        runs (`list[CompareRun]`): Every run of the sweep, all seeds.
        path (`Path`): PNG to write.
        keys (`Sequence[MetricRow]`): The metrics, one panel each; one that no run has is left out.
        rule_samples (`float`, *optional*): Training samples S; marks the paper's rule sqrt(2000 / S).

    Returns:
        `Path` or `None`: `path`, or `None` when no run has a swept margin.
    """
    swept = [run for run in runs if run.margin_override is not None]
    keys = [row for row in keys if any(row.key in run.metrics for run in runs)]
    if not swept or not keys:
        return None
    figure, axes = _figure(len(keys), width=4.4, height=3.6)
    color_index = 0
    for loss in dict.fromkeys(run.loss_name for run in swept):
        color = _PALETTE[color_index % len(_PALETTE)]
        color_index += 1
        margins = sorted({run.margin_override for run in swept if run.loss_name == loss})
        for axis, row in zip(axes, keys):
            stats = [
                mean_std(
                    [
                        run.metrics.get(row.key)
                        for run in swept
                        if run.loss_name == loss and run.margin_override == margin
                    ],
                    omit_nonfinite=True,
                )
                for margin in margins
            ]
            means = np.array([mean for mean, _ in stats])
            stds = np.nan_to_num(np.array([std for _, std in stats]))
            axis.errorbar(margins, means, yerr=stds, marker="o", capsize=3, color=color, label=loss)
    for reference, group in _runs_by_label([run for run in runs if run.margin_override is None]).items():
        color = _PALETTE[color_index % len(_PALETTE)]
        color_index += 1
        for axis, row in zip(axes, keys):
            mean, std = mean_std([run.metrics.get(row.key) for run in group], omit_nonfinite=True)
            if math.isfinite(mean):
                axis.axhline(mean, color=color, linestyle="--", linewidth=1.2, label=reference)
                if math.isfinite(std):
                    axis.axhspan(mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
    for axis, row in zip(axes, keys):
        if rule_samples:
            axis.axvline(
                math.sqrt(2000 / rule_samples), color="#555555", linestyle=":", linewidth=1, label="rule √(2000/S)"
            )
        axis.set_xscale("log")
        axis.set_xlabel("margin μ")
        axis.set_ylabel(row.label)
        axis.set_title(f"{row.label} ({'↑' if row.higher_is_better else '↓'} better)")
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    figure.suptitle("Margin sweep (mean ± std over seeds)")
    figure.savefig(path, dpi=110)
    return path


def _margin_cell(margins: list[float] | None) -> str:
    if not margins:
        return MISSING_VALUE
    if max(margins) - min(margins) < 1e-9:
        return f"{margins[0]:.3f}"
    return f"{min(margins):.3f}–{max(margins):.3f}"


def _table(context: ReportContext) -> list[str]:
    """The results table: one column per loss, mean ± std over seeds, the best value of a row in bold."""
    losses = context.losses
    lines = ["| Metric | better | " + " | ".join(f"`{loss}`" for loss in losses) + " |"]
    lines.append("|---|:-:|" + "---:|" * len(losses))
    for key, label, higher in context.task.metric_rows:
        if not all(key in run.metrics for run in context.runs):
            continue
        stats = {loss: context.mean_std(loss, key) for loss in losses}
        finite = [mean for mean, _ in stats.values() if math.isfinite(mean)]
        best = (max if higher else min)(finite) if finite else None
        cells = []
        for loss in losses:
            text = format_mean_std(*stats[loss], digits=4)
            cells.append(f"**{text}**" if len(losses) > 1 and stats[loss][0] == best else text)
        lines.append(f"| {label} | {'↑' if higher else '↓'} | " + " | ".join(cells) + " |")
    lines.append(
        "| Converged | | " + " | ".join(convergence_cell(context.convergence(loss)) for loss in losses) + " |"
    )
    first_runs = {loss: next(run for run in context.runs if run.label == loss) for loss in losses}
    lines.append("| Margin μ | | " + " | ".join(_margin_cell(first_runs[loss].margins) for loss in losses) + " |")
    times = [
        mean_std(
            [run.metrics.get("train_runtime", run.wall_time) for run in context.runs if run.label == loss],
            omit_nonfinite=True,
        )
        for loss in losses
    ]
    lines.append("| Training time (s) | | " + " | ".join(format_mean_std(mean, digits=1) for mean, _ in times) + " |")
    return lines


def _summary(context: ReportContext) -> list[str]:
    """Plain sentences comparing each loss with cross-entropy (when CE was trained)."""
    losses = context.losses
    if "ce" not in losses or len(losses) < 2:
        return []
    sentences = []
    for loss in losses:
        if loss == "ce":
            continue
        parts = []
        for key, label, higher in context.task.summary_keys:
            ours, baseline = context.mean_std(loss, key), context.mean_std("ce", key)
            if ours is None or baseline is None or not math.isfinite(ours[0]) or not math.isfinite(baseline[0]):
                continue
            difference = ours[0] - baseline[0]
            if abs(difference) < 5e-4:
                verdict = "the same"
            # The std of one seed is NaN, so a single seed never counts as within the spread.
            elif abs(difference) <= math.hypot(ours[1], baseline[1]):
                verdict = "within the spread over seeds"
            else:
                verdict = "better" if (difference > 0) == higher else "worse"
            parts.append(f"{label} {ours[0]:.3f} vs {baseline[0]:.3f} ({verdict})")
        if parts:
            sentences.append(f"- **`{loss}` vs `ce`**: " + "; ".join(parts) + ".")
    return sentences


# --------------------------------------------------------------------------------------------------------------------
# Plots


def _canvas(width: float, height: float):
    # A bare Figure with an Agg canvas: no pyplot, so no global backend state and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _figure(ncols: int = 1, width: float = 4.2, height: float = 3.4):
    figure = _canvas(width * ncols, height)
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def _grouped_bars(axis, runs: list[CompareRun], values: Sequence[Sequence[float]]) -> np.ndarray:
    """One group of bars per class, one bar per run in its palette colour; returns the group positions."""
    positions = np.arange(len(values[0]))
    width = 0.8 / len(runs)
    for index, (color, run, heights) in enumerate(zip(_PALETTE, runs, values)):
        axis.bar(positions + (index - (len(runs) - 1) / 2) * width, heights, width, color=color, label=run.label)
    return positions


# --------------------------------------------------------------------------------------------------------------------
# Classification


def _scores(run: CompareRun, kind: str) -> dict[str, np.ndarray]:
    from .metrics import max_logit_score, msp_score

    score = msp_score if kind == "msp" else max_logit_score
    out = {"known": score(run.predictions["eval_logits"])}
    for key, label in (("unknown_logits", "unknown"), ("ood_logits", "OOD")):
        if key in run.predictions and len(run.predictions[key]):
            out[label] = score(run.predictions[key])
    return out


def plot_score_histograms(runs: list[CompareRun], path: Path, kind: str = "msp") -> Path:
    """Histograms of the MSP (`kind="msp"`) or max-logit (`"mls"`) score, known vs unknown images, one panel per run.

    Args:
        runs (`list[CompareRun]`): One run per loss.
        path (`Path`): PNG to write.
        kind (`str`, *optional*, defaults to `"msp"`): `"msp"` or `"mls"`.

    Returns:
        `Path`: `path`.
    """
    title = "max softmax probability" if kind == "msp" else "max logit"
    figure, axes = _figure(len(runs))
    colors = {"known": _KNOWN_COLOR, "unknown": _UNKNOWN_COLOR, "OOD": _OOD_COLOR}
    for axis, run in zip(axes, runs):
        scores = _scores(run, kind)
        low = min(float(values.min()) for values in scores.values())
        high = max(float(values.max()) for values in scores.values())
        bins = np.linspace(low, high if high > low else low + 1e-6, 31)
        for label, values in scores.items():
            axis.hist(
                values, bins=bins, density=True, alpha=0.55, color=colors[label], label=f"{label} ({len(values)})"
            )
        auroc = run.metrics.get(f"eval_rejection_auroc_{kind}")
        axis.set_title(f"{run.label}" + (f" — AUROC {auroc:.3f}" if auroc is not None else ""))
        axis.set_xlabel(title)
        axis.set_ylabel("density")
        axis.legend(fontsize="small")
    figure.suptitle(f"Known vs unknown images: {title}")
    figure.savefig(path, dpi=110)
    return path


def plot_roc(runs: list[CompareRun], path: Path) -> Path:
    """ROC curves of rejecting unknown images by MSP (solid) and max logit (dashed), one colour per run."""
    from sklearn.metrics import roc_curve

    figure, (axis,) = _figure(1, width=4.8, height=4.2)
    for color, run in zip(_PALETTE, runs):
        for kind, style in (("msp", "-"), ("mls", "--")):
            scores = _scores(run, kind)
            if "unknown" not in scores:
                continue
            truth = np.r_[np.ones(len(scores["known"])), np.zeros(len(scores["unknown"]))]
            false_positive, true_positive, _ = roc_curve(truth, np.r_[scores["known"], scores["unknown"]])
            auroc = run.metrics.get(f"eval_rejection_auroc_{kind}", float("nan"))
            axis.plot(false_positive, true_positive, style, color=color, label=f"{run.label} {kind} ({auroc:.3f})")
    axis.plot([0, 1], [0, 1], ":", color="#999999", linewidth=1)
    axis.set_xlabel("unknown images accepted (FPR)")
    axis.set_ylabel("known images accepted (TPR)")
    axis.set_title("Rejecting unknown classes")
    axis.legend(fontsize="small", loc="lower right")
    figure.savefig(path, dpi=110)
    return path


def plot_reliability(runs: list[CompareRun], path: Path, n_bins: int = 10) -> Path:
    """Reliability diagrams (accuracy against confidence per bin) of the known validation images, one panel per run."""
    from .metrics import expected_calibration_error, reliability_diagram_bins, softmax

    figure, axes = _figure(len(runs), width=3.6, height=3.6)
    for axis, color, run in zip(axes, _PALETTE, runs):
        probabilities = softmax(run.predictions["eval_logits"])
        labels = run.predictions["eval_labels"]
        bins = reliability_diagram_bins(probabilities, labels, n_bins=n_bins)
        edges = bins["bin_edges"]
        filled = bins["count"] > 0
        centers = (edges[:-1] + edges[1:]) / 2
        axis.bar(centers[filled], bins["accuracy"][filled], width=1.0 / n_bins, color=color, edgecolor="white")
        # Near-perfect models put almost every image in the last bin; the counts show how much each bar weighs.
        for center, height, count in zip(centers[filled], bins["accuracy"][filled], bins["count"][filled]):
            axis.annotate(
                str(int(count)), (center, height), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
            )
        axis.plot([0, 1], [0, 1], ":", color="#555555", linewidth=1)
        ece = expected_calibration_error(probabilities, labels, n_bins=15)
        axis.set_title(f"{run.label} — ECE {ece:.3f}")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.08)
        axis.set_xlabel("confidence (max softmax)")
        axis.set_ylabel("accuracy")
    figure.suptitle("Reliability on known classes (numbers: images per bin)")
    figure.savefig(path, dpi=110)
    return path


def plot_per_class_accuracy(runs: list[CompareRun], path: Path) -> Path:
    """Grouped bars: validation accuracy of every known class, one bar per run."""
    from .metrics import per_class_accuracy

    class_names = [str(name) for name in runs[0].predictions.get("class_names", [])]
    num_classes = len(class_names)
    figure, (axis,) = _figure(1, width=max(5.0, 0.6 * num_classes * max(1, len(runs)) / 2 + 2), height=3.4)
    accuracies = [
        per_class_accuracy(
            run.predictions["eval_logits"].argmax(1), run.predictions["eval_labels"], num_classes=num_classes
        )
        for run in runs
    ]
    positions = _grouped_bars(axis, runs, accuracies)
    lowest = min([float(np.nanmin(accuracy)) for accuracy in accuracies if np.isfinite(accuracy).any()] + [1.0])
    axis.set_xticks(positions, class_names)
    axis.set_xlabel("class")
    axis.set_ylabel("accuracy")
    axis.set_ylim(max(0.0, lowest - 0.1), 1.0)
    axis.set_title("Per-class accuracy (validation, known classes)")
    axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path, dpi=110)
    return path


class ClassificationAdapter(TaskAdapter):
    """`--task classification`: [`~hf_hem.pipelines.run_image_classification`], known vs unknown classes."""

    name = "classification"
    aliases = ("image-classification",)
    default_losses = DEFAULT_LOSSES
    metric_rows = (
        MetricRow("eval_accuracy", "Accuracy", True),
        MetricRow("eval_balanced_accuracy", "Balanced accuracy", True),
        MetricRow("eval_ece", "Expected calibration error", False),
        MetricRow("eval_rejection_auroc_msp", "Unknown-class AUROC, MSP", True),
        MetricRow("eval_rejection_auroc_mls", "Unknown-class AUROC, max logit", True),
        MetricRow("eval_rejection_fpr95_msp", "Unknown-class FPR at 95% TPR, MSP", False),
        MetricRow("eval_rejection_fpr95_mls", "Unknown-class FPR at 95% TPR, max logit", False),
        MetricRow("eval_ood_auroc_msp", "OOD AUROC, MSP", True),
        MetricRow("eval_ood_auroc_mls", "OOD AUROC, max logit", True),
        MetricRow("eval_ood_fpr95_msp", "OOD FPR at 95% TPR, MSP", False),
        MetricRow("eval_ood_fpr95_mls", "OOD FPR at 95% TPR, max logit", False),
    )
    summary_keys = (
        MetricRow("eval_accuracy", "accuracy", True),
        MetricRow("eval_rejection_auroc_msp", "unknown-class AUROC (MSP)", True),
        MetricRow("eval_rejection_fpr95_msp", "FPR at 95% TPR (MSP)", False),
        MetricRow("eval_ece", "calibration error", False),
    )
    required_predictions = ("eval_logits", "eval_labels")
    progress_keys = ("loss", "eval_accuracy")
    curve_metrics = (
        *TaskAdapter.curve_metrics,
        MetricRow("eval_accuracy", "accuracy", True),
        MetricRow("eval_rejection_auroc_msp", "unknown-class AUROC (MSP)", True),
    )
    convergence_key = "eval_accuracy"
    sweep_keys = (
        MetricRow("eval_accuracy", "accuracy", True),
        MetricRow("eval_rejection_auroc_msp", "unknown-class AUROC (MSP)", True),
        MetricRow("eval_rejection_auroc_mls", "unknown-class AUROC (max logit)", True),
    )
    margin_samples_unit = "images"
    seed_draws = "train/validation split"
    metrics_note = (
        "Bold marks the best value of a row. *MSP* rejects an image when its maximum softmax probability is low, "
        "*max logit* when its largest logit is low. AUROC is the probability that a random known image scores higher "
        "than a random unknown one (1 is perfect, 0.5 is chance); *FPR at 95% TPR* is the share of unknown images "
        "still accepted when 95% of the known ones are. The expected calibration error (15 bins) measures the gap "
        "between confidence and accuracy."
    )
    single_seed_note = (
        "One seed on a small dataset: differences of a point or two are within run-to-run noise. "
        "Add `--seeds 0,1,2` for error bars."
    )
    folder_contents = (
        "a plain `transformers` checkpoint (load it with `AutoModelForImageClassification` and `AutoImageProcessor`), "
        "its model card, `all_results.json` and `predictions.npz`"
    )

    def pipeline(self):
        from .pipelines import image_classification as pipeline

        return TaskPipeline(
            pipeline.peek_data_arguments,
            pipeline.parse_image_classification_args,
            pipeline.run_image_classification,
            pipeline.EMBEDDED_DATASET_NAME,
        )

    def default_seeds(self, embedded):
        return [0, 1, 2] if embedded else [0]  # runs on the embedded digits take seconds

    def run_args(self, script_args, data_args):
        if data_args.uses_embedded_dataset and data_args.unknown_classes is None:
            return ["--unknown_classes", *DEFAULT_UNKNOWN_CLASSES]
        return []

    def embedded_dataset_text(self, model_args):
        name, size = self.pipeline().embedded_dataset_name, model_args.image_size
        return f"`{name}` (scikit-learn's 8×8 digits upscaled to {size} px, embedded)"

    def local_dataset_text(self, data_args):
        return f"image folder `{data_args.train_dir}`"

    def model_from_config_text(self, model_args):
        return (
            f"{model_args.model_type} built from its config ({model_args.image_size} px input, random initialisation)"
        )

    def setup_fields(self, data_args, runs):
        first = runs[0].predictions
        return {
            "known_classes": [str(name) for name in first.get("class_names", [])],
            "unknown_classes": [str(name) for name in first.get("unknown_class_names", [])],
            "ood": data_args.ood_dataset_name or data_args.ood_dir,
            "num_unknown_samples": runs[0].metrics.get("eval_unknown_samples"),
        }

    def plots(self, shown):
        has_unknown = all("unknown_logits" in run.predictions for run in shown)
        has_ood = all("ood_logits" in run.predictions for run in shown)
        plots = []
        if has_unknown or has_ood:
            plots += [
                Plot(
                    "msp_histograms.png",
                    "Max softmax probability, known vs unknown",
                    functools.partial(plot_score_histograms, kind="msp"),
                ),
                Plot(
                    "mls_histograms.png",
                    "Max logit, known vs unknown",
                    functools.partial(plot_score_histograms, kind="mls"),
                ),
            ]
        if has_unknown:
            plots.append(Plot("rejection_roc.png", "ROC of unknown-class rejection", plot_roc))
        return plots + [
            Plot("reliability.png", "Reliability diagram", plot_reliability),
            Plot("per_class_accuracy.png", "Per-class accuracy", plot_per_class_accuracy),
        ]

    def data_lines(self, setup):
        lines = [
            f"- **Data**: {setup.get('dataset')}; {setup.get('num_train_samples')} training and "
            f"{setup.get('num_eval_samples')} validation images of the known classes "
            f"{', '.join(setup.get('known_classes') or [])}.",
        ]
        if setup.get("unknown_classes"):
            lines.append(
                f"- **Unknown classes**: {', '.join(setup['unknown_classes'])}, held out of training; their "
                f"{setup.get('num_unknown_samples')} validation images must be rejected."
            )
        if setup.get("ood"):
            lines.append(f"- **OOD set**: `{setup['ood']}`.")
        return lines


# --------------------------------------------------------------------------------------------------------------------
# Segmentation


def _class_colors(num_classes: int) -> np.ndarray:
    """`(num_classes + 1, 3)` uint8 colours: a qualitative palette per class, and dark grey last (ignored pixels)."""
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors
    colors = np.asarray([palette[(2 * index) % 20 + (2 * index // 20) % 2] for index in range(num_classes)])
    return np.rint(np.vstack([colors, [0.25, 0.25, 0.25]]) * 255).astype(np.uint8)


def _colorize(label_map: np.ndarray, colors: np.ndarray) -> np.ndarray:
    num_classes = len(colors) - 1
    ids = np.where((label_map >= 0) & (label_map < num_classes), label_map, num_classes)
    return colors[ids]


def plot_segmentation_masks(runs: list[CompareRun], path: Path) -> Path:
    """A grid: one row per validation example, columns image, ground truth, then each run's predicted mask."""
    first = runs[0].predictions
    images, labels = first["images"], first["labels"]
    class_names = [str(name) for name in first.get("class_names", [])]
    colors = _class_colors(max(len(class_names), int(labels[labels != 255].max(initial=0)) + 1))
    columns = 2 + len(runs)
    from matplotlib.patches import Patch

    figure = _canvas(2.0 * columns, 2.0 * len(images) + 0.6)
    axes = figure.subplots(len(images), columns, squeeze=False)
    titles = ["image", "ground truth", *(run.label for run in runs)]
    for row, (image, label) in enumerate(zip(images, labels)):
        panels = [image, _colorize(label, colors)]
        for run in runs:
            prediction = run.predictions["predictions"][row]
            panel = _colorize(prediction, colors)
            panel[label == 255] = (panel[label == 255] * 0.35).astype(np.uint8)  # not scored: dimmed
            panels.append(panel)
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(panel, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=10)
    present = sorted(
        {int(v) for v in np.unique(labels) if v != 255}
        | {int(v) for r in runs for v in np.unique(r.predictions["predictions"])}
    )
    handles = [
        Patch(color=colors[index] / 255, label=class_names[index] if index < len(class_names) else str(index))
        for index in present[:20]
    ]
    handles.append(Patch(color=colors[-1] / 255, label="ignored"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize="small")
    figure.suptitle("Validation images: ground truth and predicted masks (dimmed: ignored pixels, not scored)")
    figure.savefig(path, dpi=100)
    return path


def plot_per_class_iou(runs: list[CompareRun], path: Path, max_classes: int = 30) -> Path:
    """Grouped bars of per-class IoU, one bar per run; the `max_classes` classes with most validation pixels."""
    class_names = [str(name) for name in runs[0].predictions.get("class_names", [])]
    matrix = runs[0].predictions.get("confusion_matrix")
    order = list(range(len(class_names)))
    if matrix is not None:
        order = [int(index) for index in np.argsort(-np.asarray(matrix).sum(axis=1), kind="stable")]
    order = order[:max_classes]
    shown = [class_names[index] for index in order]
    figure, (axis,) = _figure(1, width=max(5.0, 0.45 * len(shown) * max(1, len(runs)) / 2 + 2), height=3.6)
    per_class = [run.predictions.get("per_class_iou") or {} for run in runs]
    values = [[np.nan if iou.get(name) is None else float(iou[name]) for name in shown] for iou in per_class]
    positions = _grouped_bars(axis, runs, values)
    axis.set_xticks(
        positions, shown, rotation=45 if len(shown) > 10 else 0, ha="right" if len(shown) > 10 else "center"
    )
    axis.set_xlabel(
        "class" + (f" (the {len(shown)} with most validation pixels)" if len(class_names) > len(shown) else "")
    )
    axis.set_ylabel("IoU")
    axis.set_ylim(0.0, 1.0)
    axis.set_title("Per-class IoU (validation)")
    axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path, dpi=110)
    return path


class SegmentationAdapter(TaskAdapter):
    """`--task segmentation`: [`~hf_hem.pipelines.semantic_segmentation.run_semantic_segmentation`], per-pixel IoU."""

    name = "segmentation"
    aliases = ("semantic-segmentation",)
    default_losses = DEFAULT_SEGMENTATION_LOSSES
    metric_rows = (
        MetricRow("eval_mean_iou", "Mean IoU", True),
        MetricRow("eval_mean_accuracy", "Mean class accuracy", True),
        MetricRow("eval_overall_accuracy", "Pixel accuracy", True),
    )
    summary_keys = (
        MetricRow("eval_mean_iou", "mIoU", True),
        MetricRow("eval_overall_accuracy", "pixel accuracy", True),
    )
    required_predictions = ("images", "labels", "predictions")
    progress_keys = ("loss", "eval_mean_iou")
    curve_metrics = (*TaskAdapter.curve_metrics, MetricRow("eval_mean_iou", "mIoU", True))
    convergence_key = "eval_mean_iou"
    sweep_keys = (
        MetricRow("eval_mean_iou", "mIoU", True),
        MetricRow("eval_overall_accuracy", "pixel accuracy", True),
    )
    # Segmentation margins count images, not pixels (docs/method.md, section 2).
    margin_samples_unit = "images"
    seed_draws = "scenes"
    metrics_note = (
        "Bold marks the best value of a row. IoU of a class is TP / (TP + FP + FN) over all validation pixels (a "
        "streamed confusion matrix); the mean IoU averages the classes present in the labels or the predictions. "
        "Pixels labelled with the ignore index (background after label reduction, crop padding) are not scored."
    )
    single_seed_note = (
        "One seed and a short schedule: differences of a point or two are within run-to-run noise, and HEM "
        "gains most from long schedules with a late learning-rate drop (see the method notes). Add "
        "`--seeds 0,1,2` for error bars."
    )
    folder_contents = (
        "a plain `transformers` checkpoint (load it with `AutoModelForSemanticSegmentation` and "
        "`AutoImageProcessor`), its model card, `all_results.json`, `per_class_iou.json` and `predictions.npz`"
    )

    def pipeline(self):
        from .pipelines import semantic_segmentation as pipeline

        return TaskPipeline(
            pipeline.peek_segmentation_data_arguments,
            pipeline.parse_semantic_segmentation_args,
            pipeline.run_semantic_segmentation,
            pipeline.EMBEDDED_SEGMENTATION_DATASET_NAME,
        )

    def default_seeds(self, embedded):
        # The embedded scenes are sized so that two seeds of every default loss train to convergence in minutes;
        # elsewhere a run can take hours, so one seed unless asked.
        return [0, 1] if embedded else [0]

    def run_args(self, script_args, data_args):
        extra = []
        if data_args.uses_embedded_dataset and not _has_flag(script_args, "--image_size"):
            extra += ["--image_size", str(COMPARE_SEGMENTATION_IMAGE_SIZE)]
        if not _has_flag(script_args, "--disable_tqdm"):
            # The pipeline's own bars (pixel histogram, evaluation) would interleave with compare's nested ones.
            extra += ["--disable_tqdm", "true"]
        return extra

    def read_outputs(self, output_dir):
        per_class_file = output_dir / "per_class_iou.json"
        if not per_class_file.is_file():
            return {}
        return {"per_class_iou": json.loads(per_class_file.read_text(encoding="utf-8"))}

    def embedded_dataset_text(self, model_args):
        return f"`{self.pipeline().embedded_dataset_name}` (synthetic scenes of scikit-learn's digits, embedded)"

    def local_dataset_text(self, data_args):
        if data_args.data_files:
            return f"parquet `{data_args.data_files[0]}`"
        return f"image/mask folders `{data_args.train_dir}`"

    def model_from_config_text(self, model_args):
        return f"SegFormer-{model_args.segformer_size} built from its config (random initialisation)"

    def setup_fields(self, data_args, runs):
        return {"classes": [str(name) for name in runs[0].predictions.get("class_names", [])]}

    def plots(self, shown):
        return [
            Plot("segmentation_masks.png", "Predicted masks next to the ground truth", plot_segmentation_masks),
            Plot("per_class_iou.png", "Per-class IoU", plot_per_class_iou),
        ]

    def data_lines(self, setup):
        classes = setup.get("classes") or []
        class_text = ", ".join(classes) if len(classes) <= 12 else f"{len(classes)} classes"
        return [
            f"- **Data**: {setup.get('dataset')}; {setup.get('num_train_samples')} training and "
            f"{setup.get('num_eval_samples')} validation images; classes {class_text}.",
        ]

    def run_fields(self, run):
        return {"per_class_iou": run.predictions.get("per_class_iou")}


def write_segmentation_report(
    runs: list[CompareRun], output_dir: str | os.PathLike, setup: dict | None = None, progress: bool = True
) -> Path:
    """[`write_report`] with `task="segmentation"`: every run needs the `images`, `labels` and `predictions` of its
    `predictions.npz` and its `eval_mean_iou`."""
    return write_report(runs, output_dir, setup=setup, progress=progress, task="segmentation")


class _TextAdapterBase(TaskAdapter):
    """The shared parts of the text tasks: synthetic embedded data, local files or a Hub dataset, a BERT-style model."""

    seed_draws = "synthetic data"
    single_seed_note = "One seed: add `--seeds 0,1,2` for error bars."

    def embedded_dataset_text(self, model_args):
        return (
            f"`{self.pipeline().embedded_dataset_name}` (synthetic, built in memory: a plumbing check of the "
            "pipeline, not evidence about HEM on language)"
        )

    def local_dataset_text(self, data_args):
        return f"local file `{data_args.train_file}`"

    def model_from_config_text(self, model_args):
        return f"`{model_args.model_type}` built from its config (random initialisation)"

    def data_lines(self, setup):
        return [
            f"- **Data**: {setup.get('dataset')}; {setup.get('num_train_samples')} training and "
            f"{setup.get('num_eval_samples')} validation examples.",
        ]


def _text_pipeline(module_name: str, data_class: str, parse: str, run: str, embedded: str) -> TaskPipeline:
    import importlib

    from .pipelines import peek_dataclass

    module = importlib.import_module(f".pipelines.{module_name}", __package__)
    data_arguments = getattr(module, data_class)
    return TaskPipeline(
        lambda argv=None, file_values=None: peek_dataclass(data_arguments, argv, file_values),
        getattr(module, parse),
        getattr(module, run),
        getattr(module, embedded),
    )


class TextAdapter(_TextAdapterBase):
    """`--task text`: [`~hf_hem.pipelines.text_classification.run_text_classification`] (GLUE-style)."""

    name = "text"
    aliases = ("text-classification",)
    metric_rows = (
        MetricRow("eval_accuracy", "Accuracy", True),
        MetricRow("eval_macro_f1", "Macro F1", True),
        MetricRow("eval_ece", "Expected calibration error", False),
    )
    summary_keys = (MetricRow("eval_accuracy", "accuracy", True),)
    progress_keys = ("loss", "eval_accuracy")
    curve_metrics = (*TaskAdapter.curve_metrics, MetricRow("eval_accuracy", "accuracy", True))
    convergence_key = "eval_accuracy"
    sweep_keys = (MetricRow("eval_accuracy", "accuracy", True),)
    metrics_note = "Accuracy, macro F1 and the expected calibration error (15 bins) on the validation split."
    folder_contents = (
        "a plain `transformers` checkpoint (`AutoModelForSequenceClassification` and `AutoTokenizer`), its model "
        "card and `all_results.json`"
    )

    def pipeline(self):
        return _text_pipeline(
            "text_classification",
            "TextClassificationDataArguments",
            "parse_text_classification_args",
            "run_text_classification",
            "EMBEDDED_TEXT_DATASET_NAME",
        )


class TokenAdapter(_TextAdapterBase):
    """`--task token`: [`~hf_hem.pipelines.token_classification.run_token_classification`] (CoNLL-style NER)."""

    name = "token"
    aliases = ("token-classification", "ner")
    metric_rows = (
        MetricRow("eval_f1", "Entity F1", True),
        MetricRow("eval_precision", "Entity precision", True),
        MetricRow("eval_recall", "Entity recall", True),
        MetricRow("eval_accuracy", "Token accuracy", True),
    )
    summary_keys = (MetricRow("eval_f1", "entity F1", True),)
    progress_keys = ("loss", "eval_f1")
    curve_metrics = (*TaskAdapter.curve_metrics, MetricRow("eval_f1", "entity F1", True))
    convergence_key = "eval_f1"
    sweep_keys = (MetricRow("eval_f1", "entity F1", True),)
    margin_samples_unit = "labelled tokens"
    metrics_note = (
        "Entity-level precision, recall and F1 (an entity counts when its type and its whole span match, as in "
        "CoNLL's evaluation), and the accuracy over labelled tokens, on the validation split."
    )
    folder_contents = (
        "a plain `transformers` checkpoint (`AutoModelForTokenClassification` and `AutoTokenizer`), its model card "
        "and `all_results.json`"
    )

    def pipeline(self):
        return _text_pipeline(
            "token_classification",
            "TokenClassificationDataArguments",
            "parse_token_classification_args",
            "run_token_classification",
            "EMBEDDED_NER_DATASET_NAME",
        )


# --------------------------------------------------------------------------------------------------------------------
# The adapter table

#: One adapter per task, by canonical name; a new task is one more entry.
TASK_ADAPTERS: dict[str, TaskAdapter] = {
    adapter.name: adapter
    for adapter in (ClassificationAdapter(), SegmentationAdapter(), TextAdapter(), TokenAdapter())
}
#: Task names `--task` accepts (and their aliases), each mapped to its canonical name.
TASKS = {alias: adapter.name for adapter in TASK_ADAPTERS.values() for alias in (adapter.name, *adapter.aliases)}


def get_task_adapter(task: str | TaskAdapter) -> TaskAdapter:
    """The adapter of a task name or alias (see [`TASKS`]); an adapter is returned as it is."""
    if isinstance(task, TaskAdapter):
        return task
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {', '.join(TASKS)}.")
    return TASK_ADAPTERS[TASKS[task]]


# --------------------------------------------------------------------------------------------------------------------
# Command line


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Register `hf-hem compare` on an `argparse` sub-parser collection.

    The handler is stored as the `handler` default; `accepts_extra_args=True` tells `hf_hem.cli` to pass unknown
    flags on (as `args.extra_args`), since every flag of the image classification script is valid here.

    Args:
        subparsers: What `ArgumentParser.add_subparsers()` returned.

    Returns:
        `argparse.ArgumentParser`: the `compare` parser.
    """
    parser = subparsers.add_parser(
        "compare",
        help="Train the same model with CE and HEM (or other losses) and write a side-by-side report.",
        description="Train one image classifier (or, with --task segmentation, one semantic segmenter) per loss and "
        "seed on the same data, then write report.md with a side-by-side table and plots. Without a dataset: "
        "scikit-learn's digits, a small ResNet, digits 8 and 9 held out as unknown (segmentation: synthetic digit "
        "scenes and a tiny SegFormer), offline.",
        epilog="Every other flag of scripts/run_image_classification.py (e.g. --dataset_name, --model_type, "
        "--num_train_epochs, --unknown_classes), or of scripts/run_semantic_segmentation.py with --task "
        "segmentation, is passed on to every run.",
        allow_abbrev=False,  # `--seed` must reach the error below, not silently become `--seeds`
    )
    parser.add_argument(
        "--task",
        default=DEFAULT_TASK,
        choices=sorted(TASKS),
        help="classification (default: scripts/run_image_classification.py) or segmentation "
        "(scripts/run_semantic_segmentation.py, CE vs HEM vs HEM+ vs Dice).",
    )
    parser.add_argument(
        "--losses",
        default=None,
        help="Comma-separated registry names (default: ce,hem; ce,hem,hem+,dice for segmentation).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated seeds; every loss is trained once per seed (default: 0,1,2 on the embedded digits, "
        "0,1 on the embedded scenes, else 0).",
    )
    parser.add_argument(
        "--margins",
        default=None,
        help="A margin sweep, e.g. 0.1,0.2,0.5,1.0: every margin loss of --losses is trained once per margin and seed "
        "with --margin set, and the report plots the metrics against the margin (the paper's Fig. 10).",
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="PyTorch CPU threads (default: 1 for the embedded digits without GPU, else PyTorch's default).",
    )
    parser.add_argument("--output_dir", default="hem-compare", help="Folder of the report and runs (hem-compare).")
    parser.add_argument("--config", default=None, help="A .yaml/.json config of the script applied to every run.")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    parser.set_defaults(handler=run_compare_command, accepts_extra_args=True)
    return parser


def run_compare_command(args: argparse.Namespace) -> int:
    """Handler of `hf-hem compare`: runs [`run_compare`] and prints where the report is."""
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    margins = None
    if getattr(args, "margins", None) is not None:
        try:
            margins = [float(margin) for margin in args.margins.split(",") if margin.strip()]
        except ValueError:
            raise ValueError(f"--margins must be comma-separated numbers, got {args.margins!r}.") from None
    report = run_compare(
        losses=args.losses.split(",") if args.losses is not None else None,
        seeds=seeds,
        output_dir=args.output_dir,
        script_args=getattr(args, "extra_args", []) or [],
        config_file=args.config,
        progress=not args.no_progress,
        num_threads=args.num_threads,
        task=args.task,
        margins=margins,
    )
    print(f"Report written to {report}")
    return 0
