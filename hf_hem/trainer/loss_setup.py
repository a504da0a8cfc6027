"""The loss one [`HEMTrainer`] run optimises: classes, ignore index, class counts, margins and the loss terms.

Counts come from [`hf_hem.counting.resolve_class_counts`] with an explicit source (given, the Arrow label column,
or the collated training batches), margins from [`hf_hem.margins.build_margins`] (or from a checkpoint / model
config of an earlier HEM run), and the loss from the registry table through [`LossTerms`].
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ..counting import ClassCounts, find_label_column, preserved_random_state, resolve_class_counts
from ..heads import FALLBACK_HEAD, find_head
from ..losses.terms import LossTerms
from ..margins import CONFIG_KEYS, Margins, margin_notes, store_margins_in_config, stored_margins
from . import causal_lm


logger = logging.getLogger(__name__)


def _datasets_module():
    """The `datasets` package, or `None`: plain torch datasets must not need it."""
    try:
        import datasets
    except ImportError:
        return None
    return datasets


class LossSetup:
    """Resolves and holds what defines the loss of a run.

    Args:
        args ([`HEMConfig`]): the loss settings.
        model: the model (its config gives the classes, the ignore index and possibly stored margins).
        train_dataset: the training set, counted when the loss needs class counts.
        class_counts (*optional*): counts given by the caller (`HEMTrainer(class_counts=)` or `args.class_counts`).
        num_margin_samples (`int`, *optional*): `S` for them.
        count_batches (`Callable`, *optional*): returns `(batches, total, generator_owners)` for a counting pass
            through the data pipeline (the trainer builds the loader; only it knows the collator).
        show_progress (`Callable[[], bool]`, *optional*): whether that pass shows a progress bar.

    Counting through the pipeline waits until [`ready`] is first called (at `train()`), so a resumed run can reuse
    the margins stored in its checkpoint instead.
    """

    def __init__(
        self,
        args,
        model,
        train_dataset,
        *,
        class_counts=None,
        num_margin_samples: int | None = None,
        count_batches: Callable[[], tuple[Iterable, int, tuple]] | None = None,
        show_progress: Callable[[], bool] = lambda: False,
    ):
        self.args = args
        self.train_dataset = train_dataset
        self._count_batches = count_batches
        self._show_progress = show_progress
        #: The run's margins (`None` until known, or for losses without margins).
        self.run_margins: Margins | None = None
        self.counts: ClassCounts | None = None
        self.terms: LossTerms | None = None
        self.count_pending = False
        self._fused_head: bool | None = None
        # The layout of the model's head (`hf_hem.heads`); a model of no known head is read as a classifier.
        self.head = find_head(model) or FALLBACK_HEAD
        # A causal LM predicts the next token: `(N, L, V)` logits, one sample per shifted label (see `causal_lm`).
        self.causal_lm = self.head.label_shift > 0
        # Token classification heads and causal LMs put the classes last: `(N, L, C)` logits, one label per token.
        self.token_labels = self.head.nested_labels
        self.class_dim = self.head.class_dim
        config = getattr(model, "config", None)
        # A multiple-choice head scores each choice: its classes are the choices, whatever config.num_labels says.
        self.num_choices = (
            self._num_choices(model, config, train_dataset, class_counts) if self.head.classes == "choices" else None
        )
        if self.head.classes == "vocabulary":
            self.num_classes = causal_lm.vocabulary_size(model)
        else:
            self.num_classes = self.num_choices or self._model_num_classes(config, class_counts)
        # Appended to label errors: what the classes are, and where their number comes from.
        self.classes_note = (
            f"The model has num_labels={self.num_classes}."
            if self.num_choices is None
            else (
                f"The model is a multiple-choice head: its classes are the {self.num_choices} choices (dim 1 of "
                f"input_ids and of the logits), so labels must be choice indices in [0, {self.num_choices})."
            )
        )
        # Only a segmentation head reads an ignore index from the config (each segmenter names the field its own
        # way): BEiT's image classifiers carry `semantic_loss_ignore_index` too (255), and for them 255 is a class
        # index, not "no label". A model of unknown head with that field is taken for a segmenter.
        semantic = self.head.config_ignore_index(config)
        pixel_labels = semantic is not None
        default_ignore = int(semantic) if semantic is not None else -100
        self.ignore_index = default_ignore if args.loss_ignore_index is None else int(args.loss_ignore_index)
        #: The run's loss settings, with the ignore index and the class dimension of this model filled in.
        self.settings = args.to_loss_settings().replace(ignore_index=self.ignore_index, class_dim=self.class_dim)
        num_samples = num_margin_samples if num_margin_samples is not None else args.num_margin_samples
        if self.causal_lm:
            self._setup_causal_lm(class_counts, num_samples)
        elif class_counts is not None:
            if num_samples is None and pixel_labels:
                num_samples = self._segmentation_num_images()
            self.counts = resolve_class_counts(
                "given", self.num_classes, class_counts=class_counts, num_samples=num_samples
            )
        elif train_dataset is not None:
            self.counts = self._count_from_label_column(num_samples)
            # Dense labels, transformed or non-Arrow datasets: count through the data pipeline, but only when the
            # loss needs counts.
            self.count_pending = self.counts is None and self.settings.needs_class_counts
        elif not self.adopt_stored(config, "the model config") and self.settings.needs_class_counts:
            raise ValueError(
                f"loss_name={args.loss_name!r} needs margins or class priors, but there is no train_dataset to count "
                "labels from: pass train_dataset, class_counts= or margin=, or a model whose config carries "
                "hem_margins from an HEM training run."
            )
        if not self.count_pending:
            self._build_terms()

    def _setup_causal_lm(self, class_counts, num_samples) -> None:
        """Causal LMs: no label column to count (the collator makes the labels); token counts only for `hem+`/`la`."""
        if class_counts is not None:
            self.counts = resolve_class_counts(
                "given", self.num_classes, class_counts=class_counts, num_samples=num_samples
            )
        elif self.args.margin is None and self._needs_token_counts() and self.train_dataset is None:
            raise ValueError(
                f"loss_name={self.args.loss_name!r} on a causal LM needs the training set's token counts: pass "
                "train_dataset or class_counts= (one count per vocabulary entry)."
            )
        else:
            self.count_pending = self._needs_token_counts()

    def _needs_token_counts(self) -> bool:
        """HEM+ margins and logit-adjustment priors come from token counts; every other loss takes fixed margins."""
        return self.settings.per_class_margins or self.settings.spec.needs_class_counts

    def _model_num_classes(self, config, class_counts) -> int:
        problem_type = getattr(config, "problem_type", None)
        if problem_type in ("regression", "multi_label_classification"):
            raise ValueError(
                f"model config problem_type={problem_type!r}: HEMTrainer trains single-label classifiers and "
                "segmenters; expected problem_type None or 'single_label_classification'."
            )
        num_labels = getattr(config, "num_labels", None)
        if num_labels is None:
            if class_counts is not None:
                return len(class_counts)
            raise ValueError(
                "the model has no config.num_labels; pass class_counts= so the number of classes is known."
            )
        if num_labels < 2:
            raise ValueError(
                f"the model has num_labels={num_labels}; HEM needs at least 2 classes (num_labels=1 is regression)."
            )
        return int(num_labels)

    @staticmethod
    def _num_choices(model, config, train_dataset, class_counts) -> int | None:
        """The number of choices of a multiple-choice model.

        Read from the first training row (`input_ids`, or another input, of shape `(num_choices, seq_len)`), else
        from `class_counts` (one count per choice position), else from margins stored by an earlier HEM run; with
        none of them, `None` (and a warning): `config.num_labels` is then taken as the number of classes.
        """
        name = type(model).__name__
        row = None
        if train_dataset is not None and not isinstance(train_dataset, torch.utils.data.IterableDataset):
            try:
                if len(train_dataset):
                    with preserved_random_state(train_dataset):  # a peek must not move a random transform
                        row = train_dataset[0]
            except (TypeError, NotImplementedError):  # no len() or no indexing: an iterable in disguise
                row = None
        for key in ("input_ids", "attention_mask", "inputs_embeds", "token_type_ids"):
            value = row.get(key) if isinstance(row, dict) else None
            if value is not None:
                # A row of a multiple-choice set is (num_choices, seq_len): a list of per-choice sequences (possibly
                # of different lengths before padding) or a tensor; inputs_embeds have one more dim.
                if isinstance(value, (list, tuple)):
                    rank = 2 if value and isinstance(value[0], (list, tuple, np.ndarray, torch.Tensor)) else 1
                    size = len(value)
                else:
                    rank, size = np.ndim(value), (np.shape(value) or (0,))[0]
                if rank < 2:
                    raise ValueError(
                        f"train_dataset rows of a multiple-choice model must hold {key} of shape (num_choices, "
                        f"seq_len), got a single sequence of length {size}: that is a sequence-classification row."
                    )
                num_choices = int(size)
                break
        else:
            stored = getattr(config, "hem_margins", None)
            if class_counts is not None:
                num_choices = len(class_counts)
            elif stored is not None:
                num_choices = len(stored)
            else:
                # Nothing to read the choices from (no training rows, e.g. evaluation only): keep num_labels.
                logger.warning(
                    f"cannot tell how many choices the multiple-choice model {name} scores (no train_dataset rows, "
                    f"class_counts or stored margins); using config.num_labels={getattr(config, 'num_labels', None)}"
                    " as the number of classes. Pass class_counts= with one count per choice if that is wrong."
                )
                return None
        if num_choices < 2:
            raise ValueError(f"a multiple-choice model needs at least 2 choices per sample, got {num_choices}.")
        return num_choices

    def _segmentation_num_images(self) -> int:
        """S for segmentation counts given as `class_counts`: pixel totals as S would drive the margins to ~0."""
        if self.train_dataset is not None and hasattr(self.train_dataset, "__len__"):
            return len(self.train_dataset)
        raise ValueError(
            "class_counts of a segmentation model are pixel counts; pass num_margin_samples= (the number of "
            "training images, S in mu = sqrt(M / S)) or a train_dataset with a length."
        )

    def _count_from_label_column(self, num_samples) -> ClassCounts | None:
        """Counts from the Arrow label column of a `datasets.Dataset`; `None` when the column cannot be counted."""
        datasets = _datasets_module()
        dataset = self.train_dataset
        if datasets is None or not isinstance(dataset, datasets.Dataset):
            return None
        column = find_label_column(dataset, self.num_classes, self.args.class_counts_column, nested=self.token_labels)
        if column is None:
            return None
        try:
            return resolve_class_counts(
                "label_column",
                self.num_classes,
                dataset=dataset,
                label_column=column,
                nested=self.token_labels,
                ignore_index=self.ignore_index,
                num_samples=num_samples,
            )
        except ValueError as error:
            raise ValueError(f"train_dataset: {error} {self.classes_note}") from None

    def _count_through_pipeline(self) -> None:
        """Counts labels (or label pixels) from collated training batches, exactly as the model will see them."""
        datasets = _datasets_module()
        dataset = self.train_dataset
        iterable_types = (torch.utils.data.IterableDataset,) + ((datasets.IterableDataset,) if datasets else ())
        if isinstance(dataset, iterable_types) or not hasattr(dataset, "__len__") or self._count_batches is None:
            raise ValueError(
                f"loss_name={self.args.loss_name!r} needs class counts, which cannot be taken from an iterable "
                "train_dataset; pass class_counts= (or margin= for a single margin)."
            )
        batches, total, owners = self._count_batches()
        if self.causal_lm:
            with preserved_random_state(*owners):
                counts, _ = causal_lm.count_target_tokens(batches, self.num_classes, self.ignore_index)
            self.counts = ClassCounts(counts, None, "batches")
            self.count_pending = False
            return
        try:
            self.counts = resolve_class_counts(
                "batches",
                self.num_classes,
                batches=batches,
                nested=self.token_labels,
                ignore_index=self.ignore_index,
                num_samples=self.args.num_margin_samples,
                generator_owners=owners,
                progress=self._show_progress(),
                total=total,
            )
        except ValueError as error:
            raise ValueError(f"train_dataset: {error} {self.classes_note}") from None
        self.count_pending = False

    def adopt_stored(self, stored, source: str) -> bool:
        """Reuses margins and counts stored by an earlier HEM run (a config, or a `config.json` dict).

        Returns:
            `bool`: whether margins were found (the terms must then be rebuilt with [`ready`]).
        """
        per_class = self.settings.per_class_margins
        margins = None if stored is None else stored_margins(stored, self.num_classes, source, per_class)
        if margins is None:
            return False
        read = stored.get if isinstance(stored, dict) else (lambda key: getattr(stored, key, None))
        loss_name = self.args.loss_name
        if read("hem_loss") not in (None, loss_name):
            logger.warning(f"{source} was trained with loss {read('hem_loss')!r}; continuing with {loss_name!r}.")
        derived = self.margins
        if derived is not None and not torch.allclose(derived, margins.values, rtol=1e-6, atol=0):
            logger.warning(
                f"Using the margins stored in {source} ({margins.values.tolist()}) instead of the margins derived for "
                f"this run ({derived.tolist()}), so that the resumed run optimises the same loss."
            )
        self.run_margins = margins
        counts = read("hem_class_counts")
        stored_counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        self.counts = None if counts is None else ClassCounts(stored_counts, read("hem_num_margin_samples"), "stored")
        self.count_pending = False
        self.terms = None
        return True

    def adopt_checkpoint(self, checkpoint: str) -> bool:
        """Reuses the margins stored in a checkpoint's `config.json` (they define the loss a resumed run optimises)."""
        config_file = os.path.join(checkpoint, "config.json")
        if not os.path.isfile(config_file):
            return False
        with open(config_file, encoding="utf-8") as handle:
            stored = {key: value for key, value in json.load(handle).items() if key in CONFIG_KEYS}
        return self.adopt_stored(stored, source=f"checkpoint {checkpoint}")

    @property
    def margins(self) -> torch.Tensor | None:
        """The `(num_classes,)` margin values of the run (see [`run_margins`]), or `None`."""
        return None if self.run_margins is None else self.run_margins.values

    def _build_terms(self) -> None:
        settings = self.settings
        counts = None if self.counts is None else self.counts.counts
        if self.run_margins is None:
            num_samples = None if self.counts is None else self.counts.num_samples
            # Causal LMs take a fixed margin per token (`causal_lm_margin`) when `margin` is unset: the paper's rule
            # with S = training tokens would give tiny margins (see `causal_lm`).
            tokens = self.causal_lm and settings.spec.margin_loss and settings.margin is None
            self.run_margins = settings.margins(self.num_classes, counts, num_samples, tokens=tokens)
            if self.run_margins is not None and settings.spec.margin_loss and not tokens:
                self._tell_about_margins(counts, num_samples)
        self.terms = LossTerms(settings, margins=self.run_margins, class_counts=counts)

    def _tell_about_margins(self, counts, num_samples) -> None:
        """Once per run, at start-up: an info line when the rule's margin was capped, a warning when the margin is
        large for the data (HEM then learns far slower than CE, with `hem/violating_fraction` stuck near 1)."""
        capped, large = margin_notes(
            self.margins,
            counts,
            scale=self.settings.margin_scale,
            num_samples=num_samples,
            max_margin=self.settings.max_margin,
            fixed=self.settings.margin is not None,
        )
        if capped is not None:
            logger.info(capped)
        if large is not None:
            logger.warning(large)

    def uses_fused_head(self, model) -> bool:
        """Whether training micro-batches of this causal LM go through the fused HEM head (`causal_lm_fused_head`)."""
        if self._fused_head is None:
            args = self.args
            self._fused_head = False
            if self.causal_lm and args.causal_lm_fused_head and args.loss_name in ("hem", "hem+"):
                reason = (
                    "skip_zero_loss is on" if args.skip_zero_loss != "off" else causal_lm.fused_head_unsupported(model)
                )
                if reason is None:
                    self._fused_head = True
                else:
                    logger.warning(f"causal_lm_fused_head: training builds the full logits, because {reason}.")
        return self._fused_head

    def pop_labels(self, inputs: dict) -> torch.Tensor:
        """Removes the labels from a batch (the model's own loss must not run) and returns what the loss scores:
        the labels as they are, or for a causal LM the next-token labels, shifted as transformers' loss does."""
        if self.causal_lm:
            return causal_lm.pop_next_token_labels(inputs, self.ignore_index)
        if "labels" not in inputs:
            raise ValueError(f"HEMTrainer needs 'labels' in every batch; batch keys: {list(inputs.keys())}.")
        return inputs.pop("labels")

    def ready(self) -> LossTerms:
        """The loss terms, counting through the data pipeline first if that is still pending."""
        if self.terms is None:
            if self.count_pending:
                self._count_through_pipeline()
            self._build_terms()
        return self.terms

    @property
    def class_counts(self) -> np.ndarray | None:
        """Counts behind the margins (`None` when unknown); never starts a counting pass."""
        return None if self.counts is None else self.counts.counts

    def store_in_config(self, model) -> None:
        """Writes the loss, margins and counts into `model.config` (checkpoints and Hub uploads carry them)."""
        if self.terms is not None:
            store_margins_in_config(
                getattr(model, "config", None),
                self.args.loss_name,
                self.margins,
                self.class_counts,
                self.args.margin_scale,
                None if self.counts is None else self.counts.num_samples,
            )


def counting_loader(trainer, datasets_module=None):
    """`(loader, len(loader), generator owners)` over a trainer's training set as the model will see it, for the
    counting pass of [`LossSetup`]: its collator, its column removal, no shuffling."""
    dataset, collator = trainer.train_dataset, trainer.data_collator
    if datasets_module is not None and isinstance(dataset, datasets_module.Dataset):
        dataset = trainer._remove_unused_columns(dataset, description="margin counting")
    else:
        collator = trainer._get_collator_with_removed_columns(collator, description="margin counting")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=trainer.args.per_device_train_batch_size,
        shuffle=False,
        collate_fn=collator,
        num_workers=trainer.args.dataloader_num_workers,
    )
    return loader, len(loader), (trainer.train_dataset, dataset, collator)
