"""`HEMTrainer`: the transformers `Trainer` with HEM / HEM+ (or any `hf_hem` loss) instead of cross-entropy.

The trainer holds trainer concerns only. The loss is `hf_hem.losses` (the run's [`LossSettings`], from
`HEMConfig.to_loss_settings()`, built into [`LossTerms`]); counts and margins are resolved by [`LossSetup`]; cards
and the Hub are [`HEMCardHubMixin`] and [`hf_hem.cards`].

How the loss is put together (every registry loss): each micro-batch of each process adds the unnormalised sum of
its per-sample losses and its count (violating samples for HEM, labelled ones for CE, ...) to the window of one
optimizer step, as named [`BatchSums`]; after the window's last micro-batch one all-reduce gives the global count, and the accumulated
gradients are divided by it before clipping. `k` micro-batches on `p` processes then give exactly the gradient of
one batch of `k * p` times the size (docs/trainer.md). `HEMConfig.skip_zero_loss` skips satisfied samples. Under
FSDP and DeepSpeed each micro-batch is normalised before its backward pass instead (`distributed.py`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..cards import HEMModelCardCallback
from ..hub import move_token_to_environment
from ..losses.registry import loss_spec
from ..losses.terms import BatchSums, LossTerms, count_dtype, logits_from_outputs, loss_share
from .causal_lm import fused_micro_batch
from .checkpoint_compat import CheckpointCompatMixin
from .distributed import (
    check_data_parallel_only,
    check_launch,
    check_sharded_engine,
    real_rows_in_batch,
    sharded_engine_name,
)
from .hem_config import HEMConfig
from .hub_mixin import HEMCardHubMixin
from .loss_setup import LossSetup, _datasets_module, counting_loader
from .margin_monitor import ViolatingFractionMonitor
from .sample_skipping import (
    SAMPLE_INDEX_KEY,
    StaleZeroLossTracker,
    WindowGatherer,
    ddp_participation,
    forward_micro_batch,
    indexed_training_data,
    skip_pays,
    uses_batch_norm,
)


logger = logging.getLogger(__name__)


class HEMTrainer(CheckpointCompatMixin, HEMCardHubMixin, Trainer):
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
    * Causal LMs (`AutoModelForCausalLM`; TRL/PEFT-wrapped too): logits `(N, L, V)`, one sample per predicted token,
      labels shifted as transformers' causal-LM loss shifts them; by default trained through the fused LM head,
      without the full logits (`hf_hem.trainer.causal_lm`, docs/language_models.md).

    Margins are derived at start-up from the training set's label counts (the Arrow label column for
    classification, a streamed pixel histogram for segmentation) and written into `model.config` (`hem_loss`,
    `hem_margins`, `hem_class_counts`, `hem_margin_scale`, `hem_num_margin_samples`), so checkpoints and Hub uploads
    carry them; resuming from a checkpoint reuses the margins stored there.

    Model cards and the Hub: image classifiers and semantic segmenters get the HEM card (see [`HEMCardHubMixin`]);
    `args.hub_token` is moved into the `HF_TOKEN` environment variable, so it is not pickled into `training_args.bin`.

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
        class_counts (`Sequence[int]`, *optional*):
            Training samples (segmentation: labelled pixels) per class, counted by the caller (the pipelines count
            once, before the trainer is built). Same meaning as `HEMConfig.class_counts`; give one or the other.
        num_margin_samples (`int`, *optional*):
            `S` for `class_counts` (the number of training images for segmentation); as `HEMConfig.num_margin_samples`.

    > [!NOTE]
    > The loss is that of the whole global batch: `k` micro-batches on `p` processes give exactly the gradient of one
    > batch of `k * p` times the size (see the module docstring), and the logged `loss` is that loss. Dice, a
    > set-level loss, is the mean of the micro-batches' and processes' Dice losses.
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

    # In training `compute_loss` returns an unnormalised sum and `training_step` normalises the accumulated
    # gradients by the count of the whole window, so the Trainer must not divide by the number of micro-batches.
    loss_is_scaled_for_ga = True

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
        class_counts=None,
        num_margin_samples: int | None = None,
    ):
        if not isinstance(args, HEMConfig):
            args = HEMConfig(output_dir="tmp_trainer") if args is None else HEMConfig.from_training_arguments(args)
        if card_kwargs is not None and not (isinstance(card_kwargs, dict) or callable(card_kwargs)):
            raise ValueError(f"card_kwargs must be a dict or a callable returning one, got {type(card_kwargs)}.")
        if class_counts is not None and args.class_counts is not None:
            raise ValueError("class_counts was given to HEMTrainer and in HEMConfig; give it in one place.")
        move_token_to_environment(args)
        # Read by init_hf_repo, which the base __init__ calls before anything below runs.
        self._defer_hub_errors = True
        self.card_kwargs = card_kwargs
        #: Final evaluation metrics for the card of `create_model_card` / `push_to_hub` (`None`: the latest logged).
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
        # Sums of the statistics by mode ("train": since the last log; "eval": the running evaluation).
        self._stat_sums: dict[str, BatchSums] = {}
        # Sums of the current accumulation window: count, loss sum, skipped samples, samples and the statistics.
        self._window: BatchSums | None = None
        self._violating_fraction = 0.0  # of the last micro-batch: with skipping on, the first one selects
        self._stale = None
        check_launch(os.environ, self.accelerator.num_processes)
        check_data_parallel_only(getattr(self.accelerator, "parallelism_config", None))
        # Under FSDP / DeepSpeed each micro-batch's loss is normalised before its backward pass (distributed.py).
        self.loss_is_scaled_for_ga = check_sharded_engine(
            sharded_engine_name(fsdp=self.is_fsdp_enabled, deepspeed=self.is_deepspeed_enabled),
            skip_zero_loss=args.skip_zero_loss,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
        )
        self._gatherer = WindowGatherer() if args.skip_gather_window and args.skip_zero_loss != "off" else None
        if args.skip_zero_loss == "stale" and self.train_dataset is not None:
            self._stale = StaleZeroLossTracker(
                len(self.train_dataset), args.stale_revisit_epochs, args.stale_final_fraction
            )
        self._eval_metric_prefix: str | None = None
        self._loss_setup = LossSetup(
            args,
            self.model,
            self.train_dataset,
            class_counts=class_counts if class_counts is not None else args.class_counts,
            num_margin_samples=num_margin_samples,
            count_batches=lambda: counting_loader(self, _datasets_module()),
            show_progress=lambda: self.is_world_process_zero() and not self.args.disable_tqdm,
        )
        self._loss_setup.store_in_config(self.model)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self.add_callback(HEMModelCardCallback(self.model_card_kwargs))
        if loss_spec(args.loss_name).margin_loss:
            self.add_callback(ViolatingFractionMonitor())  # warns when every sample keeps violating its margin

    # ---- set-up: the loss (classes, ignore index, counts, margins) ----

    def _ensure_loss_ready(self) -> LossTerms:
        return self._loss_setup.ready()

    @property
    def margins(self) -> torch.Tensor | None:
        """The `(num_labels,)` margins in use (one per target class; all equal for plain HEM), or `None`."""
        self._loss_setup.ready()
        return self._loss_setup.margins

    @property
    def class_counts(self) -> np.ndarray | None:
        """Training samples (segmentation: labelled pixels) per class behind the margins, or `None`."""
        self._loss_setup.ready()
        return self._loss_setup.class_counts

    # ---- Trainer overrides ----

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        # `train()` re-creates the model from `model_init`: give the new config the margins too.
        if getattr(self, "_loss_setup", None) is not None:
            self._loss_setup.store_in_config(model)
        return model

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """Trains as [`~transformers.Trainer.train`]; when resuming, the margins stored in the checkpoint's
        `config.json` are used (they define the loss being optimised), so no counting pass runs again."""
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint and self.args.output_dir else None
        if checkpoint is not None:
            self._loss_setup.adopt_checkpoint(checkpoint)
        self._loss_setup.ready()
        self._loss_setup.store_in_config(self.model)
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
        )

    def get_train_dataloader(self):
        """As the Trainer's; with `skip_zero_loss="stale"` every batch also carries its rows' dataset indices."""
        if self._stale is None:
            return super().get_train_dataloader()
        with indexed_training_data(self, _datasets_module()):
            return super().get_train_dataloader()

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        """As the Trainer's, with exact accumulation: after the window's last micro-batch the accumulated gradients
        are divided by the global count of the whole window (one all-reduce), before clipping and the optimizer step.

        Returns:
            The loss of the whole accumulated global batch after the last micro-batch of a window, 0 before, so the
            Trainer's running sum logs the optimised loss.
        """
        if not self.loss_is_scaled_for_ga:
            return super().training_step(model, inputs, num_items_in_batch)
        super().training_step(model, inputs, num_items_in_batch)
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        window, self._window = self._window, None
        if self.accelerator.num_processes > 1:
            window = window.all_reduce(self._sum_over_processes)
        count = window.count.clamp_min(1)
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_((1.0 / count).to(parameter.grad.dtype))
        self._add_stats("train", window)
        return (window.loss_sum / count).to(device=self.args.device, dtype=torch.float32)

    def _sum_over_processes(self, packed: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(packed, reduction="sum")

    def _add_stats(self, mode: str, sums: BatchSums) -> None:
        self._stat_sums[mode] = sums if mode not in self._stat_sums else self._stat_sums[mode] + sums

    def _training_loss(self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor, terms: LossTerms):
        """One micro-batch of training: the unnormalised loss to backpropagate; the window sums grow by its terms."""
        args: HEMConfig = self.args
        indices = inputs.pop(SAMPLE_INDEX_KEY, None)
        batch_size = labels.shape[0]
        rows = torch.arange(batch_size, device=labels.device)
        if self._stale is not None and indices is not None:
            progress = self.state.global_step / max(self.state.max_steps, 1)
            kept = rows[self._stale.keep(indices, progress).to(labels.device)]
            rows = kept if kept.numel() != 1 or not uses_batch_norm(model) else rows  # BatchNorm needs 2 samples
        labelled = (labels != terms.ignore_index).sum().to(count_dtype(labels.device))
        selecting = args.skip_zero_loss != "off" and skip_pays(self._violating_fraction, args.skip_backward_ratio)
        defer = self._gatherer is not None and selecting
        if self._gatherer is not None and not defer and self.accelerator.sync_gradients:
            self._flush_window(model, terms, keep_last=False)  # before this micro-batch's synchronised forward
        if self._stale is None and self._loss_setup.uses_fused_head(model):
            step = fused_micro_batch(model, terms, inputs, labels)  # causal LMs: no (tokens, vocabulary) logits
        else:
            step = forward_micro_batch(
                model,
                self.accelerator.unwrap_model(model),
                terms,
                inputs,
                labels,
                rows,
                select=selecting,
                distributed=self.accelerator.num_processes > 1,
                defer_backward=defer,
            )
        batch, has_loss, loss_sum = step.terms, step.has_loss, step.loss_sum
        if defer:
            self._gatherer.add(inputs, labels, rows[has_loss.to(rows.device)])
            if self.accelerator.sync_gradients:
                loss_sum = self._flush_window(model, terms, keep_last=True)
                if loss_sum is None and self.accelerator.num_processes > 1:
                    loss_sum = ddp_participation(model, inputs, batch_size)
        if self._stale is not None and indices is not None:
            self._stale.record(indices[rows.to(indices.device)], has_loss)
        self._violating_fraction = float(has_loss.float().mean()) if has_loss.numel() else 0.0
        if step.stats is not None:  # the step made its own statistics (the fused causal-LM head: no logits)
            stats = step.stats
        elif step.logits is not None:
            stats = terms.stats(step.logits, step.labels, batch.per_sample)
        else:  # nothing forwarded: left-out samples count as satisfied
            stats = labelled.new_zeros(len(terms.stat_names))
        count = labelled if terms.normaliser == "labelled" else batch.count
        local = BatchSums.of(
            count.to(labelled.dtype),
            loss_sum=batch.loss_sum,
            skipped=batch_size - step.num_backpropagated,
            samples=batch_size,
            stats=stats,
        )
        self._window = local if self._window is None else self._window + local
        if loss_sum is None:
            return torch.zeros((), device=labels.device, requires_grad=True)
        return loss_sum * self.accelerator.num_processes

    def _flush_window(self, model: nn.Module, terms: LossTerms, keep_last: bool) -> torch.Tensor | None:
        """Backpropagates the window's gathered violating samples (`skip_gather_window`); see [`WindowGatherer`]."""
        return self._gatherer.flush(
            model,
            terms,
            chunk_size=self.args.per_device_train_batch_size,
            backward=lambda loss_sum: self.accelerator.backward(loss_sum * self.accelerator.num_processes),
            no_sync=lambda: self.accelerator.no_sync(model),
            keep_last=keep_last,
        )

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
        terms = self._ensure_loss_ready()
        labels = self._loss_setup.pop_labels(inputs)  # causal LMs: the next-token labels (`causal_lm`)
        if model.training and self.loss_is_scaled_for_ga:
            loss = self._training_loss(model, inputs, labels, terms)
            return (loss, None) if return_outputs else loss
        inputs.pop(SAMPLE_INDEX_KEY, None)
        outputs = model(**inputs)
        logits = terms.match_label_size(logits_from_outputs(outputs), labels)
        real_rows = labels.shape[0]
        if not model.training:
            # The duplicates accelerate pads the last evaluation batch with take no part (as in compute_metrics).
            state, accelerator = self.accelerator.gradient_state, self.accelerator
            real_rows = real_rows_in_batch(state, accelerator.process_index, accelerator.num_processes, real_rows)
            if real_rows < labels.shape[0]:
                labels = labels.clone()
                labels[real_rows:] = terms.ignore_index
        batch = terms.compute(logits, labels)
        local_sum, local_count = batch.loss_sum, batch.count
        if real_rows == 0 and terms.normaliser == "set":  # a set of padding only is no set
            local_sum, local_count = torch.zeros_like(local_sum), torch.zeros_like(local_count)
        local = BatchSums.of(local_count, loss_sum=local_sum, stats=terms.stats(logits, labels, batch.per_sample))

        world_size = self.accelerator.num_processes
        # One all-reduce of a few numbers: the count that normalises the loss, the metric sums, and (for
        # evaluation, where there is no gradient) the loss sum, so every process reports the global batch loss.
        summed = local.all_reduce(self._sum_over_processes) if world_size > 1 else local
        if model.training:
            # DDP averages gradients over processes; the factor `world_size` turns that average into the sum
            # of all processes' contributions to (sum of per-sample losses) / (global count).
            loss = loss_share(local_sum, summed.count, world_size)
        else:
            # The global batch loss on every process (what the Trainer averages into eval_loss), still
            # differentiable in this process's logits for callers that need input gradients in eval mode.
            others = (summed.loss_sum.to(local_sum.dtype) - local_sum.detach()) if world_size > 1 else 0.0
            loss = (local_sum + others) / summed.count.clamp_min(1).to(local_sum.dtype)
        # Training: the statistics (the loss of a window is that of training_step); evaluation: the evaluation
        # set's loss is its loss sum over its count (evaluation_loop).
        self._add_stats("train" if model.training else "eval", summed)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the averaged training `hem/*` metrics to `logs`, then logs (evaluation metrics come complete from
        `evaluation_loop`)."""
        sums = self._stat_sums.pop("train", None) if self._eval_metric_prefix is None else None
        if sums is not None and self.loss_is_scaled_for_ga and self.args.skip_zero_loss != "off":
            logs["hem/skipped_fraction"] = float(sums.skipped / sums.samples.clamp_min(1))
        if sums is not None and self._loss_setup.terms is not None:
            logs.update(self._loss_setup.terms.metrics(sums.stats.tolist()))
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        previous = self._eval_metric_prefix
        self._eval_metric_prefix = metric_key_prefix  # the evaluation's log() must not take the training sums
        try:
            return super().evaluate(
                eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
            )
        finally:
            self._eval_metric_prefix = previous

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """As the Trainer's (for `evaluate` and `predict`); `<prefix>_loss` is the loss of the whole evaluation set
        (loss sum over count, as the training loss of one batch holding every sample) and the `<prefix>_hem/*`
        metrics are added. Both leave out the duplicates that pad the last batch under several processes, so they
        are the same for any number of processes and any batch size."""
        self._stat_sums.pop("eval", None)
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
        sums = self._stat_sums.pop("eval", None)
        if sums is not None and self._loss_setup.terms is not None and output.metrics is not None:
            output.metrics[f"{metric_key_prefix}_loss"] = float(sums.loss_sum / sums.count.clamp_min(1))
            metrics = self._loss_setup.terms.metrics(sums.stats.tolist())
            output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in metrics.items()})
        return output
