"""The five benchmark tasks. Each turns one (loss, seed) pair into a flat dict of metrics plus details.

A task trains through `train_fn` (by default [`train_model`], with the backend `settings.trainer` names) and builds
models through `model_fn` (by default the tiny ResNet of [`build_resnet`]), so both can be swapped. The data split
is fixed by `split_seed`; the run's `seed` sets the weight initialisation, the batch order and, for `imbalance`,
which samples the long-tailed subset keeps. Synthetic OOD sets and corrupted test sets depend on `split_seed` only,
so every loss and seed sees the same inputs.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..experiments.suite.benchmark_data import ArraySplits, load_benchmark_data
from ..experiments.suite.continual import average_accuracy, class_incremental_splits, forgetting
from ..experiments.suite.corruptions import CORRUPTIONS, corrupt
from ..experiments.suite.imbalance import long_tailed_indices, shot_thresholds
from ..experiments.suite.ood_sets import (
    SYNTHETIC_OOD_KINDS,
    natural_image_patches,
    split_known_unknown,
    synthetic_ood_sets,
)
from ..experiments.suite.settings import COMMON_SETTINGS, BenchmarkSettings
from ..experiments.suite.settings import RECIPE_SETTINGS as _RECIPE_SETTINGS
from ..metrics import (
    accuracy,
    balanced_accuracy,
    expected_calibration_error,
    per_class_accuracy,
    rejection_metrics,
    shot_group_accuracy,
    softmax,
)
from .curves import curves_from_history
from .stats import comparison_table


OOD_SCORES = ("msp", "mls", "energy")


@dataclass
class RunContext:
    """What a task needs to run one (loss, seed) pair."""

    settings: BenchmarkSettings
    train_fn: object
    model_fn: object
    progress: bool = False

    def data(self) -> ArraySplits:
        s = self.settings
        return load_benchmark_data(
            s.dataset,
            s.image_size,
            s.num_channels,
            s.split_seed,
            s.test_fraction,
            s.image_column,
            s.label_column,
            s.max_train_samples,
            s.max_test_samples,
        )

    def new_model(self, num_labels: int, seed: int):
        return self.model_fn(num_labels, self.settings.num_channels, seed)

    def train(
        self,
        model,
        images,
        labels,
        loss_name,
        seed,
        epochs=None,
        num_classes=None,
        class_counts=None,
        curve_fn=None,
        history=None,
    ):
        """Trains `model` with the settings' recipe; with `history`, `curve_fn(model)` is evaluated after every epoch
        and each epoch's entry appended to it (see [`train_model`]), when `train_fn` takes a `history` argument."""
        s = self.settings
        extra = {}
        if history is not None and _accepts_history(self.train_fn):
            extra = {"eval_fn": curve_fn, "history": history}
        return self.train_fn(
            model,
            (images, labels),
            loss_name,
            seed,
            epochs=epochs or s.epochs,
            num_classes=num_classes,
            class_counts=class_counts,
            progress=self.progress,
            **{name: getattr(s, name) for name in _RECIPE_SETTINGS},
            **extra,
        )

    def logits(self, model, images) -> np.ndarray:
        from ..experiments.suite.training import predict_logits

        return predict_logits(model, images, self.settings.eval_batch_size)


