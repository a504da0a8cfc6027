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
tiny SegFormer (about a minute per loss):

```bash
hf-hem compare                                   # CE vs HEM on the embedded digits
hf-hem compare --losses ce,hem,logitnorm --seeds 0,1,2 --model_type vit
hf-hem compare --dataset_name cifar10 --image_column_name img --unknown_classes 8 9 --model_type resnet
hf-hem compare --task segmentation               # CE vs HEM vs Dice on the embedded digit scenes
hf-hem compare --task segmentation --dataset_name scene_parse_150 --model_name_or_path nvidia/mit-b0
```

Any flag of `scripts/run_image_classification.py` (or, with `--task segmentation`, of
`scripts/run_semantic_segmentation.py`) is passed on to every run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


__all__ = [
    "DEFAULT_LOSSES",
    "DEFAULT_SEGMENTATION_LOSSES",
    "TASKS",
    "DEFAULT_UNKNOWN_CLASSES",
    "CompareRun",
    "add_compare_parser",
    "run_compare",
    "run_compare_command",
    "write_report",
    "write_segmentation_report",
]

DEFAULT_LOSSES = ("ce", "hem")
#: Losses compared by `--task segmentation` by default: the paper's segmentation comparison.
DEFAULT_SEGMENTATION_LOSSES = ("ce", "hem", "dice")
#: Task names `--task` accepts (and their aliases).
TASKS = {
    "classification": "classification",
    "image-classification": "classification",
    "segmentation": "segmentation",
    "semantic-segmentation": "segmentation",
}
#: Digits held out as unknown on the embedded default, unless `--unknown_classes` says otherwise.
DEFAULT_UNKNOWN_CLASSES = ("8", "9")
# Flags that compare sets for every run itself.
_RESERVED_FLAGS = ("--loss_name", "--seed", "--output_dir")

# (metric key in all_results.json, row label, True if higher is better).
_METRIC_ROWS = (
    ("eval_accuracy", "Accuracy", True),
    ("eval_balanced_accuracy", "Balanced accuracy", True),
    ("eval_ece", "Expected calibration error", False),
    ("eval_rejection_auroc_msp", "Unknown-class AUROC, MSP", True),
    ("eval_rejection_auroc_mls", "Unknown-class AUROC, max logit", True),
    ("eval_rejection_fpr95_msp", "Unknown-class FPR at 95% TPR, MSP", False),
    ("eval_rejection_fpr95_mls", "Unknown-class FPR at 95% TPR, max logit", False),
    ("eval_ood_auroc_msp", "OOD AUROC, MSP", True),
    ("eval_ood_auroc_mls", "OOD AUROC, max logit", True),
    ("eval_ood_fpr95_msp", "OOD FPR at 95% TPR, MSP", False),
    ("eval_ood_fpr95_mls", "OOD FPR at 95% TPR, max logit", False),
)
_SEGMENTATION_METRIC_ROWS = (
    ("eval_mean_iou", "Mean IoU", True),
    ("eval_mean_accuracy", "Mean class accuracy", True),
    ("eval_overall_accuracy", "Pixel accuracy", True),
)
_PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974")
_KNOWN_COLOR, _UNKNOWN_COLOR, _OOD_COLOR = "#4C72B0", "#DD8452", "#8C8C8C"


@dataclass
class CompareRun:
    """One training run of a comparison.

    Attributes:
        loss_name (`str`): The loss it was trained with.
        seed (`int`): Its seed.
        output_dir (`Path`): Its folder (model, card, `all_results.json`, `predictions.npz`).
        metrics (`dict[str, float]`): What [`~hf_hem.pipelines.run_image_classification`] returned.
        predictions (`dict[str, np.ndarray]`): `eval_logits`, `eval_labels`, and `unknown_logits` / `ood_logits`
            when there are unknown classes / an OOD set; `class_names`, `unknown_class_names`.
        margins (`list[float]`, *optional*): The margins of a margin loss, from the saved model config.
        wall_time (`float`): Seconds the run took, data loading and evaluation included.
    """

    loss_name: str
    seed: int
    output_dir: Path
    metrics: dict[str, float]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    margins: list[float] | None = None
    wall_time: float = 0.0


