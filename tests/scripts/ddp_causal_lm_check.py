"""One HEM step of a tiny causal LM on 2 processes x 2 micro-batches x 8 sequences; rank 0 saves the gradients.

Launched by `tests/test_causal_lm.py::test_two_processes_with_uneven_violating_tokens` with
`accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/ddp_causal_lm_check.py <workdir>`. `<workdir>`
holds `config.json` and `weights.pt` (a tiny Llama) and `data.pt` (`input_ids`, `attention_mask`, `labels` of 32
sequences in the order the batches take: the sampler is sequential and accelerate deals global batch `k` to rank
`k % 2`). It writes `hem.pt` (gradients, logged loss, world size) and `hem_rank<r>_labels.pt`.
"""

import os
import sys

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from step_recording import GradientRecorder, SequentialHEMTrainer, one_sgd_step_settings  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.data.data_collator import default_data_collator  # noqa: E402

from hf_hem.trainer import HEMConfig  # noqa: E402


class RecordingCollator:
    def __init__(self):
        self.labels = []

    def __call__(self, features):
        batch = default_data_collator(features)
        self.labels.append(batch["labels"].clone())
        return batch


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    data = torch.load(os.path.join(workdir, "data.pt"))
    dataset = datasets.Dataset.from_dict({key: value.tolist() for key, value in data.items()})
    model = LlamaForCausalLM(LlamaConfig.from_json_file(os.path.join(workdir, "config.json")))
    model.load_state_dict(torch.load(os.path.join(workdir, "weights.pt")))
    recorder, collator = GradientRecorder(), RecordingCollator()
    args = HEMConfig(
        **one_sgd_step_settings(
            os.path.join(workdir, "out"), per_device_train_batch_size=8, gradient_accumulation_steps=2
        )
    )
    trainer = SequentialHEMTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[recorder]
    )
    trainer.train()
    rank = trainer.args.process_index
    torch.save(torch.cat(collator.labels), os.path.join(workdir, f"hem_rank{rank}_labels.pt"))
    if trainer.is_world_process_zero():
        torch.save(
            {
                "gradients": recorder.gradients,
                "logged_loss": trainer.state.log_history[0]["loss"],
                "world_size": trainer.args.world_size,
            },
            os.path.join(workdir, "hem.pt"),
        )
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # A gloo process group left for the interpreter to tear down can abort the process at exit ("terminate called
    # without an active exception"): destroy it first.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
