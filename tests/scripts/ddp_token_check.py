"""One training step of a tiny BERT token classifier on several CPU processes; rank 0 saves the synchronised
gradients, for `tests/test_token_classification.py` to compare with one process on the concatenated batch.

Launched as

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        --main_process_port <port> tests/scripts/ddp_token_check.py <workdir>

`<workdir>` holds `config.json`, `weights.pt` (a `BertForTokenClassification`) and `data.pt` (`input_ids`,
`attention_mask`, `labels` with -100 entries: one global batch). For each case it writes `<case>.pt` (gradients after
DDP's all-reduce, the logged loss, the margins, the world size) and `<case>_rank<r>_labels.pt` (that rank's labels).
"""

import os
import sys

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from step_recording import GradientRecorder, RecordingCollator, one_sgd_step_settings  # noqa: E402
from transformers import BertConfig, BertForTokenClassification  # noqa: E402

from hf_hem.trainer import HEMConfig, HEMTrainer  # noqa: E402


CASES = [("hem", "hem"), ("hem_plus", "hem+"), ("ce", "ce")]
MARGIN_SCALE = 4.0


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    data = torch.load(os.path.join(workdir, "data.pt"))
    dataset = datasets.Dataset.from_dict({key: value.numpy() for key, value in data.items()}).with_format("torch")
    config = BertConfig.from_json_file(os.path.join(workdir, "config.json"))
    weights = torch.load(os.path.join(workdir, "weights.pt"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for name, loss_name in CASES:
        model = BertForTokenClassification(config)
        model.load_state_dict(weights)
        recorder, collator = GradientRecorder(), RecordingCollator()
        args = HEMConfig(
            **one_sgd_step_settings(
                os.path.join(workdir, "out"),
                loss_name=loss_name,
                margin_scale=MARGIN_SCALE,
                per_device_train_batch_size=len(dataset) // world_size,
            )
        )
        trainer = HEMTrainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[recorder]
        )
        margins = trainer.margins
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
