"""`hf-hem compare`: the same model trained with cross-entropy and with HEM (and other losses), side by side.

Every loss is trained on the same data, with the same model, augmentation and seeds, through the pipeline of the task:
image classification (`--task classification`, the default), semantic segmentation (`--task segmentation`), text or
token classification (`--task text`, `--task token`). The result is a folder with one sub-folder per run (a plain
`transformers` checkpoint with its HEM model card and its `run_record.json`), `report.md` (the metrics side by side,
Welch's t-test against CE, the learning curves and whether each run converged, plots) and `compare_results.json`.

Without a dataset it runs on the embedded defaults, offline, on two CPU cores: scikit-learn's digits with a small
ResNet and the digits 8 and 9 held out as unknown classes, or synthetic scenes of those digits with a tiny SegFormer.
A finished run is read back instead of rerun when its settings match (an interrupted comparison resumes);
`--until_converged` continues every run whose learning curve has not levelled off; `--margins` sweeps the margin:

```bash
hf-hem compare                                   # CE vs HEM on the embedded digits
hf-hem compare --losses ce,hem,logitnorm --seeds 0,1,2 --model_type vit
hf-hem compare --dataset_name cifar10 --image_column_name img --unknown_classes 8 9 --model_type resnet
hf-hem compare --task segmentation               # CE vs HEM vs HEM+ vs Dice on the embedded digit scenes
hf-hem compare --losses ce,hem --margins 0.1,0.2,0.5,1.0   # accuracy and rejection against HEM's margin
hf-hem compare --until_converged --max_epochs 60 # rerun unconverged runs with 1.5x the epochs, up to 60
```

Any flag of the task's script (`scripts/run_image_classification.py`, `scripts/run_semantic_segmentation.py`, ...) is
passed on to every run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch
import transformers

from .records import RunRecord, RunSpec
from .report import COMPARE_SECTIONS, ReportContext, draw_plots, write_report
from .runner import UntilConverged, check_losses, check_margins, check_seeds, plan_runs, run_plan
from .summary import summarize_records
from .task import COMPARE
from .tasks import get_task
from .tasks._script import RECORD_FILE, ScriptSettings, ScriptTask, has_flag


__all__ = ["DEFAULT_TASK", "compare_command", "run_compare", "write_compare_report"]

#: The task of `hf-hem compare` without `--task`; the only one whose reproduce command leaves `--task` out.
DEFAULT_TASK = "classification"


def _run_folder_name(spec: RunSpec, num_seeds: int) -> str:
    """`hem`, `hemplus-seed1`, `hem-m0.5-seed0`: the folder names `hf-hem compare` has always used."""
    name = spec.loss if spec.margin is None else f"{spec.loss}-m{spec.margin:g}"
    name = name if num_seeds == 1 else f"{name}-seed{spec.seed}"
    return name.replace("+", "plus")


def compare_command(
    task: ScriptTask,
    losses: Sequence[str],
    seeds: Sequence[int],
    margins: Sequence[float],
    settings: ScriptSettings,
    until_converged: UntilConverged | None = None,
) -> str:
    """The `hf-hem compare ...` command line that reproduces a comparison."""
    flags = [] if task.name == get_task(DEFAULT_TASK).name else ["--task", task.name]
    flags += ["--losses", ",".join(losses)]
    if margins:
        flags += ["--margins", ",".join(f"{margin:g}" for margin in margins)]
    if list(seeds) != [0]:
        flags += ["--seeds", ",".join(str(seed) for seed in seeds)]
    if until_converged is not None:
        flags += ["--until_converged", "--max_epochs", f"{until_converged.max_epochs:g}"]
        if until_converged.growth != 1.5:
            flags += ["--growth", f"{until_converged.growth:g}"]
    return " ".join(["hf-hem", "compare", *flags, *(str(arg) for arg in settings.user_args)])


def run_compare(
    losses: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    output_dir: str | os.PathLike = "hem-compare",
    script_args: Sequence[str] = (),
    config_file: str | None = None,
    progress: bool = True,
    num_threads: int | None = None,
    task: str | ScriptTask = DEFAULT_TASK,
    margins: Sequence[float] | None = None,
    rerun: bool = False,
    until_converged: UntilConverged | None = None,
) -> Path:
    """Train one model per loss and seed (and margin, in a sweep) on the same data, then write `report.md`.

    Args:
        losses (`Sequence[str]`, *optional*): Registry names (see [`~hf_hem.get_loss`]). Defaults to the task's
            (`ce,hem`; `ce,hem,hem+,dice` for segmentation).
        seeds (`Sequence[int]`, *optional*): Every loss is trained once per seed (the seed also draws the embedded
            dataset's split); the table shows mean ± standard deviation over seeds, the plots the first seed.
            Defaults to `(0, 1, 2)` on the embedded digits, `(0, 1)` on the embedded scenes, else `(0,)`.
        output_dir (`str` or `os.PathLike`, *optional*, defaults to `"hem-compare"`): Receives `report.md`, the
            PNGs, `compare_results.json` and one folder per run (`<loss>` or `<loss>-seed<k>`).
        script_args (`Sequence[str]`, *optional*): Flags of the task's script for every run. `--loss_name`, `--seed`
            and `--output_dir` are set by this function.
        config_file (`str`, *optional*): A `.yaml`/`.json` config of the script, applied before `script_args`.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.
        num_threads (`int`, *optional*): PyTorch CPU threads during the runs. Defaults to 1 for the embedded data on
            a machine without GPU: the models are so small that more threads gain little, and on a busy machine
            threads that wait for each other make training many times slower.
        task (`str` or [`~hf_hem.experiments.tasks.ScriptTask`], *optional*, defaults to `"classification"`):
            `classification`, `segmentation`, `text` or `token` (or an alias), or a task.
        margins (`Sequence[float]`, *optional*): A margin sweep: every single-margin loss among `losses` is trained
            once per margin and seed with `--margin` set, and the report plots the metrics against the margin (the
            paper's Fig. 10 on your data); other losses are trained once per seed as references.
        rerun (`bool`, *optional*, defaults to `False`): Train every run, even one whose finished record matches.
        until_converged ([`~hf_hem.experiments.runner.UntilConverged`], *optional*): Rerun a run whose learning
            curve has not converged with more epochs, up to a cap.

    Returns:
        `Path`: the written `report.md`.
    """
    task = get_task(task, COMPARE)
    losses = check_losses(task.default_losses if losses is None else losses)
    margins = check_margins(margins, losses)
    if margins and has_flag(script_args, "--margin"):
        raise ValueError("--margin and --margins both set the margin; a sweep takes --margins alone.")
    settings = task.settings(script_args, config_file)
    seeds = check_seeds(task.default_seeds(settings) if seeds is None else seeds)
    if num_threads is None and task.uses_embedded_dataset(settings) and not torch.cuda.is_available():
        num_threads = 1
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    output_dir = Path(output_dir)

    def locate(spec: RunSpec) -> tuple[Path, Path]:
        folder = output_dir / _run_folder_name(spec, len(seeds))
        return folder, folder / RECORD_FILE

    records, _ = run_plan(
        task,
        settings,
        plan_runs(losses, seeds, margins),
        output_dir,
        locate,
        progress=progress,
        rerun=rerun,
        until_converged=until_converged,
        num_threads=num_threads,
        description="hf-hem compare",
    )
    command = compare_command(task, losses, seeds, margins, settings, until_converged)
    return write_compare_report(records, output_dir, task=task, settings=settings, command=command)


def write_compare_report(
    records: Sequence[RunRecord],
    output_dir: str | os.PathLike,
    task: str | ScriptTask = DEFAULT_TASK,
    settings: ScriptSettings | None = None,
    setup: dict | None = None,
    command: str | None = None,
) -> Path:
    """Write `report.md`, its PNG plots and `compare_results.json` for the records of one compare task.

    Args:
        records (`Sequence[RunRecord]`): The runs; every one needs the task's `required_arrays` (classification:
            `eval_logits` and `eval_labels`; segmentation: `images`, `labels` and `predictions`).
        output_dir (`str` or `os.PathLike`): Folder of the report.
        task (`str` or `ScriptTask`, *optional*, defaults to `"classification"`): The task of the runs.
        settings (`ScriptSettings`, *optional*): The comparison's settings; describe the set-up when `setup` is
            not given.
        setup (`dict`, *optional*): What was compared (dataset, model, classes), shown at the top.
        command (`str`, *optional*): The command that reproduces the comparison.

    Returns:
        `Path`: the written `report.md`.
    """
    task = get_task(task, COMPARE)
    records = list(records)
    if not records:
        raise ValueError("write_compare_report needs at least one run record.")
    if len({(record.label, record.seed) for record in records}) != len(records):
        raise ValueError("write_compare_report got two runs of the same loss and seed.")
    for record in records:
        missing = [key for key in task.required_arrays if key not in record.arrays]
        if missing:
            raise ValueError(
                f"run {record.label} seed {record.seed} has no {missing} predictions; was it evaluated (do_eval)?"
            )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if setup is None:
        setup = task.describe(records, settings) if settings is not None else {}
    setup = {**setup, **({"command": command} if command else {})}
    summary = summarize_records(task, records, task.baseline)
    plots = draw_plots(task, records, summary, output_dir, settings, setup)
    context = ReportContext(task, settings, records, summary, plots, output_dir, setup, setup.get("command"))
    report = write_report(context, COMPARE_SECTIONS)
    results = {
        "setup": setup,
        "runs": [
            {
                "loss_name": record.loss,
                "seed": record.seed,
                "output_dir": record.extras.get("output_dir"),
                "wall_time": record.wall_time_s,
                "margins": record.extras.get("margins"),
                "margin_override": record.margin,
                "metrics": record.metrics,
                "curves": record.curves,
                "attempts": record.attempts,
                **task.run_fields(record),
            }
            for record in records
        ],
        "convergence": summary.convergence_json(),
    }
    # NaN stays NaN here (not null): readers of earlier comparisons (benchmarks/make_results.py) rebuild
    # `Convergence` tuples from these entries and compare their spreads as numbers.
    (output_dir / "compare_results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return report
