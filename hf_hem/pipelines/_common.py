"""Pieces shared by the end-to-end pipelines (image classification, semantic segmentation, text and token
classification).

* the model arguments every pipeline has (checkpoint, config, cache, revision, token, …) as a base dataclass, the
  data arguments they share (`train_val_split`, `eval_split_name`, `max_train_samples`, …) and their checks;
* the data: Hub datasets under their namespaced ids, the evaluation split, or a seeded share of train held out for it, and dataset truncation;
* the model and image processor: a pretrained checkpoint, or a model built from its config;
* argument parsing: flags, a leading `.yaml`/`.json` config file, `do_train`/`do_eval` on by default, training
  defaults for the embedded offline datasets, and CPU DDP under `accelerate launch` without GPUs;
* the run skeleton ([`PipelineRun`]): logging, train-then-save, progress callbacks, the final evaluation's metrics,
  `hem_run.json`, and the final Hub push that names the local folder when it fails;
* the classification metrics (image and text) and the metrics the model card shows.

Model cards and the Hub behaviour during training live in [`~hf_hem.HEMTrainer`] itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import datasets
import numpy as np
import torch
import transformers
import yaml
from datasets import ClassLabel, DatasetDict
from transformers import AutoConfig, AutoImageProcessor, HfArgumentParser, PrinterCallback, ProgressCallback, set_seed

from ..data import collate_fn
from ..hub import scrub_secrets
from ..metrics import accuracy, balanced_accuracy, expected_calibration_error, per_class_accuracy, softmax
from ..trainer.hem_config import HEMConfig
from ..trainer.hem_trainer import HEMTrainer


logger = logging.getLogger(__name__)

CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")


class PushToHubError(RuntimeError):
    """Pushing to the Hub failed after training; the message names the local folder that holds the trained model."""


@dataclass
class BaseModelArguments:
    """Model arguments shared by the pipelines: where a pretrained checkpoint comes from and how to load it."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Checkpoint to fine-tune (Hub id or local folder). Default: a small model from its config."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path if not the same as --model_name_or_path."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated scalar config overrides, e.g. 'hidden_dropout_prob=0.1,decoder_hidden_size=64' "
            "(PretrainedConfig.update_from_string)."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store the models and datasets downloaded from the Hub."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "The model version to use (branch name, tag name or commit id)."}
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor name or path if not the same as --model_name_or_path."}
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token for private models and datasets. Default: the token of `hf auth login`."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the Hub (only for repos you trust)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialise the classification head when its size differs (a new number of classes)."},
    )

    def hub_kwargs(self) -> dict[str, Any]:
        """`cache_dir`, `revision` and `token` for `from_pretrained` calls."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token}


# --------------------------------------------------------------------------------------------------------------------
# Data arguments: the fields both pipelines' data dataclasses have, and their checks


def train_val_split_field():
    """The `train_val_split` field of a data dataclass; [`check_split_arguments`] checks it."""
    return field(
        default=0.15, metadata={"help": "Share of train held out for validation when there is no validation split."}
    )


def max_train_samples_field():
    """The `max_train_samples` field of a data dataclass; [`check_split_arguments`] checks it."""
    return field(
        default=None, metadata={"help": "Truncate the training set to this many examples (debugging, quick runs)."}
    )


def eval_split_name_field(candidates: Sequence[str]):
    """The `eval_split_name` field of a data dataclass whose loader tries the split names `candidates` in order (see
    [`pick_eval_split`])."""
    return field(
        default=None,
        metadata={"help": f"Split to evaluate on. Default: the first of {', '.join(candidates)} that exists."},
    )


def check_model_type(arguments, scratch_model_types: Sequence[str]) -> None:
    """Without `model_name_or_path`, the `model_type` of a model dataclass must be one the pipeline builds from a
    config (`scratch_model_types`)."""
    if arguments.model_name_or_path is None and arguments.model_type not in scratch_model_types:
        raise ValueError(
            f"model_type={arguments.model_type!r} cannot be built from scratch; expected one of "
            f"{', '.join(scratch_model_types)} (or give --model_name_or_path)."
        )


def check_data_source(arguments, train_source: str, validation_source: str) -> None:
    """A data dataclass takes `dataset_name` or its local `train_source` (with `validation_source` optionally), not
    both; `validation_source` alone has nothing to train on."""
    train, validation = getattr(arguments, train_source), getattr(arguments, validation_source)
    if arguments.dataset_name is not None and (train is not None or validation is not None):
        raise ValueError(
            f"dataset_name={arguments.dataset_name!r} and {train_source}/{validation_source} are exclusive; give one "
            "data source."
        )
    if validation is not None and train is None:
        raise ValueError(f"{validation_source}={validation!r} needs --{train_source} as well.")


def check_integer(arguments, name: str, minimum: int, reason: str = "", optional: bool = False) -> None:
    """The field `name` of a dataclass is an integer (not a bool) of at least `minimum`; with `optional`, `None` too.

    `reason` follows the bound in the message, e.g. `" (SegFormer's total stride)"`.
    """
    value = getattr(arguments, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{reason}, got {value!r}.")


def check_split_arguments(arguments) -> None:
    """`train_val_split` of a data dataclass lies strictly between 0 and 1, and `max_train_samples` /
    `max_eval_samples` are positive integers or `None`."""
    if not (isinstance(arguments.train_val_split, (int, float)) and 0.0 < arguments.train_val_split < 1.0):
        raise ValueError(f"train_val_split must be strictly between 0 and 1, got {arguments.train_val_split!r}.")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(arguments, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")


# --------------------------------------------------------------------------------------------------------------------
# Argument parsing


def enable_cpu_distributed_without_gpus() -> None:
    """Make a multi-process launch on a machine without GPUs train with CPU DDP (gloo).

    `accelerate launch --multi_gpu --num_processes 2` (or a `MULTI_GPU` config) starts the processes through torchrun
    even without GPUs, but `TrainingArguments` only initialises a CPU process group when `use_cpu` or
    `ACCELERATE_USE_CPU` is set; otherwise every process trains alone on the full data. The device is set up while
    the arguments are parsed, so this must run first.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and not torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in os.environ:
        os.environ["ACCELERATE_USE_CPU"] = "true"


