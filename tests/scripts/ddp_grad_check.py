"""One training step on several CPU processes; rank 0 saves the synchronised gradients for comparison.

Launched by `tests/test_trainer_distributed.py` with

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        --main_process_port <port> tests/scripts/ddp_grad_check.py <workdir>

(`--multi_gpu` on a machine without GPUs gives real CPU ranks over gloo; `--cpu --num_processes 2` would silently
run one process.) `<workdir>` holds `config.json`, `weights.pt` (a tiny ViT) and `data.pt` (`pixel_values`,
`labels`, one global batch). For each case it writes `<case>.pt` with the gradients after DDP's all-reduce, the
logged loss and the margins, and `<case>_rank<r>_labels.pt` with the labels that rank trained on.
"""

import os
import sys

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from step_recording import GradientRecorder, RecordingCollator, one_sgd_step_settings  # noqa: E402
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification  # noqa: E402

from hf_hem.trainer import HEMConfig, HEMTrainer, hem_loss_func  # noqa: E402


# (name, trainer kind, loss)
CASES = [
    ("hem", "hem_trainer", "hem"),
    ("hem_plus", "hem_trainer", "hem+"),
    ("ce", "hem_trainer", "ce"),
    ("stock_hem", "stock", "hem"),
]
MARGIN_SCALE = 4.0
STOCK_MARGIN = 0.6


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    data = torch.load(os.path.join(workdir, "data.pt"))
    dataset = datasets.Dataset.from_dict(
        {"pixel_values": data["pixel_values"].numpy(), "label": data["labels"].numpy()}
    ).with_format("torch")
    config = ViTConfig.from_json_file(os.path.join(workdir, "config.json"))
    weights = torch.load(os.path.join(workdir, "weights.pt"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = len(dataset) // world_size
    common = one_sgd_step_settings(os.path.join(workdir, "out"), per_device_train_batch_size=per_device)
    for name, kind, loss_name in CASES:
        model = ViTForImageClassification(config)
        model.load_state_dict(weights)
        recorder, collator = GradientRecorder(), RecordingCollator()
        if kind == "hem_trainer":
            args = HEMConfig(loss_name=loss_name, margin_scale=MARGIN_SCALE, **common)
            trainer = HEMTrainer(
                model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[recorder]
            )
            margins = trainer.margins
        else:
            trainer = Trainer(
                model=model,
                args=TrainingArguments(**common),
                train_dataset=dataset,
                data_collator=collator,
                callbacks=[recorder],
                compute_loss_func=hem_loss_func(loss_name, margin=STOCK_MARGIN),
            )
            margins = torch.tensor([STOCK_MARGIN])
        trainer.train()
        rank = trainer.args.process_index
        torch.save(torch.cat(collator.labels), os.path.join(workdir, f"{name}_rank{rank}_labels.pt"))
        if trainer.is_world_process_zero():
            torch.save(
                {
                    "gradients": recorder.gradients,
                    "logged_loss": trainer.state.log_history[0]["loss"],
                    "margins": margins,
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
