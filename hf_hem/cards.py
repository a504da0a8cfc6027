"""Model cards for models trained with HEM (and the baselines hf_hem ships).

[`generate_model_card`] renders the packaged Jinja template `model_cards/hem_model_card.md` through
[`huggingface_hub.ModelCard.from_template`], as TRL does for its trainers. Unlike the card of the stock
`Trainer.create_model_card` (which only indexes metrics in transformers' `METRIC_TAGS`, so `mean_iou` never reaches
the Hub), every finite metric becomes a real `model-index` entry ([`huggingface_hub.EvalResult`]). The card also
records the loss and its margins (HEM+ per-class margins as min/median/max plus the full list), the training data,
a quick start that loads the checkpoint with plain `AutoModelFor...` classes, framework versions and the citation.
It describes every head of [`hf_hem.heads.HEADS`] (image, text, token and audio classification, multiple choice,
semantic segmentation, causal language models), whose entries give the pipeline tag, task name, quick start and tags.

[`write_model_card`] writes the result to `output_dir/README.md`, so a trainer can call it from `_save_checkpoint`
and `push_to_hub` with the same keyword arguments.
"""

import importlib.metadata
import importlib.resources
import logging
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainerCallback

from .heads import Head, find_head, head_named
from .losses.registry import LOSS_SPECS, CardText, loss_spec
from .margins import Margins


logger = logging.getLogger(__name__)

__all__ = [
    "HEMModelCardCallback",
    "card_loss_settings",
    "card_task_for_model",
    "card_task_tags",
    "card_worthy_metrics",
    "generate_model_card",
    "latest_eval_metrics",
    "training_summary_from_args",
    "write_model_card",
]

#: File name of the packaged template (inside `hf_hem/model_cards/` when installed, `model_cards/` in a checkout).
MODEL_CARD_TEMPLATE = "hem_model_card.md"


# What a card says about each loss comes from the registry's table (`LossSpec.card`): one home per loss fact.
_LOSSES = {name: spec.card for name, spec in LOSS_SPECS.items()}
_LOSS_ALIASES = {
    "hem_plus": "hem+",
    "hem-plus": "hem+",
    "hemplus": "hem+",
    "cross_entropy": "ce",
    "cross-entropy": "ce",
    "logit_norm": "logitnorm",
    "logit-norm": "logitnorm",
    "logit_adjusted": "la",
    "logit-adjusted": "la",
    "logit_adjustment": "la",
    "multi_margin": "mm",
}

# Metric key (after dropping an "eval_"/"test_" prefix) -> (model-index metric type, display name).
_METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
    "balanced_accuracy": ("balanced_accuracy", "Balanced accuracy"),
    "f1": ("f1", "F1"),
    # Entity-level scores of token classification (micro-averaged over entities, CoNLL conventions).
    "precision": ("precision", "Precision"),
    "recall": ("recall", "Recall"),
    "macro_f1": ("f1", "Macro F1"),
    "mean_iou": ("mean_iou", "Mean IoU"),
    "mean_accuracy": ("mean_accuracy", "Mean class accuracy"),
    "overall_accuracy": ("accuracy", "Pixel accuracy"),
    "rejection_auroc": ("roc_auc", "Unknown-class rejection AUROC (MSP)"),
    "rejection_auroc_msp": ("roc_auc", "Unknown-class rejection AUROC (MSP)"),
    "auroc_msp": ("roc_auc", "Unknown-class rejection AUROC (MSP)"),
    "rejection_auroc_mls": ("roc_auc", "Unknown-class rejection AUROC (MLS)"),
    "auroc_mls": ("roc_auc", "Unknown-class rejection AUROC (MLS)"),
    "rejection_fpr95": ("fpr_at_95_tpr", "Unknown-class rejection FPR at 95% TPR (MSP)"),
    "rejection_fpr95_msp": ("fpr_at_95_tpr", "Unknown-class rejection FPR at 95% TPR (MSP)"),
    "fpr95_msp": ("fpr_at_95_tpr", "Unknown-class rejection FPR at 95% TPR (MSP)"),
    "rejection_fpr95_mls": ("fpr_at_95_tpr", "Unknown-class rejection FPR at 95% TPR (MLS)"),
    "fpr95_mls": ("fpr_at_95_tpr", "Unknown-class rejection FPR at 95% TPR (MLS)"),
    "ece": ("ece", "Expected calibration error"),
}
# Per-entity-type scores of token classification (`seqeval`'s `<TYPE>_precision`, ..., `<TYPE>_number`).
_ENTITY_METRIC = re.compile(r"(?P<entity>.+)_(?P<score>precision|recall|f1|number)")
_ENTITY_SCORE_NAMES = {"precision": "Precision", "recall": "Recall", "f1": "F1", "number": "entities"}
# Trainer bookkeeping that `Trainer.evaluate()` mixes into its metrics dict; not model quality.
_BOOKKEEPING_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step", "total_flos"}
# Losses differ between runs by construction (HEM vs CE), so the loss is shown but never indexed on the Hub.
_LOSS_METRIC = "loss"

