"""`hf-hem benchmark --task imbalance`: a long-tailed training subset, a balanced test split."""

from __future__ import annotations

import numpy as np

from ...metrics import (
    accuracy,
    balanced_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    shot_group_accuracy,
    softmax,
)
from ..curves import curves_from_history
from ..plots.palette import PALETTE, new_canvas
from ..suite.imbalance import long_tailed_indices, shot_thresholds
from ..task import Metric
from ._suite import SuiteRun, SuiteTask, save_plot


__all__ = ["ImbalanceTask"]


class ImbalanceTask(SuiteTask):
    name = "imbalance"
    title = "Imbalanced training data"
    description = (
        "A long-tailed training subset (class c keeps n_max * rho^(-c/(C-1)) samples with the exponential profile) "
        "is drawn from the training split, a different subset per seed; the test split stays balanced. Many/medium/"
        "few-shot accuracy averages the per-class accuracy over the third of classes with the most / middle / fewest "
        "training samples. ECE is the expected calibration error (15 bins, lower is better)."
    )
    settings_used = ("epochs", "imbalance_ratio", "imbalance_profile")
    curve_key = "balanced_accuracy"
    curve_label = "balanced test accuracy"
    metrics = (
        Metric("accuracy", "acc"),
        Metric("balanced_accuracy", "balanced acc"),
        Metric("many_shot", "many-shot"),
        Metric("medium_shot", "medium-shot"),
        Metric("few_shot", "few-shot"),
        Metric("ece", "ECE (lower is better)", higher_is_better=False),
    )
    sweep_metrics = (metrics[1], metrics[4], metrics[5])

    def evaluate(self, loss_name: str, seed: int, run: SuiteRun):
        settings, data = run.settings, run.data()
        indices, counts = long_tailed_indices(
            data.train_labels, settings.imbalance_ratio, settings.imbalance_profile, seed=seed
        )
        model = run.new_model(data.num_classes, seed)

        def curve_fn(model):
            predicted = run.logits(model, data.test_images).argmax(1)
            return {
                "accuracy": accuracy(predicted, data.test_labels),
                "balanced_accuracy": balanced_accuracy(predicted, data.test_labels, data.num_classes),
            }

        history = []
        run.train(
            model,
            data.train_images[indices],
            data.train_labels[indices],
            loss_name,
            seed,
            class_counts=counts,
            curve_fn=curve_fn,
            history=history,
        )
        logits = run.logits(model, data.test_images)
        predictions = logits.argmax(1)
        many, few = shot_thresholds(counts)
        groups = shot_group_accuracy(predictions, data.test_labels, counts, many=many, few=few)
        metrics = {
            "accuracy": accuracy(predictions, data.test_labels),
            "balanced_accuracy": balanced_accuracy(predictions, data.test_labels, data.num_classes),
            **{f"{group}_shot": value for group, value in groups.items()},
            "ece": expected_calibration_error(softmax(logits, axis=1), data.test_labels),
        }
        class_accuracy = per_class_accuracy(predictions, data.test_labels, data.num_classes)
        extras = {
            "train_class_counts": counts.tolist(),
            "shot_thresholds": {"many": many, "few": few},
            "per_class_accuracy": [None if np.isnan(a) else float(a) for a in class_accuracy],
        }
        return metrics, extras, curves_from_history(history)

    def plots(self, summary, records, output_dir, settings):
        figure = new_canvas(7, 4)
        axis = figure.subplots()
        for color, label in zip(PALETTE, summary.labels):
            per_class = np.array(
                [
                    [np.nan if a is None else a for a in record.extras["per_class_accuracy"]]
                    for record in records
                    if record.label == label
                ]
            )
            mean, std = np.nanmean(per_class, axis=0), np.nanstd(per_class, axis=0)
            classes = np.arange(mean.size)
            axis.plot(classes, mean, marker="o", color=color, label=label)
            axis.fill_between(classes, mean - std, mean + std, color=color, alpha=0.15)
        axis.set_xlabel("class (head → tail: fewer training samples to the right)")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"Per-class accuracy, imbalance ratio {settings.imbalance_ratio:g}")
        return save_plot(
            figure,
            output_dir / "imbalance_per_class_accuracy.png",
            "Per-class test accuracy from head to tail class (mean ± std over seeds)",
        )
