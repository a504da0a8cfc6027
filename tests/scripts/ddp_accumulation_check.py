"""One optimizer step of 2 processes x 2 micro-batches x 16 samples; rank 0 saves the gradients before the step.

Launched by `tests/test_trainer_distributed.py::test_two_processes_with_accumulation_and_skipping_are_exact` with
`accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/ddp_accumulation_check.py <workdir>`.
`<workdir>` holds `config.json` and `weights.pt` (a tiny ViT) and `data.pt` (64 images and labels in the order the
batches must take: the sampler is sequential, and accelerate deals global batch `k` to rank `k % 2`). For each case
it writes `<case>.pt` (gradients, logged loss, skipped fraction) and `<case>_rank<r>_labels.pt`.
"""

import os
import sys

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from step_recording import (  # noqa: E402
    GradientRecorder,
    RecordingCollator,
    SequentialHEMTrainer,
    one_sgd_step_settings,
)
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

from hf_hem.trainer import HEMConfig  # noqa: E402


# (case, loss, skip_zero_loss); `hem_window` also gathers the window's violating samples (skip_gather_window)
CASES = [
    ("hem", "hem", "off"),
    ("hem_plus", "hem+", "off"),
    ("ce", "ce", "off"),
    ("hem_exact", "hem", "exact"),
    ("hem_window", "hem", "exact"),
]
MARGIN_SCALE = 4.0


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    data = torch.load(os.path.join(workdir, "data.pt"))
    dataset = datasets.Dataset.from_dict(
        {"pixel_values": data["pixel_values"].numpy(), "label": data["labels"].numpy()}
    ).with_format("torch")
    config = ViTConfig.from_json_file(os.path.join(workdir, "config.json"))
    weights = torch.load(os.path.join(workdir, "weights.pt"))
    for name, loss_name, skip in CASES:
        model = ViTForImageClassification(config)
        model.load_state_dict(weights)
        recorder, collator = GradientRecorder(), RecordingCollator()
        args = HEMConfig(
            **one_sgd_step_settings(
                os.path.join(workdir, "out"),
                per_device_train_batch_size=16,
                gradient_accumulation_steps=2,
                loss_name=loss_name,
                margin_scale=MARGIN_SCALE,
                skip_zero_loss=skip,
                skip_backward_ratio=1e6,  # select from the first micro-batch on
                skip_gather_window=name == "hem_window",
            )
        )
        trainer = SequentialHEMTrainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[recorder]
        )
        trainer.train()
        rank = trainer.args.process_index
        torch.save(torch.cat(collator.labels), os.path.join(workdir, f"{name}_rank{rank}_labels.pt"))
        if trainer.is_world_process_zero():
            log = trainer.state.log_history[0]
            torch.save(
                {
                    "gradients": recorder.gradients,
                    "logged_loss": log["loss"],
                    "skipped_fraction": log.get("hem/skipped_fraction"),
                    "world_size": trainer.args.world_size,
                },
                os.path.join(workdir, f"{name}.pt"),
            )
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # A gloo process group left for the interpreter to tear down can abort the process at exit ("terminate called
    # without an active exception"): destroy it first.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
