"""Semantic segmentation with HEM, end to end: the library behind `scripts/run_semantic_segmentation.py`.

The flow follows transformers' `examples/pytorch/semantic-segmentation/run_semantic_segmentation.py`, with what
HEM experiments need on top:

* **Data**: ADE20K (`--dataset_name scene_parse_150`, read from the Hub's parquet conversion because the original
  is a loading script current `datasets` refuses), another Hub dataset, local parquet files in the ADE20K schema
  (`--data_files`), image/mask folders (`--train_dir`), or, with none of these, the embedded default: synthetic
  scenes of scikit-learn digits in the ADE20K schema (offline, no download). All of them go through
  [`~hf_hem.data.load_segmentation_dataset`], so a local parquet file takes exactly the path of the Hub dataset.
* **Model**: a pretrained checkpoint (`--model_name_or_path nvidia/mit-b0`), or a SegFormer built from its config
  (`--segformer_size tiny` or `b0`) together with an image processor saved beside it, so the result loads with plain
  `AutoModelForSemanticSegmentation` + `AutoImageProcessor`.
* **Training**: [`~hf_hem.HEMTrainer`] with per-pixel HEM / HEM+ (or any loss of the registry): logits upsampled to
  the label size, the ignore index removed before any gather; HEM+ margins from a streamed pixel histogram of the
  training masks, computed once and stored in the model config.
* **Metrics without holding logits**: every evaluation batch is reduced to class ids at label size
  (`preprocess_logits_for_metrics`) and folded into a streaming confusion matrix (`batch_eval_metrics`), giving mIoU,
  mean accuracy, overall accuracy and per-class IoU; memory does not grow with the evaluation set.
* **Model cards**: the HEM card with mIoU as a real `model-index` entry and per-class IoU in the body, in the output
  folder, in every checkpoint and on the Hub with `--push_to_hub`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSemanticSegmentation, SegformerConfig

from ..counting import ClassCounts, resolve_class_counts
from ..data import build_segmentation_transforms, collate_fn
from ..heads import head_named
from ..losses.registry import needs_class_counts
from ..metrics import StreamingConfusionMatrix
from ._common import PipelineRun, build_model_and_processor, pipeline_card_kwargs, truncate
from ._segmentation_args import (
    EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS,
    SEGFORMER_SIZES,
    SEGMENTATION_TRAINING_DEFAULTS,
    SegmentationDataArguments,
    SegmentationModelArguments,
    parse_semantic_segmentation_args,
    peek_segmentation_data_arguments,
)
from ._segmentation_data import (
    EMBEDDED_SEGMENTATION_DATASET_NAME,
    SegmentationData,
    _count_classes,
    _drop_undecodable,
    find_undecodable_examples,
    load_semantic_segmentation_data,
)


logger = logging.getLogger(__name__)

# The arguments (`_segmentation_args`) and the data loading (`_segmentation_data`) live in their own modules; every
# public name of the pipeline is importable from here.
__all__ = [
    "EMBEDDED_SEGMENTATION_DATASET_NAME",
    "EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS",
    "SEGFORMER_SIZES",
    "SEGMENTATION_TRAINING_DEFAULTS",
    "SegmentationData",
    "SegmentationDataArguments",
    "SegmentationMetrics",
    "SegmentationModelArguments",
    "build_segmentation_model_and_image_processor",
    "find_undecodable_examples",
    "load_semantic_segmentation_data",
    "parse_semantic_segmentation_args",
    "peek_segmentation_data_arguments",
    "run_semantic_segmentation",
    "scratch_segformer_config",
    "upsample_and_argmax",
]

# Metrics that go onto the model card (after dropping the `eval_` prefix).
_CARD_METRIC_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "loss")
# How many validation examples `predictions.npz` keeps for pictures (`hf-hem compare`).
_NUM_PICTURED_EXAMPLES = 4


# --------------------------------------------------------------------------------------------------------------------
# Model


def scratch_segformer_config(size: str, num_labels: int, id2label=None, label2id=None) -> SegformerConfig:
    """A SegFormer config with random weights: `tiny` for CPUs, or `b0` (the architecture of `nvidia/mit-b0`).

    Args:
        size (`str`): One of [`SEGFORMER_SIZES`].
        num_labels (`int`): Number of classes.
        id2label (`dict[int, str]`, *optional*), label2id (`dict[str, int]`, *optional*): Class names.

    Returns:
        [`~transformers.SegformerConfig`] with `semantic_loss_ignore_index=255`.
    """
    common = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id, "semantic_loss_ignore_index": 255}
    if size == "b0":
        return SegformerConfig(**common)  # SegformerConfig's defaults are MiT-b0
    if size == "tiny":
        return SegformerConfig(
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 1, 2, 4],
            decoder_hidden_size=64,
            drop_path_rate=0.0,
            **common,
        )
    raise ValueError(f"size={size!r}; expected one of {', '.join(SEGFORMER_SIZES)}.")


def _scratch_image_processor(image_size: int, do_reduce_labels: bool):
    """SegFormer's processor (ImageNet statistics) at `image_size`, saved beside a model built from its config."""
    try:  # transformers >= 5 without torchvision: the PIL backend, named explicitly to avoid a fallback warning
        from transformers.models.segformer.image_processing_pil_segformer import (
            SegformerImageProcessorPil as ProcessorClass,
        )
    except ImportError:  # pragma: no cover - older transformers
        from transformers import SegformerImageProcessor as ProcessorClass

    return ProcessorClass(size={"height": image_size, "width": image_size}, do_reduce_labels=do_reduce_labels)


