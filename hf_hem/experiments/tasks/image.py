"""`hf-hem compare` (`--task classification`, the default): image classification with known vs unknown classes,
through [`~hf_hem.pipelines.run_image_classification`]."""

from __future__ import annotations

import functools

from ...pipelines import (
    EMBEDDED_DATASET_NAME,
    parse_image_classification_args,
    peek_data_arguments,
    run_image_classification,
)
from ..plots.bars import plot_per_class_accuracy
from ..plots.scores import plot_reliability, plot_roc, plot_score_histograms
from ..task import Metric
from ._script import ScriptTask, TaskPipeline


__all__ = ["DEFAULT_UNKNOWN_CLASSES", "ImageTask"]

#: Digits held out as unknown on the embedded default, unless `--unknown_classes` says otherwise.
DEFAULT_UNKNOWN_CLASSES = ("8", "9")


class ImageTask(ScriptTask):
    """Image classification: accuracy, calibration, and the rejection of unknown classes (and an OOD set)."""

    name = "image"
    aliases = ("classification", "image-classification")
    title = "Image classification"
    pipeline = TaskPipeline(
        peek_data_arguments, parse_image_classification_args, run_image_classification, EMBEDDED_DATASET_NAME
    )
    embedded_seeds = (0, 1, 2)  # runs on the embedded digits take seconds
    metrics = (
        Metric("eval_accuracy", "Accuracy"),
        Metric("eval_balanced_accuracy", "Balanced accuracy"),
        Metric("eval_ece", "Expected calibration error", False),
        Metric("eval_rejection_auroc_msp", "Unknown-class AUROC, MSP"),
        Metric("eval_rejection_auroc_mls", "Unknown-class AUROC, max logit"),
        Metric("eval_rejection_fpr95_msp", "Unknown-class FPR at 95% TPR, MSP", False),
        Metric("eval_rejection_fpr95_mls", "Unknown-class FPR at 95% TPR, max logit", False),
        Metric("eval_ood_auroc_msp", "OOD AUROC, MSP"),
        Metric("eval_ood_auroc_mls", "OOD AUROC, max logit"),
        Metric("eval_ood_fpr95_msp", "OOD FPR at 95% TPR, MSP", False),
        Metric("eval_ood_fpr95_mls", "OOD FPR at 95% TPR, max logit", False),
    )
    summary_metrics = (
        Metric("eval_accuracy", "accuracy"),
        Metric("eval_rejection_auroc_msp", "unknown-class AUROC (MSP)"),
        Metric("eval_rejection_fpr95_msp", "FPR at 95% TPR (MSP)", False),
        Metric("eval_ece", "calibration error", False),
    )
    required_arrays = ("eval_logits", "eval_labels")
    progress_keys = ("loss", "eval_accuracy")
    curve_key = "eval_accuracy"
    curve_label = "accuracy"
    curve_panels = (
        *ScriptTask.curve_panels,
        Metric("eval_accuracy", "accuracy"),
        Metric("eval_rejection_auroc_msp", "unknown-class AUROC (MSP)"),
    )
    sweep_metrics = (
        Metric("eval_accuracy", "accuracy"),
        Metric("eval_rejection_auroc_msp", "unknown-class AUROC (MSP)"),
        Metric("eval_rejection_auroc_mls", "unknown-class AUROC (max logit)"),
    )
    margin_samples_unit = "images"
    seed_draws = "train/validation split"
    metrics_note = (
        "Bold marks the best value of a row. *MSP* rejects an image when its maximum softmax probability is low, "
        "*max logit* when its largest logit is low. AUROC is the probability that a random known image scores higher "
        "than a random unknown one (1 is perfect, 0.5 is chance); *FPR at 95% TPR* is the share of unknown images "
        "still accepted when 95% of the known ones are. The expected calibration error (15 bins) measures the gap "
        "between confidence and accuracy."
    )
    single_seed_note = (
        "One seed on a small dataset: differences of a point or two are within run-to-run noise. "
        "Add `--seeds 0,1,2` for error bars."
    )
    folder_contents = (
        "a plain `transformers` checkpoint (load it with `AutoModelForImageClassification` and `AutoImageProcessor`), "
        "its model card, `all_results.json` and `predictions.npz`"
    )

    def run_args(self, script_args, data_args):
        if data_args.uses_embedded_dataset and data_args.unknown_classes is None:
            return ["--unknown_classes", *DEFAULT_UNKNOWN_CLASSES]
        return []

    def embedded_dataset_text(self, model_args):
        name, size = self.pipeline.embedded_dataset_name, model_args.image_size
        return f"`{name}` (scikit-learn's 8×8 digits upscaled to {size} px, embedded)"

    def local_dataset_text(self, data_args):
        return f"image folder `{data_args.train_dir}`"

    def model_from_config_text(self, model_args):
        return (
            f"{model_args.model_type} built from its config ({model_args.image_size} px input, random initialisation)"
        )

    def setup_fields(self, data_args, records):
        first = records[0].arrays
        return {
            "known_classes": [str(name) for name in first.get("class_names", [])],
            "unknown_classes": [str(name) for name in first.get("unknown_class_names", [])],
            "ood": data_args.ood_dataset_name or data_args.ood_dir,
            "num_unknown_samples": records[0].metrics.get("eval_unknown_samples"),
        }

    def run_plots(self, shown):
        has_unknown = all("unknown_logits" in record.arrays for record in shown)
        has_ood = all("ood_logits" in record.arrays for record in shown)
        plots = []
        if has_unknown or has_ood:
            plots += [
                (
                    "msp_histograms.png",
                    "Max softmax probability, known vs unknown",
                    functools.partial(plot_score_histograms, kind="msp"),
                ),
                (
                    "mls_histograms.png",
                    "Max logit, known vs unknown",
                    functools.partial(plot_score_histograms, kind="mls"),
                ),
            ]
        if has_unknown:
            plots.append(("rejection_roc.png", "ROC of unknown-class rejection", plot_roc))
        return plots + [
            ("reliability.png", "Reliability diagram", plot_reliability),
            ("per_class_accuracy.png", "Per-class accuracy", plot_per_class_accuracy),
        ]

    def data_lines(self, setup):
        lines = [
            f"- **Data**: {setup.get('dataset')}; {setup.get('num_train_samples')} training and "
            f"{setup.get('num_eval_samples')} validation images of the known classes "
            f"{', '.join(setup.get('known_classes') or [])}.",
        ]
        if setup.get("unknown_classes"):
            lines.append(
                f"- **Unknown classes**: {', '.join(setup['unknown_classes'])}, held out of training; their "
                f"{setup.get('num_unknown_samples')} validation images must be rejected."
            )
        if setup.get("ood"):
            lines.append(f"- **OOD set**: `{setup['ood']}`.")
        return lines
