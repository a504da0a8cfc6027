"""`hf-hem compare --task token`: CoNLL-style named-entity recognition through
[`~hf_hem.pipelines.token_classification.run_token_classification`]."""

from __future__ import annotations

import functools

from ...pipelines import (
    EMBEDDED_NER_DATASET_NAME,
    TokenClassificationDataArguments,
    parse_token_classification_args,
    peek_dataclass,
    run_token_classification,
)
from ..task import Metric
from ._script import ScriptTask, TaskPipeline
from .text import TextScriptTask


__all__ = ["TokenTask"]


class TokenTask(TextScriptTask):
    """Token classification: entity-level F1, precision and recall, token accuracy."""

    name = "token"
    aliases = ("token-classification", "ner")
    title = "Token classification"
    pipeline = TaskPipeline(
        functools.partial(peek_dataclass, TokenClassificationDataArguments),
        parse_token_classification_args,
        run_token_classification,
        EMBEDDED_NER_DATASET_NAME,
    )
    metrics = (
        Metric("eval_f1", "Entity F1"),
        Metric("eval_precision", "Entity precision"),
        Metric("eval_recall", "Entity recall"),
        Metric("eval_accuracy", "Token accuracy"),
    )
    summary_metrics = (Metric("eval_f1", "entity F1"),)
    progress_keys = ("loss", "eval_f1")
    curve_key = "eval_f1"
    curve_label = "entity F1"
    curve_panels = (*ScriptTask.curve_panels, Metric("eval_f1", "entity F1"))
    sweep_metrics = (Metric("eval_f1", "entity F1"),)
    margin_samples_unit = "labelled tokens"
    metrics_note = (
        "Entity-level precision, recall and F1 (an entity counts when its type and its whole span match, as in "
        "CoNLL's evaluation), and the accuracy over labelled tokens, on the validation split."
    )
    folder_contents = (
        "a plain `transformers` checkpoint (`AutoModelForTokenClassification` and `AutoTokenizer`), its model card "
        "and `all_results.json`"
    )
