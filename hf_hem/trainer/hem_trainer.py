"""`HEMTrainer`: the transformers `Trainer` with HEM / HEM+ (or any `hf_hem` loss) instead of cross-entropy.

How the loss is put together (the same for every loss of the registry):

* every labelled position (an image, a sequence, or a pixel) is a sample; a micro-batch on one process yields the
  **sum** of its per-sample losses and a **count** (violating samples for `hem`, `hem+`, `mm+maz`; labelled samples
  for the per-sample-mean losses; 1 for the set-level Dice);
* the count is summed across processes (one all-reduce of a few numbers), so the loss of each process is
  `local_sum / global_count * num_processes`; DDP's gradient averaging divides by `num_processes` again, which gives
  exactly the gradient of the loss of the concatenated global batch;
* with gradient accumulation each micro-batch is its own HEM batch: the violating samples of micro-batches that are
  not computed yet cannot be counted. The Trainer divides each micro-batch loss by the number of micro-batches
  (`loss_is_scaled_for_ga = False`), so the optimised (and logged) loss is the mean of the micro-batch losses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..cards import training_summary_from_args, write_model_card
from ..counting import count_labels, pixel_histogram
from ..losses.hem import needs_upsampling
from ..losses.kernels._upsample import BlockUpsampler, row_blocks
from ..losses.registry import LOSS_NAMES, MARGIN_LOSS_NAMES, get_loss
from ..margins import margins_from_counts
from .hem_config import HEMConfig


logger = logging.getLogger(__name__)

# How the batch loss of each registry loss divides the sum of its per-sample losses ("set": one value per batch).
# `tests/test_trainer.py::test_normaliser_matches_loss_mean` checks this table against `reduction="mean"`.
_NORMALISER = {
    "hem": "violating",
    "hem+": "violating",
    "mm+maz": "violating",
    "mm": "labelled",
    "mm+thres": "labelled",
    "ce": "labelled",
    "logitnorm": "labelled",
    "la": "labelled",
    "focal": "labelled",
    "dice": "set",
}
# Losses that cannot be built without per-class training counts (unless a fixed margin is given).
_NEEDS_COUNTS = {"hem+", "la"}

_STAT_NAMES_ALWAYS = ("labelled", "correct")
_STAT_NAMES_MARGIN = ("violating", "violation_sum", "margin_sum")

# Keys written into `model.config`, so checkpoints and Hub downloads carry the margins they were trained with.
CONFIG_KEYS = ("hem_loss", "hem_margins", "hem_class_counts", "hem_margin_scale", "hem_num_margin_samples")


def _datasets_module():
    """The `datasets` package, or `None`: plain torch datasets must not need it."""
    try:
        import datasets
    except ImportError:
        return None
    return datasets


def _logits_from_outputs(outputs) -> torch.Tensor:
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ValueError(f"the model output has no 'logits'; keys present: {list(outputs.keys())}.")
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    if torch.is_tensor(outputs):
        return outputs
    raise ValueError(f"cannot find logits in a model output of type {type(outputs).__name__}.")


def _match_label_size(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Upsamples `(N, C, h, w)` logits to the `(N, H, W)` label size, as SegFormer's own loss does."""
    if logits.dim() == 4 and labels.dim() == 3 and logits.shape[-2:] != labels.shape[-2:]:
        return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def _flatten_for_stats(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    num_classes = logits.shape[1]
    flat = logits.detach()
    if flat.dim() > 2:
        flat = flat.movedim(1, -1)
    flat = flat.reshape(-1, num_classes).float()
    flat_labels = labels.reshape(-1).long()
    valid = flat_labels != ignore_index
    return flat[valid], flat_labels[valid]


def _count_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps pixel counts exact beyond 2**24; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


@contextlib.contextmanager
def _preserved_rng_state():
    """Runs a block (a counting pass through random transforms) without moving any global random generator."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


class _LossTerms:
    """The configured loss split into what one process can compute on one micro-batch.

    `parts(logits, labels)` returns `(local_sum, local_count)` such that the batch loss is
    `sum over processes of local_sum / sum over processes of local_count`; `stats(logits, labels)` returns the
    diagnostic sums behind the logged `hem/*` metrics.
    """

    def __init__(
        self,
        loss_name: str,
        *,
        margins: torch.Tensor | None,
        per_class_margins: bool,
        class_counts,
        ignore_index: int,
        logitnorm_temperature: float = 0.04,
        la_tau: float = 1.0,
        focal_gamma: float = 2.0,
        dice_smooth: float = 0.0,
        upsample_logits_in_loss: bool = False,
    ):
        if loss_name not in LOSS_NAMES:
            raise ValueError(f"loss_name={loss_name!r} is not a known loss; expected one of {', '.join(LOSS_NAMES)}.")
        self.loss_name = loss_name
        self.normaliser = _NORMALISER[loss_name]
        self.ignore_index = int(ignore_index)
        self.margins = None if margins is None else torch.as_tensor(margins, dtype=torch.float32).reshape(-1)
        reduction = "mean" if self.normaliser == "set" else "none"
        common = {"ignore_index": self.ignore_index, "reduction": reduction}
        if loss_name in MARGIN_LOSS_NAMES:
            if self.margins is None:
                raise ValueError(f"loss {loss_name!r} needs margins: pass margin=, class_counts= or a training set.")
            margin = self.margins if per_class_margins else float(self.margins[0])
            self.criterion = get_loss(loss_name, margin=margin, upsample_logits=upsample_logits_in_loss, **common)
        elif loss_name == "la":
            if class_counts is None:
                raise ValueError(
                    "loss 'la' (logit-adjusted CE) needs class counts: pass class_counts= or a training set."
                )
            self.criterion = get_loss("la", class_counts=class_counts, tau=la_tau, **common)
        elif loss_name == "logitnorm":
            self.criterion = get_loss("logitnorm", temperature=logitnorm_temperature, **common)
        elif loss_name == "focal":
            self.criterion = get_loss("focal", gamma=focal_gamma, **common)
        elif loss_name == "dice":
            self.criterion = get_loss("dice", smooth=dice_smooth, **common)
        else:
            self.criterion = get_loss(loss_name, **common)
        self.stat_names = _STAT_NAMES_ALWAYS + (_STAT_NAMES_MARGIN if self.margins is not None else ())
        #: Whether `parts` takes low-resolution segmentation logits as they are (the criterion upsamples them).
        self.upsamples_logits = upsample_logits_in_loss and loss_name in MARGIN_LOSS_NAMES

    def match_label_size(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logits `parts` and `stats` take: upsampled to the label size unless the criterion does it itself."""
        return logits if self.upsamples_logits else _match_label_size(logits, labels)

    def parts(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local loss sum (differentiable) and local count (a float64 constant, float32 on MPS)."""
        # Margin and prior buffers follow the logits; a no-op once they are there.
        self.criterion.to(logits.device)
        value = self.criterion(logits, labels)
        dtype = _count_dtype(logits.device)
        if self.normaliser == "set":
            # Dice is one value per set of positions: each process contributes its own Dice with weight 1.
            return value, torch.ones((), dtype=dtype, device=logits.device)
        if self.normaliser == "violating":
            count = (value.detach() > 0).sum()
        else:
            count = (labels != self.ignore_index).sum()
        return value.sum(), count.to(dtype)

    @torch.no_grad()
    def stats(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sums over the labelled samples: count, correct, and, with margins, violating, violation sum, margin sum.

        A sample *violates* its margin when its largest margin error `max_{i != t} (y_i - y_t + mu_t)` is above 0,
        which is exactly when its HEM (or MM, MM+maz, MM+thres) loss is non-zero. Segmentation logits are summed
        a block at a time (per image, or per block of upsampled rows), so no full-size copy of them is made.
        """
        if needs_upsampling(logits, labels):
            size = (int(labels.shape[-2]), int(labels.shape[-1]))
            compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
            upsampler = BlockUpsampler(logits.detach(), size, compute)
            blocks = [
                self._block_stats(upsampler.block(start, stop), labels[:, start:stop])
                for start, stop in row_blocks(logits, size)
            ]
            return torch.stack(blocks).sum(0)
        if logits.dim() > 2 and logits.shape[0] > 1:
            blocks = [self._block_stats(logits[i : i + 1], labels[i : i + 1]) for i in range(logits.shape[0])]
            return torch.stack(blocks).sum(0)
        return self._block_stats(logits, labels)

    def _block_stats(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat, targets = _flatten_for_stats(logits, labels, self.ignore_index)
        dtype = _count_dtype(flat.device)
        values = [torch.tensor(float(targets.numel()), device=flat.device), (flat.argmax(1) == targets).sum()]
        if self.margins is not None:
            margins = self.margins.to(flat.device)[targets]
            target_logit = flat.gather(1, targets[:, None]).squeeze(1)
            others = flat.scatter(1, targets[:, None], float("-inf"))
            worst_error = others.max(dim=1).values - target_logit + margins
            violating = worst_error > 0
            values += [violating.sum(), worst_error[violating].sum(), margins.sum()]
        return torch.stack([v.to(dtype) for v in values])

    def metrics(self, sums: list[float]) -> dict[str, float]:
        """Turns accumulated `stats` sums into the logged `hem/*` values."""
        named = dict(zip(self.stat_names, sums))
        labelled = max(named["labelled"], 1.0)
        out = {"hem/accuracy": named["correct"] / labelled}
        if "violating" in named:
            out["hem/violating_fraction"] = named["violating"] / labelled
            out["hem/mean_violation"] = named["violation_sum"] / max(named["violating"], 1.0)
            out["hem/margin_mean"] = named["margin_sum"] / labelled
        return out


def _build_margins(
    *,
    num_classes: int,
    margin: float | None,
    class_counts,
    margin_scale: float,
    per_class: bool,
    num_samples: float | None,
) -> torch.Tensor | None:
    """`(num_classes,)` margins from a fixed margin or from class counts; `None` when neither is known."""
    if margin is not None:
        return torch.full((num_classes,), float(margin), dtype=torch.float32)
    if class_counts is None:
        return None
    return margins_from_counts(
        class_counts, scale=margin_scale, per_class=per_class, num_classes=num_classes, num_samples=num_samples
    )


# Model classes the HEM card can describe, by class-name suffix -> card task (the Hub pipeline tag).
_CARD_TASKS = (("ForSemanticSegmentation", "image-segmentation"), ("ForImageClassification", "image-classification"))
_CARD_TASK_TAGS = {
    "image-classification": ["image-classification", "vision"],
    "image-segmentation": ["image-segmentation", "vision"],
}
# Values the Trainer mixes into its evaluation metrics that say nothing about the model.
_CARD_SKIPPED_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step", "total_flos"}


def _scrub(text: str, secrets) -> str:
    """`text` with every non-empty secret replaced by `***` (tokens must not reach logs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def latest_eval_metrics(log_history: list[dict]) -> dict[str, float]:
    """The `eval_*` entries of the most recent evaluation in a Trainer's `state.log_history` (`{}` if none)."""
    for entry in reversed(log_history):
        if any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return {}


def _card_worthy_metrics(metrics: dict | None) -> dict[str, float]:
    """Finite scalar `eval_*` metrics, without the `hem/*` training diagnostics and the Trainer's bookkeeping."""
    selected = {}
    for key, value in (metrics or {}).items():
        short = key[len("eval_") :] if key.startswith("eval_") else None
        if short is None or "/" in short or short in _CARD_SKIPPED_METRICS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            selected[key] = float(value)
    return selected


def _hub_reference(name: str | None) -> str | None:
    """`name` when it can be a Hub repo id (not empty, not a local path), else `None`."""
    if not isinstance(name, str) or not name or os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    parts = name.split("/")
    return name if len(parts) <= 2 and all(parts) else None


class HEMModelCardCallback(TrainerCallback):
    """Writes the HEM model card (`README.md`) into the output folder when training starts and at every save.

    At every save the card goes into the new `checkpoint-*` folder and into the output folder, which is what
    checkpoint pushes (`hub_strategy`) upload, so the Hub never shows the stock Trainer card while training runs.
    Only the main process writes. [`HEMTrainer`] adds this callback itself.

    Args:
        card_kwargs (`Callable[[dict[str, float]], dict | None]`): Given the latest evaluation metrics (`eval_*` keys,
            may be empty), returns the keyword arguments of [`hf_hem.cards.write_model_card`], or `None` to write
            no card (e.g. [`HEMTrainer.model_card_kwargs`]).
    """

    def __init__(self, card_kwargs: Callable[[dict], dict | None]):
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


class HEMTrainer(Trainer):
    r"""
    Trainer for classifiers and segmenters trained with the HEM loss (or HEM+ and the paper's baselines).

    A drop-in replacement for [`~transformers.Trainer`]: replace `TrainingArguments` with [`HEMConfig`] and
    `Trainer` with `HEMTrainer`. The labels are popped before the forward pass, so the model's own cross-entropy
    never runs; the loss named by `args.loss_name` is computed from the logits instead.

    * Image and text classification (`AutoModelForImageClassification`, `AutoModelForSequenceClassification`):
      logits `(N, C)`, labels `(N,)`.
    * Semantic segmentation (SegFormer, or any model whose logits are `(N, C, h, w)`): the logits are upsampled
      bilinearly (`align_corners=False`) to the `(N, H, W)` label size, every labelled pixel is a sample, and the
      ignore index comes from `config.semantic_loss_ignore_index`.

    Margins are derived at start-up from the training set's label counts (the Arrow label column for
    classification, a streamed pixel histogram for segmentation) and written into `model.config` (`hem_loss`,
    `hem_margins`, `hem_class_counts`, `hem_margin_scale`, `hem_num_margin_samples`), so checkpoints and Hub uploads
    carry them; resuming from a checkpoint reuses the margins stored there.

    Model cards and the Hub: for image classifiers and semantic segmenters the trainer writes the HEM model card of
    [`hf_hem.cards`] (loss, margins, every metric as a real `model-index` entry, e.g. `mean_iou`, which the stock
    card drops) into the output folder when training starts, into every checkpoint ([`HEMModelCardCallback`]), and
    in `create_model_card` / `push_to_hub`. What the trainer cannot know (the dataset, per-class tables, which
    metrics to show) comes from `card_kwargs`; other models (e.g. text classifiers) get the stock card.
    `args.hub_token` is moved into the `HF_TOKEN` environment variable of this process, so it is not pickled into
    `training_args.bin` (which every push uploads). If the Hub repo cannot be created when training starts, training
    goes on without checkpoint pushes and the final `push_to_hub` retries (and raises if the Hub is still
    unreachable). `save_model` only saves to disk; push with `push_to_hub`.

    Example:

    ```python
    >>> from hf_hem import HEMConfig, HEMTrainer

    >>> args = HEMConfig(output_dir="vit-hem", loss_name="hem", remove_unused_columns=False)
    >>> trainer = HEMTrainer(model=model, args=args, train_dataset=train_ds, data_collator=collate_fn)
    >>> trainer.train()
    ```

    Args:
        model ([`~transformers.PreTrainedModel`] or `torch.nn.Module`, *optional*):
            The model to train; its config must have `num_labels`. Either `model` or `model_init` is required.
        args ([`HEMConfig`], *optional*):
            Training and loss settings. A plain [`~transformers.TrainingArguments`] is converted to an `HEMConfig`
            with the default loss settings (HEM with margins from the training set). `None` uses `HEMConfig("tmp_trainer")`.
        data_collator, train_dataset, eval_dataset, processing_class, model_init, compute_metrics, callbacks,
        optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics:
            As for [`~transformers.Trainer`]. `compute_loss_func` is not accepted: the loss comes from `args`.
        card_kwargs (`dict` or `Callable[[dict[str, float]], dict]`, *optional*):
            Keyword arguments of [`hf_hem.cards.generate_model_card`] that override or complete the trainer's own
            (see [`~HEMTrainer.model_card_kwargs`]), e.g. `dataset_name`, `eval_split`, `metrics`,
            `per_class_table`. A callable receives the evaluation metrics the card is written with. Giving a `task`
            here also enables the HEM card for a model whose task the trainer does not recognise.

    > [!NOTE]
    > Gradient accumulation: each micro-batch is its own HEM batch and the micro-batch losses are averaged. Several
    > processes: the count of violating samples is summed across processes, so `k` processes give the gradient of
    > the loss of the concatenated batch. The logged `loss` is the loss that was optimised.
    """

    _tag_names = ["hf-hem", "hem-loss"]
    _name = "HEM"
    _paper = {
        "title": "A margin-based replacement for cross-entropy loss",
        "id": "2501.12191",
        "citation": (
            "@article{spratling2025hem,\n"
            "  title={A margin-based replacement for cross-entropy loss},\n"
            '  author={Spratling, M. W. and Sch{\\"u}tt, H. H.},\n'
            "  journal={arXiv preprint arXiv:2501.12191},\n"
            "  year={2025}\n"
            "}"
        ),
    }

    # `compute_loss` returns the mean over one micro-batch (a HEM batch), not a sum normalised over the whole
    # accumulation window, so the Trainer must divide it by the number of micro-batches.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        model_init: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        card_kwargs: dict | Callable[[dict], dict] | None = None,
    ):
        if args is None:
            args = HEMConfig(output_dir="tmp_trainer")
        elif not isinstance(args, HEMConfig):
            if not isinstance(args, TrainingArguments):
                raise ValueError(f"args must be an HEMConfig (or TrainingArguments), got {type(args).__name__}.")
            args = HEMConfig(**_init_fields(args))
        if card_kwargs is not None and not (isinstance(card_kwargs, dict) or callable(card_kwargs)):
            raise ValueError(f"card_kwargs must be a dict or a callable returning one, got {type(card_kwargs)}.")
        if args.hub_token:
            # The Trainer pickles its arguments into training_args.bin, which every push uploads: the token moves to
            # the process environment, where huggingface_hub looks for it on each request.
            os.environ["HF_TOKEN"] = args.hub_token
            args.hub_token = None
        # Read by init_hf_repo, which the base __init__ calls before anything below runs.
        self._defer_hub_errors = True
        self.card_kwargs = card_kwargs
        #: Metrics of the final evaluation for the card written by `create_model_card` / `push_to_hub`; when `None`,
        #: the latest evaluation in the log history is used.
        self.card_metrics: dict[str, float] | None = None
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # The labels never reach the model, so there is nothing to pass `num_items_in_batch` to; this also spares
        # the Trainer a cross-process gather of label counts on every step.
        self.model_accepts_loss_kwargs = False
        self._stat_sums: dict[str, torch.Tensor] = {}
        self._eval_metric_prefix: str | None = None
        self._loss_terms: _LossTerms | None = None
        self._margins: torch.Tensor | None = None
        self._class_counts: np.ndarray | None = None
        self._num_margin_samples: float | None = None
        self._count_pending = False
        self._setup_loss()
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self.add_callback(HEMModelCardCallback(self.model_card_kwargs))

    # ---- set-up: classes, ignore index, counts, margins ----

    def _setup_loss(self) -> None:
        args: HEMConfig = self.args
        config = getattr(self.model, "config", None)
        self._num_classes = self._model_num_classes(config)
        self._ignore_index = self._resolve_ignore_index(config)
        needs_counts = (args.loss_name in MARGIN_LOSS_NAMES and args.margin is None) or args.loss_name in _NEEDS_COUNTS

        if args.class_counts is not None:
            if len(args.class_counts) != self._num_classes:
                raise ValueError(
                    f"class_counts has {len(args.class_counts)} entries but the model has num_labels="
                    f"{self._num_classes}; expected one count per class."
                )
            self._class_counts = np.asarray(args.class_counts, dtype=np.int64)
            self._num_margin_samples = args.num_margin_samples
            if self._num_margin_samples is None and hasattr(config, "semantic_loss_ignore_index"):
                self._num_margin_samples = self._segmentation_num_images()
        elif self.train_dataset is not None:
            counted = self._count_from_label_column()
            if not counted:
                # Dense labels, transformed or non-Arrow datasets: count through the data pipeline, but only when
                # the loss needs counts, and only at train() so that a resumed run can reuse its stored margins.
                self._count_pending = needs_counts
        elif args.margin is None and not self._margins_from_model_config(config) and needs_counts:
            raise ValueError(
                f"loss_name={args.loss_name!r} needs margins or class priors, but there is no train_dataset to count "
                "labels from: pass train_dataset, class_counts= or margin=, or a model whose config carries "
                "hem_margins from an HEM training run."
            )
        if not self._count_pending:
            self._finish_setup()

    def _model_num_classes(self, config) -> int:
        problem_type = getattr(config, "problem_type", None)
        if problem_type in ("regression", "multi_label_classification"):
            raise ValueError(
                f"model config problem_type={problem_type!r}: HEMTrainer trains single-label classifiers and "
                "segmenters; expected problem_type None or 'single_label_classification'."
            )
        num_labels = getattr(config, "num_labels", None)
        if num_labels is None:
            if self.args.class_counts is not None:
                return len(self.args.class_counts)
            raise ValueError(
                "the model has no config.num_labels; pass class_counts= so the number of classes is known."
            )
        if num_labels < 2:
            raise ValueError(
                f"the model has num_labels={num_labels}; HEM needs at least 2 classes (num_labels=1 is regression)."
            )
        return int(num_labels)

    def _segmentation_num_images(self) -> int:
        """S for segmentation counts given as `class_counts`: pixel totals as S would drive the margins to ~0."""
        if self.train_dataset is not None and hasattr(self.train_dataset, "__len__"):
            return len(self.train_dataset)
        raise ValueError(
            "class_counts of a segmentation model are pixel counts; pass num_margin_samples= (the number of "
            "training images, S in mu = sqrt(M / S)) or a train_dataset with a length."
        )

    def _resolve_ignore_index(self, config) -> int:
        if self.args.loss_ignore_index is not None:
            return int(self.args.loss_ignore_index)
        semantic = getattr(config, "semantic_loss_ignore_index", None)
        return int(semantic) if semantic is not None else -100

    def _count_from_label_column(self) -> bool:
        """Counts labels from the Arrow label column of a `datasets.Dataset`; `False` if that is not possible."""
        datasets = _datasets_module()
        dataset = self.train_dataset
        if datasets is None or not isinstance(dataset, datasets.Dataset):
            return False
        columns = list(dataset.column_names)
        requested = self.args.label_column_name
        if requested is not None and requested not in columns:
            raise ValueError(
                f"label_column_name={requested!r} is not a column of train_dataset; columns present: {columns}."
            )
        name = requested or next((c for c in ("labels", "label") if c in columns), None)
        if name is None:
            transformed = self._transformed_keys(dataset)
            if transformed is not None and "labels" in transformed:
                return False  # the labels are produced by set_transform: count them through the pipeline
            extra = f"; keys produced by its transform: {transformed}" if transformed is not None else ""
            raise ValueError(
                f"train_dataset has no label column (looked for 'labels' and 'label'); columns present: {columns}"
                f"{extra}. Set label_column_name= to the column holding the class labels."
            )
        feature = dataset.features[name]
        if isinstance(feature, datasets.ClassLabel) and feature.num_classes != self._num_classes:
            raise ValueError(
                f"train_dataset column {name!r} has {feature.num_classes} classes but the model has num_labels="
                f"{self._num_classes}; build the model with num_labels={feature.num_classes} "
                "(and id2label/label2id from the dataset's ClassLabel names)."
            )
        scalar = isinstance(feature, datasets.ClassLabel) or (
            isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
        )
        if not scalar:
            return False  # masks (Image, arrays): a pixel histogram through the data pipeline
        try:
            counts = count_labels(dataset, self._num_classes, name, ignore_index=self._ignore_index)
        except ValueError as error:
            raise ValueError(f"train_dataset: {error} The model has num_labels={self._num_classes}.") from None
        self._class_counts = counts
        self._num_margin_samples = self.args.num_margin_samples
        return True

    @staticmethod
    def _transformed_keys(dataset) -> list[str] | None:
        if dataset.format.get("type") != "custom" or len(dataset) == 0:
            return None
        return list(dataset[:1].keys())

    def _count_through_pipeline(self) -> None:
        """Counts labels (or label pixels) from collated training batches, exactly as the model will see them."""
        datasets = _datasets_module()
        dataset = self.train_dataset
        iterable_types = (torch.utils.data.IterableDataset,) + ((datasets.IterableDataset,) if datasets else ())
        if isinstance(dataset, iterable_types) or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"loss_name={self.args.loss_name!r} needs class counts, which cannot be taken from an iterable "
                "train_dataset; pass class_counts= (or margin= for a single margin)."
            )
        collator = self.data_collator
        if datasets is not None and isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="margin counting")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="margin counting")
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.args.per_device_train_batch_size,
            shuffle=False,
            collate_fn=collator,
            num_workers=self.args.dataloader_num_workers,
        )
        seen = {"samples": 0, "dense": False}

        def label_batches():
            for batch in loader:
                labels = batch.get("labels") if isinstance(batch, dict) else None
                if labels is None:
                    keys = list(batch.keys()) if isinstance(batch, dict) else type(batch).__name__
                    raise ValueError(f"training batches have no 'labels' to count; batch keys: {keys}.")
                seen["samples"] += labels.shape[0]
                seen["dense"] = labels.dim() > 1
                yield labels

        with _preserved_rng_state():
            try:
                counts = pixel_histogram(
                    label_batches(),
                    self._num_classes,
                    ignore_index=self._ignore_index,
                    progress=self.is_world_process_zero() and not self.args.disable_tqdm,
                    total=len(loader),
                    desc="Counting training labels for the margins",
                )
            except ValueError as error:
                raise ValueError(f"train_dataset: {error} The model has num_labels={self._num_classes}.") from None
        self._class_counts = counts
        # Segmentation: S is the number of training images, not of pixels (method page, section 2).
        self._num_margin_samples = self.args.num_margin_samples or (seen["samples"] if seen["dense"] else None)
        self._count_pending = False

    def _margins_from_model_config(self, config) -> bool:
        stored = getattr(config, "hem_margins", None)
        if stored is None:
            return False
        self._adopt_stored({key: getattr(config, key, None) for key in CONFIG_KEYS}, source="the model config")
        return True

    def _adopt_stored(self, stored: dict, source: str) -> None:
        """Reuses margins and counts stored by an earlier HEM run (a checkpoint or a downloaded model)."""
        margins = stored.get("hem_margins")
        if margins is None:
            return
        margins = torch.as_tensor(margins, dtype=torch.float32)
        if margins.numel() != self._num_classes:
            raise ValueError(
                f"{source} holds {margins.numel()} margins but the model has num_labels={self._num_classes}."
            )
        if stored.get("hem_loss") not in (None, self.args.loss_name):
            logger.warning(
                f"{source} was trained with loss {stored.get('hem_loss')!r}; continuing with {self.args.loss_name!r}."
            )
        current = self._margins
        if current is not None and not torch.allclose(current, margins, rtol=1e-6, atol=0):
            logger.warning(
                f"Using the margins stored in {source} ({margins.tolist()}) instead of the margins derived for this "
                f"run ({current.tolist()}), so that the resumed run optimises the same loss."
            )
        self._margins = margins
        counts = stored.get("hem_class_counts")
        self._class_counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        self._num_margin_samples = stored.get("hem_num_margin_samples")
        self._count_pending = False

    def _finish_setup(self) -> None:
        args: HEMConfig = self.args
        if self._margins is None:
            self._margins = _build_margins(
                num_classes=self._num_classes,
                margin=args.margin,
                class_counts=self._class_counts,
                margin_scale=args.margin_scale,
                per_class=args.per_class_margins,
                num_samples=self._num_margin_samples,
            )
        # Margins that differ between classes (HEM+, or stored by a HEM+ run) are only meaningful per class.
        per_class = args.per_class_margins or (
            self._margins is not None and bool((self._margins != self._margins[0]).any())
        )
        self._loss_terms = _LossTerms(
            args.loss_name,
            margins=self._margins,
            per_class_margins=per_class,
            class_counts=self._class_counts,
            ignore_index=self._ignore_index,
            logitnorm_temperature=args.logitnorm_temperature,
            la_tau=args.la_tau,
            focal_gamma=args.focal_gamma,
            dice_smooth=args.dice_smooth,
            upsample_logits_in_loss=args.upsample_logits_in_loss,
        )
        self._store_in_config(self.model)

    def _store_in_config(self, model) -> None:
        config = getattr(model, "config", None)
        if config is None or self._loss_terms is None:
            return
        config.hem_loss = self.args.loss_name
        config.hem_margins = None if self._margins is None else [float(m) for m in self._margins.tolist()]
        config.hem_class_counts = None if self._class_counts is None else [int(c) for c in self._class_counts]
        config.hem_margin_scale = float(self.args.margin_scale)
        config.hem_num_margin_samples = self._num_margin_samples

    def _ensure_loss_ready(self) -> _LossTerms:
        if self._loss_terms is None:
            if self._count_pending:
                self._count_through_pipeline()
            self._finish_setup()
        return self._loss_terms

    @property
    def margins(self) -> torch.Tensor | None:
        """The `(num_labels,)` margins in use (one per target class; all equal for plain HEM), or `None`."""
        self._ensure_loss_ready()
        return self._margins

    @property
    def class_counts(self) -> np.ndarray | None:
        """Training samples (segmentation: labelled pixels) per class behind the margins, or `None`."""
        self._ensure_loss_ready()
        return self._class_counts

    # ---- Trainer overrides ----

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        # `train()` re-creates the model from `model_init`: give the new config the margins too.
        if getattr(self, "_loss_terms", None) is not None:
            self._store_in_config(model)
        return model

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """Trains as [`~transformers.Trainer.train`]; when resuming, the margins stored in the checkpoint's
        `config.json` are used (they define the loss being optimised), so no counting pass runs again."""
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint and self.args.output_dir else None
        if checkpoint is not None:
            config_file = os.path.join(checkpoint, "config.json")
            if os.path.isfile(config_file):
                with open(config_file, encoding="utf-8") as handle:
                    stored = json.load(handle)
                self._adopt_stored(stored, source=f"checkpoint {checkpoint}")
                if stored.get("hem_margins") is not None:
                    self._loss_terms = None  # rebuilt below with the stored margins
        self._ensure_loss_ready()
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not self._load_converted_weights(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        if checkpoint is None or not self._load_converted_weights(checkpoint, self.model_wrapped):
            super()._load_best_model()

    def _load_converted_weights(self, checkpoint: str, model: nn.Module | None = None) -> bool:
        """Loads checkpoint weights saved under converted names; `False` (nothing done) when they need no conversion.

        `save_pretrained` writes the Hub key names of models with weight conversions (ViT and others in
        transformers 5.x), but `Trainer._load_from_checkpoint` loads the raw state dict with `strict=False`, so
        those weights would be silently skipped on resume (huggingface/transformers#48805, #43701). Loading through
        `from_pretrained` applies the conversion.
        """
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if (
            not isinstance(model, PreTrainedModel)
            or self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or getattr(model, "peft_config", None) is not None
        ):
            return False
        saved = _saved_weight_names(checkpoint)
        if saved is None or saved <= set(model.state_dict()):
            return False
        logger.info(f"Loading {checkpoint} through from_pretrained to convert its weight names.")
        reloaded = type(model).from_pretrained(checkpoint, config=model.config)
        model.load_state_dict(reloaded.state_dict())
        return True

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Computes the configured loss from the model's logits.

        Args:
            model (`torch.nn.Module`): the (possibly wrapped) model.
            inputs (`dict[str, torch.Tensor]`): a collated batch with `labels`; they are popped, so the model's own
                loss never runs.
            return_outputs (`bool`, defaults to `False`): also return the model output (evaluation needs the logits).
            num_items_in_batch: unused; the Trainer's label count cannot tell violating samples apart.

        Returns:
            The loss of this micro-batch (times `num_processes` in distributed training, see the module docstring),
            and the model output if `return_outputs`.

        Shape:
            - logits: `(N, C)`, or `(N, C, h, w)` upsampled to the label size.
            - labels: `(N,)`, or `(N, H, W)` with `ignore_index` pixels.
        """
        if "labels" not in inputs:
            raise ValueError(f"HEMTrainer needs 'labels' in every batch; batch keys: {list(inputs.keys())}.")
        terms = self._ensure_loss_ready()
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = terms.match_label_size(_logits_from_outputs(outputs), labels)
        local_sum, local_count = terms.parts(logits, labels)
        stats = terms.stats(logits, labels)

        world_size = self.accelerator.num_processes
        if world_size > 1:
            # One all-reduce of a few numbers: the count that normalises the loss, the metric sums, and (for
            # evaluation, where there is no gradient) the loss sum, so every process reports the global batch loss.
            packed = torch.cat([local_count[None], local_sum.detach().to(local_count)[None], stats])
            packed = self.accelerator.reduce(packed, reduction="sum")
            global_count, global_sum, stats = packed[0], packed[1], packed[2:]
        else:
            global_count, global_sum = local_count, local_sum.detach().to(local_count)
        denominator = global_count.clamp_min(1).to(local_sum.dtype)
        if model.training:
            # DDP averages gradients over processes; the factor `world_size` turns that average into the sum
            # of all processes' contributions to (sum of per-sample losses) / (global count).
            loss = local_sum * (world_size / denominator)
        else:
            # The global batch loss on every process (what the Trainer averages into eval_loss), still
            # differentiable in this process's logits for callers that need input gradients in eval mode.
            others = (global_sum.to(local_sum.dtype) - local_sum.detach()) if world_size > 1 else 0.0
            loss = (local_sum + others) / denominator

        mode = "train" if model.training else "eval"
        self._stat_sums[mode] = stats if mode not in self._stat_sums else self._stat_sums[mode] + stats
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the averaged `hem/*` metrics (`<prefix>_hem/*` in evaluation) to `logs`, then logs."""
        mode = "eval" if self._eval_metric_prefix is not None else "train"
        sums = self._stat_sums.pop(mode, None)
        if sums is not None and self._loss_terms is not None:
            prefix = f"{self._eval_metric_prefix}_" if mode == "eval" else ""
            logs.update({prefix + key: value for key, value in self._loss_terms.metrics(sums.tolist()).items()})
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        previous = self._eval_metric_prefix
        self._eval_metric_prefix = metric_key_prefix
        self._stat_sums.pop("eval", None)
        try:
            return super().evaluate(
                eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
            )
        finally:
            self._eval_metric_prefix = previous

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        self._stat_sums.pop("eval", None)
        output = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        sums = self._stat_sums.pop("eval", None)
        if sums is not None and self._loss_terms is not None and output.metrics is not None:
            metrics = self._loss_terms.metrics(sums.tolist())
            output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in metrics.items()})
        return output

    # ---- model cards and the Hub ----

    def _card_task(self) -> str | None:
        model = self.accelerator.unwrap_model(self.model) if self.model is not None else None
        name = type(model).__name__
        return next((task for suffix, task in _CARD_TASKS if name.endswith(suffix)), None)

    def _card_loss_settings(self) -> dict[str, Any]:
        """What the card shows about the loss: the margins actually used, their scale and counts."""
        args: HEMConfig = self.args
        name = args.loss_name
        # The attributes, not the properties: writing a card must not start a counting pass through the data.
        margins, counts = self._margins, self._class_counts
        settings: dict[str, Any] = {}
        if name in MARGIN_LOSS_NAMES and margins is not None:
            if args.per_class_margins or bool((margins != margins[0]).any()):
                settings["margins"] = [float(value) for value in margins]
            else:
                settings["margin"] = float(margins[0])
            if args.margin is None:
                settings["margin_scale"] = args.margin_scale
                if counts is not None:
                    settings["num_train_samples"] = int(self._num_margin_samples or np.sum(counts))
        elif name == "la":
            settings["tau"] = args.la_tau
        elif name == "logitnorm":
            settings["temperature"] = args.logitnorm_temperature
        elif name == "focal":
            settings["gamma"] = args.focal_gamma
        if counts is not None and (name in ("hem+", "la") or args.per_class_margins):
            settings["class_counts"] = [int(value) for value in counts]
        return settings

    def model_card_kwargs(self, metrics: dict[str, float] | None = None) -> dict[str, Any] | None:
        """The keyword arguments of [`hf_hem.cards.write_model_card`] for this run's card, or `None` for no HEM card.

        The trainer fills in what it knows: the model name (from `hub_model_id` or the output folder), the base
        model (`config._name_or_path` when it is a Hub id), the task (from the model class: image classification or
        semantic segmentation), the loss and its margins, class names (`config.id2label`), the training
        hyper-parameters, and the card-worthy `eval_*` metrics. `card_kwargs` (see [`HEMTrainer`]) override these.

        Args:
            metrics (`dict[str, float]`, *optional*): Evaluation metrics (`eval_*` keys) for the card.

        Returns:
            `dict` or `None`: `None` when the task is neither known nor given in `card_kwargs`.
        """
        metrics = dict(metrics or {})
        extra = self.card_kwargs(metrics) if callable(self.card_kwargs) else dict(self.card_kwargs or {})
        extra = dict(extra or {})
        task = extra.get("task") or self._card_task()
        if task is None:
            return None
        args = self.args
        hub_model_id = self.hub_model_id or args.hub_model_id
        model_name = (hub_model_id or Path(args.output_dir or "model").resolve().name).split("/")[-1]
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        id2label = getattr(config, "id2label", None) or {}
        class_names = [str(id2label[index]) for index in sorted(id2label)] if id2label else None
        kwargs = {
            "model_name": model_name,
            "base_model": _hub_reference(getattr(config, "_name_or_path", None)),
            "hub_model_id": hub_model_id,
            "task": task,
            "loss_name": args.loss_name,
            "loss_settings": self._card_loss_settings(),
            "metrics": _card_worthy_metrics(metrics),
            "class_names": class_names,
            "tags": list(_CARD_TASK_TAGS.get(task, [])),
            "training_summary": training_summary_from_args(args),
        }
        kwargs.update(extra)
        return kwargs

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,  # noqa: A002 - the Trainer's argument name
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Writes the HEM card to `output_dir/README.md` (the stock card for models the HEM card cannot describe).

        Called by `push_to_hub`. The metrics are `card_metrics` when set (the pipelines set the final evaluation),
        else the latest evaluation in the log history. The stock arguments `license`, `tags` (added to the HEM tags),
        `model_name`, `finetuned_from` and `dataset` are honoured; the others only apply to the stock card.
        """
        if not self.is_world_process_zero():
            return
        metrics = self.card_metrics if self.card_metrics is not None else latest_eval_metrics(self.state.log_history)
        kwargs = self.model_card_kwargs(metrics)
        if kwargs is None:
            super().create_model_card(
                language=language,
                license=license,
                tags=tags,
                model_name=model_name,
                finetuned_from=finetuned_from,
                tasks=tasks,
                dataset_tags=dataset_tags,
                dataset=dataset,
                dataset_args=dataset_args,
            )
            return
        if isinstance(tags, str):
            tags = [tags]
        if tags:
            kwargs["tags"] = list(dict.fromkeys([*(kwargs.get("tags") or []), *tags]))
        if isinstance(dataset, (list, tuple)):
            dataset = dataset[0] if dataset else None
        overrides = {"license": license, "model_name": model_name, "base_model": finetuned_from}
        overrides["dataset_name"] = dataset
        kwargs.update({key: value for key, value in overrides.items() if value is not None})
        write_model_card(self.args.output_dir, **kwargs)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:
            if not self._defer_hub_errors:
                raise
            self.hub_model_id = None
            logger.warning(
                f"Could not create the Hub repo {self.args.hub_model_id!r} ({type(error).__name__}: "
                f"{_scrub(str(error), [token, os.environ.get('HF_TOKEN')])}). Training continues, checkpoints are not "
                "pushed, and the push is retried by push_to_hub."
            )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.hub_model_id is None:
            return  # the repo could not be created at start-up
        super()._push_from_checkpoint(checkpoint_folder)

    def push_to_hub(self, *args, **kwargs):
        """As [`~transformers.Trainer.push_to_hub`], with the HEM card; raises if the Hub cannot be reached."""
        self._defer_hub_errors = False
        return super().push_to_hub(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Saves the model (and processor) to disk, without pushing.

        `Trainer.save_model` also pushes when `push_to_hub` is set, before the final evaluation and card exist, and
        scripts then push again. Here the one final push is explicit (`push_to_hub`), and the model is on disk even
        when that push fails. Checkpoint pushes (`hub_strategy`) are unchanged.
        """
        super().save_model(output_dir, _internal_call=True)


