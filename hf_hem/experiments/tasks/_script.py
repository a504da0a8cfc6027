"""What the four `hf-hem compare` tasks share: their settings are the flags of a pipeline script, and each run is one
call of that pipeline (`scripts/run_*.py`) in memory.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm
from transformers import ProgressCallback

from ...losses.registry import MARGIN_LOSS_NAMES
from ..curves import curves_from_log_history
from ..records import RunRecord, RunSpec
from ..summary import Summary
from ..task import COMPARE, Plot, RunContext, Task


__all__ = ["RESERVED_FLAGS", "ScriptSettings", "ScriptTask", "TaskPipeline", "has_flag", "shown_records"]

#: Flags that compare sets for every run itself.
RESERVED_FLAGS = ("--loss_name", "--seed", "--output_dir")
#: The file each compare run folder keeps its record in (what a resumed comparison reads back).
RECORD_FILE = "run_record.json"


def has_flag(argv: Sequence[str], flag: str) -> bool:
    """Whether `argv` sets `flag` (`--flag value` or `--flag=value`)."""
    return any(token == flag or token.startswith(flag + "=") for token in argv)


def _without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            kept.append(token)
    return kept


class TaskPipeline(NamedTuple):
    """The entry points of a task's pipeline (the code behind its `scripts/run_*.py`)."""

    peek_data_arguments: Callable
    """`peek_data_arguments(argv) -> data_args`: the data arguments alone, without building the training arguments."""
    parse_args: Callable
    """`parse_args(argv) -> (model_args, data_args, training_args)`."""
    run: Callable
    """`run(model_args, data_args, training_args, callbacks=[...]) -> metrics`, a `PipelineResults` dict carrying the
    run's `arrays` and `log_history`."""
    embedded_dataset_name: str
    """The name of the embedded default dataset."""


@dataclass(frozen=True)
class ScriptSettings:
    """The settings of a compare task: the flags of its pipeline script that every run gets.

    Attributes:
        args (`tuple[str, ...]`): The config file (first, when there is one), the user's flags, and the flags compare
            adds by default (`ScriptTask.run_args`, `--log_level warning`); each run adds `--loss_name`, `--seed`,
            `--output_dir` and, in a margin sweep, `--margin`.
        user_args (`tuple[str, ...]`): The config file and flags as the user gave them (the reproduce command).
        config_file (`str`, *optional*): The `.yaml`/`.json` config applied before the flags.
    """

    args: tuple[str, ...]
    user_args: tuple[str, ...] = ()
    config_file: str | None = None


def shown_records(records: Sequence[RunRecord]) -> list[RunRecord]:
    """One record per label, of the first seed (a label without it shows its own first run): what the per-run plots
    draw."""
    first_seed = records[0].seed
    labels = list(dict.fromkeys(record.label for record in records))
    return [
        next((r for r in records if r.label == label and r.seed == first_seed), None)
        or next(r for r in records if r.label == label)
        for label in labels
    ]


def progress_callback(description: str, enabled: bool, keys: Sequence[str] = ("loss",)) -> ProgressCallback:
    """A Trainer progress display for one run: a step bar with the logged `keys` as postfix, nothing printed per log."""

    class RunProgress(ProgressCallback):
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

    return RunProgress()


