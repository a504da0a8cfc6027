"""A warning when the margin is too large for training to get anywhere: every sample keeps violating it.

With a margin far above the logit gaps the model can reach, every sample violates it, HEM's batch loss is the mean
violation of all samples and `hem/violating_fraction` stays at 1 (issue 19: a SegFormer fine-tuned on a few dozen
images with the rule's margin). Nothing fails, so the trainer says so, once. See docs/trainer.md, "Logged metrics".
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback


logger = logging.getLogger(__name__)


class ViolatingFractionMonitor(TrainerCallback):
    r"""
    Warns once when the training `hem/violating_fraction` has not moved from 1 after a share of the training.

    The check runs at every training log: once `state.global_step` has reached `share` of `state.max_steps`, but at
    least `min_steps` (or all of them in a shorter run), if every `hem/violating_fraction` logged so far was at least
    `stuck_at`, it logs one warning with the numbers and what to try. It looks only at what is logged, so it needs
    `logging_steps` to fall in that share of the training (the check then runs at the first log after it). The floor
    is there because the first steps of any run violate any margin: a freshly initialised head gives nearly equal
    logits.

    Args:
        share (`float`, *optional*, defaults to 0.25):
            Share of the optimizer steps after which a violating fraction still at 1 is reported.
        stuck_at (`float`, *optional*, defaults to 0.999):
            A violating fraction at or above this counts as "not moved from 1".
        min_steps (`int`, *optional*, defaults to 10):
            The earliest optimizer step of the check.
    """

    def __init__(self, share: float = 0.25, stuck_at: float = 0.999, min_steps: int = 10):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share={share}; expected a fraction of the training in (0, 1].")
        self.share = share
        self.stuck_at = stuck_at
        self.min_steps = min_steps
        self.lowest: float | None = None
        self.accuracies: tuple[float, ...] | None = None  # the first and the latest logged hem/accuracy
        self.logged = 0
        self.warned = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.lowest, self.logged, self.warned, self.accuracies = None, 0, False, None

    def check_step(self, max_steps: int) -> int:
        """The optimizer step from which a stuck violating fraction is reported."""
        return min(max(self.min_steps, math.ceil(self.share * max_steps)), max(max_steps, 1))

    def on_log(self, args, state, control, logs=None, **kwargs):
        fraction = (logs or {}).get("hem/violating_fraction")
        if fraction is None or self.warned:
            return
        self.logged += 1
        self.lowest = fraction if self.lowest is None else min(self.lowest, fraction)
        accuracy = logs.get("hem/accuracy")
        if accuracy is not None:
            self.accuracies = (self.accuracies or (accuracy,))[:1] + (accuracy,)
        if state.global_step < self.check_step(state.max_steps) or self.lowest < self.stuck_at:
            return
        self.warned = True
        if state.is_world_process_zero:
            logger.warning(self.message(args, state, logs.get("hem/margin_mean")))

    def message(self, args, state, margin: float | None) -> str:
        """The warning: what was seen, and a margin to try (a quarter of the present one, at most 1)."""
        accuracy = ""
        if self.accuracies:
            accuracy = f"; hem/accuracy went from {self.accuracies[0]:.4f} to {self.accuracies[-1]:.4f}"
        seen = (
            f"hem/violating_fraction has not moved from 1 after {state.global_step} of {state.max_steps} optimizer "
            f"steps: it was at least {self.stuck_at} at each of the {self.logged} training logs (lowest "
            f"{self.lowest:.4f}), with mean margin {margin if margin is None else format(margin, '.4g')}{accuracy}. "
            "Nearly every sample misses its margin, so HEM pushes on all of them alike and may learn slowly or not "
            "at all. "
        )
        if getattr(args, "per_class_margins", False) or getattr(args, "loss_name", None) == "hem+":
            scale = getattr(args, "margin_scale", None)
            smaller = f" (e.g. {scale / 16:g}, which divides every margin by 4)" if scale else ""
            return seen + f"Try a smaller `--margin_scale`{smaller}, the M of mu_c = sqrt(M / (n S p_c))."
        suggestion = "a smaller `--margin`" if margin is None else f"`--margin {min(1.0, margin / 4):.2g}`"
        if getattr(args, "margin", None) is not None:  # a fixed margin: margin_scale plays no part
            return seen + f"Try {suggestion} (a quarter of the present one, at most 1.0)."
        return seen + (
            f"Try {suggestion} (a quarter of the present one, at most 1.0) or a smaller `--margin_scale`, whose rule "
            "mu = sqrt(margin_scale / S) was calibrated on tens of thousands of training samples (docs/trainer.md, "
            "'Margins')."
        )
