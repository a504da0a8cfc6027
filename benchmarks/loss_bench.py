"""Forward+backward time and extra peak memory of HEM (reference and fused) against `F.cross_entropy`.

    python benchmarks/loss_bench.py [--device cpu|cuda|all] [--threads 2] [--repeats 30] [--json FILE]

Cases: classification logits 1024x1000 and segmentation logits 4x150x128x128 (10% of pixels ignored) on CPU with
`--threads` threads; on CUDA the same plus 8x150x512x512 in float32 and bfloat16. Every method of a case is timed in
the same run, interleaved round by round so that machine load affects all alike; times are medians. Ratios are
against `F.cross_entropy` of the same case.

"Extra peak" is the peak memory during one forward+backward beyond what was allocated before it (the logits and
labels), the gradient included. On CUDA it comes from the caching allocator's statistics; on CPU from the process's
peak resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`), with glibc's mmap threshold fixed so that
every large tensor is returned to the system when freed. Memory is measured after all timings, because fixing the
threshold makes every large allocation fault its pages in afresh, which would slow down all methods.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import re
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hf_hem import hem_loss
from hf_hem.losses import kernels


MIB = 1024 * 1024


class CpuPeakMemory:
    """Peak resident memory of a call, in bytes above the resident memory before it (Linux only)."""

    def __init__(self):
        self.available = False
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            # M_MMAP_THRESHOLD = -3: a fixed threshold (no dynamic raising) so freed large blocks leave the process.
            self.libc.mallopt(-3, 128 * 1024)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.available = True
        except OSError:
            pass

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as handle:
            return int(re.search(rf"{field}:\s+(\d+)", handle.read()).group(1))

    def measure(self, function: Callable[[], object]) -> float | None:
        if not self.available:
            return None
        gc.collect()
        self.libc.malloc_trim(0)  # free heap pages go back too: reusing them must show up as resident again
        before = self._status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
        function()
        return (self._status_kib("VmHWM") - before) * 1024.0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            match = re.search(r"model name\s*:\s*(.+)", handle.read())
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cuda_peak(function: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    function()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - before)


def time_once(function: Callable[[], object], device: str) -> float:
    """Seconds of one call (CUDA: measured with events, synchronised)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved_medians(functions: dict[str, Callable[[], object]], device: str, repeats: int, warmup: int = 3):
    """Median seconds per function, timing one call of each in turn, `repeats` rounds.

    The order rotates from round to round, so that no method always runs right after the same other one (whose
    cache and allocator footprint it would inherit).
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    names = list(functions)
    timings = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            timings[name].append(time_once(functions[name], device))
    return {name: statistics.median(values) for name, values in timings.items()}


def make_case(shape, dtype, device, ignore_fraction, ignore_index, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    if ignore_fraction:
        labels[torch.rand(labels.shape, generator=generator) < ignore_fraction] = ignore_index
    return logits, labels.to(device)


def methods_for(logits, labels, ignore_index, margin, include_portable):
    """Loss closures of one case; each is run as forward + backward by `forward_backward`."""

    def hem_none_then_mean():
        # What the trainer does: per-sample losses, then its own sum and count of violating samples.
        per_sample = hem_loss(logits, labels, margin, ignore_index=ignore_index, reduction="none")
        return per_sample.sum() / (per_sample > 0).sum().clamp_min(1)

    fused = kernels.resolve_implementation(logits, margin)
    methods = {
        "F.cross_entropy": lambda: F.cross_entropy(logits, labels, ignore_index=ignore_index),
        "HEM reference": lambda: hem_loss(
            logits, labels, margin, ignore_index=ignore_index, implementation="reference"
        ),
        f"HEM fused ({fused})": lambda: hem_loss(logits, labels, margin, ignore_index=ignore_index),
        f"HEM fused ({fused}), reduction=none": hem_none_then_mean,
    }
    if include_portable and fused != "torch":
        methods["HEM fused (torch)"] = lambda: hem_loss(
            logits, labels, margin, ignore_index=ignore_index, implementation="torch"
        )
    return methods


def forward_backward(logits, loss_function):
    """One forward and backward; the previous gradient is dropped first so that every call allocates its own."""

    def run():
        logits.grad = None
        loss_function().backward()

    return run


def run_case(name, shape, dtype, device, repeats, include_portable):
    """Times every method of one case; returns the rows (memory columns are filled by `measure_case`)."""
    ignore_index = 255 if len(shape) > 2 else -100
    logits, labels = make_case(shape, dtype, device, 0.1 if len(shape) > 2 else 0.0, ignore_index)
    losses = methods_for(logits, labels, ignore_index, 0.0395, include_portable)
    functions = {method: forward_backward(logits, loss) for method, loss in losses.items()}
    # Agreement check on this very input before timing it.
    with torch.no_grad():
        reference = hem_loss(logits, labels, 0.0395, ignore_index=ignore_index, implementation="reference")
        difference = abs(float(reference) - float(hem_loss(logits, labels, 0.0395, ignore_index=ignore_index)))
    times = interleaved_medians(functions, device, repeats)
    del logits, labels, functions, losses
    release(device)
    return [
        {
            "case": name,
            "method": method,
            "ms": times[method] * 1e3,
            "time_vs_ce": times[method] / times["F.cross_entropy"],
            "loss_difference_fused_vs_reference": difference,
        }
        for method in times
    ]


def measure_case(rows, shape, dtype, device, memory, include_portable):
    """Adds the extra-peak columns to the rows of one case (median of three measurements per method)."""
    ignore_index = 255 if len(shape) > 2 else -100
    logits, labels = make_case(shape, dtype, device, 0.1 if len(shape) > 2 else 0.0, ignore_index)
    losses = methods_for(logits, labels, ignore_index, 0.0395, include_portable)
    peaks = {}
    for method, loss in losses.items():

        def measured(loss=loss):
            loss().backward()

        measurements = []
        for _ in range(3):
            logits.grad = None  # freed before the baseline is read: the new gradient counts as extra
            measurements.append(memory(measured))
        peaks[method] = None if measurements[0] is None else statistics.median(measurements)
    logits_bytes = logits.numel() * logits.element_size()
    del logits, labels, losses
    release(device)
    for row in rows:
        peak = peaks[row["method"]]
        row["extra_peak_mib"] = None if peak is None else peak / MIB
        row["peak_vs_ce"] = None if peak is None else peak / max(peaks["F.cross_entropy"], 1.0)
        row["peak_vs_logits"] = None if peak is None else peak / logits_bytes


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def print_table(rows, title):
    print(f"\n### {title}\n")
    print("| case | method | fwd+bwd ms | × CE time | extra peak MiB | × CE peak | peak / logits size |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        peak = "n/a" if row["extra_peak_mib"] is None else f"{row['extra_peak_mib']:.1f}"
        peak_ratio = "n/a" if row["peak_vs_ce"] is None else f"{row['peak_vs_ce']:.2f}"
        logits_ratio = "n/a" if row["peak_vs_logits"] is None else f"{row['peak_vs_logits']:.2f}"
        print(
            f"| {row['case']} | {row['method']} | {row['ms']:.2f} | {row['time_vs_ce']:.2f} | {peak} | "
            f"{peak_ratio} | {logits_ratio} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the CPU cases")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--portable", action="store_true", help="also time the chunked torch fallback")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("no CUDA device: CPU cases only")
    all_rows = []
    for device in devices:
        if device == "cpu":
            torch.set_num_threads(args.threads)
            hardware = f"{cpu_name()}, {torch.get_num_threads()} threads"
            print(f"CPU kernel: {kernels.cpu_kernel.status()}")
            memory = None  # set after the timings: it changes how glibc hands out memory
            cases = [
                ("1024x1000 fp32", (1024, 1000), torch.float32),
                ("4x150x128x128 fp32", (4, 150, 128, 128), torch.float32),
            ]
        else:
            hardware = torch.cuda.get_device_name()
            memory = cuda_peak
            cases = [
                ("1024x1000 fp32", (1024, 1000), torch.float32),
                ("4x150x128x128 fp32", (4, 150, 128, 128), torch.float32),
                ("8x150x512x512 fp32", (8, 150, 512, 512), torch.float32),
                ("8x150x512x512 bf16", (8, 150, 512, 512), torch.bfloat16),
            ]
        rows_by_case = [
            run_case(name, shape, dtype, device, args.repeats, args.portable) for name, shape, dtype in cases
        ]
        memory = memory or CpuPeakMemory().measure
        for case_rows, (_, shape, dtype) in zip(rows_by_case, cases):
            measure_case(case_rows, shape, dtype, device, memory, args.portable)
        rows = [row for case_rows in rows_by_case for row in case_rows]
        print_table(rows, f"{device}: {hardware}, torch {torch.__version__}")
        for row in rows:
            row["device"] = device
            row["hardware"] = hardware
        all_rows += rows
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(all_rows, handle, indent=1)


if __name__ == "__main__":
    main()
