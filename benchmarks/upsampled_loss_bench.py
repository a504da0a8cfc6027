"""HEM on SegFormer-style quarter-resolution logits: upsample-then-loss against upsampling inside the loss.

    python benchmarks/upsampled_loss_bench.py [--device cpu|cuda|all] [--threads 2] [--repeats 10]

SegFormer predicts `(N, C, H/4, W/4)` logits and its loss upsamples them to the `(N, H, W)` labels first
(`F.interpolate(..., mode="bilinear", align_corners=False)`). Methods, each a forward+backward from the small logits:

* `upsample + F.cross_entropy` — what SegFormer's own loss does (the baseline of the ratios);
* `upsample + HEM (fused)` — `hem_loss` on the upsampled logits (the default of `HEMTrainer`);
* `HEM, upsampling inside the loss` — `hem_loss(..., upsample_logits=True)` (`HEMConfig(upsample_logits_in_loss=True)`),
  which never holds the upsampled logits.

Times are medians of interleaved rounds; "extra peak" is the peak memory of one forward+backward beyond what was
allocated before it (the small logits and the labels), the gradient included; methods share `loss_bench.py`'s
measurement code. Ratios are against the baseline of the same case, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_bench import MIB, CpuPeakMemory, cpu_name, cuda_peak, interleaved_medians, release  # noqa: E402

from hf_hem import hem_loss  # noqa: E402
from hf_hem.losses import kernels  # noqa: E402


BASELINE = "upsample + F.cross_entropy"
MARGIN = 0.0395
IGNORE_INDEX = 255


def make_case(shape, label_size, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, shape[1], (shape[0], *label_size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = IGNORE_INDEX
    return logits, labels.to(device)


def methods_for(logits, labels):
    size = labels.shape[-2:]

    def upsampled():
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    return {
        "upsample + F.cross_entropy": lambda: F.cross_entropy(upsampled(), labels, ignore_index=IGNORE_INDEX),
        "upsample + HEM (fused)": lambda: hem_loss(upsampled(), labels, MARGIN, ignore_index=IGNORE_INDEX),
        "HEM, upsampling inside the loss": lambda: hem_loss(
            logits, labels, MARGIN, ignore_index=IGNORE_INDEX, upsample_logits=True
        ),
    }


def time_case(name, shape, label_size, dtype, device, repeats):
    """Times every method of one case; returns its rows (memory columns are added by `measure_case`)."""
    logits, labels = make_case(shape, label_size, dtype, device)
    losses = methods_for(logits, labels)

    def step(loss):
        def run():
            logits.grad = None
            loss().backward()

        return run

    with torch.no_grad():
        values = {method: float(loss()) for method, loss in losses.items()}
    difference = abs(values["HEM, upsampling inside the loss"] - values["upsample + HEM (fused)"])
    print(f"{name}: |HEM upsampled inside - HEM after upsampling| = {difference:.2e}")
    times = interleaved_medians({method: step(loss) for method, loss in losses.items()}, device, repeats)
    return [
        {"case": name, "method": method, "ms": times[method] * 1e3, "time_vs_ce": times[method] / times[BASELINE]}
        for method in times
    ]


def measure_case(rows, shape, label_size, dtype, device, memory):
    """Adds the extra-peak columns to the rows of one case (median of three measurements per method)."""
    logits, labels = make_case(shape, label_size, dtype, device)
    peaks = {}
    for method, loss in methods_for(logits, labels).items():
        measurements = []
        for _ in range(3):
            logits.grad = None  # freed before the baseline is read: the new gradient counts as extra
            measurements.append(memory(lambda loss=loss: loss().backward()))
        peaks[method] = None if measurements[0] is None else statistics.median(measurements)
    upsampled_bytes = shape[0] * shape[1] * label_size[0] * label_size[1] * logits.element_size()
    for row in rows:
        peak = peaks[row["method"]]
        row["extra_peak_mib"] = None if peak is None else peak / MIB
        row["peak_vs_ce"] = None if peak is None else peak / max(peaks[BASELINE], 1.0)
        row["peak_vs_upsampled"] = None if peak is None else peak / upsampled_bytes


def print_table(rows, title):
    print(f"\n### {title}\n")
    print("| case | method | fwd+bwd ms | × CE time | extra peak MiB | × CE peak | peak / upsampled logits |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        peak = "n/a" if row["extra_peak_mib"] is None else f"{row['extra_peak_mib']:.1f}"
        ratio = "n/a" if row["peak_vs_ce"] is None else f"{row['peak_vs_ce']:.2f}"
        size_ratio = "n/a" if row["peak_vs_upsampled"] is None else f"{row['peak_vs_upsampled']:.2f}"
        print(
            f"| {row['case']} | {row['method']} | {row['ms']:.1f} | {row['time_vs_ce']:.2f} | {peak} | {ratio} | "
            f"{size_ratio} |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the CPU cases")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("no CUDA device: CPU cases only")
    for device in devices:
        if device == "cpu":
            torch.set_num_threads(args.threads)
            hardware = f"{cpu_name()}, {torch.get_num_threads()} threads"
            print(f"CPU kernel: {kernels.cpu_kernel.status()}")
            memory = None  # set after the timings: it changes how glibc hands out memory
            cases = [
                ("2x150x64x64 -> 256x256 fp32", (2, 150, 64, 64), (256, 256), torch.float32),
                ("2x150x128x128 -> 512x512 fp32", (2, 150, 128, 128), (512, 512), torch.float32),
            ]
        else:
            hardware = torch.cuda.get_device_name()
            memory = cuda_peak
            cases = [
                ("8x150x128x128 -> 512x512 fp32", (8, 150, 128, 128), (512, 512), torch.float32),
                ("8x150x128x128 -> 512x512 bf16", (8, 150, 128, 128), (512, 512), torch.bfloat16),
            ]
        rows_by_case = []
        for case in cases:
            rows_by_case.append(time_case(*case, device, args.repeats))
            release(device)  # the case's tensors went with time_case's frame
        memory = memory or CpuPeakMemory().measure
        for case_rows, case in zip(rows_by_case, cases):
            measure_case(case_rows, *case[1:], device, memory)
            release(device)
        print_table(
            [row for case_rows in rows_by_case for row in case_rows],
            f"{device}: {hardware}, torch {torch.__version__}",
        )


if __name__ == "__main__":
    main()