# --------------------------------------------------------------------------------------------------------------------
# Running


def _progress_callback(description: str, enabled: bool):
    """A Trainer progress display for one run: a step bar with the loss as postfix, and nothing printed per log."""
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
                keys = ("loss", "eval_accuracy", "eval_mean_iou")
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


def _read_run(output_dir: Path, loss_name: str, seed: int, metrics: dict, wall_time: float) -> CompareRun:
    predictions = {}
    prediction_file = output_dir / "predictions.npz"
    if prediction_file.is_file():
        with np.load(prediction_file) as stored:
            predictions = {key: stored[key] for key in stored.files}
    from .losses.registry import MARGIN_LOSS_NAMES

    per_class_file = output_dir / "per_class_iou.json"
    if per_class_file.is_file():
        predictions["per_class_iou"] = json.loads(per_class_file.read_text(encoding="utf-8"))
    margins = None
    config_file = output_dir / "config.json"
    if loss_name in MARGIN_LOSS_NAMES and config_file.is_file():
        margins = json.loads(config_file.read_text(encoding="utf-8")).get("hem_margins")
    return CompareRun(loss_name, seed, output_dir, dict(metrics), predictions, margins, wall_time)


def run_compare(
    losses: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    output_dir: str | os.PathLike = "hem-compare",
    script_args: Sequence[str] = (),
    config_file: str | None = None,
    progress: bool = True,
    num_threads: int | None = None,
    task: str = "classification",
) -> Path:
    """Train one model per loss and seed on the same data, then write `report.md` with its plots.

    Args:
        losses (`Sequence[str]`, *optional*): Registry names (see [`~hf_hem.get_loss`]). Defaults to `("ce", "hem")`
            for classification and `("ce", "hem", "dice")` for segmentation.
        seeds (`Sequence[int]`, *optional*): Every loss is trained once per seed (the seed also draws the embedded
            dataset's train/validation split); the table shows mean ± standard deviation over seeds, the plots the
            first seed. Defaults to `(0, 1, 2)` on the embedded digits, whose runs take seconds, else `(0,)`.
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
        task (`str`, *optional*, defaults to `"classification"`): `"classification"` or `"segmentation"` (see
            [`TASKS`] for aliases).

    Returns:
        `Path`: the written `report.md`.
    """
    from .losses.registry import LOSS_NAMES

    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {', '.join(TASKS)}.")
    task = TASKS[task]
    if task == "segmentation":
        from .pipelines.semantic_segmentation import peek_segmentation_data_arguments as peek_data_arguments
    else:
        from .pipelines.image_classification import peek_data_arguments
    if losses is None:
        losses = DEFAULT_SEGMENTATION_LOSSES if task == "segmentation" else DEFAULT_LOSSES
    losses = [loss.strip().lower() for loss in losses if loss.strip()]
    if not losses:
        raise ValueError("losses is empty; expected registry names such as 'ce,hem'.")
    bad = [loss for loss in losses if loss not in LOSS_NAMES]
    if bad:
        raise ValueError(f"unknown losses {bad}; valid names are: {', '.join(LOSS_NAMES)}.")
    if len(set(losses)) != len(losses):
        raise ValueError(f"losses {losses} name a loss twice; each loss is trained once per seed.")
    script_args = list(script_args)
    for flag in _RESERVED_FLAGS:
        if _has_flag(script_args, flag):
            raise ValueError(
                f"{flag} is set by compare for every run; use --losses, --seeds and --output_dir instead."
            )
    base_args = ([config_file] if config_file else []) + script_args
    data_args = peek_data_arguments(base_args)
    embedded = data_args.uses_embedded_dataset
    # Segmentation runs take a minute even on the embedded scenes: one seed unless asked.
    seeds = list(seeds) if seeds is not None else ([0, 1, 2] if embedded and task == "classification" else [0])
    if not seeds or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed; a repeated run would only duplicate results.")
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
    if task == "classification" and embedded and data_args.unknown_classes is None:
        script_args += ["--unknown_classes", *DEFAULT_UNKNOWN_CLASSES]
    if not _has_flag(script_args, "--log_level"):
        script_args += ["--log_level", "warning"]  # the progress bars and the report say what matters
    if task == "segmentation" and not _has_flag(script_args, "--disable_tqdm"):
        # The pipeline's own bars (pixel histogram, evaluation) would interleave with compare's nested ones.
        script_args += ["--disable_tqdm", "true"]

    import torch

    if num_threads is None and embedded and not torch.cuda.is_available():
        num_threads = 1
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_all(losses, seeds, output_dir, script_args, config_file, base_args, progress, task)
    finally:
        torch.set_num_threads(previous_threads)