_SETTING_LABELS = {
    "margin": "Margin μ",
    "margins": "Per-class margin μ_c",
    "margin_scale": "Margin scale M",
    "scale": "Margin scale M",
    "M": "Margin scale M",
    "num_train_samples": "Training samples S",
    "num_samples": "Training samples S",
    "num_classes": "Classes n",
    "class_counts": "Training samples per class",
    "per_class": "Per-class margins (HEM+)",
    "ignore_index": "Ignored label",
    "reduction": "Reduction",
}

_FRAMEWORKS = ("hf_hem", "transformers", "torch", "datasets", "huggingface_hub")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _template_path(template_file: str) -> Path:
    """Find a packaged template: installed package data first, then `model_cards/` of a source checkout."""
    candidates = []
    try:
        candidates.append(Path(str(importlib.resources.files("hf_hem") / "model_cards" / template_file)))
    except (ModuleNotFoundError, TypeError):  # TypeError: a namespace package without a location
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "model_cards" / template_file)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Model card template {template_file!r} not found; looked in {[str(path) for path in candidates]}."
    )


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_number(value: Any) -> bool:
    # numpy and torch scalars are accepted through `float()`; bools and strings are not metrics.
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _format_number(value: Any, style: str = "setting") -> str:
    """Table text for a number: metrics with 4 decimals, settings with 4 significant digits, whole numbers exactly."""
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if style == "metric":
        return f"{number:.4f}"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.4g}"


def _format_value(value: Any) -> str:
    """Table text for a scalar setting or hyper-parameter; `|` is escaped so Markdown tables stay intact."""
    if value is None:
        text = "–"
    elif _is_number(value):
        text = _format_number(value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _normalize_loss_name(loss_name: str) -> tuple[str, CardText]:
    if not isinstance(loss_name, str) or not loss_name.strip():
        raise ValueError(f"`loss_name` must be a non-empty string such as 'hem' or 'hem+', got {loss_name!r}.")
    key = loss_name.strip().lower()
    key = _LOSS_ALIASES.get(key, key)
    if key in _LOSSES:
        return key, _LOSSES[key]
    # A loss this module does not know (e.g. a new entry of the loss registry) still gets an honest card.
    slug = re.sub(r"[^a-z0-9]+", "-", key).strip("-")
    return key, CardText(
        loss_name, f"{slug}-loss", key.startswith("hem"), f"The model was trained with the `{loss_name}` loss."
    )


def _loss_tags(loss_info: CardText, extra_tags: Sequence[str] | None) -> list[str]:
    tags = ["hf-hem"]
    if loss_info.hem_family:
        tags.append("hem-loss")
    tags.append(loss_info.tag)
    if extra_tags is not None:
        if isinstance(extra_tags, str) or not all(isinstance(tag, str) for tag in extra_tags):
            raise ValueError(f"`tags` must be a list of strings, got {extra_tags!r}.")
        tags.extend(extra_tags)
    return list(dict.fromkeys(tags))  # de-duplicate, keep order


def _per_class_values(name: str, values: Any, class_names: Sequence[str] | None) -> list[tuple[str, Any]]:
    """(class name, value) pairs from a mapping, or from a sequence labelled with `class_names` (else indices)."""
    if isinstance(values, Mapping):
        pairs = [(str(key), value) for key, value in values.items()]
    else:
        values = list(values)
        if class_names is not None and len(class_names) != len(values):
            raise ValueError(
                f"`{name}` has {len(values)} values but `class_names` has {len(class_names)} names; "
                "expected one name per class."
            )
        labels = class_names if class_names is not None else [str(index) for index in range(len(values))]
        pairs = list(zip(labels, values, strict=True))
    for class_name, value in pairs:
        if not _is_number(value):
            raise ValueError(f"`{name}` must hold numbers, got {value!r} for class {class_name!r}.")
    return pairs


def _is_per_class(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, (str, bytes)))


