"""Benchmark: pixel histogram over PNG-encoded segmentation masks read from a parquet dataset.

Builds `--num-masks` ADE20K-like masks (`--size`×`--size`, 150 classes plus background 0, irregular region
boundaries like real annotations), PNG-encodes them into a parquet file in the ADE20K schema in a temporary folder,
loads it with `hf_hem.data.load_segmentation_dataset` (the same path as the Hub's parquet conversion) and times
`hf_hem.data.pixel_histogram(..., reduce_labels=True)` on the train split. Target (issue 5): 2,000 masks of
512×512 in under 10 s on a 2-core machine. Only the mask column is read; the `image` column holds tiny
placeholders so the setup stays fast.

Run: `python benchmarks/pixel_histogram_bench.py [--num-masks 2000] [--size 512] [--threads N] [--compare-counting]`
"""

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image


NUM_CLASSES = 150


def smooth_label_maps(rng: np.random.Generator, count: int, size: int, regions: int = 10) -> list[np.ndarray]:
    """Label maps whose regions have curved, irregular borders: argmax over smooth random fields."""
    maps = []
    for _ in range(count):
        fields = rng.random((regions, 12, 12)).astype(np.float32)
        smooth = np.stack(
            [np.asarray(PIL.Image.fromarray(field).resize((size, size), PIL.Image.BICUBIC)) for field in fields]
        )
        maps.append(np.argmax(smooth, axis=0).astype(np.uint8))
    return maps


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def encoded_masks(num_masks: int, size: int, seed: int = 0, chunk: int = 200) -> list[bytes]:
    """PNG bytes of `num_masks` distinct masks: shifted, flipped and relabelled copies of a few smooth label maps."""
    rng = np.random.default_rng(seed)
    bases = smooth_label_maps(rng, count=16, size=size)
    encoded = []
    with ThreadPoolExecutor() as pool:  # PNG encoding releases the GIL
        for first in range(0, num_masks, chunk):
            masks = []
            for _ in range(min(chunk, num_masks - first)):
                base = bases[int(rng.integers(len(bases)))]
                mask = np.roll(base, shift=tuple(int(s) for s in rng.integers(0, size, size=2)), axis=(0, 1))
                if rng.random() < 0.5:
                    mask = mask[:, ::-1]
                # Region k gets a random ADE class id (0 = background, 1..150 = classes).
                lookup = rng.choice(NUM_CLASSES + 1, size=256).astype(np.uint8)
                masks.append(np.ascontiguousarray(lookup[mask]))
            encoded.extend(pool.map(_png, masks))
    return encoded


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-masks", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="decoding threads (default: CPU count, max 8)")
    parser.add_argument(
        "--compare-counting",
        action="store_true",
        help="also time hf_hem.counting.pixel_histogram (the counts-only wrapper, which delegates to the same code) on the same data",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    from hf_hem.data import load_segmentation_dataset, pixel_histogram

    datasets.disable_progress_bars()
    start = time.perf_counter()
    masks = encoded_masks(args.num_masks, args.size)
    placeholder = io.BytesIO()
    PIL.Image.new("RGB", (8, 8)).save(placeholder, format="PNG")
    features = datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image(), "scene_category": datasets.Value("int64")}
    )
    with tempfile.TemporaryDirectory() as folder:
        parquet_path = os.path.join(folder, "train-00000-of-00001.parquet")
        datasets.Dataset.from_dict(
            {
                "image": [{"bytes": placeholder.getvalue(), "path": None}] * len(masks),
                "annotation": [{"bytes": data, "path": f"mask_{i:05d}.png"} for i, data in enumerate(masks)],
                "scene_category": [0] * len(masks),
            },
            features=features,
        ).to_parquet(parquet_path)
        train = load_segmentation_dataset(
            data_files=parquet_path, train_val_split=None, cache_dir=os.path.join(folder, "cache")
        )["train"]
        setup_seconds = time.perf_counter() - start
        mean_kib = sum(map(len, masks)) / len(masks) / 1024

        start = time.perf_counter()
        counts, num_images = pixel_histogram(
            train, NUM_CLASSES, reduce_labels=True, num_threads=args.threads, progress=True
        )
        seconds = time.perf_counter() - start
        if args.compare_counting:
            from hf_hem.counting import pixel_histogram as counting_pixel_histogram

            start = time.perf_counter()
            other_counts = counting_pixel_histogram(
                train,
                NUM_CLASSES,
                mask_column="annotation",
                transform=lambda mask: np.where(mask == 0, 255, mask - 1),
                progress=False,
            )
            other_seconds = time.perf_counter() - start
            assert np.array_equal(other_counts, counts), "the two histograms disagree"
        del train

    assert num_images == args.num_masks
    print(
        f"setup {setup_seconds:.1f} s ({args.num_masks} masks, mean PNG {mean_kib:.1f} KiB); "
        f"counted {counts.sum():,} labelled pixels of {num_images * args.size**2:,}"
    )
    print(
        f"pixel_histogram: {args.num_masks} masks of {args.size}x{args.size} in {seconds:.2f} s "
        f"({args.num_masks / seconds:.0f} masks/s, {os.cpu_count()} CPUs, threads={args.threads or 'default'})"
    )
    if args.compare_counting:
        print(f"hf_hem.counting.pixel_histogram: same masks in {other_seconds:.2f} s (identical counts)")


if __name__ == "__main__":
    main()
