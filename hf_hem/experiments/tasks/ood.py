"""`hf-hem benchmark --task ood`: unknown-class rejection, held-out classes (near OOD) and synthetic far-OOD sets."""

from __future__ import annotations

import numpy as np

from ...metrics import accuracy, rejection_metrics
from ..curves import curves_from_history
from ..suite.ood_sets import SYNTHETIC_OOD_KINDS, natural_image_patches, split_known_unknown, synthetic_ood_sets
from ..task import Metric
from ._suite import SuiteRun, SuiteTask, grouped_metric_bars, prefixed, score_table, table_sections


__all__ = ["OODTask"]


class OODTask(SuiteTask):
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
    metrics = (
        Metric("accuracy", "known acc"),
        Metric("held_out/msp_auroc", "held-out MSP AUROC"),
        Metric("held_out/mls_auroc", "held-out MLS AUROC"),
        Metric("far_mean/msp_auroc", "far MSP AUROC"),
        Metric("far_mean/mls_auroc", "far MLS AUROC"),
        Metric("far_mean/msp_fpr95", "far MSP FPR95 (lower is better)", higher_is_better=False),
    )
    sweep_metrics = metrics[:2] + metrics[3:4]

    def evaluate(self, loss_name: str, seed: int, run: SuiteRun):
        settings, data = run.settings, run.data()
        train_split = split_known_unknown(data.train_labels, settings.unknown_classes)
        test_split = split_known_unknown(data.test_labels, settings.unknown_classes)
        model = run.new_model(len(train_split.class_map), seed)
        known_images = data.test_images[test_split.known_indices]
        held_out = data.test_images[test_split.unknown_indices]

        def curve_fn(model):
            known = run.logits(model, known_images)
            values = {"accuracy": accuracy(known.argmax(1), test_split.known_labels)}
            if len(held_out):
                values["held_out/msp_auroc"] = rejection_metrics(known, run.logits(model, held_out))["msp_auroc"]
            return values

        history = []
        run.train(
            model,
            data.train_images[train_split.known_indices],
            train_split.known_labels,
            loss_name,
            seed,
            curve_fn=curve_fn,
            history=history,
        )
        known_logits = run.logits(model, known_images)
        metrics = {"accuracy": accuracy(known_logits.argmax(1), test_split.known_labels)}
        unknown_sets = {"held_out": held_out}
        synthetic = [kind for kind in settings.ood_sets if kind in SYNTHETIC_OOD_KINDS]
        unknown_sets.update(synthetic_ood_sets(known_images, kinds=synthetic, seed=settings.split_seed))
        if "natural_patches" in settings.ood_sets:
            unknown_sets["natural_patches"] = natural_image_patches(
                len(known_images), settings.image_size, settings.num_channels, seed=settings.split_seed
            )
        far = {}
        for set_name, images in unknown_sets.items():
            result = rejection_metrics(known_logits, run.logits(model, images))
            metrics.update(prefixed(set_name, result))
            if set_name != "held_out":
                far[set_name] = result
        if far:
            for key in next(iter(far.values())):
                metrics[f"far_mean/{key}"] = float(np.mean([result[key] for result in far.values()]))
        extras = {"class_map": {str(k): v for k, v in train_split.class_map.items()}, "ood_sets": list(unknown_sets)}
        return metrics, extras, curves_from_history(history)

    @staticmethod
    def _set_names(stats: dict) -> list[str]:
        first = next(iter(stats.values()))
        return [name.split("/")[0] for name in first if name.endswith("/msp_auroc")]

    def sections(self, summary, records, settings):
        sets = self._set_names(summary.stats)
        tables = [
            (title, score_table(summary.stats, sets, lambda s, score=score, metric=metric: f"{s}/{score}_{metric}"))
            for score, metric, title in (
                ("msp", "auroc", "AUROC with the MSP score, per unknown set"),
                ("mls", "auroc", "AUROC with the max-logit score, per unknown set"),
                ("energy", "auroc", "AUROC with the energy score, per unknown set"),
                ("msp", "fpr95", "FPR at 95% TPR with MSP (lower is better), per unknown set"),
                ("mls", "fpr95", "FPR at 95% TPR with MLS (lower is better), per unknown set"),
            )
        ]
        return table_sections(tables)

    def plots(self, summary, records, output_dir, settings):
        sets = self._set_names(summary.stats)
        plots = []
        for score in ("msp", "mls"):
            plots += grouped_metric_bars(
                summary,
                [f"{s}/{score}_auroc" for s in sets],
                sets,
                f"Unknown-class rejection: {score.upper()} AUROC (mean ± std over seeds)",
                "AUROC",
                output_dir / f"ood_{score}_auroc.png",
                f"{score.upper()} AUROC per unknown set",
                ylim=(0.0, 1.0),
            )
        return plots
