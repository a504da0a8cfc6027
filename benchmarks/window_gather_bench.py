"""What gathering an accumulation window's violating samples saves (`HEMConfig(skip_gather_window=True)`).

    python benchmarks/window_gather_bench.py [--device cpu|cuda] [--models convnext,vit] [--fractions 0.05,0.1,0.25,0.5]
        [--batch 64] [--accumulation 8] [--repeats 5] [--json FILE]

With `skip_zero_loss="exact"` each micro-batch forwards and backpropagates whatever violates its margin: with a
violating fraction `f`, `k` small passes of about `f * B` samples. `skip_gather_window` runs the same samples in
`ceil(k f B / B)` passes of up to `B` instead: the same gradient, fewer and fuller passes. Timed here: only that
stage (the selection passes are the same in both and are timed apart, as is the step without skipping), with the
trainer's own code ([`WindowGatherer`] and the loss terms), on random images with the violating rows drawn per
micro-batch (binomial, the same rows for both). On a CPU a pass costs about in proportion to its samples, so the
two should be close; on a GPU a pass of a few samples costs nearly what a full one does, which is where gathering
pays. Medians over `--repeats`, the variants interleaved; one torch thread on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(name: str, num_labels: int):
    from transformers import AutoModelForImageClassification, ViTConfig

    from hf_hem.pipelines.image_classification import scratch_model_config

    torch.manual_seed(0)
    if name == "convnext":  # benchmarks/skip_bench.py's model, 16 px
        return AutoModelForImageClassification.from_config(scratch_model_config("convnext", 16, num_labels)), 16
    if name == "vit":  # a ViT-S-sized encoder on 32 px images (64 patches of 4 px)
        config = ViTConfig(
            image_size=32,
            patch_size=4,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=6,
            intermediate_size=1536,
            num_labels=num_labels,
        )
        return AutoModelForImageClassification.from_config(config), 32
    raise ValueError(f"model {name!r} unknown; expected convnext or vit.")


def timed(function, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def bench(name: str, fraction: float, options) -> dict:
    from hf_hem.losses.terms import LossTerms, logits_from_outputs
    from hf_hem.trainer.sample_skipping import WindowGatherer

    device, batch, steps = options.device, options.batch, options.accumulation
    model, size = build(name, 10)
    model = model.to(device).train()
    terms = LossTerms("hem", margins=torch.full((10,), 0.2))
    generator = torch.Generator().manual_seed(1)
    micro_batches = []
    for _ in range(steps):
        images = torch.randn(batch, 3, size, size, generator=generator).to(device)
        labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
        count = int(torch.distributions.Binomial(batch, torch.tensor(fraction)).sample())
        rows = torch.randperm(batch, generator=generator)[:count].to(device)
        micro_batches.append(({"pixel_values": images}, labels, rows))

    def loss_sum(inputs, labels):
        logits = logits_from_outputs(model(**inputs))
        return terms.compute(logits, labels).loss_sum

    def full_steps():  # skip_zero_loss="off"
        for inputs, labels, _ in micro_batches:
            loss_sum(inputs, labels).backward()

    def selection_passes():  # common to both skipping variants
        with torch.no_grad():
            for inputs, labels, _ in micro_batches:
                loss_sum(inputs, labels)

    def per_micro_batch():  # skip_zero_loss="exact"
        for inputs, labels, rows in micro_batches:
            if rows.numel():
                loss_sum({"pixel_values": inputs["pixel_values"][rows]}, labels[rows]).backward()

    def gathered():  # skip_zero_loss="exact", skip_gather_window=True
        gatherer = WindowGatherer()
        for inputs, labels, rows in micro_batches:
            gatherer.add(inputs, labels, rows)
        gatherer.flush(
            model,
            terms,
            chunk_size=batch,
            backward=lambda value: value.backward(),
            no_sync=contextlib.nullcontext,
            keep_last=False,
        )

    variants = {
        "off": full_steps,
        "selection": selection_passes,
        "per_micro_batch": per_micro_batch,
        "gathered": gathered,
    }
    for function in variants.values():  # warm-up (allocator, kernels, autotuning)
        function()
        model.zero_grad(set_to_none=True)
    timings = {key: [] for key in variants}
    keys = list(variants)
    for repeat in range(options.repeats):
        order = keys[repeat % len(keys) :] + keys[: repeat % len(keys)]
        for key in order:
            timings[key].append(timed(variants[key], device))
            model.zero_grad(set_to_none=True)
    medians = {key: statistics.median(values) for key, values in timings.items()}
    violating = sum(rows.numel() for _, _, rows in micro_batches)
    return {
        "model": name,
        "fraction": fraction,
        "violating": violating,
        "passes_per_micro_batch": sum(1 for _, _, rows in micro_batches if rows.numel()),
        "passes_gathered": -(-violating // batch),
        **{f"{key}_s": value for key, value in medians.items()},
        "gathered_over_per_micro_batch": medians["gathered"] / medians["per_micro_batch"],
        "exact_over_off": (medians["selection"] + medians["per_micro_batch"]) / medians["off"],
        "gathered_exact_over_off": (medians["selection"] + medians["gathered"]) / medians["off"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="convnext,vit")
    parser.add_argument("--fractions", default="0.05,0.1,0.25,0.5")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--accumulation", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    options = parser.parse_args()
    if options.device == "cpu":
        torch.set_num_threads(1)
    hardware = torch.cuda.get_device_name() if options.device == "cuda" else f"CPU, {torch.get_num_threads()} thread"
    print(f"{hardware}, torch {torch.__version__}, batch {options.batch} x {options.accumulation} micro-batches\n")
    print(
        "| model | violating fraction | passes: per micro-batch / gathered | off (s) | selection (s) "
        "| violating, per micro-batch (s) | violating, gathered (s) | gathered / per micro-batch "
        "| exact / off | exact + gather / off |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in options.models.split(","):
        for fraction in (float(f) for f in options.fractions.split(",")):
            row = bench(name, fraction, options)
            rows.append(row)
            print(
                f"| {name} | {fraction:g} | {row['passes_per_micro_batch']} / {row['passes_gathered']} "
                f"| {row['off_s']:.4f} | {row['selection_s']:.4f} | {row['per_micro_batch_s']:.4f} "
                f"| {row['gathered_s']:.4f} | {row['gathered_over_per_micro_batch']:.2f} "
                f"| {row['exact_over_off']:.2f} | {row['gathered_exact_over_off']:.2f} |",
                flush=True,
            )
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump({"device": options.device, "hardware": hardware, "rows": rows}, handle)


if __name__ == "__main__":
    main()