def _accepts_history(train_fn) -> bool:
    """Whether a `train_fn` can record learning curves: it takes `history` (or any keyword)."""
    try:
        parameters = inspect.signature(train_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "history" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class BenchmarkTask:
    """Base class: a named task with its settings, headline metrics, extra report tables and plots.

    `metric_labels` maps the headline metrics, in the order of the headline table, to their column titles (and may
    title other metrics too when `headline_metrics` is overridden). `curve_metric` is the metric evaluated after every
    training epoch (on the test split: the curves show training progress and select nothing) whose learning curve
    decides whether a run converged; `curve_label` names it.
    """

    name: str = ""
    title: str = ""
    description: str = ""
    settings_used: tuple = ()
    metric_labels: dict = {}
    curve_metric: str = "accuracy"
    curve_label: str = "test accuracy"

    @property
    def headline_metrics(self) -> tuple:
        """The metrics of the headline table: by default the keys of `metric_labels`, in order."""
        return tuple(self.metric_labels)

    def fingerprint_settings(self, settings: BenchmarkSettings) -> dict:
        """The settings that change this task's numbers (a changed one makes finished runs stale)."""
        return settings.to_dict(set(COMMON_SETTINGS) | set(self.settings_used))

    def run(self, loss_name: str, seed: int, context: RunContext) -> dict:
        """Returns `{"metrics": {name: float}, "details": {...}}` for one (loss, seed)."""
        raise NotImplementedError

    def extra_tables(self, summary: dict, settings: BenchmarkSettings) -> list:
        """`[(title, markdown), ...]` besides the headline table."""
        return []

    def plots(self, summary: dict, runs: list, output_dir: Path, settings: BenchmarkSettings) -> list:
        """Writes PNGs into `output_dir`; returns `[(caption, file name), ...]`."""
        return []


def _train_on_all_classes(context: RunContext, data: ArraySplits, loss_name: str, seed: int):
    """`(model, history)`: a new model trained on the whole training split, the recipe of the tasks that then test it
    on changed test images; its learning curve is the accuracy on the clean test split."""
    model = context.new_model(data.num_classes, seed)

    def curve_fn(model):
        return {"accuracy": accuracy(context.logits(model, data.test_images).argmax(1), data.test_labels)}

    history = []
    context.train(model, data.train_images, data.train_labels, loss_name, seed, curve_fn=curve_fn, history=history)
    return model, history


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}/{name}": value for name, value in metrics.items()}


def _score_table(summary, columns, metric_of_column, labels=None, digits=3):
    """A table with one row per loss and, in column `c`, the metric `metric_of_column(c)`."""
    reshaped = {
        loss: {column: entries[metric_of_column(column)] for column in columns if metric_of_column(column) in entries}
        for loss, entries in summary.items()
    }
    return comparison_table(reshaped, list(columns), digits, labels)


class OODTask(BenchmarkTask):
    name = "ood"
    title = "Unknown-class rejection"
    description = (
        "The model is trained on the known classes only. Known test images are the positives; each unknown set is "
        "scored separately: the held-out classes of the test split (near OOD) and far-OOD sets made from the known "
        "test images (uniform noise, pixel-permuted, phase-randomised, blobs) plus crops of natural photographs. "
        "Scores: max softmax probability (MSP), max logit (MLS) and energy; AUROC, FPR at 95% TPR and AUPR-In. "
        "`far_mean` averages the far-OOD sets."
    )
    settings_used = ("epochs", "unknown_classes", "ood_sets")
    metric_labels = {
        "accuracy": "known acc",
        "held_out/msp_auroc": "held-out MSP AUROC",
        "held_out/mls_auroc": "held-out MLS AUROC",
        "far_mean/msp_auroc": "far MSP AUROC",
        "far_mean/mls_auroc": "far MLS AUROC",
        "far_mean/msp_fpr95": "far MSP FPR95 (lower is better)",
    }

    def run(self, loss_name, seed, context):
        settings, data = context.settings, context.data()
        train_split = split_known_unknown(data.train_labels, settings.unknown_classes)
        test_split = split_known_unknown(data.test_labels, settings.unknown_classes)
        num_known = len(train_split.class_map)
        model = context.new_model(num_known, seed)
        known_images = data.test_images[test_split.known_indices]
        held_out = data.test_images[test_split.unknown_indices]

        def curve_fn(model):
            known = context.logits(model, known_images)
            values = {"accuracy": accuracy(known.argmax(1), test_split.known_labels)}
            if len(held_out):
                values["held_out/msp_auroc"] = rejection_metrics(known, context.logits(model, held_out))["msp_auroc"]
            return values

        history = []
        context.train(
            model,
            data.train_images[train_split.known_indices],
            train_split.known_labels,
            loss_name,
            seed,
            curve_fn=curve_fn,
            history=history,
        )
        known_logits = context.logits(model, known_images)
        metrics = {"accuracy": accuracy(known_logits.argmax(1), test_split.known_labels)}
        unknown_sets = {"held_out": data.test_images[test_split.unknown_indices]}
        synthetic = [kind for kind in settings.ood_sets if kind in SYNTHETIC_OOD_KINDS]
        unknown_sets.update(synthetic_ood_sets(known_images, kinds=synthetic, seed=settings.split_seed))
        if "natural_patches" in settings.ood_sets:
            unknown_sets["natural_patches"] = natural_image_patches(
                len(known_images), settings.image_size, settings.num_channels, seed=settings.split_seed
            )
        far = {}
        for set_name, images in unknown_sets.items():
            result = rejection_metrics(known_logits, context.logits(model, images))
            metrics.update(_prefixed(set_name, result))
            if set_name != "held_out":
                far[set_name] = result
        if far:
            for key in next(iter(far.values())):
                metrics[f"far_mean/{key}"] = float(np.mean([result[key] for result in far.values()]))
        details = {
            "class_map": {str(k): v for k, v in train_split.class_map.items()},
            "ood_sets": list(unknown_sets),
            "curves": curves_from_history(history),
        }
        return {"metrics": metrics, "details": details}

    def _set_names(self, summary):
        first = next(iter(summary.values()))
        return [name.split("/")[0] for name in first if name.endswith("/msp_auroc")]

    def extra_tables(self, summary, settings):
        sets = self._set_names(summary)
        tables = []
        for score, metric, title in [
            ("msp", "auroc", "AUROC with the MSP score, per unknown set"),
            ("mls", "auroc", "AUROC with the max-logit score, per unknown set"),
            ("energy", "auroc", "AUROC with the energy score, per unknown set"),
            ("msp", "fpr95", "FPR at 95% TPR with MSP (lower is better), per unknown set"),
            ("mls", "fpr95", "FPR at 95% TPR with MLS (lower is better), per unknown set"),
        ]:
            tables.append(
                (title, _score_table(summary, sets, lambda s, score=score, metric=metric: f"{s}/{score}_{metric}"))
            )
        return tables

    def plots(self, summary, runs, output_dir, settings):
        sets = self._set_names(summary)
        files = []
        for score in ("msp", "mls"):
            files += _grouped_bars(
                summary,
                [f"{s}/{score}_auroc" for s in sets],
                sets,
                f"Unknown-class rejection: {score.upper()} AUROC (mean ± std over seeds)",
                "AUROC",
                output_dir / f"ood_{score}_auroc.png",
                f"{score.upper()} AUROC per unknown set",
                ylim=(0.0, 1.0),
            )
        return files


