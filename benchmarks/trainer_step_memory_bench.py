"""Peak memory of one `HEMTrainer` training step (loss + `hem/*` statistics) on a SegFormer-B2-sized model.

    python benchmarks/trainer_step_memory_bench.py [--size 256] [--batch 2] [--repeats 3]

Only public API (`HEMConfig`, `HEMTrainer.training_step`), so the same script measures an older checkout too:

    git worktree add /tmp/hf_hem_before <commit> && PYTHONPATH=/tmp/hf_hem_before python benchmarks/...

Prints the CPU peak resident memory above the resident set before the step (median of `--repeats` steps after one
warm-up), for the margin loss with its statistics and for CE; the peak of the `hem/*` statistics alone on logits at
label size; and the size of one float32 copy of the (pixels x classes) logits at label resolution, the copy the
statistics must not make. Also prints which `hf_hem` was
imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch
from loss_bench import MIB, CpuPeakMemory, cpu_name
from train_step_bench import segformer_b2


os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import hf_hem
    from hf_hem.trainer import HEMConfig, HEMTrainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--losses", default="hem,ce")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    memory = CpuPeakMemory()
    num_labels = 150
    torch.manual_seed(0)
    images = torch.randn(options.batch, 3, options.size, options.size)
    labels = torch.randint(0, num_labels, (options.batch, options.size, options.size))
    labels[torch.rand(labels.shape) < 0.1] = 255
    print(f"hf_hem from {os.path.dirname(hf_hem.__file__)}; {cpu_name()}, {torch.get_num_threads()} threads")
    copy_mib = options.batch * options.size * options.size * num_labels * 4 / MIB
    for loss_name in options.losses.split(","):
        model = segformer_b2(num_labels)
        with tempfile.TemporaryDirectory() as output_dir:
            args = HEMConfig(
                output_dir=output_dir,
                loss_name=loss_name,
                margin=0.0395 if loss_name != "ce" else None,
                use_cpu=True,
                report_to="none",
                per_device_train_batch_size=options.batch,
            )
            trainer = HEMTrainer(model=model, args=args)
            trainer.create_optimizer()
            trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is not running

            def step(trainer=trainer, model=model):
                inputs = {"pixel_values": images, "labels": labels.clone()}
                trainer.training_step(model, inputs)
                model.zero_grad(set_to_none=True)

            step()
            peaks = [memory.measure(step) or 0.0 for _ in range(options.repeats)]
            # The statistics alone, on logits at label size (what a step passes them after upsampling).
            terms = trainer._ensure_loss_ready()  # returns the loss terms in every version of HEMTrainer
            logits = torch.randn(options.batch, num_labels, options.size, options.size)
            stats_peaks = [memory.measure(lambda t=terms, x=logits: t.stats(x, labels)) or 0.0 for _ in range(3)]
        print(
            f"{loss_name}: step peak above baseline {statistics.median(peaks) / MIB:.0f} MiB "
            f"(steps: {', '.join(f'{p / MIB:.0f}' for p in peaks)}); hem/* statistics alone "
            f"{statistics.median(stats_peaks) / MIB:.1f} MiB; one float32 (pixels x classes) copy at label size: "
            f"{copy_mib:.0f} MiB"
        )


if __name__ == "__main__":
    main()
