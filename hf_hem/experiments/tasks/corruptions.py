"""`hf-hem benchmark --task corruptions`: accuracy on a test split corrupted at each severity."""

from __future__ import annotations

import numpy as np

from ...metrics import accuracy
from ..plots.palette import new_canvas
from ..suite.benchmark_data import ArraySplits
from ..suite.corruptions import CORRUPTIONS, corrupt
from ..task import Metric
from ._suite import SuiteRun, SuiteTask, error_bar_lines, save_plot, score_table, table_sections


__all__ = ["CorruptionsTask"]


class CorruptionsTask(SuiteTask):
    name = "corruptions"
    title = "Common corruptions"
    description = (
        "The test split is corrupted (Gaussian noise, Gaussian blur, contrast reduction, JPEG) at each severity; "
        "`<corruption>/mean` averages the severities, `mean_corruption_accuracy` all corruptions and severities."
    )
    settings_used = ("epochs", "corruptions", "severities")
    metrics = (
        Metric("clean_accuracy", "clean acc"),
        Metric("mean_corruption_accuracy", "mean corrupted acc"),
        *(Metric(f"{corruption}/mean", f"{corruption}/mean") for corruption in CORRUPTIONS),
    )
    sweep_metrics = metrics[:2]

    def evaluate(self, loss_name: str, seed: int, run: SuiteRun):
        settings, data = run.settings, run.data()
        model, curves = run.train_on_all_classes(data, loss_name, seed)
        metrics = {"clean_accuracy": accuracy(run.logits(model, data.test_images).argmax(1), data.test_labels)}
        everything = []
        for corruption in settings.corruptions:
            per_severity = []
            for severity in settings.severities:
                corrupted = _corrupted_test_set(data, corruption, severity, settings.split_seed)
                value = accuracy(run.logits(model, corrupted).argmax(1), data.test_labels)
                metrics[f"{corruption}/s{severity}"] = value
                per_severity.append(value)
            metrics[f"{corruption}/mean"] = float(np.mean(per_severity))
            everything.extend(per_severity)
        metrics["mean_corruption_accuracy"] = float(np.mean(everything))
        return metrics, {}, curves

    def sections(self, summary, records, settings):
        columns = [f"s{severity}" for severity in settings.severities]
        tables = [
            (
                f"Accuracy under {corruption.replace('_', ' ')} by severity",
                score_table(summary.stats, columns, lambda column, corruption=corruption: f"{corruption}/{column}"),
            )
            for corruption in settings.corruptions
        ]
        return table_sections(tables)

    def plots(self, summary, records, output_dir, settings):
        corruptions = list(settings.corruptions)
        figure = new_canvas(3.2 * len(corruptions), 3.2)
        axes = figure.subplots(1, len(corruptions), squeeze=False)[0]
        x = np.array([0, *settings.severities])
        for axis, corruption in zip(axes, corruptions):
            keys = ["clean_accuracy", *(f"{corruption}/s{severity}" for severity in settings.severities)]
            error_bar_lines(axis, x, summary, lambda entries, keys=keys: keys)
            axis.set_title(corruption.replace("_", " "))
            axis.set_xlabel("severity")
            axis.set_ylim(0, 1.02)
        axes[0].set_ylabel("accuracy")
        return save_plot(
            figure,
            output_dir / "corruptions_accuracy.png",
            "Accuracy against corruption severity (mean ± std over seeds)",
        )


_CORRUPTED_CACHE: dict = {}


def _corrupted_test_set(data: ArraySplits, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Corrupted test images, computed once per process (JPEG is the slow one) and shared by all runs."""
    key = (id(data), corruption, severity, seed)
    if key not in _CORRUPTED_CACHE:
        if len(_CORRUPTED_CACHE) > 64:
            _CORRUPTED_CACHE.clear()
        # The arrays are kept with the result, so that their `id` cannot be reused while the entry exists.
        _CORRUPTED_CACHE[key] = (data, corrupt(data.test_images, corruption, severity, seed=seed))
    return _CORRUPTED_CACHE[key][1]