class ImbalanceTask(BenchmarkTask):
    name = "imbalance"
    title = "Imbalanced training data"
    description = (
        "A long-tailed training subset (class c keeps n_max * rho^(-c/(C-1)) samples with the exponential profile) "
        "is drawn from the training split, a different subset per seed; the test split stays balanced. Many/medium/"
        "few-shot accuracy averages the per-class accuracy over the third of classes with the most / middle / fewest "
        "training samples. ECE is the expected calibration error (15 bins, lower is better)."
    )
    settings_used = ("epochs", "imbalance_ratio", "imbalance_profile")
    curve_metric = "balanced_accuracy"
    curve_label = "balanced test accuracy"
    metric_labels = {
        "accuracy": "acc",
        "balanced_accuracy": "balanced acc",
        "many_shot": "many-shot",
        "medium_shot": "medium-shot",
        "few_shot": "few-shot",
        "ece": "ECE (lower is better)",
    }

    def run(self, loss_name, seed, context):
        settings, data = context.settings, context.data()
        indices, counts = long_tailed_indices(
            data.train_labels, settings.imbalance_ratio, settings.imbalance_profile, seed=seed
        )
        model = context.new_model(data.num_classes, seed)

        def curve_fn(model):
            predicted = context.logits(model, data.test_images).argmax(1)
            return {
                "accuracy": accuracy(predicted, data.test_labels),
                "balanced_accuracy": balanced_accuracy(predicted, data.test_labels, data.num_classes),
            }

        history = []
        context.train(
            model,
            data.train_images[indices],
            data.train_labels[indices],
            loss_name,
            seed,
            class_counts=counts,
            curve_fn=curve_fn,
            history=history,
        )
        logits = context.logits(model, data.test_images)
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
        details = {
            "train_class_counts": counts.tolist(),
            "shot_thresholds": {"many": many, "few": few},
            "per_class_accuracy": [None if np.isnan(a) else float(a) for a in class_accuracy],
            "curves": curves_from_history(history),
        }
        return {"metrics": metrics, "details": details}

    def plots(self, summary, runs, output_dir, settings):
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 4))
        for loss in summary:
            curves = np.array(
                [
                    [np.nan if a is None else a for a in run["details"]["per_class_accuracy"]]
                    for run in runs
                    if run["loss"] == loss
                ]
            )
            mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            classes = np.arange(mean.size)
            axis.plot(classes, mean, marker="o", label=loss)
            axis.fill_between(classes, mean - std, mean + std, alpha=0.15)
        axis.set_xlabel("class (head → tail: fewer training samples to the right)")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"Per-class accuracy, imbalance ratio {settings.imbalance_ratio:g}")
        return _save(
            figure,
            output_dir / "imbalance_per_class_accuracy.png",
            "Per-class test accuracy from head to tail class (mean ± std over seeds)",
        )