def _loss_setting_rows(
    loss_settings: Mapping[str, Any] | None, class_names: Sequence[str] | None
) -> tuple[list[dict], list[dict]]:
    """Split loss settings into scalar rows and per-class summaries (min/median/max + full list)."""
    if loss_settings is None:
        return [], []
    if not isinstance(loss_settings, Mapping):
        raise ValueError(f"`loss_settings` must be a dict of setting name -> value, got {type(loss_settings)}.")
    rows, summaries = [], []
    for key, value in loss_settings.items():
        label = _SETTING_LABELS.get(key, f"`{key}`")
        if hasattr(value, "tolist") and not _is_number(value):  # numpy arrays, torch tensors
            value = value.tolist()
        if _is_per_class(value):
            pairs = _per_class_values(key, value, class_names)
            if not pairs:
                continue
            numbers = [float(number) for _, number in pairs]
            summaries.append(
                {
                    "name": label.strip("`"),
                    "count": len(pairs),
                    "min": _format_value(min(numbers)),
                    "median": _format_value(statistics.median(numbers)),
                    "max": _format_value(max(numbers)),
                    "rows": [{"name": _format_value(name), "value": _format_value(number)} for name, number in pairs],
                }
            )
        else:
            rows.append({"name": label, "value": _format_value(value)})
    return rows, summaries


def _metric_type_and_name(key: str, head: Head) -> tuple[str, str, bool]:
    """`(model-index type, display name, indexed)` of a metric key (prefix dropped) for a head's card."""
    if key in head.metric_names:
        return (*head.metric_names[key], True)
    if key in _METRICS:
        return (*_METRICS[key], True)
    entity = _ENTITY_METRIC.fullmatch(key) if head.entity_metrics else None
    if entity is not None:
        score = entity["score"]
        # `<TYPE>_number` counts the reference entities of a type: shown, but a count is no score to index.
        return score, f"{entity['entity']} {_ENTITY_SCORE_NAMES[score]}", score != "number"
    return key, key.replace("_", " ").capitalize(), True


def _metric_rows(metrics: Mapping[str, Any] | None, loss_display: str, head: Head) -> list[dict]:
    """Normalise Trainer-style metrics (`eval_accuracy`, `eval_runtime`, ...) into typed rows."""
    if metrics is None:
        return []
    if not isinstance(metrics, Mapping):
        raise ValueError(f"`metrics` must be a dict of metric name -> number, got {type(metrics)}.")
    rows, seen = [], {}
    for raw_key, value in metrics.items():
        key = re.sub(r"^(eval|test)_", "", str(raw_key))
        if key in _BOOKKEEPING_METRICS:
            continue
        if not _is_number(value):
            raise ValueError(
                f"Metric {raw_key!r} must be a number, got {value!r}; "
                "pass per-class lists through `per_class_table` instead."
            )
        if key in seen:
            raise ValueError(f"Metric {key!r} is given twice (as {seen[key]!r} and {raw_key!r}); expected it once.")
        seen[key] = raw_key
        metric_type, name, indexed = _metric_type_and_name(key, head)
        if key == _LOSS_METRIC:
            metric_type, name, indexed = "loss", f"Evaluation loss ({loss_display})", False
        # 6 significant digits: float32 metrics would otherwise show as 0.8999999761581421 on the Hub.
        value = float(f"{float(value):.6g}")
        rows.append(
            {
                "key": key,
                "type": metric_type,
                "name": name,
                "number": value,
                # Counts (seqeval's `<TYPE>_number`) are whole numbers, not scores with four decimals.
                "value": _format_number(value, style="setting" if metric_type == "number" else "metric"),
                "indexed": indexed and math.isfinite(value),
            }
        )
    return rows


