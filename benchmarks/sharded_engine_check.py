"""FSDP on a GPU: `HEMTrainer` refuses `skip_zero_loss` and trains the weights of the unsharded trainer.

accelerate enables FSDP only on accelerators, so this runs in `benchmarks/gpu_check.sh`, not in the CPU tests:

    torchrun --standalone --nproc_per_node 1 benchmarks/sharded_engine_check.py

Under FSDP (and DeepSpeed) `HEMTrainer` normalises every micro-batch's loss by its global count before the backward
pass and leaves the gradients to the engine (docs/trainer.md, "FSDP and DeepSpeed"). With one micro-batch per step
that is the exact HEM batch, so three SGD steps of a tiny ViT with FSDP2 (`full_shard`) must give the weights of the
same steps without FSDP. Prints the largest weight difference and `OK`, or `FAILED` and exits 1.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

from hf_hem.trainer import HEMConfig, HEMTrainer  # noqa: E402


TOLERANCE = 1e-5  # float32 on a GPU, the same kernels in both runs (TF32 off)


class SequentialTrainer(HEMTrainer):
    """Batches in dataset order, so both runs see the same samples in the same steps."""

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(config)


def dataset() -> datasets.Dataset:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(48) % 5
    pixels = torch.randn(48, 3, 16, 16, generator=generator) * 0.5
    pixels[torch.arange(48), labels % 3] += 1.0
    return datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "label": labels.numpy()}).with_format("torch")


def settings(output_dir: str, **overrides) -> dict:
    values = {
        "output_dir": output_dir,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "optim": "sgd",
        "learning_rate": 0.1,
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 16,
        "max_steps": 3,
        "logging_steps": 1,
        "seed": 0,
        "loss_name": "hem",
        "margin_scale": 12.0,  # 48 images: mu = 0.5
    }
    values.update(overrides)
    return values


def trained_weights(trainer: HEMTrainer) -> dict[str, torch.Tensor]:
    trainer.train()
    state = trainer.accelerator.get_state_dict(trainer.model)
    return {name: value.detach().float().cpu() for name, value in state.items()}


def main() -> int:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as workdir:
        reference = trained_weights(
            SequentialTrainer(tiny_vit(), HEMConfig(**settings(workdir)), train_dataset=dataset())
        )
        fsdp = {"fsdp": "full_shard", "fsdp_config": {"version": 2}}
        trainer = SequentialTrainer(tiny_vit(), HEMConfig(**settings(workdir, **fsdp)), train_dataset=dataset())
        if not trainer.is_fsdp_enabled or trainer.loss_is_scaled_for_ga:
            print(
                f"FAILED: FSDP enabled {trainer.is_fsdp_enabled} (accelerate enables it on accelerators only), "
                f"exact accumulation {trainer.loss_is_scaled_for_ga} (expected False under FSDP)"
            )
            return 1
        try:
            SequentialTrainer(
                tiny_vit(), HEMConfig(**settings(workdir, skip_zero_loss="exact", **fsdp)), train_dataset=dataset()
            )
            print("FAILED: skip_zero_loss='exact' was accepted under FSDP")
            return 1
        except ValueError as error:
            if "skip_zero_loss" not in str(error):
                raise
            print(f"skip_zero_loss refused under FSDP: {error}")
        sharded = trained_weights(trainer)
        fractions = [entry.get("hem/violating_fraction") for entry in trainer.state.log_history if "loss" in entry]
    moved = max(float((reference[name] - value).abs().max()) for name, value in tiny_vit().state_dict().items())
    difference = max(float((reference[name] - sharded[name]).abs().max()) for name in reference)
    print(f"violating fractions per step {fractions}; weights moved by {moved:.4g}")
    print(f"largest weight difference FSDP vs unsharded: {difference:.3g} (tolerance {TOLERANCE})")
    ok = difference <= TOLERANCE and moved > 1e-3
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