def build_segmentation_model_and_image_processor(
    model_args: SegmentationModelArguments,
    id2label: dict[int, str],
    do_reduce_labels: bool,
    default_image_size: int = 512,
):
    """The segmentation model (pretrained or from config) and its image processor.

    Args:
        model_args ([`SegmentationModelArguments`]): Where the model comes from.
        id2label (`dict[int, str]`): The classes the model predicts (after label reduction).
        do_reduce_labels (`bool`): Stored in the image processor, so the saved processor describes the labels.
        default_image_size (`int`, *optional*, defaults to 512): Processor size of a model from config when
            `model_args.image_size` is not set.

    Returns:
        `tuple[PreTrainedModel, BaseImageProcessor]`.
    """
    label2id = {name: index for index, name in id2label.items()}
    model, image_processor = build_model_and_processor(
        model_args,
        AutoModelForSemanticSegmentation,
        id2label,
        label2id,
        scratch_config=lambda: scratch_segformer_config(model_args.segformer_size, len(id2label), id2label, label2id),
        scratch_image_processor=lambda: _scratch_image_processor(
            model_args.image_size or default_image_size, do_reduce_labels
        ),
    )
    if model_args.image_size is not None and hasattr(image_processor, "size"):
        image_processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    if hasattr(image_processor, "do_reduce_labels"):
        image_processor.do_reduce_labels = do_reduce_labels
    return model, image_processor


# --------------------------------------------------------------------------------------------------------------------
# Metrics