def end_distributed(wait: bool = True) -> None:
    """Tear down the process group of a multi-process run before the interpreter exits.

    A rank that leaves with its gloo process group alive can abort (`terminate called without an active exception`)
    or take the others down while they still talk to it, after the model was already saved. With `wait=True` every
    rank first waits for all the others (the normal end of a run); use `wait=False` on an error path, where some
    ranks may never arrive. Does nothing in a single process.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_script(parse_args: Callable, run: Callable, argv: Sequence[str] | None = None) -> int:
    """The `main()` of a pipeline script: parse, train, evaluate, save and push; 1 if the push failed.

    The process group of a multi-process launch is torn down at the end (see [`end_distributed`]). A failed push
    leaves the model saved locally and prints the error, which names the folder.
    """
    model_args, data_args, training_args = parse_args(argv)
    try:
        run(model_args, data_args, training_args)
    except PushToHubError as error:
        logging.getLogger("hf_hem").error(str(error))
        print(f"error: {error}", file=sys.stderr)
        end_distributed(wait=False)
        return 1
    except BaseException:
        end_distributed(wait=False)
        raise
    end_distributed()
    return 0


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping of argument names to values in a `.json` or `.yaml` file."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of argument names to values, got {type(values)}.")
    return values


def split_config_file(argv: Sequence[str] | None) -> tuple[list[str], dict[str, Any]]:
    """`(remaining flags, values of the leading config file)`; the file is optional."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        return argv[1:], read_config_file(argv[0])
    return argv, {}


def peek_dataclass(data_class, argv: Sequence[str] | None = None, file_values: dict[str, Any] | None = None):
    """One dataclass of a command line, ignoring every other flag and setting up nothing.

    Args:
        data_class (`type`): The dataclass to parse, e.g. a pipeline's `DataTrainingArguments`.
        argv (`Sequence[str]`, *optional*): Flags, optionally after a config file (read unless `file_values` is given).
        file_values (`dict`, *optional*): Values of a config file already read.

    Returns:
        An instance of `data_class`.
    """
    if file_values is None:
        argv, file_values = split_config_file(argv)
    # Constructing HEMConfig sets up devices (and a process group under a launcher), so only this dataclass is parsed.
    # No -h of its own: `--help` must reach the full parser, which lists every flag.
    parser = HfArgumentParser(data_class, add_help=False)
    names = {f.name for f in fields(data_class)}
    parser.set_defaults(**{key: value for key, value in file_values.items() if key in names})
    namespace, _ = parser.parse_known_args(list(argv))
    return data_class(**{name: getattr(namespace, name) for name in names})


