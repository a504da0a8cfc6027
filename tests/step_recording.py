"""What the gradient tests record of one optimizer step, shared by the test files and the scripts they launch.

The scripts in `tests/scripts/` import it with `tests/` on their `PYTHONPATH` ([`helpers.launch_two_processes`] puts
it there). It imports transformers at the top, which is why it is not part of `helpers.py` (the loss tests import
that and should not pay for transformers).
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.data.data_collator import default_data_collator

from hf_hem.trainer import HEMTrainer


def one_sgd_step_settings(output_dir, **overrides) -> dict:
    """`TrainingArguments`/`HEMConfig` keywords for one plain SGD step without clipping, weight decay or schedule, so
    that gradients and updates can be checked exactly (CPU, no reporting, no progress bars, no checkpoints)."""
    settings = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "optim": "sgd",
        "learning_rate": 0.1,
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "max_steps": 1,
        "logging_steps": 1,
        "seed": 0,
    }
    settings.update(overrides)
    return settings


class GradientRecorder(TrainerCallback):
    """Copies every parameter's gradient just before each optimizer step (after accumulation and any all-reduce).

    `steps` holds one `{name: gradient}` per step; `gradients` is the last of them.
    """

    def __init__(self):
        self.steps = []

    @property
    def gradients(self) -> dict[str, torch.Tensor] | None:
        return self.steps[-1] if self.steps else None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


class RecordingCollator:
    """`default_data_collator` that keeps each batch's labels, so a rank can report which samples it saw."""

    def __init__(self):
        self.labels = []

    def __call__(self, features):
        batch = default_data_collator(features)
        self.labels.append(batch["labels"].clone())
        return batch


class SequentialHEMTrainer(HEMTrainer):
    """Batches in dataset order, so the samples land in the micro-batches (and ranks) where a test puts them."""

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
