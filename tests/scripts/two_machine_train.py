"""Three HEM steps of a tiny ViT on 32 images, global batch 16; the main process writes the trained weights.

Run by `tests/test_trainer_distributed.py::test_two_machines_train_the_weights_of_one_process` as two "machines" of
one process each on this host (`accelerate launch --num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1
... tests/scripts/two_machine_train.py <workdir>`, CPU processes over gloo), and in the test's own process for the
one-process reference. The sampler is sequential, so global batch `k` is images `16k .. 16k+15` however many
processes share it. Writes `<workdir>/weights_<world size>.pt`, `<workdir>/log_<world size>.json` and, per process,
`<workdir>/placement_rank<r>.json` (its global and local index).
"""

import json
import os
import sys

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import image_dataset, tiny_vit  # noqa: E402
from step_recording import SequentialHEMTrainer, one_sgd_step_settings  # noqa: E402

from hf_hem.trainer import HEMConfig  # noqa: E402


GLOBAL_BATCH = 16


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    settings = one_sgd_step_settings(
        os.path.join(workdir, "out"), per_device_train_batch_size=GLOBAL_BATCH // world_size, max_steps=3
    )
    args = HEMConfig(loss_name="hem", margin_scale=8.0, **settings)  # 32 images: mu = sqrt(8 / 32) = 0.5
    trainer = SequentialHEMTrainer(model=tiny_vit(seed=1), args=args, train_dataset=image_dataset(num_samples=32))
    trainer.train()
    placement = {key: getattr(trainer.args, key) for key in ("process_index", "local_process_index", "world_size")}
    with open(os.path.join(workdir, f"placement_rank{trainer.args.process_index}.json"), "w") as file:
        json.dump(placement, file)
    if trainer.is_world_process_zero():
        world = trainer.args.world_size
        weights = {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}
        torch.save(weights, os.path.join(workdir, f"weights_{world}.pt"))
        with open(os.path.join(workdir, f"log_{world}.json"), "w") as file:
            json.dump(trainer.state.log_history, file)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # A gloo process group left for the interpreter to tear down can abort the process at exit ("terminate called
    # without an active exception"): destroy it first.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
