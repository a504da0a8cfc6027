"""`hf-hem compare --task text`: GLUE-style text classification through
[`~hf_hem.pipelines.text_classification.run_text_classification`]; [`TextScriptTask`] is what the text tasks share."""

from __future__ import annotations

import functools

from ...pipelines import (
    EMBEDDED_TEXT_DATASET_NAME,
    TextClassificationDataArguments,
    parse_text_classification_args,
    peek_dataclass,
    run_text_classification,
)
from ..task import Metric
from ._script import ScriptTask, TaskPipeline


__all__ = ["TextScriptTask", "TextTask"]


class TextScriptTask(ScriptTask):
    """The shared parts of the text tasks: synthetic embedded data, local files or a Hub dataset, a BERT-style model."""

    seed_draws = "synthetic data"
    single_seed_note = "One seed: add `--seeds 0,1,2` for error bars."

    def embedded_dataset_text(self, model_args):
        return (
            f"`{self.pipeline.embedded_dataset_name}` (synthetic, built in memory: a plumbing check of the "
            "pipeline, not evidence about HEM on language)"
        )

    def local_dataset_text(self, data_args):
        return f"local file `{data_args.train_file}`"

    def model_from_config_text(self, model_args):
        return f"`{model_args.model_type}` built from its config (random initialisation)"

    def data_lines(self, setup):
        return [
            f"- **Data**: {setup.get('dataset')}; {setup.get('num_train_samples')} training and "
            f"{setup.get('num_eval_samples')} validation examples.",
        ]


class TextTask(TextScriptTask):
    """Sequence classification: accuracy, macro F1, calibration."""

    name = "text"
    aliases = ("text-classification",)
    title = "Text classification"
    pipeline = TaskPipeline(
        functools.partial(peek_dataclass, TextClassificationDataArguments),
        parse_text_classification_args,
        run_text_classification,
        EMBEDDED_TEXT_DATASET_NAME,
    )
    metrics = (
        Metric("eval_accuracy", "Accuracy"),
        Metric("eval_macro_f1", "Macro F1"),
        Metric("eval_ece", "Expected calibration error", False),
    )
    summary_metrics = (Metric("eval_accuracy", "accuracy"),)
    progress_keys = ("loss", "eval_accuracy")
    curve_key = "eval_accuracy"
    curve_label = "accuracy"
    curve_panels = (*ScriptTask.curve_panels, Metric("eval_accuracy", "accuracy"))
    sweep_metrics = (Metric("eval_accuracy", "accuracy"),)
    metrics_note = "Accuracy, macro F1 and the expected calibration error (15 bins) on the validation split."
    folder_contents = (
        "a plain `transformers` checkpoint (`AutoModelForSequenceClassification` and `AutoTokenizer`), its model "
        "card and `all_results.json`"
    )