def _saved_weight_names(checkpoint: str) -> set[str] | None:
    """Tensor names of a checkpoint's safetensors weights (single file or sharded), or `None` if there are none."""
    single = os.path.join(checkpoint, "model.safetensors")
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return set(handle.keys())
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            return set(json.load(handle)["weight_map"])
    return None


def _init_fields(args: TrainingArguments) -> dict:
    """The constructor arguments of a `TrainingArguments`, to rebuild it as an `HEMConfig`."""
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}


class HEMLossFunction:
    """The callable returned by [`hem_loss_func`]; see there."""

    def __init__(self, terms: _LossTerms, average_tokens_across_devices: bool = True):
        self.terms = terms
        self.average_tokens_across_devices = average_tokens_across_devices

    @property
    def margins(self) -> torch.Tensor | None:
        return self.terms.margins

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
        if labels is None:
            raise ValueError("hem_loss_func got labels=None; the batches must contain 'labels'.")
        logits = self.terms.match_label_size(_logits_from_outputs(outputs), labels)
        local_sum, local_count = self.terms.parts(logits, labels)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world_size = torch.distributed.get_world_size() if distributed else 1
        # The Trainer's own share of this micro-batch in its accumulation window: labels != -100, as it counts.
        items_here = labels.ne(-100).sum().to(local_count)
        if world_size > 1:
            packed = torch.stack([local_count, items_here])
            torch.distributed.all_reduce(packed)
            global_count = packed[0]
            if self.average_tokens_across_devices:
                items_here = packed[1]  # num_items_in_batch is then summed over processes too
        else:
            global_count = local_count
        loss = local_sum / global_count.clamp_min(1).to(local_sum.dtype)
        trainer_multiplies = num_items_in_batch is not None and self.average_tokens_across_devices
        if num_items_in_batch is not None:
            # Weight of this micro-batch in the accumulation window; 1/k for k equal micro-batches.
            total = torch.as_tensor(num_items_in_batch, dtype=items_here.dtype, device=items_here.device)
            loss = loss * (items_here / total.clamp_min(1)).to(loss)
        if world_size > 1 and not trainer_multiplies:
            loss = loss * world_size  # undo DDP's gradient averaging ourselves
        return loss

    def __repr__(self) -> str:
        return f"HEMLossFunction(loss_name={self.terms.loss_name!r}, ignore_index={self.terms.ignore_index})"


