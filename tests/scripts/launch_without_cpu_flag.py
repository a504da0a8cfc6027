"""Builds an `HEMTrainer` without `use_cpu`, as a user's script would, under whatever launch started it.

Launched by `tests/test_trainer_distributed.py::test_multi_gpu_launch_on_a_cpu_machine_is_refused` with
`accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/launch_without_cpu_flag.py <workdir>` on a machine
(or `CUDA_VISIBLE_DEVICES=""`) without GPUs: each process gets `WORLD_SIZE=2` but accelerate distributes nothing, so
`HEMTrainer` must refuse to start two independent trainings into one output folder. Writes `<workdir>/trained` if
it gets as far as training.
"""

import os
import sys

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import image_dataset, tiny_vit  # noqa: E402

from hf_hem.trainer import HEMConfig, HEMTrainer  # noqa: E402


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    args = HEMConfig(output_dir=os.path.join(workdir, "out"), report_to="none", max_steps=1, save_strategy="no")
    trainer = HEMTrainer(model=tiny_vit(), args=args, train_dataset=image_dataset())
    trainer.train()
    open(os.path.join(workdir, "trained"), "w").close()


if __name__ == "__main__":
    main(sys.argv[1])
