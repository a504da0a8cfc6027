"""Times `count_labels` on a 1,000,000-row `datasets.Dataset` (the margins' start-up cost for classification).

The dataset has an ImageNet-sized label column (1000 classes) next to an encoded-image column, so the benchmark
also shows that counting never decodes images. It is timed as stored and after `shuffle()`, whose index mapping
the count must follow.

    python benchmarks/count_bench.py [--rows 1000000] [--repeats 5]

Prints the best of `--repeats` runs in seconds for each layout; the target is well under 1 s.
"""

import argparse
import time

import numpy as np


def best_time(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import datasets

    from hf_hem.counting import count_labels

    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.rows)
    # A tiny PNG stands in for the images: counting must not touch (or decode) this column.
    png = b"\x89PNG\r\n\x1a\n" + bytes(16)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=args.classes)})
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": png, "path": None}] * args.rows, "label": labels}, features=features
    )
    shuffled = dataset.shuffle(seed=0)

    expected = np.bincount(labels, minlength=args.classes)
    assert np.array_equal(count_labels(dataset, args.classes), expected)
    assert np.array_equal(count_labels(shuffled, args.classes), expected)

    for name, data in (("stored", dataset), ("shuffled (index mapping)", shuffled)):
        seconds = best_time(lambda data=data: count_labels(data, args.classes), args.repeats)
        print(f"count_labels, {args.rows:,} rows, {args.classes} classes, {name}: {seconds:.4f} s")


if __name__ == "__main__":
    main()