def parse_pipeline_args(
    model_class,
    data_class,
    argv: Sequence[str] | None = None,
    embedded_defaults: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
):
    """Parse a pipeline's arguments into `(model_class, data_class, HEMConfig)` instances.

    Accepted forms, as in the transformers examples plus overrides: `--flag value ...`; a `config.yaml` or
    `config.json` alone; or the file followed by flags that override it. `do_train` and `do_eval` default to `True`,
    then `defaults` apply; when the data arguments use the embedded dataset (`uses_embedded_dataset`),
    `embedded_defaults` replace the `TrainingArguments` defaults as well. Anything given still wins.

    Args:
        model_class (`type`), data_class (`type`): The pipeline's dataclasses.
        argv (`Sequence[str]`, *optional*): Arguments without the program name. Defaults to `sys.argv[1:]`.
        embedded_defaults (`dict`, *optional*): Training defaults for the embedded dataset.
        defaults (`dict`, *optional*): Defaults of the pipeline for any data.

    Returns:
        `tuple`: the three dataclass instances.
    """
    enable_cpu_distributed_without_gpus()
    argv, file_values = split_config_file(argv)
    parser = HfArgumentParser((model_class, data_class, HEMConfig))
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ValueError(f"config file has unknown arguments {unknown}; expected fields of the script's arguments.")
    # Train and evaluate unless told otherwise (`--do_train false`); the transformers examples need both flags.
    values: dict[str, Any] = {"do_train": True, "do_eval": True, **(defaults or {})}
    if embedded_defaults and peek_dataclass(data_class, argv, file_values).uses_embedded_dataset:
        values.update(embedded_defaults)
    values.update(file_values)
    parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv))


# --------------------------------------------------------------------------------------------------------------------
# Model


def build_model_and_processor(
    model_args: BaseModelArguments,
    model_class,
    id2label: dict[int, str],
    label2id: dict[str, int],
    scratch_config: Callable[[], transformers.PretrainedConfig],
    scratch_image_processor: Callable[[], Any],
    finetuning_task: str | None = None,
):
    """A model of `model_class` predicting `id2label`, pretrained or built from its config, and its image processor.

    With `model_args.model_name_or_path`, the checkpoint's config (or `config_name`'s) gets the classes and
    `finetuning_task`, then `config_overrides`; the weights are loaded, re-initialising the head where its size
    differs if `ignore_mismatched_sizes`; the image processor is the checkpoint's (or `image_processor_name`'s).
    Without it, the config is `config_name`'s with the classes, or `scratch_config()`, then `config_overrides` and
    `finetuning_task`; the weights are random; the image processor is `image_processor_name`'s, or
    `scratch_image_processor()`.

    Args:
        model_args ([`BaseModelArguments`]): Where the model comes from.
        model_class (`type`): An auto class such as `AutoModelForImageClassification`.
        id2label (`dict[int, str]`), label2id (`dict[str, int]`): The classes the model predicts.
        scratch_config (`Callable[[], PretrainedConfig]`): The config of a model from scratch, with the classes
            (called only when neither a checkpoint nor `config_name` is given).
        scratch_image_processor (`Callable[[], BaseImageProcessor]`): The processor of a model from scratch (called
            only when `image_processor_name` is not given either).
        finetuning_task (`str`, *optional*): Stored in the config, e.g. `"image-classification"`.

    Returns:
        `tuple[PreTrainedModel, BaseImageProcessor]`.
    """
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}
    hub_kwargs = model_args.hub_kwargs()
    trust_remote_code = model_args.trust_remote_code
    if model_args.model_name_or_path is None:
        if model_args.config_name is not None:
            config = AutoConfig.from_pretrained(model_args.config_name, **labels, **hub_kwargs)
        else:
            config = scratch_config()
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
        if finetuning_task is not None:
            config.finetuning_task = finetuning_task
        model = model_class.from_config(config, trust_remote_code=trust_remote_code)
        if model_args.image_processor_name is not None:
            image_processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name, **hub_kwargs)
        else:
            image_processor = scratch_image_processor()
        return model, image_processor

    # Only a given task is passed: `finetuning_task=None` would erase the one a checkpoint's config may hold.
    task = {} if finetuning_task is None else {"finetuning_task": finetuning_task}
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        **labels,
        **task,
        trust_remote_code=trust_remote_code,
        **hub_kwargs,
    )
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    model = model_class.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        trust_remote_code=trust_remote_code,
        **hub_kwargs,
    )
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        trust_remote_code=trust_remote_code,
        **hub_kwargs,
    )
    return model, image_processor


