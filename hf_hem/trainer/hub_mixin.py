"""Model cards and the Hub for [`HEMTrainer`]: the HEM card instead of the stock one, and push behaviour.

A mixin of `Trainer` overrides, kept beside the trainer so that `hem_trainer.py` holds the training concerns; the
card itself is [`hf_hem.cards`].
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..cards import (
    card_loss_settings,
    card_task_for_model,
    card_task_tags,
    card_worthy_metrics,
    latest_eval_metrics,
    training_summary_from_args,
    write_model_card,
)
from ..hub import hub_reference, scrub_secrets


logger = logging.getLogger(__name__)


class HEMCardHubMixin:
    """`Trainer` overrides for the HEM card and the Hub; mixed into [`HEMTrainer`] (reads `self._loss_setup`).

    The trainer writes the HEM card (loss, margins, every metric as a real `model-index` entry) into the output
    folder when training starts, into every checkpoint ([`HEMModelCardCallback`]), and in `create_model_card` /
    `push_to_hub`. If the Hub repo cannot be created when training starts, training goes on without checkpoint
    pushes and the final `push_to_hub` retries (and raises if the Hub is still unreachable). `save_model` only saves
    to disk; push with `push_to_hub`.
    """

    def model_card_kwargs(
        self, metrics: dict[str, float] | None = None, task: str | None = None
    ) -> dict[str, Any] | None:
        """The keyword arguments of [`hf_hem.cards.write_model_card`] for this run's card, or `None` for no HEM card.

        The trainer fills in what it knows: the model name (from `hub_model_id` or the output folder), the base
        model (`config._name_or_path` when it is a Hub id), the task (from the model's head, see
        [`hf_hem.heads.find_head`]: image classification, semantic segmentation, text (sequence), token and audio
        classification, multiple choice, causal language models), the loss and its margins, class names (`config.id2label`), the
        training hyper-parameters, and the card-worthy `eval_*` metrics. `card_kwargs` (see [`HEMTrainer`]) override
        these.

        Args:
            metrics (`dict[str, float]`, *optional*): Evaluation metrics (`eval_*` keys) for the card.
            task (`str`, *optional*): The card task when neither `card_kwargs` nor the model's head names one (e.g.
                the `tasks` a script passes to `create_model_card`).

        Returns:
            `dict` or `None`: `None` when the task is neither known nor given.
        """
        metrics = dict(metrics or {})
        extra = self.card_kwargs(metrics) if callable(self.card_kwargs) else dict(self.card_kwargs or {})
        extra = dict(extra or {})
        model = self.accelerator.unwrap_model(self.model) if self.model is not None else None
        task = extra.get("task") or card_task_for_model(model) or task
        if task is None:
            return None
        args = self.args
        hub_model_id = self.hub_model_id or args.hub_model_id
        model_name = (hub_model_id or Path(args.output_dir or "model").resolve().name).split("/")[-1]
        config = getattr(model, "config", None)
        id2label = getattr(config, "id2label", None) or {}
        setup = self._loss_setup  # not the trainer's properties: a card must not start a counting pass
        class_names = [str(id2label[index]) for index in sorted(id2label)] if id2label else None
        # A multiple-choice head's classes are the choice positions, which `id2label` (LABEL_0, LABEL_1 by default)
        # does not name; any other mismatch with the margins would label them wrongly too.
        if task == "multiple-choice" or (
            class_names is not None and setup.margins is not None and len(class_names) != len(setup.margins)
        ):
            class_names = None
        kwargs = {
            "model_name": model_name,
            "base_model": hub_reference(getattr(config, "_name_or_path", None)),
            "hub_model_id": hub_model_id,
            "task": task,
            "loss_name": args.loss_name,
            "loss_settings": card_loss_settings(
                args.loss_name,
                margins=setup.run_margins,
                class_counts=setup.class_counts,
                num_margin_samples=None if setup.counts is None else setup.counts.num_samples,
                options=args,
            ),
            "metrics": card_worthy_metrics(metrics),
            "class_names": class_names,
            "tags": card_task_tags(task) or [],
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

        Every head of [`hf_hem.heads.HEADS`] gets the HEM card (image, text, token and audio classification,
        multiple choice, semantic segmentation, causal language models); other models (e.g. a masked language model) get the stock card. Called by
        `push_to_hub`. The metrics are `card_metrics` when set (the pipelines set the final evaluation),
        else the latest evaluation in the log history. The stock arguments `license`, `tags` (added to the HEM tags),
        `model_name`, `finetuned_from` and `dataset` are honoured; the others only apply to the stock card.
        """
        if not self.is_world_process_zero():
            return
        metrics = self.card_metrics if self.card_metrics is not None else latest_eval_metrics(self.state.log_history)
        # transformers' example scripts name the task (`tasks="text-classification"`): used when the head does not.
        task_names = [tasks] if isinstance(tasks, str) else list(tasks or [])
        task = next((name for name in task_names if card_task_tags(name) is not None), None)
        kwargs = self.model_card_kwargs(metrics, task=task)
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
                f"{scrub_secrets(str(error), [token, os.environ.get('HF_TOKEN')])}). Training continues, checkpoints are not "
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
