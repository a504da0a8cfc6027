"""`hf-hem benchmark --task adversarial`: FGSM and PGD white-box attacks, robust accuracy and attack rejection."""

from __future__ import annotations

import torch

from ...metrics import accuracy, rejection_metrics
from ..suite.adversarial import fgsm, pgd
from ..task import Metric
from ._suite import SuiteRun, SuiteTask, grouped_metric_bars, prefixed, score_table, table_sections


__all__ = ["AdversarialTask"]

_SCORES = ("msp", "mls", "energy")


class AdversarialTask(SuiteTask):
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
    metrics = (
        Metric("clean_accuracy", "clean acc"),
        Metric("fgsm_accuracy", "FGSM acc"),
        Metric("pgd_linf_accuracy", "PGD-Linf acc"),
        Metric("pgd_l2_accuracy", "PGD-L2 acc"),
        Metric("pgd_linf/msp_auroc", "PGD-Linf reject MSP AUROC"),
        Metric("pgd_linf/mls_auroc", "PGD-Linf reject MLS AUROC"),
    )
    sweep_metrics = metrics[:3]
    attacks = ("fgsm", "pgd_linf", "pgd_l2")

    def evaluate(self, loss_name: str, seed: int, run: SuiteRun):
        settings, data = run.settings, run.data()
        model, curves = run.train_on_all_classes(data, loss_name, seed)
        clean_logits = run.logits(model, data.test_images)
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
            attacked_logits = run.logits(model, attacked)
            metrics[f"{attack_name}_accuracy"] = accuracy(attacked_logits.argmax(1), data.test_labels)
            rejection = rejection_metrics(clean_logits, attacked_logits)
            metrics.update(prefixed(attack_name, {k: v for k, v in rejection.items() if k.endswith("auroc")}))
        return metrics, {}, curves

    def sections(self, summary, records, settings):
        tables = [
            (
                f"AUROC of rejecting attacked test images with the {score.upper()} score",
                score_table(summary.stats, self.attacks, lambda attack, score=score: f"{attack}/{score}_auroc"),
            )
            for score in _SCORES
        ]
        return table_sections(tables)

    def plots(self, summary, records, output_dir, settings):
        return grouped_metric_bars(
            summary,
            ["clean_accuracy", *(f"{attack}_accuracy" for attack in self.attacks)],
            ["clean", "FGSM", "PGD-Linf", "PGD-L2"],
            f"Robust accuracy (Linf eps={settings.linf_epsilon:g}, L2 eps={settings.l2_epsilon:g})",
            "accuracy",
            output_dir / "adversarial_accuracy.png",
            "Clean and robust accuracy (mean ± std over seeds)",
            ylim=(0.0, 1.0),
        )