class ScriptTask(Task):
    """A compare task: one pipeline run per cell, its metrics, curves and predictions back in memory.

    Subclasses set `pipeline` and the attributes below, and the hooks that describe their data and model.

    Attributes:
        pipeline ([`TaskPipeline`]): The task's pipeline.
        embedded_seeds (`tuple[int, ...]`): Seeds without `--seeds` on the embedded dataset (else `(0,)`).
        progress_keys (`tuple[str, ...]`): Logged values shown next to the progress bar of a run.
        required_arrays (`tuple[str, ...]`): Arrays of a run the report cannot do without.
        seed_draws (`str`): What each seed draws besides the initialisation on the embedded dataset.
        metrics_note (`str`): The paragraph under the results table that explains its metrics.
        single_seed_note (`str`): The caution under the "in short" comparison when there is one seed.
        folder_contents (`str`): What each run's folder holds, for the table of runs.
        margin_samples_unit (`str`): What S counts in the margin rule sqrt(2000 / S) (images, labelled tokens).
    """

    front_door = COMPARE
    pipeline: TaskPipeline
    embedded_seeds: tuple[int, ...] = (0,)
    progress_keys: tuple[str, ...] = ("loss",)
    required_arrays: tuple[str, ...] = ()
    seed_draws: str = "train/validation split"
    metrics_note: str = ""
    single_seed_note: str = ""
    folder_contents: str = ""
    margin_samples_unit: str = "samples"

    # -- Settings ------------------------------------------------------------------------------------------------

    def settings(self, script_args: Sequence[str] = (), config_file: str | None = None) -> ScriptSettings:
        """The [`ScriptSettings`] of a comparison: the user's flags plus compare's defaults for this task."""
        script_args = [str(arg) for arg in script_args]
        for flag in RESERVED_FLAGS:
            if has_flag(script_args, flag):
                raise ValueError(
                    f"{flag} is set by compare for every run; use --losses, --seeds and --output_dir instead."
                )
        user_args = ([config_file] if config_file else []) + script_args
        data_args = self.pipeline.peek_data_arguments(user_args)
        args = user_args + self.run_args(script_args, data_args)
        if not has_flag(args, "--log_level"):
            args += ["--log_level", "warning"]  # the progress bars and the report say what matters
        return ScriptSettings(tuple(args), tuple(user_args), config_file)

    def run_args(self, script_args: Sequence[str], data_args) -> list[str]:
        """Flags added to every run (defaults that only hold for compare)."""
        return []

    def uses_embedded_dataset(self, settings: ScriptSettings) -> bool:
        return bool(self.pipeline.peek_data_arguments(list(settings.args)).uses_embedded_dataset)

    def default_seeds(self, settings: ScriptSettings) -> list[int]:
        return list(self.embedded_seeds) if self.uses_embedded_dataset(settings) else [0]

    def fingerprint(self, settings: ScriptSettings) -> dict:
        config = None
        if settings.config_file and Path(settings.config_file).is_file():
            config = Path(settings.config_file).read_text(encoding="utf-8")
        return {"task": self.name, "args": list(settings.args), "config": config}

    def parse(self, settings: ScriptSettings, extra: Sequence[str] = ()):
        """`(model_args, data_args, training_args)` of `settings` plus `extra` flags."""
        return self.pipeline.parse_args([*settings.args, *extra])

    def epochs(self, settings: ScriptSettings) -> float:
        # Parsed once per set of flags: building the training arguments sets up devices, and the runner asks after
        # every run.
        cache = self.__dict__.setdefault("_epochs_by_args", {})
        if settings.args not in cache:
            cache[settings.args] = float(self.parse(settings)[2].num_train_epochs)
        return cache[settings.args]

    def with_epochs(self, settings: ScriptSettings, epochs: float) -> ScriptSettings:
        args = [*_without_flag(settings.args, "--num_train_epochs"), "--num_train_epochs", f"{epochs:g}"]
        return replace(settings, args=tuple(args))

    # -- Running -------------------------------------------------------------------------------------------------

    def run(self, spec: RunSpec, settings: ScriptSettings, context: RunContext) -> RunRecord:
        argv = [*settings.args, "--loss_name", spec.loss, "--seed", str(spec.seed)]
        argv += ["--output_dir", str(context.run_dir)]
        if spec.margin is not None:
            argv += ["--margin", repr(spec.margin)]
        model_args, data_args, training_args = self.pipeline.parse_args(argv)
        callbacks = [progress_callback(context.run_dir.name, context.progress, self.progress_keys)]
        # The Trainer prints its metric tables to stdout; the report has them, so they are kept off the console.
        with contextlib.redirect_stdout(io.StringIO()):
            results = self.pipeline.run(model_args, data_args, training_args, callbacks=callbacks)
        record = RunRecord(
            task=self.name,
            spec=spec,
            metrics={key: value for key, value in results.items() if isinstance(value, (int, float))},
            curves=curves_from_log_history(getattr(results, "log_history", [])),
            fingerprint=self.fingerprint(settings),
            arrays=dict(getattr(results, "arrays", {})),
        )
        record.extras = {"output_dir": str(context.run_dir), **self.run_extras(record, context.run_dir)}
        return record

    def run_extras(self, record: RunRecord, run_dir: Path) -> dict:
        """JSON-able facts of a finished run for its record: the margins of a margin loss (from the saved config),
        and the task's own (see [`task_extras`])."""
        extras = {}
        config_file = run_dir / "config.json"
        if record.loss in MARGIN_LOSS_NAMES and config_file.is_file():
            extras["margins"] = json.loads(config_file.read_text(encoding="utf-8")).get("hem_margins")
        return {**extras, **self.task_extras(record, run_dir)}

    def task_extras(self, record: RunRecord, run_dir: Path) -> dict:
        """The task's own JSON-able facts of a run (e.g. its per-class IoU)."""
        return {}

    def restore(self, record: RunRecord, settings: ScriptSettings, context: RunContext) -> RunRecord:
        """Put back the arrays of a resumed run from the `predictions.npz` its pipeline wrote."""
        prediction_file = context.run_dir / "predictions.npz"
        if prediction_file.is_file():
            with np.load(prediction_file) as stored:
                record.arrays = {key: stored[key] for key in stored.files}
        return record

    # -- Describing the set-up ----------------------------------------------------------------------------------

    def describe(self, records: Sequence[RunRecord], settings: ScriptSettings) -> dict:
        """What was compared, for the top of the report and `compare_results.json`: `dataset`, `model`,
        `seed_draws_split`, `epochs`, `batch_size`, `learning_rate`, `num_train_samples`, `num_eval_samples`, and
        the task's own fields ([`setup_fields`]); the front door adds `command`."""
        model_args, data_args, training_args = self.parse(settings)
        if data_args.uses_embedded_dataset:
            dataset = self.embedded_dataset_text(model_args)
        elif data_args.dataset_name:
            dataset = f"`{data_args.dataset_name}`" + (
                f" (config `{data_args.dataset_config_name}`)" if data_args.dataset_config_name else ""
            )
        else:
            dataset = self.local_dataset_text(data_args)
        if model_args.model_name_or_path:
            model = f"`{model_args.model_name_or_path}` (fine-tuned)"
        elif getattr(model_args, "config_name", None):
            model = f"built from the config `{model_args.config_name}` (random initialisation)"
        else:
            model = self.model_from_config_text(model_args)
        return {
            "dataset": dataset,
            "model": model,
            **self.setup_fields(data_args, records),
            "seed_draws_split": data_args.uses_embedded_dataset,
            "epochs": training_args.num_train_epochs,
            "batch_size": training_args.per_device_train_batch_size,
            "learning_rate": training_args.learning_rate,
            "num_train_samples": records[0].metrics.get("train_samples"),
            "num_eval_samples": records[0].metrics.get("eval_samples"),
        }

    def embedded_dataset_text(self, model_args) -> str:
        """How the report names the embedded dataset."""
        raise NotImplementedError

    def local_dataset_text(self, data_args) -> str:
        """How the report names local data (no `--dataset_name`)."""
        raise NotImplementedError

    def model_from_config_text(self, model_args) -> str:
        """How the report names a model built from its config (no `--model_name_or_path`)."""
        raise NotImplementedError

    def setup_fields(self, data_args, records: Sequence[RunRecord]) -> dict:
        """The task's own entries of [`describe`] (e.g. its classes)."""
        return {}

    def data_lines(self, setup: dict) -> list[str]:
        """The set-up bullets above the model line: the data, the classes."""
        return []

    def run_fields(self, record: RunRecord) -> dict:
        """Entries of a run in `compare_results.json` besides its name, seed, folder, time, margins and metrics."""
        return {}

    # -- Plots ---------------------------------------------------------------------------------------------------

    def run_plots(self, shown: Sequence[RunRecord]) -> list[tuple[str, str, Callable]]:
        """`(file name, caption, draw(records, path))` of the per-run plots for `shown` (one record per label)."""
        return []

    def plots(self, summary: Summary, records: Sequence[RunRecord], output_dir: Path, settings) -> list[Plot]:
        shown = shown_records(records)
        plots = []
        for file_name, caption, draw in self.run_plots(shown):
            path = Path(output_dir) / file_name
            if draw(shown, path) is not None:
                plots.append(Plot(path, caption))
        return plots