def _hub_id_or_none(value: str | None, argument: str) -> str | None:
    """A Hub repo id, None for empty values and local folders (they are not Hub references)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"`{argument}` must be a Hub repo id string, got {value!r}.")
    if os.path.isdir(value):
        return None
    if not _HUB_ID.fullmatch(value):
        raise ValueError(f"`{argument}` must be a Hub repo id like 'namespace/name', got {value!r}.")
    return value


def generate_model_card(
    *,
    model_name: str,
    base_model: str | None = None,
    hub_model_id: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    dataset_on_hub: bool = True,
    eval_split: str | None = None,
    task: str = "image-classification",
    loss_name: str = "hem",
    loss_settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    per_class_table: Mapping[str, float] | None = None,
    per_class_metric: str | None = None,
    class_names: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    training_summary: Mapping[str, Any] | None = None,
    license: str | None = None,  # noqa: A002 - the Hub metadata field is called `license`
    template_file: str = MODEL_CARD_TEMPLATE,
) -> ModelCard:
    r"""
    Render the model card of a model trained with HEM, HEM+ or one of hf_hem's baseline losses.

    Args:
        model_name (`str`):
            Name of the model: the card title and the `model-index` name (e.g. `"vit-base-hem-cifar10"`).
        base_model (`str`, *optional*):
            Hub id of the checkpoint that was fine-tuned. Empty strings and local folders are ignored (they are not
            Hub references); `None` means trained from scratch.
        hub_model_id (`str`, *optional*):
            Repo id the model is pushed to; used in the quick start. Defaults to `model_name`.
        dataset_name (`str`, *optional*):
            Hub id (or name) of the training dataset. **Required for `model-index` entries**: without it the metrics
            are shown in the card but not indexed, since a Hub evaluation result must name its dataset.
        dataset_config (`str`, *optional*):
            Dataset configuration name.
        dataset_on_hub (`bool`, *optional*, defaults to `True`):
            Whether `dataset_name` is a Hub dataset id. When `False` (local folders or files, the embedded datasets)
            the card names the dataset without a link to the Hub and leaves it out of the `datasets` metadata.
        eval_split (`str`, *optional*):
            Split the metrics were computed on (e.g. `"validation"`).
        task (`str`, *optional*, defaults to `"image-classification"`):
            The head's Hub pipeline tag (`"image-classification"`, `"image-segmentation"`, `"text-classification"`,
            `"token-classification"`, `"multiple-choice"`, `"audio-classification"`, `"text-generation"`) or its
            name in [`hf_hem.heads.HEADS`] (`"semantic-segmentation"`, ...). The head's entry sets the pipeline tag,
            the `model-index` task, the quick start's `AutoModelFor...` class, and how metrics are named (token
            classification: `accuracy` is token accuracy, and seqeval's `overall_*` and `<TYPE>_*` scores are
            indexed as precision/recall/F1, `<TYPE>_number` shown but not indexed).
        loss_name (`str`, *optional*, defaults to `"hem"`):
            Training loss: `"hem"`, `"hem+"`, or a baseline (`"ce"`, `"logitnorm"`, `"logit_adjusted"`, `"focal"`,
            `"dice"`, `"mm"`). Other names are shown as given.
        loss_settings (`dict`, *optional*):
            Loss and margin settings, e.g. `{"margin": 0.2, "margin_scale": 2000, "num_train_samples": 50000}` for HEM
            or `{"margin_scale": 2000, "margins": [...], "class_counts": [...]}` for HEM+. Scalars become table rows;
            per-class values (lists, tuples, arrays, or dicts keyed by class name) are summarised as min/median/max
            with the full list in a collapsible block.
        metrics (`dict[str, float]`, *optional*):
            Evaluation metrics, e.g. `{"accuracy": 0.93, "rejection_auroc": 0.88}` or `{"mean_iou": 0.41}`. The dict
            returned by `Trainer.evaluate()` can be passed as is: `eval_`/`test_` prefixes are dropped, runtime and
            throughput entries are skipped, and the loss is shown but not indexed. Every other finite metric becomes a
            `model-index` entry (accuracy → `accuracy`, mean_iou → `mean_iou`, rejection_auroc → `roc_auc`, ...).
        per_class_table (`dict[str, float]`, *optional*):
            Per-class scores (class name → value), e.g. per-category IoU, shown in a collapsible table.
        per_class_metric (`str`, *optional*):
            Column name of `per_class_table`. Defaults to the head's (`"IoU"` for segmentation, else `"Accuracy"`).
        class_names (`list[str]`, *optional*):
            Class names for list-valued `loss_settings` entries, in class-id order (e.g. from
            `model.config.id2label`). Without them, classes are shown by index.
        tags (`list[str]`, *optional*):
            Extra Hub tags, added after `"hf-hem"`, `"hem-loss"` (HEM and HEM+ only) and the loss tag.
        training_summary (`dict`, *optional*):
            Training hyper-parameters to show (see [`training_summary_from_args`]).
        license (`str`, *optional*):
            License id for the card metadata (e.g. `"apache-2.0"`).
        template_file (`str`, *optional*, defaults to `"hem_model_card.md"`):
            Name of the packaged template to render.

    Returns:
        [`huggingface_hub.ModelCard`]: the card; `str(card)` is the README text, `card.data` its metadata.

    Example:

    ```python
    >>> from hf_hem.cards import generate_model_card
    >>> card = generate_model_card(
    ...     model_name="vit-hem-beans",
    ...     base_model="google/vit-base-patch16-224-in21k",
    ...     dataset_name="AI-Lab-Makerere/beans",
    ...     loss_name="hem",
    ...     loss_settings={"margin": 0.2, "margin_scale": 2000, "num_train_samples": 1034},
    ...     metrics={"eval_accuracy": 0.96, "eval_loss": 0.01, "eval_runtime": 3.2},
    ... )
    >>> card.data.eval_results[0].metric_value
    0.96
    ```
    """
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"`model_name` must be a non-empty string, got {model_name!r}.")
    try:
        head = head_named(task)
    except ValueError as error:
        raise ValueError(f"`task`: {error}") from None
    base_model = _hub_id_or_none(base_model, "base_model")
    if dataset_name is not None and (not isinstance(dataset_name, str) or not dataset_name.strip()):
        raise ValueError(f"`dataset_name` must be a non-empty string or None, got {dataset_name!r}.")
    _, loss_info = _normalize_loss_name(loss_name)

    metric_rows = _metric_rows(metrics, loss_info.display, head)
    loss_rows, per_class_settings = _loss_setting_rows(loss_settings, class_names)
    per_class_rows = []
    if per_class_table is not None:
        per_class_rows = [
            {"name": _format_value(name), "value": _format_number(float(value), style="metric")}
            for name, value in _per_class_values("per_class_table", per_class_table, None)
        ]
    training_rows = []
    if training_summary is not None:
        if not isinstance(training_summary, Mapping):
            raise ValueError(f"`training_summary` must be a dict, got {type(training_summary)}.")
        training_rows = [
            {"name": f"`{key}`", "value": _format_value(value)} for key, value in training_summary.items()
        ]

    eval_results = None
    if dataset_name is not None:
        eval_results = [
            EvalResult(
                task_type=head.pipeline_tag,
                task_name=head.task_name.title(),
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                dataset_config=dataset_config,
                dataset_split=eval_split,
                metric_type=row["type"],
                metric_value=row["number"],
                metric_name=row["name"],
            )
            for row in metric_rows
            if row["indexed"]
        ] or None
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_name] if dataset_name is not None and dataset_on_hub else None,
        eval_results=eval_results,
        library_name="transformers",
        license=license,
        pipeline_tag=head.pipeline_tag,
        tags=_loss_tags(loss_info, tags),
    )

    versions = [{"name": name, "value": _package_version(name)} for name in _FRAMEWORKS]
    versions = [
        {"name": row["name"], "value": row["value"] or "dev"}
        for row in versions
        if row["value"] is not None or row["name"] == "hf_hem"
    ]
    dataset_url = f"https://huggingface.co/datasets/{dataset_name}" if dataset_name and dataset_on_hub else None
    return ModelCard.from_template(
        card_data,
        template_path=str(_template_path(template_file)),
        card_model_name=model_name,
        repo_id=hub_model_id or model_name,
        base_model_id=base_model,
        base_model_url=f"https://huggingface.co/{base_model}" if base_model else None,
        dataset_id=dataset_name,
        dataset_url=dataset_url,
        dataset_config=dataset_config,
        eval_split=eval_split,
        task_label=head.task_name,
        task_kind=head.card_kind,
        auto_model_class=head.auto_model_class,
        loss_display=loss_info.display,
        loss_sentence=loss_info.sentence,
        is_hem_family=loss_info.hem_family,
        loss_rows=loss_rows,
        per_class_settings=per_class_settings,
        metric_rows=metric_rows,
        per_class_rows=per_class_rows,
        per_class_metric=per_class_metric or head.per_class_metric,
        training_rows=training_rows,
        framework_versions=versions,
    )


def write_model_card(output_dir: str | os.PathLike, **card_kwargs: Any) -> Path:
    """
    Render a card with [`generate_model_card`] and save it as `output_dir/README.md` (overwriting any README there).

    Args:
        output_dir (`str` or `os.PathLike`):
            Folder the model was saved to (created if missing), e.g. a Trainer's `output_dir` or a `checkpoint-*`
            folder.
        **card_kwargs:
            Keyword arguments of [`generate_model_card`].

    Returns:
        `Path`: path of the written `README.md`.
    """
    card = generate_model_card(**card_kwargs)
    readme_path = Path(output_dir) / "README.md"
    readme_path.parent.mkdir(parents=True, exist_ok=True)
    card.save(readme_path)
    return readme_path


# TrainingArguments fields worth showing on a card, in display order.
_TRAINING_FIELDS = (
    "learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "optim",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "seed",
)


def training_summary_from_args(args: Any) -> dict[str, Any]:
    """
    Pick the card-worthy hyper-parameters from a `TrainingArguments`-like object (read with `getattr`).

    Args:
        args (`transformers.TrainingArguments` or any object with the same attribute names):
            The training arguments.

    Returns:
        `dict[str, Any]`: the chosen fields that are set (`max_steps <= 0` and zero warm-up are left out, as unused),
        plus `total_train_batch_size` (per-device batch × accumulation × processes) and `mixed_precision`.
    """
    summary: dict[str, Any] = {}
    for field_name in _TRAINING_FIELDS:
        value = getattr(args, field_name, None)
        if value is None or (field_name in ("max_steps", "warmup_steps", "warmup_ratio") and value <= 0):
            continue
        summary[field_name] = getattr(value, "value", value)  # enums such as OptimizerNames -> their string
    batch_size = getattr(args, "per_device_train_batch_size", None)
    if batch_size is not None:
        world_size = getattr(args, "world_size", 1) or 1
        summary["total_train_batch_size"] = (
            batch_size * (getattr(args, "gradient_accumulation_steps", 1) or 1) * world_size
        )
    precision = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else None
    if precision is not None:
        summary["mixed_precision"] = precision
    return summary


# ---- what a trainer knows for its card, and the callback that writes it while training runs ----


def card_task_for_model(model) -> str | None:
    """The card task (Hub pipeline tag) of a model's head, found by [`hf_hem.heads.find_head`] (transformers' auto-model
    mappings, through PEFT wrappers); `None` for models the card cannot describe (e.g. a masked language model).

    Example:

    ```python
    >>> from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification
    >>> card_task_for_model(Wav2Vec2ForSequenceClassification(Wav2Vec2Config()))
    'audio-classification'
    ```
    """
    head = find_head(model)
    return None if head is None else head.pipeline_tag


def card_task_tags(task: str | None) -> list[str] | None:
    """The Hub tags of a card task (a pipeline tag or head name) besides hf_hem's own; `None` for a task the HEM card
    does not describe."""
    try:
        return list(head_named(task).tags)
    except ValueError:
        return None


def latest_eval_metrics(log_history: list[dict]) -> dict[str, float]:
    """The `eval_*` entries of the most recent evaluation in a Trainer's `state.log_history` (`{}` if none)."""
    for entry in reversed(log_history):
        if any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return {}