def _run_all(losses, seeds, output_dir, script_args, config_file, base_args, progress, task) -> Path:
    import datasets
    import transformers
    from tqdm.auto import tqdm

    if task == "segmentation":
        from .pipelines.semantic_segmentation import parse_semantic_segmentation_args as parse_args
        from .pipelines.semantic_segmentation import run_semantic_segmentation as run_pipeline
    else:
        from .pipelines.image_classification import parse_image_classification_args as parse_args
        from .pipelines.image_classification import run_image_classification as run_pipeline

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs: list[CompareRun] = []
    plan = [(seed, loss) for seed in seeds for loss in losses]
    with tqdm(plan, desc="hf-hem compare", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        for seed, loss in bar:
            name = loss if len(seeds) == 1 else f"{loss}-seed{seed}"
            bar.set_postfix_str(f"training {name}")
            run_dir = output_dir / name.replace("+", "plus")
            argv = ([config_file] if config_file else []) + script_args
            argv += ["--loss_name", loss, "--seed", str(seed), "--output_dir", str(run_dir)]
            model_args, run_data_args, training_args = parse_args(argv)
            start = time.perf_counter()
            # The Trainer prints its metric tables to stdout; the report has them, so they are kept off the console.
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = run_pipeline(
                    model_args, run_data_args, training_args, callbacks=[_progress_callback(name, progress)]
                )
            runs.append(_read_run(run_dir, loss, seed, metrics, time.perf_counter() - start))
        bar.set_postfix_str("writing the report")
    if task == "segmentation":
        setup = _describe_segmentation_setup(model_args, run_data_args, training_args, runs, base_args)
        return write_segmentation_report(runs, output_dir, setup=setup, progress=progress)
    setup = _describe_setup(model_args, run_data_args, training_args, runs, base_args)
    return write_report(runs, output_dir, setup=setup, progress=progress)


def _describe_setup(model_args, data_args, training_args, runs: list[CompareRun], base_args) -> dict:
    from .pipelines.image_classification import EMBEDDED_DATASET_NAME

    first = runs[0].predictions
    classes = [str(name) for name in first.get("class_names", [])]
    unknown = [str(name) for name in first.get("unknown_class_names", [])]
    if data_args.uses_embedded_dataset:
        dataset = (
            f"`{EMBEDDED_DATASET_NAME}` (scikit-learn's 8×8 digits upscaled to {model_args.image_size} px, embedded)"
        )
    elif data_args.dataset_name:
        dataset = f"`{data_args.dataset_name}`" + (
            f" (config `{data_args.dataset_config_name}`)" if data_args.dataset_config_name else ""
        )
    else:
        dataset = f"image folder `{data_args.train_dir}`"
    model = (
        f"`{model_args.model_name_or_path}` (fine-tuned)"
        if model_args.model_name_or_path
        else f"{model_args.model_type} built from its config ({model_args.image_size} px input, random initialisation)"
    )
    return {
        "dataset": dataset,
        "model": model,
        "known_classes": classes,
        "unknown_classes": unknown,
        "ood": data_args.ood_dataset_name or data_args.ood_dir,
        "seed_draws_split": data_args.uses_embedded_dataset,
        "epochs": training_args.num_train_epochs,
        "batch_size": training_args.per_device_train_batch_size,
        "learning_rate": training_args.learning_rate,
        "num_train_samples": runs[0].metrics.get("train_samples"),
        "num_eval_samples": runs[0].metrics.get("eval_samples"),
        "num_unknown_samples": runs[0].metrics.get("eval_unknown_samples"),
        "command": " ".join(["hf-hem", "compare", *_command_flags(runs, base_args)]),
    }


def _command_flags(runs: list[CompareRun], base_args, task: str = "classification") -> list[str]:
    losses = list(dict.fromkeys(run.loss_name for run in runs))
    seeds = list(dict.fromkeys(run.seed for run in runs))
    flags = (["--task", task] if task != "classification" else []) + ["--losses", ",".join(losses)]
    if seeds != [0]:
        flags += ["--seeds", ",".join(str(seed) for seed in seeds)]
    return flags + [str(arg) for arg in base_args]


# --------------------------------------------------------------------------------------------------------------------
# Report


def _figure(ncols: int = 1, width: float = 4.2, height: float = 3.4):
    # A bare Figure with an Agg canvas: no pyplot, so no global backend state and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, axes


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
        axis.set_title(f"{run.loss_name}" + (f" — AUROC {auroc:.3f}" if auroc is not None else ""))
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
            axis.plot(false_positive, true_positive, style, color=color, label=f"{run.loss_name} {kind} ({auroc:.3f})")
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
        axis.set_title(f"{run.loss_name} — ECE {ece:.3f}")
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
    width = 0.8 / len(runs)
    positions = np.arange(num_classes)
    lowest = 1.0
    for index, (color, run) in enumerate(zip(_PALETTE, runs)):
        logits, labels = run.predictions["eval_logits"], run.predictions["eval_labels"]
        accuracy = per_class_accuracy(logits.argmax(axis=1), labels, num_classes=num_classes)
        lowest = min(lowest, float(np.nanmin(accuracy)) if np.isfinite(accuracy).any() else 1.0)
        axis.bar(positions + (index - (len(runs) - 1) / 2) * width, accuracy, width, color=color, label=run.loss_name)
    axis.set_xticks(positions, class_names)
    axis.set_xlabel("class")
    axis.set_ylabel("accuracy")
    axis.set_ylim(max(0.0, lowest - 0.1), 1.0)
    axis.set_title("Per-class accuracy (validation, known classes)")
    axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path, dpi=110)
    return path


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def _format(mean: float, std: float, multi_seed: bool, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if multi_seed else f"{mean:.{digits}f}"


def _table(runs: list[CompareRun], losses: list[str], rows=_METRIC_ROWS) -> list[str]:
    multi_seed = len({run.seed for run in runs}) > 1
    by_loss = {loss: [run for run in runs if run.loss_name == loss] for loss in losses}
    lines = ["| Metric | better | " + " | ".join(f"`{loss}`" for loss in losses) + " |"]
    lines.append("|---|:-:|" + "---:|" * len(losses))
    for key, label, higher in rows:
        if not all(key in run.metrics for run in runs):
            continue
        stats = {loss: _mean_std([run.metrics[key] for run in by_loss[loss]]) for loss in losses}
        best = (max if higher else min)(stats[loss][0] for loss in losses)
        cells = []
        for loss in losses:
            text = _format(*stats[loss], multi_seed)
            cells.append(f"**{text}**" if len(losses) > 1 and stats[loss][0] == best else text)
        lines.append(f"| {label} | {'↑' if higher else '↓'} | " + " | ".join(cells) + " |")
    margin_cells = []
    for loss in losses:
        margins = by_loss[loss][0].margins
        if not margins:
            margin_cells.append("–")
        elif max(margins) - min(margins) < 1e-9:
            margin_cells.append(f"{margins[0]:.3f}")
        else:
            margin_cells.append(f"{min(margins):.3f}–{max(margins):.3f}")
    lines.append("| Margin μ | | " + " | ".join(margin_cells) + " |")
    times = {
        loss: _mean_std([run.metrics.get("train_runtime", run.wall_time) for run in by_loss[loss]]) for loss in losses
    }
    lines.append("| Training time (s) | | " + " | ".join(f"{times[loss][0]:.1f}" for loss in losses) + " |")
    return lines


_SUMMARY_KEYS = (
    ("eval_accuracy", "accuracy", True),
    ("eval_rejection_auroc_msp", "unknown-class AUROC (MSP)", True),
    ("eval_rejection_fpr95_msp", "FPR at 95% TPR (MSP)", False),
    ("eval_ece", "calibration error", False),
)
_SEGMENTATION_SUMMARY_KEYS = (
    ("eval_mean_iou", "mIoU", True),
    ("eval_overall_accuracy", "pixel accuracy", True),
)


def _summary(runs: list[CompareRun], losses: list[str], keys=_SUMMARY_KEYS) -> list[str]:
    """Plain sentences comparing each loss with cross-entropy (when CE was trained)."""
    if "ce" not in losses or len(losses) < 2:
        return []

    multi_seed = len({run.seed for run in runs}) > 1

    def mean_std(loss: str, key: str) -> tuple[float, float] | None:
        values = [run.metrics[key] for run in runs if run.loss_name == loss and key in run.metrics]
        return _mean_std(values) if values else None

    sentences = []
    for loss in losses:
        if loss == "ce":
            continue
        parts = []
        for key, label, higher in keys:
            ours, baseline = mean_std(loss, key), mean_std("ce", key)
            if ours is None or baseline is None:
                continue
            difference = ours[0] - baseline[0]
            if abs(difference) < 5e-4:
                verdict = "the same"
            elif multi_seed and abs(difference) <= math.hypot(ours[1], baseline[1]):
                verdict = "within the spread over seeds"
            else:
                verdict = "better" if (difference > 0) == higher else "worse"
            parts.append(f"{label} {ours[0]:.3f} vs {baseline[0]:.3f} ({verdict})")
        if parts:
            sentences.append(f"- **`{loss}` vs `ce`**: " + "; ".join(parts) + ".")
    return sentences


def write_report(
    runs: list[CompareRun], output_dir: str | os.PathLike, setup: dict | None = None, progress: bool = True
) -> Path:
    """Write `report.md`, its PNG plots and `compare_results.json` for a list of runs.

    Args:
        runs (`list[CompareRun]`): The runs, e.g. from [`run_compare`]; every run needs `eval_logits` and
            `eval_labels` predictions (the rejection plots also `unknown_logits`).
        output_dir (`str` or `os.PathLike`): Folder of the report.
        setup (`dict`, *optional*): What was compared (dataset, model, classes, command), shown at the top.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar over the plots.

    Returns:
        `Path`: the written `report.md`.
    """
    from tqdm.auto import tqdm

    if not runs:
        raise ValueError("write_report needs at least one run.")
    for run in runs:
        missing = [key for key in ("eval_logits", "eval_labels") if key not in run.predictions]
        if missing:
            raise ValueError(f"run {run.output_dir} has no {missing} predictions; was it evaluated (do_eval)?")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    losses = list(dict.fromkeys(run.loss_name for run in runs))
    first_seed = runs[0].seed
    shown = [next(run for run in runs if run.loss_name == loss and run.seed == first_seed) for loss in losses]
    has_unknown = all("unknown_logits" in run.predictions for run in shown)
    has_ood = all("ood_logits" in run.predictions for run in shown)

    plots = [("per_class_accuracy.png", "Per-class accuracy", plot_per_class_accuracy, {})]
    plots.insert(0, ("reliability.png", "Reliability diagram", plot_reliability, {}))
    if has_unknown or has_ood:
        plots[0:0] = [
            (
                "msp_histograms.png",
                "Max softmax probability, known vs unknown",
                plot_score_histograms,
                {"kind": "msp"},
            ),
            ("mls_histograms.png", "Max logit, known vs unknown", plot_score_histograms, {"kind": "mls"}),
        ]
    if has_unknown:
        plots.insert(2, ("rejection_roc.png", "ROC of unknown-class rejection", plot_roc, {}))
    for file_name, _, plot, kwargs in tqdm(plots, desc="plots", unit="plot", disable=not progress, leave=False):
        plot(shown, output_dir / file_name, **kwargs)

    setup = setup or {}
    lines = ["# hf-hem compare: " + " vs ".join(f"`{loss}`" for loss in losses), ""]
    seeds = sorted({run.seed for run in runs})
    if setup:
        lines += [
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
        lines += [
            f"- **Model**: {setup.get('model')}; {setup.get('epochs'):g} epoch{'' if setup.get('epochs') == 1 else 's'}, "
            f"batch size {setup.get('batch_size')}, "
            f"learning rate {setup.get('learning_rate'):g}; identical for every loss.",
        ]
    seed_note = "; each seed also draws its own train/validation split" if setup.get("seed_draws_split") else ""
    lines += [
        f"- **Seeds**: {', '.join(str(seed) for seed in seeds)}{seed_note}"
        + (" (mean ± standard deviation over seeds; plots show the first seed)." if len(seeds) > 1 else "."),
    ]
    if setup.get("command"):
        lines.append(f"- **Reproduce**: `{setup['command']}`")
    lines += ["", "## Results", ""]
    lines += _table(runs, losses)
    lines += [
        "",
        "Bold marks the best value of a row. *MSP* rejects an image when its maximum softmax probability is low, "
        "*max logit* when its largest logit is low. AUROC is the probability that a random known image scores higher "
        "than a random unknown one (1 is perfect, 0.5 is chance); *FPR at 95% TPR* is the share of unknown images "
        "still accepted when 95% of the known ones are. The expected calibration error (15 bins) measures the gap "
        "between confidence and accuracy.",
    ]
    summary = _summary(runs, losses)
    if summary:
        lines += ["", "## In short", "", *summary]
        if len(seeds) == 1:
            lines += [
                "",
                "One seed on a small dataset: differences of a point or two are within run-to-run noise. "
                "Add `--seeds 0,1,2` for error bars.",
            ]
    folder_contents = (
        "a plain `transformers` checkpoint (load it with `AutoModelForImageClassification` and `AutoImageProcessor`), "
        "its model card, `all_results.json` and `predictions.npz`"
    )
    report = _finish_report(lines, [plot[:2] for plot in plots], runs, setup, output_dir, folder_contents)
    return report


def _finish_report(
    lines: list[str],
    plots: list[tuple[str, str]],
    runs: list[CompareRun],
    setup: dict,
    output_dir: Path,
    folder_contents: str,
    extra_run_fields: Callable[[CompareRun], dict] | None = None,
) -> Path:
    """Appends the plots and the table of run folders to `lines`; writes `report.md` and `compare_results.json`."""
    lines += ["", "## Plots", ""]
    for file_name, caption in plots:
        lines += [f"### {caption}", "", f"![{caption}]({file_name})", ""]
    lines += ["## Runs", "", "| Run | Folder |", "|---|---|"]
    for run in runs:
        relative = os.path.relpath(run.output_dir, output_dir)
        lines.append(f"| `{run.loss_name}`, seed {run.seed} | [`{relative}/`]({relative}/README.md) |")
    lines += ["", f"Each folder holds {folder_contents}.", ""]
    report = output_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    results = {
        "setup": dict(setup),
        "runs": [
            {
                "loss_name": run.loss_name,
                "seed": run.seed,
                "output_dir": str(run.output_dir),
                "wall_time": run.wall_time,
                "margins": run.margins,
                "metrics": run.metrics,
                **(extra_run_fields(run) if extra_run_fields else {}),
            }
            for run in runs
        ],
    }
    (output_dir / "compare_results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------------------------------------
# Segmentation report


def _describe_segmentation_setup(model_args, data_args, training_args, runs: list[CompareRun], base_args) -> dict:
    from .pipelines.semantic_segmentation import EMBEDDED_SEGMENTATION_DATASET_NAME

    classes = [str(name) for name in runs[0].predictions.get("class_names", [])]
    if data_args.uses_embedded_dataset:
        dataset = f"`{EMBEDDED_SEGMENTATION_DATASET_NAME}` (synthetic scenes of scikit-learn's digits, embedded)"
    elif data_args.dataset_name:
        dataset = f"`{data_args.dataset_name}`" + (
            f" (config `{data_args.dataset_config_name}`)" if data_args.dataset_config_name else ""
        )
    elif data_args.data_files:
        dataset = f"parquet `{data_args.data_files[0]}`"
    else:
        dataset = f"image/mask folders `{data_args.train_dir}`"
    model = (
        f"`{model_args.model_name_or_path}` (fine-tuned)"
        if model_args.model_name_or_path
        else f"SegFormer-{model_args.segformer_size} built from its config (random initialisation)"
    )
    return {
        "dataset": dataset,
        "model": model,
        "classes": classes,
        "seed_draws_split": data_args.uses_embedded_dataset,
        "epochs": training_args.num_train_epochs,
        "batch_size": training_args.per_device_train_batch_size,
        "learning_rate": training_args.learning_rate,
        "num_train_samples": runs[0].metrics.get("train_samples"),
        "num_eval_samples": runs[0].metrics.get("eval_samples"),
        "command": " ".join(["hf-hem", "compare", *_command_flags(runs, base_args, task="segmentation")]),
    }


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    figure = Figure(figsize=(2.0 * columns, 2.0 * len(images) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(images), columns, squeeze=False)
    titles = ["image", "ground truth", *(run.loss_name for run in runs)]
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
    width = 0.8 / len(runs)
    positions = np.arange(len(shown))
    for index, (color, run) in enumerate(zip(_PALETTE, runs)):
        per_class = run.predictions.get("per_class_iou") or {}
        values = [per_class.get(name) for name in shown]
        values = [np.nan if value is None else float(value) for value in values]
        axis.bar(positions + (index - (len(runs) - 1) / 2) * width, values, width, color=color, label=run.loss_name)
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


def write_segmentation_report(
    runs: list[CompareRun], output_dir: str | os.PathLike, setup: dict | None = None, progress: bool = True
) -> Path:
    """Write `report.md`, its PNG plots and `compare_results.json` for segmentation runs.

    Args:
        runs (`list[CompareRun]`): The runs, e.g. from [`run_compare`] with `task="segmentation"`; every run needs the
            `images`, `labels` and `predictions` of `predictions.npz` and its `eval_mean_iou`.
        output_dir (`str` or `os.PathLike`): Folder of the report.
        setup (`dict`, *optional*): What was compared (dataset, model, classes, command), shown at the top.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar over the plots.

    Returns:
        `Path`: the written `report.md`.
    """
    from tqdm.auto import tqdm

    if not runs:
        raise ValueError("write_segmentation_report needs at least one run.")
    for run in runs:
        missing = [key for key in ("images", "labels", "predictions") if key not in run.predictions]
        if missing:
            raise ValueError(f"run {run.output_dir} has no {missing} in predictions.npz; was it evaluated (do_eval)?")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    losses = list(dict.fromkeys(run.loss_name for run in runs))
    first_seed = runs[0].seed
    shown = [next(run for run in runs if run.loss_name == loss and run.seed == first_seed) for loss in losses]
    plots = [
        ("segmentation_masks.png", "Predicted masks next to the ground truth", plot_segmentation_masks),
        ("per_class_iou.png", "Per-class IoU", plot_per_class_iou),
    ]
    for file_name, _, plot in tqdm(plots, desc="plots", unit="plot", disable=not progress, leave=False):
        plot(shown, output_dir / file_name)

    setup = setup or {}
    seeds = sorted({run.seed for run in runs})
    lines = ["# hf-hem compare: " + " vs ".join(f"`{loss}`" for loss in losses), ""]
    if setup:
        classes = setup.get("classes") or []
        class_text = ", ".join(classes) if len(classes) <= 12 else f"{len(classes)} classes"
        lines += [
            f"- **Data**: {setup.get('dataset')}; {setup.get('num_train_samples')} training and "
            f"{setup.get('num_eval_samples')} validation images; classes {class_text}.",
            f"- **Model**: {setup.get('model')}; {setup.get('epochs'):g} epoch{'' if setup.get('epochs') == 1 else 's'}, "
            f"batch size {setup.get('batch_size')}, learning rate {setup.get('learning_rate'):g}; identical for every "
            "loss.",
        ]
    seed_note = "; each seed also draws its own scenes" if setup.get("seed_draws_split") else ""
    lines.append(
        f"- **Seeds**: {', '.join(str(seed) for seed in seeds)}{seed_note}"
        + (" (mean ± standard deviation over seeds; plots show the first seed)." if len(seeds) > 1 else ".")
    )
    if setup.get("command"):
        lines.append(f"- **Reproduce**: `{setup['command']}`")
    lines += ["", "## Results", ""]
    lines += _table(runs, losses, rows=_SEGMENTATION_METRIC_ROWS)
    lines += [
        "",
        "Bold marks the best value of a row. IoU of a class is TP / (TP + FP + FN) over all validation pixels (a "
        "streamed confusion matrix); the mean IoU averages the classes present in the labels or the predictions. "
        "Pixels labelled with the ignore index (background after label reduction, crop padding) are not scored.",
    ]
    summary = _summary(runs, losses, keys=_SEGMENTATION_SUMMARY_KEYS)
    if summary:
        lines += ["", "## In short", "", *summary]
        if len(seeds) == 1:
            lines += [
                "",
                "One seed and a short schedule: differences of a point or two are within run-to-run noise, and HEM "
                "gains most from long schedules with a late learning-rate drop (see the method notes). Add "
                "`--seeds 0,1,2` for error bars.",
            ]
    folder_contents = (
        "a plain `transformers` checkpoint (load it with `AutoModelForSemanticSegmentation` and "
        "`AutoImageProcessor`), its model card, `all_results.json`, `per_class_iou.json` and `predictions.npz`"
    )
    report = _finish_report(
        lines,
        [plot[:2] for plot in plots],
        runs,
        setup,
        output_dir,
        folder_contents,
        extra_run_fields=lambda run: {"per_class_iou": run.predictions.get("per_class_iou")},
    )
    return report


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
        default="classification",
        choices=sorted(TASKS),
        help="classification (default: scripts/run_image_classification.py) or segmentation "
        "(scripts/run_semantic_segmentation.py, CE vs HEM vs Dice).",
    )
    parser.add_argument(
        "--losses",
        default=None,
        help="Comma-separated registry names (default: ce,hem; ce,hem,dice for segmentation).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated seeds; every loss is trained once per seed (default: 0,1,2 on the embedded digits, "
        "else 0).",
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
    report = run_compare(
        losses=args.losses.split(",") if args.losses is not None else None,
        seeds=seeds,
        output_dir=args.output_dir,
        script_args=getattr(args, "extra_args", []) or [],
        config_file=args.config,
        progress=not args.no_progress,
        num_threads=args.num_threads,
        task=args.task,
    )
    print(f"Report written to {report}")
    return 0