# --------------------------------------------------------------------------------------------------------------------
# Data


def hub_dataset_id(name: str, token: str | bool | None = None) -> str:
    """The Hub's own id of a dataset named without a namespace, e.g. `glue` -> `nyu-mll/glue`.

    The Hub redirects the old bare names of the canonical datasets to their organisations, but `datasets` reads the
    files through `hf://datasets/<namespace>/<name>` paths, which huggingface_hub rejects without a namespace; so
    the id is asked from the Hub first (its `dataset_info` follows the redirect).

    Args:
        name (`str`): The `--dataset_name` as given.
        token (`str` or `bool`, *optional*): The Hub token.

    Returns:
        `str`: the id the Hub answers with, or `name` itself when it has a namespace, is a local folder, or the Hub
        cannot say (offline, unknown name): `load_dataset` then reports the problem, or finds the dataset in its
        cache.
    """
    if "/" in name or os.path.isdir(name):
        return name
    from huggingface_hub import HfApi

    try:
        return HfApi(token=token).dataset_info(name).id
    except Exception as error:  # noqa: BLE001 - best effort: load_dataset gives the authoritative error
        logger.debug(f"could not resolve dataset {name!r} on the Hub ({type(error).__name__}: {error})")
        return name


def load_hub_dataset(name: str, config_name: str | None, model_args) -> tuple[DatasetDict, str]:
    """A Hub dataset (or its cached copy) and the id it was loaded under (see [`hub_dataset_id`]).

    Args:
        name (`str`): `--dataset_name`: a Hub id, a bare canonical name (`glue`), or a local folder in the Hub layout.
        config_name (`str`, *optional*): `--dataset_config_name`.
        model_args ([`BaseModelArguments`]): `cache_dir` and `token`.

    Returns:
        `tuple[DatasetDict, str]`: the splits, and the dataset's id (the namespaced one for a bare name).
    """
    dataset_id = hub_dataset_id(name, model_args.token)
    loaded = datasets.load_dataset(dataset_id, config_name, cache_dir=model_args.cache_dir, token=model_args.token)
    return loaded, dataset_id


def pick_eval_split(dataset_dict, requested: str | None, candidates: Sequence[str]) -> str | None:
    """The split to evaluate on: `requested` (which must exist), else the first of `candidates` that exists, else
    `None` (a share of train is then held out, see [`train_and_validation`])."""
    if requested is not None:
        if requested not in dataset_dict:
            raise ValueError(
                f"eval_split_name={requested!r} is not a split of the dataset; splits: {list(dataset_dict)}."
            )
        return requested
    return next((name for name in candidates if name in dataset_dict), None)


def train_and_validation(
    dataset_dict, eval_split: str | None, train_val_split: float, seed: int, stratify_column: str | None = None
) -> tuple[DatasetDict, str]:
    """The `train` and `validation` splits of a run, and where the validation examples come from.

    Args:
        dataset_dict (`datasets.DatasetDict`): The loaded dataset, with a `train` split.
        eval_split (`str`, *optional*): The split to validate on; `None` holds out a share of train instead.
        train_val_split (`float`): That share.
        seed (`int`): Seed of the held-out share.
        stratify_column (`str`, *optional*): Column to stratify the held-out share by, used when it is a
            `ClassLabel` (the only kind `datasets` stratifies).

    Returns:
        `tuple[DatasetDict, str]`: the two splits, and `eval_split` or e.g. `"train (15% held out)"` for the card.
    """
    train = dataset_dict["train"]
    if eval_split is not None:
        return DatasetDict({"train": train, "validation": dataset_dict[eval_split]}), eval_split
    feature = train.features.get(stratify_column) if stratify_column else None
    stratify = stratify_column if isinstance(feature, ClassLabel) else None
    held_out = train.train_test_split(train_val_split, seed=seed, stratify_by_column=stratify)
    splits = DatasetDict({"train": held_out["train"], "validation": held_out["test"]})
    return splits, f"train ({train_val_split:.0%} held out)"


