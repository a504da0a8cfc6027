"""Train-step time and peak memory with cross-entropy vs HEM on ViT-B/16 and a SegFormer-B2-sized model.

    python benchmarks/train_step_bench.py [--device cpu|cuda] [--steps 10] [--json FILE]

Models are built from configs (random weights, nothing downloaded). A step is forward, loss, backward and an SGD
step (momentum 0.9). SegFormer logits (1/4 resolution) are upsampled bilinearly to the label size before the loss,
as the model's own loss does, with 10% of the pixels labelled 255 (ignored); a third SegFormer step lets HEM do
the upsampling block by block (`hem_loss(..., upsample_logits=True)`). CE and HEM steps alternate so that
machine load affects both alike; times are medians of `--steps` steps after warm-up.

Sizes: on CUDA the issue's (ViT-B/16 batch 128 at 224x224, SegFormer-B2 batch 8 at 512x512, bfloat16 autocast);
on CPU small ones that finish in a few minutes on two cores (ViT-B/16 batch 2 at 224x224, SegFormer-B2 batch 2 at
256x256, float32). Peak memory: CUDA allocator peak during a step; on CPU the peak resident set during a step above
the resident set before it (see `loss_bench.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics

import torch
import torch.nn.functional as F
from loss_bench import MIB, CpuPeakMemory, cpu_name, cuda_peak, time_once

from hf_hem import hem_loss
from hf_hem.losses import kernels


def vit_b16(num_labels: int = 1000):
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=224, patch_size=16, num_labels=num_labels))


def segformer_b2(num_labels: int = 150):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[64, 128, 320, 512],
        num_attention_heads=[1, 2, 5, 8],
        decoder_hidden_size=768,
        num_labels=num_labels,
    )
    return SegformerForSemanticSegmentation(config)


def make_step(model, images, labels, loss_name, device, autocast_dtype):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    segmentation = labels.dim() == 3
    ignore_index = 255 if segmentation else -100
    autocast = torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def loss_of(logits):
        if loss_name == "hem_upsampled":
            return hem_loss(logits, labels, 0.0395, ignore_index=ignore_index, upsample_logits=True)
        if segmentation:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        if loss_name == "ce":
            return F.cross_entropy(logits, labels, ignore_index=ignore_index)
        return hem_loss(logits, labels, 0.0395, ignore_index=ignore_index)

    def step():
        with autocast:
            logits = model(pixel_values=images).logits
            loss = loss_of(logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer


def bench_model(name, build, batch, size, num_labels, segmentation, device, steps, autocast_dtype, memory):
    torch.manual_seed(0)
    model = build(num_labels).to(device)
    model.train()
    images = torch.randn(batch, 3, size, size, device=device)
    if segmentation:
        labels = torch.randint(0, num_labels, (batch, size, size), device=device)
        labels[torch.rand(labels.shape, device=device) < 0.1] = 255
    else:
        labels = torch.randint(0, num_labels, (batch,), device=device)
    steps_by_loss = {}
    optimizers = []
    for loss_name in ("ce", "hem", "hem_upsampled") if segmentation else ("ce", "hem"):
        step, optimizer = make_step(model, images, labels, loss_name, device, autocast_dtype)
        steps_by_loss[loss_name] = step
        optimizers.append(optimizer)
    for _ in range(2):  # warm-up: allocator, Triton/C++ kernel compilation, optimizer state
        for step in steps_by_loss.values():
            step()
    timings = {loss_name: [] for loss_name in steps_by_loss}
    for _ in range(steps):
        for loss_name, step in steps_by_loss.items():
            timings[loss_name].append(time_once(step, device))
    peaks = {}
    for loss_name, step in steps_by_loss.items():
        gc.collect()
        peaks[loss_name] = statistics.median(memory(step) or 0.0 for _ in range(2))
    if device == "cuda":
        total_peaks = {}
        for loss_name, step in steps_by_loss.items():
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            total_peaks[loss_name] = torch.cuda.max_memory_allocated()
    else:
        total_peaks = {loss_name: None for loss_name in steps_by_loss}
    fused = kernels.resolve_implementation(
        torch.empty(1, 1, device=device, dtype=autocast_dtype or torch.float32), 0.1
    )
    rows = []
    for loss_name in steps_by_loss:
        median = statistics.median(timings[loss_name])
        rows.append(
            {
                "model": name,
                "setting": f"batch {batch}, {size}x{size}" + (f", {autocast_dtype}" if autocast_dtype else ", fp32"),
                "loss": {
                    "ce": "F.cross_entropy",
                    "hem": f"HEM ({fused})",
                    "hem_upsampled": f"HEM ({fused}), upsampling inside the loss",
                }[loss_name],
                "step_ms": median * 1e3,
                "time_vs_ce": median / statistics.median(timings["ce"]),
                "extra_peak_mib": peaks[loss_name] / MIB,
                "peak_vs_ce": peaks[loss_name] / max(peaks["ce"], 1.0),
                "total_peak_mib": None if total_peaks[loss_name] is None else total_peaks[loss_name] / MIB,
            }
        )
    del model, optimizers, steps_by_loss
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per loss (default 20 CUDA, 5 CPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    if args.device == "cuda":
        hardware = torch.cuda.get_device_name()
        steps = args.steps or 20
        memory, autocast_dtype = cuda_peak, torch.bfloat16
        settings = [("ViT-B/16", vit_b16, 128, 224, 1000, False), ("SegFormer-B2", segformer_b2, 8, 512, 150, True)]
    else:
        torch.set_num_threads(args.threads)
        hardware = f"{cpu_name()}, {torch.get_num_threads()} threads"
        steps = args.steps or 5
        memory, autocast_dtype = CpuPeakMemory().measure, None
        settings = [("ViT-B/16", vit_b16, 2, 224, 1000, False), ("SegFormer-B2", segformer_b2, 2, 256, 150, True)]
    rows = []
    for name, build, batch, size, num_labels, segmentation in settings:
        rows += bench_model(
            name, build, batch, size, num_labels, segmentation, args.device, steps, autocast_dtype, memory
        )

    print(f"\n### train step, {args.device}: {hardware}, torch {torch.__version__}\n")
    print("| model | setting | loss | step ms | × CE time | extra peak MiB | × CE peak | total peak MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        total = "n/a" if row["total_peak_mib"] is None else f"{row['total_peak_mib']:.0f}"
        print(
            f"| {row['model']} | {row['setting']} | {row['loss']} | {row['step_ms']:.1f} | {row['time_vs_ce']:.3f} | "
            f"{row['extra_peak_mib']:.0f} | {row['peak_vs_ce']:.2f} | {total} |"
        )
    if args.json:
        for row in rows:
            row["device"], row["hardware"] = args.device, hardware
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