def upsample_and_argmax(logits, labels: torch.Tensor) -> torch.Tensor:
    """`preprocess_logits_for_metrics`: class ids at the label size, computed one image at a time.

    The logits are upsampled as SegFormer's loss does (bilinear, `align_corners=False`), so the metrics score the
    predictions the loss trains. Going image by image keeps the transient float tensor to one image's
    `(C, H, W)` instead of the batch's.

    Args:
        logits (`torch.Tensor` or `tuple`): Model logits `(N, C, h, w)` (the first entry of a tuple).
        labels (`torch.Tensor`): Labels `(N, H, W)`, giving the output size.

    Returns:
        `torch.Tensor` of shape `(N, H, W)`, `int64`.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.dim() != 4 or labels.dim() != 3:
        raise ValueError(
            f"expected logits (N, C, h, w) and labels (N, H, W), got shapes {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    size = labels.shape[-2:]
    predictions = torch.empty((logits.shape[0], *size), dtype=torch.long, device=logits.device)
    for index in range(logits.shape[0]):
        image_logits = logits[index : index + 1]
        if image_logits.shape[-2:] != size:
            image_logits = F.interpolate(image_logits.float(), size=size, mode="bilinear", align_corners=False)
        predictions[index] = image_logits[0].argmax(dim=0)
    return predictions


class SegmentationMetrics:
    """`compute_metrics` for the Trainer: a streaming confusion matrix over evaluation batches.

    With `batch_eval_metrics=True` the Trainer calls it once per batch (gathered over processes) with
    `compute_result=False`, and on the last batch with `compute_result=True`; nothing but the `(C, C)` matrix is kept.
    Without it, it is called once with all predictions. Predictions must be class ids at label size
    ([`upsample_and_argmax`] as `preprocess_logits_for_metrics`).

    Args:
        num_labels (`int`): Number of classes.
        ignore_index (`int`, *optional*, defaults to 255): Label value of pixels left out.
        id2label (`dict[int, str]`, *optional*): Class names for `per_class_iou`.

    Attributes:
        last_result (`dict` or `None`): Everything the latest finished evaluation computed: `mean_iou`,
            `mean_accuracy`, `overall_accuracy`, `per_category_iou`, `per_category_accuracy` and `confusion_matrix`.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, id2label: dict[int, str] | None = None):
        self.confusion = StreamingConfusionMatrix(num_labels, ignore_index=ignore_index)
        self.id2label = dict(id2label or {})
        self.last_result: dict[str, Any] | None = None

    def __call__(self, eval_prediction, compute_result: bool = True) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        labels = eval_prediction.label_ids
        if (
            torch.is_tensor(predictions)
            and predictions.is_floating_point()
            or (isinstance(predictions, np.ndarray) and np.issubdtype(predictions.dtype, np.floating))
        ):
            raise ValueError(
                "SegmentationMetrics needs class ids, got float predictions (logits?); pass "
                "preprocess_logits_for_metrics=upsample_and_argmax to the Trainer."
            )
        self.confusion.update(predictions, labels)
        if not compute_result:
            return {}
        result = self.confusion.compute()
        result["confusion_matrix"] = self.confusion.confusion_matrix.copy()
        self.last_result = result
        self.confusion.reset()
        return {key: result[key] for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}

    def per_class_iou(self) -> dict[str, float] | None:
        """`{class name: IoU}` of the latest evaluation, classes without any pixel left out; `None` before one."""
        if self.last_result is None:
            return None
        return {
            self.id2label.get(index, str(index)): float(value)
            for index, value in enumerate(self.last_result["per_category_iou"])
            if math.isfinite(value)
        }


def _pictured_examples(trainer, eval_dataset, image_processor, count: int) -> dict[str, np.ndarray]:
    """Images, labels and predicted class ids of the first `count` validation examples, for pictures."""
    subset = eval_dataset.select(range(min(count, len(eval_dataset))))
    batch = collate_fn([subset[index] for index in range(len(subset))])
    model = trainer.model
    model.eval()
    with torch.no_grad():
        pixel_values = batch["pixel_values"].to(trainer.args.device)
        logits = model(pixel_values=pixel_values).logits
        predictions = upsample_and_argmax(logits, batch["labels"]).cpu().numpy()
    mean = np.asarray(getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5), dtype=np.float32)
    std = np.asarray(getattr(image_processor, "image_std", None) or (0.5, 0.5, 0.5), dtype=np.float32)
    pixels = batch["pixel_values"].numpy().transpose(0, 2, 3, 1) * std + mean
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return {"images": images, "labels": batch["labels"].numpy(), "predictions": predictions}


# --------------------------------------------------------------------------------------------------------------------
# The pipeline