def card_worthy_metrics(metrics: Mapping | None) -> dict[str, float]:
    """Finite scalar `eval_*` metrics, without the `hem/*` training diagnostics and the Trainer's bookkeeping."""
    selected = {}
    for key, value in (metrics or {}).items():
        short = key[len("eval_") :] if key.startswith("eval_") else None
        if short is None or "/" in short or short in _BOOKKEEPING_METRICS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            selected[key] = float(value)
    return selected


def card_loss_settings(
    loss_name: str, *, margins: Margins | None, class_counts, num_margin_samples: float | None, options: Any
) -> dict[str, Any]:
    """What the card shows about the loss: the margins actually used, their scale and counts, the loss options.

    Args:
        loss_name (`str`): a registry name.
        margins ([`~hf_hem.margins.Margins`], *optional*): the margins in use, with whether they are per class.
        class_counts (*optional*): the counts behind them.
        num_margin_samples (`float`, *optional*): `S` of the margin formula.
        options: the `HEMConfig` (read: `margin`, `margin_scale`, `per_class_margins` and the spec's
            `config_arguments`).
    """
    spec = loss_spec(loss_name)
    per_class = bool(getattr(options, "per_class_margins", False))
    settings: dict[str, Any] = {}
    if spec.margin_loss and margins is not None:
        if margins.per_class:
            settings["margins"] = [float(value) for value in margins.values]
        else:
            settings["margin"] = margins.shared
        if getattr(options, "margin", None) is None:
            settings["margin_scale"] = getattr(options, "margin_scale", 2000.0)
            if class_counts is not None:
                settings["num_train_samples"] = int(num_margin_samples or sum(int(c) for c in class_counts))
    for config_field, argument in spec.config_arguments.items():
        if argument in spec.card_settings:
            settings[argument] = getattr(options, config_field)
    if class_counts is not None and (spec.needs_class_counts or per_class):
        settings["class_counts"] = [int(value) for value in class_counts]
    return settings