def hem_loss_func(
    loss_name: str = "hem",
    margin: float | None = None,
    *,
    class_counts=None,
    num_classes: int | None = None,
    margin_scale: float = 2000.0,
    per_class_margins: bool | None = None,
    num_margin_samples: float | None = None,
    ignore_index: int = -100,
    logitnorm_temperature: float = 0.04,
    la_tau: float = 1.0,
    focal_gamma: float = 2.0,
    dice_smooth: float = 0.0,
    upsample_logits_in_loss: bool = False,
    average_tokens_across_devices: bool = True,
) -> HEMLossFunction:
    r"""A loss for the stock [`~transformers.Trainer`]'s `compute_loss_func` argument.

    The stock Trainer pops the labels and calls `loss_func(outputs, labels, num_items_in_batch=...)`. It treats the
    result as already scaled for gradient accumulation and, with `average_tokens_across_devices` (the default),
    multiplies it by the number of processes. This callable follows that contract:

    * several processes: the count of violating samples is all-reduced, so the gradient is that of the concatenated
      global batch, as in [`HEMTrainer`];
    * gradient accumulation: each micro-batch is its own HEM batch, weighted by its share of the window's labels
      (`labels != -100`, the Trainer's `num_items_in_batch`): `sum_m (items_m / items) * L_m`. For equal-sized
      micro-batches this is the plain mean that [`HEMTrainer`] optimises.

    [`HEMTrainer`] also derives margins from the training set, stores them in the model config and logs the `hem/*`
    metrics; with `hem_loss_func` pass the margin or the class counts yourself (e.g. from [`count_labels`]).

    Args:
        loss_name (`str`, defaults to `"hem"`): any name of [`get_loss`].
        margin (`float`, *optional*): one fixed margin for the margin losses.
        class_counts (`Sequence[int]`, *optional*): training samples (or pixels) per class: margins
            `sqrt(margin_scale / S)` (per class for `hem+`), and the priors of `la`.
        num_classes (`int`, *optional*): number of classes, needed with `margin` for per-class metrics; defaults to
            `len(class_counts)`.
        margin_scale (`float`, defaults to 2000.0): the paper's `M`.
        per_class_margins (`bool`, *optional*): HEM+ margins; defaults to `loss_name == "hem+"`.
        num_margin_samples (`float`, *optional*): `S`; defaults to `sum(class_counts)`. Pass the number of images for
            segmentation.
        ignore_index (`int`, defaults to -100): label value ignored by the loss (255 for most segmentation sets).
        logitnorm_temperature, la_tau, focal_gamma, dice_smooth: parameters of the baselines.
        upsample_logits_in_loss (`bool`, defaults to `False`): as the [`HEMConfig`] field: the margin losses
            upsample low-resolution segmentation logits block by block instead of materialising them.
        average_tokens_across_devices (`bool`, defaults to `True`): must equal the `TrainingArguments` field of the
            same name, which decides whether the Trainer multiplies the loss by the number of processes.

    Returns:
        `HEMLossFunction`: a callable `(outputs, labels, num_items_in_batch=None) -> torch.Tensor`.

    Example:

    ```python
    >>> counts = count_labels(train_ds, num_classes=10)
    >>> trainer = Trainer(model, args, train_dataset=train_ds, compute_loss_func=hem_loss_func("hem+", class_counts=counts))
    ```
    """
    name = loss_name.lower() if isinstance(loss_name, str) else loss_name
    if name not in LOSS_NAMES:
        raise ValueError(f"loss_name={loss_name!r} is not a known loss; expected one of {', '.join(LOSS_NAMES)}.")
    per_class = name == "hem+" if per_class_margins is None else bool(per_class_margins)
    if name == "hem+" and (margin is not None or not per_class):
        raise ValueError("loss 'hem+' uses per-class margins from class_counts=; use loss_name='hem' for one margin.")
    if class_counts is not None:
        class_counts = np.asarray(
            class_counts.detach().cpu() if torch.is_tensor(class_counts) else class_counts, dtype=np.int64
        )
        if num_classes is not None and class_counts.size != num_classes:
            raise ValueError(f"class_counts has {class_counts.size} entries but num_classes={num_classes}.")
        num_classes = class_counts.size
    if margin is not None:
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
        margins = torch.tensor([float(margin)] * (num_classes or 1), dtype=torch.float32)
    else:
        margins = _build_margins(
            num_classes=num_classes or 0,
            margin=None,
            class_counts=class_counts,
            margin_scale=margin_scale,
            per_class=per_class,
            num_samples=num_margin_samples,
        )
    if name in MARGIN_LOSS_NAMES and margins is None:
        raise ValueError(
            f"hem_loss_func({name!r}) needs margin= or class_counts= (e.g. count_labels(train_dataset, num_classes))."
        )
    if margin is not None and num_classes is None:
        # Without the number of classes the margin cannot be spread per class; metrics are not computed here anyway.
        per_class = False
    terms = _LossTerms(
        name,
        margins=margins,
        per_class_margins=per_class,
        class_counts=class_counts,
        ignore_index=ignore_index,
        logitnorm_temperature=logitnorm_temperature,
        la_tau=la_tau,
        focal_gamma=focal_gamma,
        dice_smooth=dice_smooth,
        upsample_logits_in_loss=upsample_logits_in_loss,
    )
    return HEMLossFunction(terms, average_tokens_across_devices=average_tokens_across_devices)