def run_semantic_segmentation(
    model_args: SegmentationModelArguments,
    data_args: SegmentationDataArguments,
    training_args,
    *,
    callbacks: Sequence | None = None,
) -> dict:
    """Train and evaluate a semantic segmenter with the loss of `training_args`, save it with its card, and push.

    Training runs when `training_args.do_train` is set, evaluation when `do_eval` is (both by default). The output
    folder receives the model, its image processor, the HEM model card (`README.md`), `all_results.json`,
    `per_class_iou.json` and `predictions.npz` (a few validation images with their labels and predicted masks, for
    pictures such as `hf-hem compare --task segmentation`'s).

    Args:
        model_args ([`SegmentationModelArguments`]): Model and image processor.
        data_args ([`SegmentationDataArguments`]): Data, labels, augmentation.
        training_args ([`HEMConfig`]): Training and loss settings.
        callbacks (`Sequence[TrainerCallback]`, *optional*): Extra Trainer callbacks. A `ProgressCallback` among them
            replaces the Trainer's own progress display.

    Returns:
        `dict[str, float]`: the metrics also saved in `all_results.json`: `train_*`, `eval_mean_iou`,
        `eval_mean_accuracy`, `eval_overall_accuracy`, `eval_loss`, the `eval_hem/*` diagnostics, and
        `train_skipped_examples` / `eval_skipped_examples` with `skip_bad_examples`.

    Raises:
        `ValueError`: bad input, naming the example: a mask whose size differs from its image, label values that are
            neither a class nor the ignore index (listing them); [`~hf_hem.data.UndecodableImageError`]: an image or
            mask that cannot be decoded (naming the file), unless `skip_bad_examples`.
        [`~hf_hem.pipelines.PushToHubError`]: `--push_to_hub` failed; the model is saved locally.
    """
    run = PipelineRun(model_args, training_args, callbacks, logger)

    # ---- data ----
    pixel_counts = None
    with training_args.main_process_first(desc="loading the dataset"):
        dataset, dataset_name, eval_split, id2label, do_reduce_labels = load_semantic_segmentation_data(
            data_args, model_args, seed=training_args.seed
        )
        train_dataset = truncate(dataset["train"], data_args.max_train_samples, training_args.seed)
        eval_dataset = truncate(dataset["validation"], data_args.max_eval_samples, training_args.seed)
        skipped = {}
        if data_args.skip_bad_examples:
            train_dataset, skipped["train_skipped_examples"] = _drop_undecodable(train_dataset, "train")
            eval_dataset, skipped["eval_skipped_examples"] = _drop_undecodable(eval_dataset, "validation")
        if id2label is None:
            id2label, pixel_counts = _count_classes(train_dataset, do_reduce_labels, data_args.skip_bad_examples)
    if len(train_dataset) == 0 or len(eval_dataset) == 0:
        raise ValueError(
            f"the train ({len(train_dataset)}) and validation ({len(eval_dataset)}) splits must both hold examples."
        )
    num_labels = len(id2label)
    class_names = [id2label[index] for index in range(num_labels)]
    logger.info(
        f"Dataset {dataset_name}: {len(train_dataset)} training and {len(eval_dataset)} validation images, "
        f"{num_labels} classes, do_reduce_labels={do_reduce_labels}."
    )

    # ---- model ----
    default_size = 64 if data_args.uses_embedded_dataset else 512
    model, image_processor = build_segmentation_model_and_image_processor(
        model_args, id2label, do_reduce_labels, default_image_size=default_size
    )
    ignore_index = training_args.loss_ignore_index
    if ignore_index is None:
        declared = head_named("semantic-segmentation").config_ignore_index(model.config)
        ignore_index = 255 if declared is None else declared
    if not 0 <= ignore_index <= 255 or ignore_index < num_labels:
        raise ValueError(
            f"the ignore index {ignore_index} must lie in [num_labels={num_labels}, 255], where masks and padding "
            "can hold it."
        )

    # ---- transforms (they decode, check and name bad examples) ----
    image_size = model_args.image_size or (default_size if data_args.uses_embedded_dataset else None)

    def transform(train: bool):
        return build_segmentation_transforms(
            image_processor,
            train=train,
            num_labels=num_labels,
            do_reduce_labels=do_reduce_labels,
            ignore_index=ignore_index,
            size=image_size,
            scale_range=data_args.scale_range,
            horizontal_flip=data_args.flip,
            skip_bad=data_args.skip_bad_examples,
            seed=training_args.seed if train else None,
        )

    train_dataset.set_transform(transform(train=True))
    eval_dataset.set_transform(transform(train=False))

    # ---- margins: pixel counts of the training masks, at their native size, streamed once ----
    counts = None
    if (
        run.do_train
        and needs_class_counts(training_args.loss_name, training_args.margin)
        and training_args.class_counts is None
    ):
        if pixel_counts is None:
            counts = resolve_class_counts(
                "masks",
                num_labels,
                dataset=train_dataset,
                ignore_index=ignore_index,
                mask_column="annotation",
                reduce_labels=do_reduce_labels,
                skip_bad=data_args.skip_bad_examples,
                num_samples=training_args.num_margin_samples,
                progress=training_args.should_log and not training_args.disable_tqdm,
            )
        else:
            counts = resolve_class_counts(
                "given", num_labels, class_counts=pixel_counts[0], num_samples=training_args.num_margin_samples
            )
            counts = ClassCounts(counts.counts, counts.num_samples or pixel_counts[1], "masks")

    # ---- trainer ----
    compute_metrics = SegmentationMetrics(num_labels, ignore_index=ignore_index, id2label=id2label)

    def card_kwargs(metrics: dict) -> dict:
        # The trainer fills in the model, loss, margins, classes and hyper-parameters; this adds what only the
        # pipeline knows. The per-class table is the latest evaluation's, like the metrics of `metrics`.
        return {
            **pipeline_card_kwargs(
                model_args, data_args, dataset_name, eval_split, "image-segmentation", metrics, _CARD_METRIC_KEYS
            ),
            "per_class_table": compute_metrics.per_class_iou() if metrics else None,
            "class_names": class_names,
        }

    trainer = run.build_trainer(
        model,
        image_processor,
        train_dataset,
        eval_dataset,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=upsample_and_argmax,
        card_kwargs=card_kwargs,
        # S = images, not pixels (docs/method.md, section 2): the counts come with the number of masks counted.
        class_counts=None if counts is None else counts.counts,
        num_margin_samples=None if counts is None else counts.num_samples,
    )
    run.train(len(train_dataset))

    if run.do_eval:
        run.save_eval_metrics(
            {**trainer.evaluate(eval_dataset), "eval_samples": len(eval_dataset), **skipped}, logged=True
        )
        if trainer.is_world_process_zero() and training_args.should_save:
            per_class = {name: None for name in class_names}
            per_class.update(compute_metrics.per_class_iou() or {})
            with open(os.path.join(training_args.output_dir, "per_class_iou.json"), "w", encoding="utf-8") as handle:
                json.dump(per_class, handle, indent=2)
            pictured = _pictured_examples(trainer, eval_dataset, image_processor, _NUM_PICTURED_EXAMPLES)
            run.results.arrays.update(
                class_names=np.asarray(class_names),
                confusion_matrix=compute_metrics.last_result["confusion_matrix"],
                **pictured,
            )
            np.savez(os.path.join(training_args.output_dir, "predictions.npz"), **run.results.arrays)
    elif skipped:
        run.results.update(skipped)

    return run.finish(
        dataset_name,
        f"segformer-{model_args.segformer_size}",
        len(train_dataset),
        classes=class_names,
        do_reduce_labels=do_reduce_labels,
        ignore_index=ignore_index,
        image_size=image_size,
    )
