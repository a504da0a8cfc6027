"""Evaluates a tiny ViT on 45 images, in one process or several; rank 0 writes the metrics.

Launched by `tests/test_trainer_distributed.py::test_evaluation_metrics_do_not_depend_on_the_number_of_processes`
with `accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/ddp_eval_check.py <workdir>`, and called in
the test's own process for the one-process reference. 45 is not a multiple of the global batch (2 x 8), so
accelerate pads the last batch of the second process with three samples from the start of the set. Writes
`<workdir>/metrics_<world size>.json` with the `evaluate()` and `predict()` metrics.
"""

import json
import os
import sys

import numpy as np
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import image_dataset, tiny_vit  # noqa: E402

from hf_hem.trainer import HEMConfig, HEMTrainer  # noqa: E402


NUM_SAMPLES = 45
BATCH_SIZE = 8


def accuracy(prediction) -> dict[str, float]:
    """`compute_metrics` over what `gather_for_metrics` kept: the evaluation set without padding."""
    predicted = np.asarray(prediction.predictions).argmax(-1)
    return {"accuracy": float((predicted == np.asarray(prediction.label_ids)).mean()), "samples": len(predicted)}


def main(workdir: str) -> None:
    torch.set_num_threads(1)
    model = tiny_vit(seed=0)
    with torch.no_grad():  # larger logits: 71% of the samples violate the margin, not all
        model.classifier.weight.mul_(20.0)
    # Seed 5: the three padding duplicates (samples 0-2) are all misclassified and violating, so counting them
    # moves every statistic (accuracy 15/48 instead of 15/45).
    dataset = image_dataset(num_samples=NUM_SAMPLES, seed=5)
    args = HEMConfig(
        output_dir=os.path.join(workdir, "out"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        per_device_eval_batch_size=BATCH_SIZE,
        loss_name="hem",
        margin=0.5,
    )
    trainer = HEMTrainer(model=model, args=args, eval_dataset=dataset, compute_metrics=accuracy)
    metrics = trainer.evaluate()
    test_metrics = trainer.predict(dataset).metrics
    if trainer.is_world_process_zero():
        with open(os.path.join(workdir, f"metrics_{trainer.args.world_size}.json"), "w") as file:
            json.dump({"eval": metrics, "test": test_metrics}, file)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    # A gloo process group left for the interpreter to tear down can abort the process at exit ("terminate called
    # without an active exception"): destroy it first.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
