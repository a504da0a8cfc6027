"""Benchmark: peak memory of a segmentation evaluation does not grow with the number of evaluation images.

Evaluates a tiny SegFormer (150 classes, as ADE20K) with [`~hf_hem.HEMTrainer`] on `N` and on `factor × N` synthetic
images, each size in a fresh subprocess, the way `scripts/run_semantic_segmentation.py` evaluates:
`preprocess_logits_for_metrics=upsample_and_argmax` (class ids at label size) and `batch_eval_metrics=True` with the
streaming confusion matrix of `SegmentationMetrics`. Images are generated on the fly from their index, so the dataset
itself takes no memory that grows with `N`.

Per size the worker measures, after a warm-up evaluation has allocated everything that is allocated once:

* the peak resident set size (RSS) of the process during `trainer.evaluate()` above the RSS just before it (Linux
  `VmHWM`, reset through `/proc/self/clear_refs`): every allocation, PyTorch's CPU tensors included;
* the peak of Python and NumPy allocations during it (`tracemalloc`).

Target (issue 5): the peak for `10 × N` images within 10% of the peak for `N` images. `--stock` evaluates the way the
stock Trainer does without these settings (all logits concatenated, metrics at the end), to show what the streaming
avoids: its peak grows with `N`.

The workers run with glibc's mmap threshold fixed at 128 KiB (`MALLOC_MMAP_THRESHOLD_`). By default glibc raises that
threshold each time a large block is freed, after which the same per-batch blocks (upsampled logits of about 10 MB)
come from the heap instead and fragment it: a one-off shift of the peak by 10-20 MB on this benchmark, the same for
20× and for 10× the images, which is the allocator's and not memory the evaluation keeps. `--default-malloc` measures
with glibc's defaults, to see that shift.

Run: `python benchmarks/seg_eval_memory_bench.py [--num-images 40] [--factor 10] [--image-size 128] [--stock]
[--default-malloc]`
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def worker(args) -> dict:
    """Evaluate on `args.count` images in this process and return the memory measurements."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from transformers import SegformerForSemanticSegmentation

    from hf_hem.data import collate_fn
    from hf_hem.metrics import StreamingConfusionMatrix
    from hf_hem.pipelines.semantic_segmentation import (
        SegmentationMetrics,
        scratch_segformer_config,
        upsample_and_argmax,
    )
    from hf_hem.trainer import HEMConfig, HEMTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, num_labels = args.image_size, args.num_labels

    class SyntheticScenes(torch.utils.data.Dataset):
        """Image `i` and its mask are drawn from a generator seeded with `i`: nothing is stored."""

        def __init__(self, count: int):
            self.count = count

        def __len__(self) -> int:
            return self.count

        def __getitem__(self, index: int) -> dict:
            rng = np.random.default_rng(index)
            labels = np.full((size, size), 255, dtype=np.int64)
            for _ in range(4):
                top, left = rng.integers(0, size // 2, size=2)
                labels[top : top + size // 2, left : left + size // 2] = rng.integers(num_labels)
            pixels = rng.normal(size=(3, size, size)).astype(np.float32)
            return {"pixel_values": pixels, "labels": labels}

    model = SegformerForSemanticSegmentation(scratch_segformer_config("tiny", num_labels)).eval()
    if args.stock:

        def compute_metrics(eval_prediction):  # what a metric over concatenated logits does (the transformers example)
            matrix = StreamingConfusionMatrix(num_labels)
            logits, labels = torch.from_numpy(eval_prediction.predictions), torch.from_numpy(eval_prediction.label_ids)
            matrix.update(upsample_and_argmax(logits, labels), labels)
            return {"mean_iou": matrix.compute()["mean_iou"]}

        metric_kwargs = {"compute_metrics": compute_metrics}
    else:
        metric_kwargs = {
            "compute_metrics": SegmentationMetrics(num_labels),
            "preprocess_logits_for_metrics": upsample_and_argmax,
        }
    trainer = HEMTrainer(
        model=model,
        args=HEMConfig(
            output_dir=args.output_dir,
            loss_name="hem",
            margin=0.2,  # a fixed margin: no counting pass over training data
            per_device_eval_batch_size=args.batch_size,
            batch_eval_metrics=not args.stock,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=False,
        ),
        data_collator=collate_fn,
        **metric_kwargs,
    )
    # Warm-up: kernels, thread pools and allocator pools that any evaluation allocates once.
    trainer.evaluate(SyntheticScenes(2 * args.batch_size))
    dataset = SyntheticScenes(args.count)
    gc.collect()
    rss_before = _status_kib("VmRSS")
    _reset_peak_rss()
    tracemalloc.start()
    start = time.perf_counter()
    metrics = trainer.evaluate(dataset)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _status_kib("VmHWM")
    return {
        "images": args.count,
        "seconds": seconds,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_rss_delta_mib": (peak - rss_before) / 1024,
        "traced_peak_mib": traced_peak / 2**20,
        "mean_iou": metrics["eval_mean_iou"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=40, help="N, the smaller evaluation set")
    parser.add_argument("--factor", type=int, default=10, help="the larger set has factor x N images")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-labels", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads in the workers")
    parser.add_argument("--stock", action="store_true", help="concatenate all logits, as without the streaming")
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's adaptive mmap threshold (see the module docstring)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("this benchmark reads Linux /proc memory counters; run it on Linux.")

    if args.worker:
        print(json.dumps(worker(args)))
        return

    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as folder:
        for count in (args.num_images, args.factor * args.num_images):
            command = [
                sys.executable, __file__, "--worker", "--count", str(count), "--output-dir", folder,
                "--image-size", str(args.image_size), "--num-labels", str(args.num_labels),
                "--batch-size", str(args.batch_size), "--threads", str(args.threads),
            ] + (["--stock"] if args.stock else [])  # fmt: skip
            env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
            if not args.default_malloc:
                env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
            completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if completed.returncode != 0:
                sys.exit(f"worker for {count} images failed:\n{completed.stderr[-3000:]}")
            results.append(json.loads(completed.stdout.strip().splitlines()[-1]))

    mode = "stock (all logits concatenated)" if args.stock else "streaming (batch_eval_metrics + confusion matrix)"
    allocator = "glibc defaults" if args.default_malloc else "fixed mmap threshold"
    print(
        f"Evaluation memory, {mode}: tiny SegFormer, {args.num_labels} classes, {args.image_size}x{args.image_size} "
        f"images, batch {args.batch_size}, {allocator}"
    )
    print(f"{'images':>7} {'seconds':>8} {'peak RSS':>10} {'peak RSS - before':>18} {'tracemalloc peak':>17}")
    for row in results:
        print(
            f"{row['images']:>7} {row['seconds']:>8.1f} {row['peak_rss_mib']:>8.1f} MiB "
            f"{row['peak_rss_delta_mib']:>14.1f} MiB {row['traced_peak_mib']:>13.2f} MiB"
        )
    small, large = results
    delta_ratio = large["peak_rss_delta_mib"] / max(small["peak_rss_delta_mib"], 1e-9)
    absolute_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    traced_ratio = large["traced_peak_mib"] / max(small["traced_peak_mib"], 1e-9)
    print(
        f"ratio {args.factor}N / N: peak RSS during evaluation (above the RSS before it) {delta_ratio:.3f}, "
        f"process peak RSS {absolute_ratio:.3f}, tracemalloc peak {traced_ratio:.3f}"
    )
    within = delta_ratio <= 1.10
    print(f"peak memory for {args.factor}x the images within 10%: {'yes' if within else 'NO'}")


if __name__ == "__main__":
    main()