class ContinualTask(BenchmarkTask):
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
    # Each task's own training: accuracy on that task's test images, among the classes seen so far.
    curve_label = "current task's test accuracy (class-IL)"
    metric_labels = {
        "final_average_accuracy": "class-IL final avg acc",
        "forgetting": "class-IL forgetting (lower is better)",
        "task_il/final_average_accuracy": "task-IL final avg acc",
        "task_il/forgetting": "task-IL forgetting (lower is better)",
    }

    def run(self, loss_name, seed, context):
        settings, data = context.settings, context.data()
        train_tasks = class_incremental_splits(
            data.train_labels, settings.num_tasks, seed=settings.continual_class_seed
        )
        task_classes = [task.classes for task in train_tasks]
        test_indices = [np.flatnonzero(np.isin(data.test_labels, classes)) for classes in task_classes]
        num_classes, num_tasks = data.num_classes, len(train_tasks)
        model = context.new_model(num_classes, seed)
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
                logits = np.where(current, context.logits(model, current_images), -np.inf)
                return {"accuracy": accuracy(logits.argmax(1), current_labels)}

            history = []
            with warnings.catch_warnings():
                # HEM+ margins warn about the classes absent from this task; they are never targets here.
                warnings.filterwarnings("ignore", message="classes .* have no training samples")
                context.train(
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
                logits = context.logits(model, data.test_images[indices])
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
        details = {
            "acc_matrix": class_il.tolist(),
            "task_il_acc_matrix": task_il.tolist(),
            "task_classes": [c.tolist() for c in task_classes],
            "curves": curves,
            "curve_segments": segments,
        }
        return {"metrics": metrics, "details": details}

    def extra_tables(self, summary, settings):
        first = next(iter(summary.values()))
        tables = []
        for prefix, scenario in (("", "class-incremental"), ("task_il/", "task-incremental")):
            columns = [name for name in first if name.startswith(f"{prefix}average_accuracy_after_task_")]
            labels = {name: f"after task {name.rsplit('_', 1)[1]}" for name in columns}
            title = f"Average accuracy over the tasks seen so far ({scenario})"
            tables.append((title, comparison_table(summary, columns, 3, labels)))
        return tables

    def plots(self, summary, runs, output_dir, settings):
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for axis, (prefix, scenario) in zip(axes, (("", "class-incremental"), ("task_il/", "task-incremental"))):
            for loss, entries in summary.items():
                columns = [n for n in entries if n.startswith(f"{prefix}average_accuracy_after_task_")]
                _error_bar_line(axis, np.arange(1, len(columns) + 1), entries, columns, loss)
            axis.set_xticks(range(1, settings.num_tasks + 1))
            axis.set_xlabel("tasks learned")
            axis.set_title(f"{scenario}, no replay")
            axis.set_ylim(0, 1.02)
        axes[0].set_ylabel("average accuracy over tasks seen")
        return _save(
            figure,
            output_dir / "continual_average_accuracy.png",
            "Average accuracy after each task (mean ± std over seeds)",
        )


class AdversarialTask(BenchmarkTask):
    name = "adversarial"
    title = "Adversarial robustness"
    description = (
        "White-box attacks on the test split with the cross-entropy loss as the attack objective for every model "
        "(attacking with HEM's own loss would hide behind its zero gradient): FGSM and PGD-Linf at radius "
        "`linf_epsilon`, PGD-L2 at `l2_epsilon`, inputs clamped to [0, 1], PGD with a random start. Robust accuracy "
        "is the accuracy on the attacked images; rejection AUROC asks whether MSP / max logit rank the clean test "
        "images above their attacked versions."
    )
    settings_used = ("epochs", "linf_epsilon", "l2_epsilon", "attack_steps")
    metric_labels = {
        "clean_accuracy": "clean acc",
        "fgsm_accuracy": "FGSM acc",
        "pgd_linf_accuracy": "PGD-Linf acc",
        "pgd_l2_accuracy": "PGD-L2 acc",
        "pgd_linf/msp_auroc": "PGD-Linf reject MSP AUROC",
        "pgd_linf/mls_auroc": "PGD-Linf reject MLS AUROC",
    }
    attacks = ("fgsm", "pgd_linf", "pgd_l2")

    def run(self, loss_name, seed, context):
        import torch

        from ..experiments.suite.adversarial import fgsm, pgd

        settings, data = context.settings, context.data()
        model, history = _train_on_all_classes(context, data, loss_name, seed)
        clean_logits = context.logits(model, data.test_images)
        metrics = {"clean_accuracy": accuracy(clean_logits.argmax(1), data.test_labels)}
        images, labels = torch.tensor(data.test_images), torch.tensor(data.test_labels)
        steps, linf, l2 = settings.attack_steps, settings.linf_epsilon, settings.l2_epsilon
        attacks = {
            "fgsm": lambda x, y: fgsm(model, x, y, linf),
            "pgd_linf": lambda x, y: pgd(model, x, y, linf, steps=steps, norm="linf", seed=settings.split_seed),
            "pgd_l2": lambda x, y: pgd(model, x, y, l2, steps=steps, norm="l2", seed=settings.split_seed),
        }
        batch = settings.eval_batch_size
        for attack_name, attack in attacks.items():
            attacked = torch.cat([attack(x, y) for x, y in zip(images.split(batch), labels.split(batch))])
            attacked_logits = context.logits(model, attacked)
            metrics[f"{attack_name}_accuracy"] = accuracy(attacked_logits.argmax(1), data.test_labels)
            rejection = rejection_metrics(clean_logits, attacked_logits)
            metrics.update(_prefixed(attack_name, {k: v for k, v in rejection.items() if k.endswith("auroc")}))
        return {"metrics": metrics, "details": {"curves": curves_from_history(history)}}

    def extra_tables(self, summary, settings):
        tables = []
        for score in OOD_SCORES:
            tables.append(
                (
                    f"AUROC of rejecting attacked test images with the {score.upper()} score",
                    _score_table(summary, self.attacks, lambda a, score=score: f"{a}/{score}_auroc"),
                )
            )
        return tables

    def plots(self, summary, runs, output_dir, settings):
        metrics = ["clean_accuracy", *(f"{a}_accuracy" for a in self.attacks)]
        return _grouped_bars(
            summary,
            metrics,
            ["clean", "FGSM", "PGD-Linf", "PGD-L2"],
            f"Robust accuracy (Linf eps={settings.linf_epsilon:g}, L2 eps={settings.l2_epsilon:g})",
            "accuracy",
            output_dir / "adversarial_accuracy.png",
            "Clean and robust accuracy (mean ± std over seeds)",
            ylim=(0.0, 1.0),
        )


class CorruptionsTask(BenchmarkTask):
    name = "corruptions"
    title = "Common corruptions"
    description = (
        "The test split is corrupted (Gaussian noise, Gaussian blur, contrast reduction, JPEG) at each severity; "
        "`<corruption>/mean` averages the severities, `mean_corruption_accuracy` all corruptions and severities."
    )
    settings_used = ("epochs", "corruptions", "severities")
    metric_labels = {"clean_accuracy": "clean acc", "mean_corruption_accuracy": "mean corrupted acc"}

    @property
    def headline_metrics(self):
        return ("clean_accuracy", "mean_corruption_accuracy", *(f"{c}/mean" for c in CORRUPTIONS))

    def run(self, loss_name, seed, context):
        settings, data = context.settings, context.data()
        model, history = _train_on_all_classes(context, data, loss_name, seed)
        metrics = {"clean_accuracy": accuracy(context.logits(model, data.test_images).argmax(1), data.test_labels)}
        everything = []
        for corruption in settings.corruptions:
            per_severity = []
            for severity in settings.severities:
                corrupted = _corrupted_test_set(data, corruption, severity, settings.split_seed)
                value = accuracy(context.logits(model, corrupted).argmax(1), data.test_labels)
                metrics[f"{corruption}/s{severity}"] = value
                per_severity.append(value)
            metrics[f"{corruption}/mean"] = float(np.mean(per_severity))
            everything.extend(per_severity)
        metrics["mean_corruption_accuracy"] = float(np.mean(everything))
        return {"metrics": metrics, "details": {"curves": curves_from_history(history)}}

    def extra_tables(self, summary, settings):
        columns = [f"s{s}" for s in settings.severities]
        return [
            (
                f"Accuracy under {corruption.replace('_', ' ')} by severity",
                _score_table(summary, columns, lambda c, corruption=corruption: f"{corruption}/{c}"),
            )
            for corruption in settings.corruptions
        ]

    def plots(self, summary, runs, output_dir, settings):
        import matplotlib.pyplot as plt

        corruptions = list(settings.corruptions)
        figure, axes = plt.subplots(1, len(corruptions), figsize=(3.2 * len(corruptions), 3.2), squeeze=False)
        for axis, corruption in zip(axes[0], corruptions):
            keys = ["clean_accuracy", *(f"{corruption}/s{s}" for s in settings.severities)]
            for loss, entries in summary.items():
                _error_bar_line(axis, [0, *settings.severities], entries, keys, loss)
            axis.set_title(corruption.replace("_", " "))
            axis.set_xlabel("severity")
            axis.set_ylim(0, 1.02)
        axes[0][0].set_ylabel("accuracy")
        return _save(
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
        _CORRUPTED_CACHE[key] = (data, corrupt(data.test_images, corruption, severity, seed=seed))
    return _CORRUPTED_CACHE[key][1]


def _save(figure, path: Path, caption: str) -> list:
    """Finishes a task's figure (the losses' legend on its last panel), writes it to `path` and closes it; returns
    the `[(caption, file name)]` entry of [`BenchmarkTask.plots`]."""
    import matplotlib.pyplot as plt

    figure.axes[-1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [(caption, path.name)]


def _mean_and_std(entries: dict, metrics) -> tuple[list, list]:
    """Means over seeds of `metrics` in one loss's summary `entries`, and their standard deviations as error bars
    want them: a missing metric has a NaN mean, and the NaN std of a single seed draws no bar."""
    found = [entries.get(metric) for metric in metrics]
    means = [np.nan if entry is None else entry["mean"] for entry in found]
    stds = [0.0 if entry is None or np.isnan(entry["std"]) else entry["std"] for entry in found]
    return means, stds


def _error_bar_line(axis, x, entries: dict, metrics, label: str) -> None:
    """One loss's line on `axis`: the mean over seeds of `metrics` at the positions `x`, with ± std error bars."""
    means, stds = _mean_and_std(entries, metrics)
    axis.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=label)


def _grouped_bars(summary, metrics, labels, title, ylabel, path, caption, ylim=None) -> list:
    """A figure of one group of bars (one per loss) per metric, saved to `path` with [`_save`]."""
    import matplotlib.pyplot as plt

    losses = list(summary)
    positions = np.arange(len(metrics))
    width = 0.8 / max(len(losses), 1)
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(metrics) * max(len(losses), 2) / 2 + 2), 4))
    for index, loss in enumerate(losses):
        means, stds = _mean_and_std(summary[loss], metrics)
        axis.bar(positions + (index - (len(losses) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=loss)
    axis.set_xticks(positions, labels, rotation=20, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if ylim is not None:
        axis.set_ylim(*ylim)
    return _save(figure, path, caption)


TASKS = {
    task.name: task for task in (OODTask(), ImbalanceTask(), ContinualTask(), AdversarialTask(), CorruptionsTask())
}


def get_task(name: str) -> BenchmarkTask:
    """The task registered under `name` (`ood`, `imbalance`, `continual`, `adversarial`, `corruptions`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks are {list(TASKS)}.")
    return TASKS[name]


def headline_table(task: BenchmarkTask, summary: dict, convergence: dict | None = None) -> str:
    """The task's main table: headline metrics per loss, mean ± std with Welch p-values against the baseline, and,
    with `convergence` (`{loss: cell}`), whether the runs of each loss converged."""
    available = next(iter(summary.values()))
    metrics = [m for m in task.headline_metrics if m in available]
    extra = {"converged": convergence} if convergence is not None else None
    return comparison_table(summary, metrics, 3, task.metric_labels, extra_columns=extra)


__all__ = [
    "TASKS",
    "BenchmarkSettings",
    "BenchmarkTask",
    "RunContext",
    "get_task",
    "headline_table",
]