class HEMModelCardCallback(TrainerCallback):
    """Writes the HEM model card (`README.md`) into the output folder when training starts and at every save.

    At every save the card goes into the new `checkpoint-*` folder and into the output folder, which is what
    checkpoint pushes (`hub_strategy`) upload, so the Hub never shows the stock Trainer card while training runs.
    Only the main process writes. [`HEMTrainer`] adds this callback itself.

    Args:
        card_kwargs (`Callable[[dict[str, float]], dict | None]`): Given the latest evaluation metrics (`eval_*` keys,
            may be empty), returns the keyword arguments of [`write_model_card`], or `None` to write no card (e.g.
            [`HEMTrainer.model_card_kwargs`]).
    """

    def __init__(self, card_kwargs):
        self.card_kwargs = card_kwargs

    def _write(self, folders: list[str], metrics: dict) -> None:
        try:
            kwargs = self.card_kwargs(metrics)
            if kwargs is None:
                return
            for folder in folders:
                write_model_card(folder, **kwargs)
        except Exception as error:  # a card must never stop a long training run; the final card still raises
            logger.warning(f"Could not write the HEM model card into {folders} ({type(error).__name__}: {error}).")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and args.should_save and args.output_dir:
            self._write([args.output_dir], {})

    def on_save(self, args, state, control, **kwargs):
        if not (state.is_world_process_zero and args.should_save and args.output_dir):
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        folders = [checkpoint, args.output_dir] if os.path.isdir(checkpoint) else [args.output_dir]
        self._write(folders, latest_eval_metrics(state.log_history))
