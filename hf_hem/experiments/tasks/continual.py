"""`hf-hem benchmark --task continual`: class-incremental learning without replay, class-IL and task-IL accuracy."""

from __future__ import annotations

import warnings

import numpy as np

from ...metrics import accuracy
from ..curves import curves_from_history
from ..plots.palette import new_canvas
from ..stats import comparison_table
from ..suite.continual import average_accuracy, class_incremental_splits, forgetting
from ..task import Metric
from ._suite import SuiteRun, SuiteTask, error_bar_lines, save_plot, table_sections


__all__ = ["ContinualTask"]

_SCENARIOS = (("", "class-incremental"), ("task_il/", "task-incremental"))


def _after_task_columns(entries: dict, prefix: str) -> list[str]:
    return [name for name in entries if name.startswith(f"{prefix}average_accuracy_after_task_")]


class ContinualTask(SuiteTask):
    name = "continual"
    title = "Class-incremental continual learning"
    description = (
        "The classes are split into T tasks learned one after another, without replay, by one model with a single "
        "head over all classes (the optimiser restarts with each task). After each task the model is tested on every "
        "task's test images in two ways: class-incremental (predict among all classes seen so far: old classes must "
        "survive in the shared head) and task-incremental (`task_il/`, predict among the tested task's own classes: "
        "only the features must survive). Average accuracy after task i is the mean over tasks 0..i; forgetting is "
        "the mean drop from each earlier task's best accuracy to its final accuracy (lower is better)."
    )
    settings_used = ("num_tasks", "continual_epochs", "continual_class_seed")
    epochs_setting = "continual_epochs"
    # Each task's own training: accuracy on that task's test images, among the classes seen so far.
    curve_label = "current task's test accuracy (class-IL)"
    metrics = (
        Metric("final_average_accuracy", "class-IL final avg acc"),
        Metric("forgetting", "class-IL forgetting (lower is better)", higher_is_better=False),
        Metric("task_il/final_average_accuracy", "task-IL final avg acc"),
        Metric("task_il/forgetting", "task-IL forgetting (lower is better)", higher_is_better=False),
    )
    sweep_metrics = metrics

    def evaluate(self, loss_name: str, seed: int, run: SuiteRun):
        settings, data = run.settings, run.data()
        train_tasks = class_incremental_splits(
            data.train_labels, settings.num_tasks, seed=settings.continual_class_seed
        )
        task_classes = [task.classes for task in train_tasks]
        test_indices = [np.flatnonzero(np.isin(data.test_labels, classes)) for classes in task_classes]
        num_classes, num_tasks = data.num_classes, len(train_tasks)
        model = run.new_model(num_classes, seed)
        class_il = np.full((num_tasks, num_tasks), np.nan)
        task_il = np.full((num_tasks, num_tasks), np.nan)
        seen = np.zeros(num_classes, dtype=bool)
        curves, segments = {}, []
        for task_index, task in enumerate(train_tasks):
            labels = data.train_labels[task.indices]
            counts = np.bincount(labels, minlength=num_classes)
            current = np.zeros(num_classes, dtype=bool)
            current[task.classes] = True
            current |= seen
            current_images = data.test_images[test_indices[task_index]]
            current_labels = data.test_labels[test_indices[task_index]]

            def curve_fn(model, current=current, current_images=current_images, current_labels=current_labels):
                logits = np.where(current, run.logits(model, current_images), -np.inf)
                return {"accuracy": accuracy(logits.argmax(1), current_labels)}

            history = []
            with warnings.catch_warnings():
                # HEM+ margins warn about the classes absent from this task; they are never targets here.
                warnings.filterwarnings("ignore", message="classes .* have no training samples")
                run.train(
                    model,
                    data.train_images[task.indices],
                    labels,
                    loss_name,
                    seed * 1000 + task_index,
                    epochs=settings.continual_epochs,
                    num_classes=num_classes,
                    class_counts=counts,
                    curve_fn=curve_fn,
                    history=history,
                )
            # One curve over all tasks, epochs counted on; each task's stretch is checked for convergence alone.
            offset = task_index * settings.continual_epochs
            start = len(next(iter(curves.values()), {"epoch": []})["epoch"])
            for key, curve in curves_from_history(history, epoch_offset=offset).items():
                merged = curves.setdefault(key, {"epoch": [], "value": []})
                merged["epoch"] += curve["epoch"]
                merged["value"] += curve["value"]
            if history:
                segments.append([start, start + len(history)])
            seen[task.classes] = True
            for eval_index, indices in enumerate(test_indices):
                logits = run.logits(model, data.test_images[indices])
                references = data.test_labels[indices]
                among_seen = np.where(seen, logits, -np.inf)
                class_il[task_index, eval_index] = accuracy(among_seen.argmax(1), references)
                own = np.zeros(num_classes, dtype=bool)
                own[task_classes[eval_index]] = True
                task_il[task_index, eval_index] = accuracy(np.where(own, logits, -np.inf).argmax(1), references)
        metrics = {}
        for prefix, matrix in (("", class_il), ("task_il/", task_il)):
            averages = average_accuracy(matrix)
            metrics[f"{prefix}final_average_accuracy"] = float(averages[-1])
            metrics[f"{prefix}forgetting"] = forgetting(matrix)
            metrics.update({f"{prefix}average_accuracy_after_task_{i + 1}": float(a) for i, a in enumerate(averages)})
        extras = {
            "acc_matrix": class_il.tolist(),
            "task_il_acc_matrix": task_il.tolist(),
            "task_classes": [c.tolist() for c in task_classes],
            "curve_segments": segments,
        }
        return metrics, extras, curves

    def sections(self, summary, records, settings):
        first = next(iter(summary.stats.values()))
        tables = []
        for prefix, scenario in _SCENARIOS:
            columns = _after_task_columns(first, prefix)
            labels = {name: f"after task {name.rsplit('_', 1)[1]}" for name in columns}
            title = f"Average accuracy over the tasks seen so far ({scenario})"
            tables.append((title, comparison_table(summary.stats, columns, 3, labels)))
        return table_sections(tables)

    def plots(self, summary, records, output_dir, settings):
        figure = new_canvas(10, 4)
        axes = figure.subplots(1, 2, sharey=True)
        first = next(iter(summary.stats.values()))
        for axis, (prefix, scenario) in zip(axes, _SCENARIOS):
            x = np.arange(1, len(_after_task_columns(first, prefix)) + 1)
            error_bar_lines(axis, x, summary, lambda entries, prefix=prefix: _after_task_columns(entries, prefix))
            axis.set_xticks(range(1, settings.num_tasks + 1))
            axis.set_xlabel("tasks learned")
            axis.set_title(f"{scenario}, no replay")
            axis.set_ylim(0, 1.02)
        axes[0].set_ylabel("average accuracy over tasks seen")
        return save_plot(
            figure,
            output_dir / "continual_average_accuracy.png",
            "Average accuracy after each task (mean ± std over seeds)",
        )
