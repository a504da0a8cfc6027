"""`hf-hem compare --task segmentation`: semantic segmentation, per-pixel IoU, through
[`~hf_hem.pipelines.run_semantic_segmentation`]."""

from __future__ import annotations

import json

from ...pipelines import (
    EMBEDDED_SEGMENTATION_DATASET_NAME,
    parse_semantic_segmentation_args,
    peek_segmentation_data_arguments,
    run_semantic_segmentation,
)
from ..plots.bars import plot_per_class_iou
from ..plots.segmentation import plot_segmentation_masks
from ..task import Metric
from ._script import ScriptTask, TaskPipeline, has_flag


__all__ = ["COMPARE_SEGMENTATION_IMAGE_SIZE", "DEFAULT_SEGMENTATION_LOSSES", "SegmentationTask"]

#: Losses compared by `--task segmentation` by default: the paper's segmentation comparison, and HEM+ (per-class
#: margins from pixel frequencies), since segmentation classes are never balanced.
DEFAULT_SEGMENTATION_LOSSES = ("ce", "hem", "hem+", "dice")
#: Side of the embedded digit scenes in `hf-hem compare --task segmentation` (the script's own default is 64): at 32
#: pixels an epoch costs about half as much, so every default loss gets enough epochs to level off within minutes on
#: two CPU cores (docs/semantic_segmentation.md shows the curves).
COMPARE_SEGMENTATION_IMAGE_SIZE = 32


class SegmentationTask(ScriptTask):
    """Semantic segmentation: mean IoU, class and pixel accuracy; masks and per-class IoU plots."""

    name = "segmentation"
    aliases = ("semantic-segmentation",)
    title = "Semantic segmentation"
    pipeline = TaskPipeline(
        peek_segmentation_data_arguments,
        parse_semantic_segmentation_args,
        run_semantic_segmentation,
        EMBEDDED_SEGMENTATION_DATASET_NAME,
    )
    default_losses = DEFAULT_SEGMENTATION_LOSSES
    # The embedded scenes are sized so that two seeds of every default loss train in minutes; elsewhere a run can
    # take hours, so one seed unless asked.
    embedded_seeds = (0, 1)
    metrics = (
        Metric("eval_mean_iou", "Mean IoU"),
        Metric("eval_mean_accuracy", "Mean class accuracy"),
        Metric("eval_overall_accuracy", "Pixel accuracy"),
    )
    summary_metrics = (Metric("eval_mean_iou", "mIoU"), Metric("eval_overall_accuracy", "pixel accuracy"))
    required_arrays = ("images", "labels", "predictions")
    progress_keys = ("loss", "eval_mean_iou")
    curve_key = "eval_mean_iou"
    curve_label = "mIoU"
    curve_panels = (*ScriptTask.curve_panels, Metric("eval_mean_iou", "mIoU"))
    sweep_metrics = (Metric("eval_mean_iou", "mIoU"), Metric("eval_overall_accuracy", "pixel accuracy"))
    # Segmentation margins count images, not pixels (docs/method.md, section 2).
    margin_samples_unit = "images"
    seed_draws = "scenes"
    metrics_note = (
        "Bold marks the best value of a row. IoU of a class is TP / (TP + FP + FN) over all validation pixels (a "
        "streamed confusion matrix); the mean IoU averages the classes present in the labels or the predictions. "
        "Pixels labelled with the ignore index (background after label reduction, crop padding) are not scored."
    )
    single_seed_note = (
        "One seed and a short schedule: differences of a point or two are within run-to-run noise, and HEM "
        "gains most from long schedules with a late learning-rate drop (see the method notes). Add "
        "`--seeds 0,1,2` for error bars."
    )
    folder_contents = (
        "a plain `transformers` checkpoint (load it with `AutoModelForSemanticSegmentation` and "
        "`AutoImageProcessor`), its model card, `all_results.json`, `per_class_iou.json` and `predictions.npz`"
    )

    def run_args(self, script_args, data_args):
        extra = []
        if data_args.uses_embedded_dataset and not has_flag(script_args, "--image_size"):
            extra += ["--image_size", str(COMPARE_SEGMENTATION_IMAGE_SIZE)]
        if not has_flag(script_args, "--disable_tqdm"):
            # The pipeline's own bars (pixel histogram, evaluation) would interleave with compare's nested ones.
            extra += ["--disable_tqdm", "true"]
        return extra

    def task_extras(self, record, run_dir):
        per_class_file = run_dir / "per_class_iou.json"
        if not per_class_file.is_file():
            return {}
        return {"per_class_iou": json.loads(per_class_file.read_text(encoding="utf-8"))}

    def embedded_dataset_text(self, model_args):
        return f"`{self.pipeline.embedded_dataset_name}` (synthetic scenes of scikit-learn's digits, embedded)"

    def local_dataset_text(self, data_args):
        if data_args.data_files:
            return f"parquet `{data_args.data_files[0]}`"
        return f"image/mask folders `{data_args.train_dir}`"

    def model_from_config_text(self, model_args):
        return f"SegFormer-{model_args.segformer_size} built from its config (random initialisation)"

    def setup_fields(self, data_args, records):
        return {"classes": [str(name) for name in records[0].arrays.get("class_names", [])]}

    def run_plots(self, shown):
        return [
            ("segmentation_masks.png", "Predicted masks next to the ground truth", plot_segmentation_masks),
            ("per_class_iou.png", "Per-class IoU", plot_per_class_iou),
        ]

    def data_lines(self, setup):
        classes = setup.get("classes") or []
        class_text = ", ".join(classes) if len(classes) <= 12 else f"{len(classes)} classes"
        return [
            f"- **Data**: {setup.get('dataset')}; {setup.get('num_train_samples')} training and "
            f"{setup.get('num_eval_samples')} validation images; classes {class_text}.",
        ]

    def run_fields(self, record):
        return {"per_class_iou": record.extras.get("per_class_iou")}