def truncate(dataset, max_samples: int | None, seed: int):
    """A seeded random subset of `max_samples` rows (`dataset` itself when it is not larger)."""
    if max_samples is None or len(dataset) <= max_samples:
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def label_maps(names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """`(id2label, label2id)` of the classes `names`, given in class-id order."""
    id2label = dict(enumerate(names))
    return id2label, {name: index for index, name in id2label.items()}


# --------------------------------------------------------------------------------------------------------------------
# Running


def setup_logging(training_args, *loggers: logging.Logger) -> None:
    """Log to stdout at the process log level of `training_args` (warnings only on non-main processes)."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for each in (*loggers, logging.getLogger("hf_hem")):
        each.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def prepare_training_args(training_args) -> tuple[bool, bool]:
    """Settings every pipeline needs; returns `(do_train, do_eval)` (both when none of train/eval/predict is set).

    The transforms read raw image columns, which the Trainer would otherwise drop as unused by the model; without
    CUDA there is nothing to pin memory for.
    """
    do_train, do_eval = training_args.do_train, training_args.do_eval
    if not (do_train or do_eval or training_args.do_predict):
        do_train = do_eval = True
    training_args.remove_unused_columns = False
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # avoids a warning per DataLoader
    return do_train, do_eval


def use_callbacks(trainer, callbacks: Sequence | None) -> None:
    """Adds `callbacks`; a `ProgressCallback` or `PrinterCallback` among them replaces the Trainer's own display."""
    for callback in callbacks or ():
        if isinstance(callback, (ProgressCallback, PrinterCallback)):
            for existing in list(trainer.callback_handler.callbacks):
                if type(existing) in (ProgressCallback, PrinterCallback):
                    trainer.remove_callback(existing)
        trainer.add_callback(callback)


class PipelineResults(dict):
    """The metrics a pipeline returns (a plain `dict` of `train_*` and `eval_*` values), carrying in memory what the
    experiments layer draws from without reading files back.

    Attributes:
        arrays (`dict[str, np.ndarray]`): Arrays of the final evaluation (what `predictions.npz` holds: validation
            logits and labels, predicted masks...); empty for pipelines that keep none.
        log_history (`list[dict]`): The trainer's `state.log_history` (the learning curves); empty without training.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.arrays: dict[str, np.ndarray] = {}
        self.log_history: list[dict] = []


class PipelineRun:
    """The steps every pipeline run takes around its own data, model and metrics, and the state they share.

    Creating it sets up logging ([`setup_logging`]), the settings every pipeline needs ([`prepare_training_args`])
    and the seed. Then [`~PipelineRun.build_trainer`], [`~PipelineRun.train`], [`~PipelineRun.save_eval_metrics`]
    and [`~PipelineRun.finish`] build the trainer, train and save, record the final evaluation, and write
    `hem_run.json` and push; the metrics gather in `results`, which the pipeline returns.

    Args:
        model_args ([`BaseModelArguments`]): The model arguments (their `token` is kept out of push errors).
        training_args ([`HEMConfig`]): Training and loss settings.
        callbacks (`Sequence[TrainerCallback]`, *optional*): Extra callbacks, added as [`use_callbacks`] does.
        loggers (`logging.Logger`): The pipeline's loggers, set to the process log level.

    Attributes:
        do_train (`bool`), do_eval (`bool`): As [`prepare_training_args`] returns them.
        trainer ([`~hf_hem.HEMTrainer`]): Set by [`~PipelineRun.build_trainer`].
        results ([`PipelineResults`]): The `train_*` and `eval_*` metrics recorded so far (a `dict`), with the
            arrays and learning curves of the run.
    """

    def __init__(self, model_args, training_args, callbacks: Sequence | None = None, *loggers: logging.Logger):
        if training_args.class_counts_column is not None:
            # The pipelines hand the trainer class counts taken in the ids the model predicts (after their label
            # mapping), so the trainer never reads this column: refuse it rather than ignore it.
            raise ValueError(
                f"class_counts_column={training_args.class_counts_column!r} has no effect in the pipeline scripts: "
                "they count the classes themselves from their label column (--label_column_name; segmentation: "
                "--mask_column_name). Set that flag instead, or --class_counts."
            )
        setup_logging(training_args, *loggers)
        self.do_train, self.do_eval = prepare_training_args(training_args)
        set_seed(training_args.seed)
        self.model_args = model_args
        self.training_args = training_args
        self.callbacks = callbacks
        self.trainer: HEMTrainer | None = None
        self.results = PipelineResults()

    def build_trainer(self, model, processing_class, train_dataset, eval_dataset, **trainer_kwargs) -> HEMTrainer:
        """The [`~hf_hem.HEMTrainer`] of the run, batching with [`~hf_hem.data.collate_fn`] unless told otherwise.

        The training set is given only when training; the evaluation set when evaluating after training or during it
        (`eval_strategy`).

        Args:
            model, processing_class: The model, and the image processor or tokenizer saved beside it.
            train_dataset, eval_dataset (`datasets.Dataset`): The transformed splits.
            trainer_kwargs: The rest of the trainer's arguments (`compute_metrics`, `card_kwargs`, `class_counts`,
                `data_collator`, …).

        Returns:
            [`~hf_hem.HEMTrainer`], also kept as `self.trainer`.
        """
        trainer_kwargs.setdefault("data_collator", collate_fn)
        training_args = self.training_args
        self.trainer = HEMTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset if self.do_train else None,
            eval_dataset=eval_dataset if (self.do_eval or training_args.eval_strategy != "no") else None,
            processing_class=processing_class,
            **trainer_kwargs,
        )
        use_callbacks(self.trainer, self.callbacks)
        return self.trainer

    def train(self, num_train_samples: int) -> None:
        """Trains (resuming when asked), saves the model, and logs, saves and records the `train_*` metrics with
        `train_samples`; without training only saves the model."""
        trainer, training_args = self.trainer, self.training_args
        if not self.do_train:
            if training_args.should_save:
                trainer.save_model()
            return
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        metrics = dict(train_result.metrics)
        metrics["train_samples"] = num_train_samples
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        self.results.update(metrics)
        # A copy: the final evaluation logged afterwards repeats the last epoch's and is no point of a curve.
        self.results.log_history = list(trainer.state.log_history)

    def save_eval_metrics(self, eval_metrics: dict[str, Any], logged: bool = False) -> None:
        """Logs and saves the final `eval_*` metrics, records them, and makes them the ones the model card shows.

        Args:
            eval_metrics (`dict`): The metrics of the final evaluation.
            logged (`bool`, *optional*, defaults to `False`): Whether the trainer has logged them already
                (`trainer.evaluate` does, `trainer.predict` does not).
        """
        trainer = self.trainer
        if not logged:
            trainer.log(eval_metrics)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        self.results.update(eval_metrics)
        trainer.card_metrics = eval_metrics

    def finish(self, dataset_name: str, scratch_model: str, num_train_samples: int, **details) -> dict[str, float]:
        """Writes the final HEM card and `hem_run.json` (what was trained on what) into the output folder, then pushes.

        Args:
            dataset_name (`str`): The dataset's name in cards and reports.
            scratch_model (`str`): What the model was built as when no checkpoint was given, e.g. `"resnet"`.
            num_train_samples (`int`): Training examples.
            details: What else `hem_run.json` says about the run (the classes, …).

        Returns:
            [`PipelineResults`]: `results`, the metrics the pipeline returns (a `dict`, with `arrays` and
            `log_history`).

        Raises:
            [`PushToHubError`]: `--push_to_hub` failed; the model is saved locally and the message says where.
        """
        trainer, training_args = self.trainer, self.training_args
        if trainer.is_world_process_zero() and training_args.should_save:
            trainer.create_model_card()
            info = {
                "dataset_name": dataset_name,
                "model": self.model_args.model_name_or_path or f"{scratch_model} (from config)",
                "loss_name": training_args.loss_name,
                **details,
                "num_train_samples": num_train_samples,
            }
            with open(os.path.join(training_args.output_dir, "hem_run.json"), "w", encoding="utf-8") as handle:
                json.dump(info, handle, indent=2)
        self.push()
        return self.results

    def push(self) -> None:
        """`trainer.push_to_hub()` when `--push_to_hub` is set; a failure raises [`PushToHubError`] naming the folder.

        The error message never contains a token (the Hub's error text can echo request headers).
        """
        trainer, training_args = self.trainer, self.training_args
        if not training_args.push_to_hub:
            return
        try:
            trainer.push_to_hub(commit_message="End of training")
        except Exception as error:
            secrets = [training_args.hub_token, getattr(self.model_args, "token", None), os.environ.get("HF_TOKEN")]
            message = (
                f"Pushing to the Hub repo {training_args.hub_model_id or trainer.hub_model_id!r} failed "
                f"({type(error).__name__}: {scrub_secrets(str(error), secrets)}). The trained model is saved locally "
                f"in {os.path.abspath(training_args.output_dir)}; push it later with `hf upload` or "
                "`trainer.push_to_hub()`."
            )
            raise PushToHubError(message) from None


# --------------------------------------------------------------------------------------------------------------------
# Metrics


def logits_array(predictions) -> np.ndarray:
    """The logits of `EvalPrediction.predictions` as `float64`; models that also return hidden states give a tuple,
    whose first entry they are."""
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return np.asarray(predictions, dtype=np.float64)


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Unweighted mean F1 over the classes that occur in the labels or the predictions."""
    scores = []
    for label in range(num_labels):
        true_positive = int(np.sum((predictions == label) & (labels == label)))
        predicted, actual = int(np.sum(predictions == label)), int(np.sum(labels == label))
        if predicted == 0 and actual == 0:
            continue
        scores.append(2 * true_positive / (predicted + actual))
    return float(np.mean(scores)) if scores else 0.0


def make_classification_metrics(num_labels: int, n_bins: int = 15, with_macro_f1: bool = False) -> Callable:
    """`compute_metrics` for a classifier's Trainer: accuracy, balanced accuracy, optionally macro F1, and expected
    calibration error (NumPy only, no network).

    Args:
        num_labels (`int`): Number of classes.
        n_bins (`int`, *optional*, defaults to 15): Confidence bins of the calibration error.
        with_macro_f1 (`bool`, *optional*, defaults to `False`): Also return `macro_f1` (see [`macro_f1`]).

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: keys `accuracy`, `balanced_accuracy`, (`macro_f1`,) `ece`.
    """

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = logits_array(eval_prediction.predictions)
        labels = np.asarray(eval_prediction.label_ids).astype(np.int64)
        predictions = logits.argmax(axis=-1)
        metrics = {
            "accuracy": accuracy(predictions, labels),
            "balanced_accuracy": balanced_accuracy(predictions, labels, num_classes=num_labels),
        }
        if with_macro_f1:
            metrics["macro_f1"] = macro_f1(predictions, labels, num_labels)
        metrics["ece"] = expected_calibration_error(softmax(logits), labels, n_bins=n_bins)
        return metrics

    return compute_metrics


def per_class_accuracy_table(logits: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """`{class name: accuracy}` of a classifier's predictions, classes without an example left out: the model card's
    per-class table."""
    accuracies = per_class_accuracy(logits.argmax(axis=-1), labels, num_classes=len(names))
    return {name: float(value) for name, value in zip(names, accuracies) if np.isfinite(value)}


def select_card_metrics(metrics: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """The finite `eval_<key>` numbers of `metrics` whose `key` is in `keys`, named `key`: the model card's metrics.

    The rest (the `hem/*` training diagnostics, the Trainer's bookkeeping) stays in the logs.
    """
    selected = {}
    for name, value in metrics.items():
        key = name[len("eval_") :] if name.startswith("eval_") else None
        if key in keys and isinstance(value, (int, float)) and math.isfinite(value):
            selected[key] = float(value)
    return selected


def pipeline_card_kwargs(
    model_args,
    data_args,
    dataset_name: str,
    eval_split: str,
    task: str,
    metrics: dict[str, Any],
    metric_keys: Sequence[str],
    dataset_on_hub: bool | None = None,
) -> dict[str, Any]:
    """What a pipeline adds to the HEM model card of its trainer (which fills in the model, loss, margins, classes and
    hyper-parameters): the base model, the dataset, the task, and the metrics of `metric_keys` (see
    [`select_card_metrics`]). The per-class table and the class names are left to the pipeline.

    `dataset_on_hub` says whether `dataset_name` is a Hub dataset id; by default, whether `--dataset_name` is given.

    Returns:
        `dict`: keyword arguments of the card (the `card_kwargs` of [`~hf_hem.HEMTrainer`]).
    """
    return {
        "base_model": model_args.model_name_or_path,
        "dataset_name": dataset_name,
        "dataset_config": data_args.dataset_config_name,
        "dataset_on_hub": data_args.dataset_name is not None if dataset_on_hub is None else dataset_on_hub,
        "eval_split": eval_split,
        "task": task,
        "metrics": select_card_metrics(metrics, metric_keys),
    }
