"""Which HEM margin learns on small training sets? CE against HEM with the paper's rule and fixed margins.

    python benchmarks/small_data_margins.py [--seeds 3] [--seg-seeds 2] [--tasks cls,cls-ft,seg-ft] [--json FILE]

The paper's rule `mu = sqrt(2000 / S)` was calibrated on CIFAR / ImageNet (S = 50,000 / 1.28M: mu = 0.2 / 0.04);
fine-tuning on a few dozen images gives mu = 6.45 (S = 48). This script trains, on the embedded data, CE and HEM
with the rule's margin, with fixed margins 0.2, 0.5, 1 and 2, and with the library's default (whatever
[`hf_hem.margins.resolve_margins`] gives for the training set's counts; it is deduplicated against the others), and
prints the test accuracy / mIoU after each epoch budget and the share of training samples (pixels) violating their
margin in that epoch (`hem/violating_fraction`).

Four settings:

* `cls`: image classification from scratch, scikit-learn's digits upscaled to 32x32, 10 classes, a tiny
  `ResNetForImageClassification` from its config, stratified training subsets of S = 50, 200, 500 images.
* `cls-ft`: "fine-tuning": the ResNet is first trained with CE on all training digits 0-4, then gets a new
  5-class head and is trained on S = 50, 100 or 200 images of digits 5-9.
* `seg` (not in the default run: no loss learns from 48 scenes from scratch, mIoU <= 0.053): semantic segmentation
  from scratch, the synthetic digit scenes (64x64, ADE20K schema, background ignored, 10 classes) of
  [`load_digits_segmentation_dataset`], a tiny SegFormer from its config, S = 48 training images.
* `seg-ft`: the SegFormer is first trained with CE on scenes holding only digits 0-4, then gets a new 5-class head
  and is trained on S = 48 scenes holding only digits 5-9.

One recipe for every loss and margin, as the Hugging Face `Trainer` defaults fine-tune: AdamW (weight decay 0),
linear decay of the learning rate to 0 over the run, no warm-up; batch 16 (classification) / 8 (segmentation);
learning rate 3e-3 from scratch and for pre-training, 1e-3 for fine-tuning; 40 epochs (classification) / 30
(segmentation). Nothing is tuned per loss. The same seed gives every loss the same initial weights, the same
pre-trained model, the same training subset and the same batch order; the pre-trained model is one per setting
(seed 0, as one downloads one checkpoint). Logits of SegFormer are upsampled to the label size before the loss, as
SegFormer's own loss does. Budgets are epochs of that one run (the schedule's
learning rate at epoch k < 40 is not yet 0); the last column is the end of the run. Convergence is checked per run:
"converged" counts the runs whose score moved by less than 1 point (0.01) over the last quarter of the epochs
(scored at epochs 30, 35, 40 of 40 / 23, 27, 30 of 30).

Threads: one torch thread (`OMP_NUM_THREADS=1`); the default run takes about 11 minutes of CPU (676 s measured; its
wall-clock time grows with whatever else shares the core).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXED_MARGINS = (0.2, 0.5, 1.0, 2.0)
RULE_SCALE = 2000.0
IGNORE_INDEX = 255


# --------------------------------------------------------------------------------------------------------------------
# Data


def classification_arrays(image_size: int = 32):
    """The embedded digits' train / validation splits as `(N, 1, H, W)` float tensors in [-1, 1] and int64 labels."""
    from hf_hem.experiments.suite.benchmark_data import load_benchmark_data

    splits = load_benchmark_data("digits", image_size, 1, 0, 0.3)
    to_tensor = lambda images: torch.tensor(images) * 2.0 - 1.0  # noqa: E731
    return (
        (to_tensor(splits.train_images), torch.tensor(splits.train_labels)),
        (to_tensor(splits.test_images), torch.tensor(splits.test_labels)),
    )


def segmentation_arrays(num_images: int = 2400, image_size: int = 64):
    """Synthetic digit scenes as `(N, 3, H, W)` tensors and `(N, H, W)` labels: background 255, digit d is class d."""
    from hf_hem.data import load_digits_segmentation_dataset

    scenes = load_digits_segmentation_dataset(num_images=num_images, image_size=image_size, seed=0)
    arrays = []
    for split in ("train", "validation"):
        images = np.stack([np.asarray(image, dtype=np.float32) for image in scenes[split]["image"]])
        masks = np.stack([np.asarray(mask, dtype=np.int64) for mask in scenes[split]["annotation"]])
        labels = np.where(masks == 0, IGNORE_INDEX, masks - 1)  # reduce_labels: background ignored
        pixels = torch.tensor(images).permute(0, 3, 1, 2) / 127.5 - 1.0
        arrays.append((pixels.contiguous(), torch.tensor(labels)))
    return arrays


def keep_classes(data, classes: range, dense: bool):
    """The samples (scenes) whose labels all lie in `classes`, relabelled `0..len(classes)-1`."""
    images, labels = data
    if dense:
        inside = (labels == IGNORE_INDEX) | ((labels >= classes.start) & (labels < classes.stop))
        keep = inside.flatten(1).all(dim=1)
    else:
        keep = (labels >= classes.start) & (labels < classes.stop)
    labels = labels[keep].clone()
    labels[labels != IGNORE_INDEX] -= classes.start
    return images[keep], labels


def subsample(data, size: int, seed: int, dense: bool):
    """`size` samples drawn with `seed`: stratified by label for classification, uniformly for scenes."""
    images, labels = data
    generator = torch.Generator().manual_seed(seed)
    if dense:
        chosen = torch.randperm(len(labels), generator=generator)[:size]
    else:
        classes = labels.unique()
        per_class = [torch.nonzero(labels == c)[:, 0] for c in classes]
        per_class = [indices[torch.randperm(len(indices), generator=generator)] for indices in per_class]
        share = size // len(classes)
        chosen = torch.cat([indices[: share + (rank < size % len(classes))] for rank, indices in enumerate(per_class)])
    return images[chosen], labels[chosen]


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    valid = labels[labels != IGNORE_INDEX]
    return torch.bincount(valid.flatten(), minlength=num_classes)


# --------------------------------------------------------------------------------------------------------------------
# Models


def build_model(task: str, num_labels: int, seed: int):
    torch.manual_seed(seed)
    if task == "cls":
        from hf_hem.models import tiny_resnet

        return tiny_resnet(num_labels, num_channels=1, seed=seed)
    from transformers import SegformerForSemanticSegmentation

    from hf_hem.pipelines.semantic_segmentation import scratch_segformer_config

    return SegformerForSemanticSegmentation(scratch_segformer_config("tiny", num_labels))


def with_new_head(task: str, pretrained, num_labels: int, seed: int):
    """A model with `pretrained`'s weights except the classifier, which is new (random) for `num_labels` classes."""
    model = build_model(task, num_labels, seed + 1000)
    state = {key: value for key, value in pretrained.state_dict().items() if "classifier" not in key}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not all("classifier" in key for key in missing):
        raise RuntimeError(f"head swap failed: missing {missing}, unexpected {unexpected}")
    return model


def logits_at_label_size(model, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(pixel_values=images).logits
    if logits.dim() == 4 and logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits


# --------------------------------------------------------------------------------------------------------------------
# Training and scores


def violating(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[int, int]:
    """(samples violating their margin, labelled samples): HEM's per-sample loss is > 0 exactly for the former."""
    if logits.dim() == 4:
        logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        labels = labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    logits, labels = logits[keep], labels[keep]
    target = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    return int((others - target + margin > 0).sum()), int(labels.numel())


@torch.no_grad()
def score(model, data, num_labels: int, dense: bool, batch_size: int = 100) -> float:
    """Accuracy (classification) or mIoU over the classes present in labels or predictions (segmentation)."""
    model.eval()
    images, labels = data
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        batch_labels = labels[start : start + batch_size]
        predictions = logits_at_label_size(model, images[start : start + batch_size], batch_labels).argmax(dim=1)
        keep = batch_labels != IGNORE_INDEX
        confusion += torch.bincount(
            batch_labels[keep] * num_labels + predictions[keep], minlength=num_labels**2
        ).reshape(num_labels, num_labels)
    model.train()
    if not dense:
        return float(confusion.diag().sum() / confusion.sum())
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    present = union > 0
    return float((confusion.diag()[present] / union[present]).mean())


def train(model, data, criterion, margin, *, epochs, batch_size, learning_rate, seed, evaluate, eval_epochs=()):
    """AdamW with linear decay to 0; returns per epoch `(score, violating_fraction)`: the score only at
    `eval_epochs` (`None` elsewhere: scoring every epoch would cost more than training), no fraction for CE."""
    images, labels = data
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    steps = epochs * math.ceil(len(labels) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    generator = torch.Generator().manual_seed(seed)
    curve = []
    model.train()
    for _ in range(epochs):
        violated = seen = 0
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            logits = logits_at_label_size(model, images[batch], labels[batch])
            loss = criterion(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if margin is not None:
                counted = violating(logits.detach(), labels[batch], margin)
                violated, seen = violated + counted[0], seen + counted[1]
        fraction = None if margin is None else violated / seen
        curve.append((evaluate(model) if len(curve) + 1 in eval_epochs else None, fraction))
    return curve


def loss_settings(num_labels: int, counts: torch.Tensor, num_samples: int):
    """`(name, loss kwargs, margin)` per setting: CE, HEM with the rule, fixed margins, and the library default."""
    from hf_hem.margins import resolve_margins

    rule = math.sqrt(RULE_SCALE / num_samples)
    default = resolve_margins(num_labels, class_counts=counts, scale=RULE_SCALE, num_samples=num_samples)
    settings = [("ce", "ce", {"ignore_index": IGNORE_INDEX}, None)]
    margins = {f"hem rule mu={rule:.2f}": rule, **{f"hem mu={m:g}": m for m in FIXED_MARGINS}}
    default_value = float(default.max())
    for label, value in list(margins.items()):
        if math.isclose(value, default_value, rel_tol=1e-5):
            margins[f"{label} (default)"] = margins.pop(label)
            break
    else:
        margins[f"hem default mu={default_value:.2f}"] = default_value
    for label, value in margins.items():
        settings.append((label, "hem", {"margin": float(value), "ignore_index": IGNORE_INDEX}, float(value)))
    return settings


# --------------------------------------------------------------------------------------------------------------------
# The four settings


TASKS = {
    # name: (model kind, dense labels, from classes, fine-tune classes, sizes, epochs, batch, lr, pretrain epochs)
    "cls": ("cls", False, None, range(0, 10), (50, 200, 500), 40, 16, 3e-3, 0),
    "cls-ft": ("cls", False, range(0, 5), range(5, 10), (50, 100, 200), 40, 16, 1e-3, 20),
    "seg": ("seg", True, None, range(0, 10), (48,), 30, 8, 3e-3, 0),
    "seg-ft": ("seg", True, range(0, 5), range(5, 10), (48,), 30, 8, 1e-3, 15),
}
BUDGETS = {40: (2, 5, 10, 20, 40), 30: (2, 5, 10, 20, 30)}


def eval_epochs(epochs: int) -> set[int]:
    """The budgets, and the epochs of the last quarter that the convergence check reads."""
    return {*BUDGETS[epochs], *convergence_epochs(epochs)}


def convergence_epochs(epochs: int) -> tuple[int, ...]:
    return tuple(sorted({epochs - epochs // 4, epochs - epochs // 8, epochs}))


def run_task(name: str, seeds: int, data_cache: dict, results: list) -> None:
    from hf_hem.losses import get_loss

    kind, dense, pretrain_classes, classes, sizes, epochs, batch_size, learning_rate, pretrain_epochs = TASKS[name]
    if kind not in data_cache:
        data_cache[kind] = segmentation_arrays() if dense else classification_arrays()
    train_split, test_split = data_cache[kind]
    pool, test = keep_classes(train_split, classes, dense), keep_classes(test_split, classes, dense)
    test = (test[0][:200], test[1][:200]) if dense else test
    num_labels = len(classes)
    pretrained = None
    if pretrain_classes is not None:
        # One pre-trained model per setting (seed 0), as one downloads one checkpoint; the seeds vary the new head,
        # the training subset and the batch order.
        source = keep_classes(train_split, pretrain_classes, dense)
        source_test = keep_classes(test_split, pretrain_classes, dense)
        source_test = (source_test[0][:200], source_test[1][:200]) if dense else source_test
        pretrained = build_model(kind, len(pretrain_classes), 0)
        start = time.perf_counter()
        criterion = get_loss("ce", ignore_index=IGNORE_INDEX)
        train(
            pretrained,
            source,
            criterion,
            None,
            epochs=pretrain_epochs,
            batch_size=batch_size,
            learning_rate=3e-3,
            seed=0,
            evaluate=None,
        )
        print(
            f"[{name}] pre-trained with CE for {pretrain_epochs} epochs on {len(source[1])} samples of classes "
            f"{pretrain_classes.start}-{pretrain_classes.stop - 1}: score "
            f"{score(pretrained, source_test, len(pretrain_classes), dense):.3f} on their test set "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    for seed in range(seeds):
        for size in sizes:
            data = subsample(pool, size, seed, dense)
            counts = class_counts(data[1], num_labels)
            for label, loss_name, kwargs, margin in loss_settings(num_labels, counts, size):
                if pretrained is None:
                    model = build_model(kind, num_labels, seed)
                else:
                    model = with_new_head(kind, pretrained, num_labels, seed)
                start = time.perf_counter()
                curve = train(
                    model,
                    data,
                    get_loss(loss_name, **kwargs),
                    margin,
                    epochs=epochs,
                    batch_size=batch_size,
                    learning_rate=learning_rate,
                    seed=seed,
                    evaluate=lambda model: score(model, test, num_labels, dense),
                    eval_epochs=eval_epochs(epochs),
                )
                results.append(
                    {
                        "task": name,
                        "size": size,
                        "setting": label,
                        "margin": margin,
                        "seed": seed,
                        "scores": [point[0] for point in curve],
                        "violating": [point[1] for point in curve],
                        "seconds": time.perf_counter() - start,
                    }
                )


def converged(scores: list[float]) -> bool:
    """Whether the score moved by less than 0.01 over the last quarter of the epochs (3 evaluations)."""
    tail = [scores[epoch - 1] for epoch in convergence_epochs(len(scores))]
    return max(tail) - min(tail) < 0.01


def print_table(results: list, name: str) -> None:
    rows = [result for result in results if result["task"] == name]
    if not rows:
        return
    epochs = len(rows[0]["scores"])
    budgets = BUDGETS[epochs]
    metric = "mIoU" if name.startswith("seg") else "accuracy"
    for size in sorted({row["size"] for row in rows}):
        runs = [row for row in rows if row["size"] == size]
        seeds = len({row["seed"] for row in runs})
        print(f"\n## {name}, S = {size}: test {metric} after k epochs (mean over {seeds} seeds; ± std at the end)")
        header = " | ".join(f"ep {k}" for k in budgets)
        print(f"| setting | {header} | violating fraction ep 1 / {budgets[1]} / end | converged |")
        print("|---|" + "---|" * len(budgets) + "---|---|")
        for setting in dict.fromkeys(row["setting"] for row in runs):
            group = [row for row in runs if row["setting"] == setting]
            means = [statistics.mean(row["scores"][k - 1] for row in group) for k in budgets]
            spread = statistics.pstdev(row["scores"][-1] for row in group)
            cells = " | ".join(f"{value:.3f}" for value in means[:-1]) + f" | {means[-1]:.3f} ± {spread:.3f}"
            if group[0]["violating"][0] is None:
                violation = "-"
            else:
                points = (0, budgets[1] - 1, epochs - 1)
                violation = " / ".join(f"{statistics.mean(row['violating'][p] for row in group):.2f}" for p in points)
            done = sum(converged(row["scores"]) for row in group)
            print(f"| {setting} | {cells} | {violation} | {done}/{len(group)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="Seeds of the classification settings.")
    parser.add_argument("--seg-seeds", type=int, default=2, help="Seeds of the segmentation settings.")
    parser.add_argument("--tasks", default="cls,cls-ft,seg-ft", help=f"Comma-separated, from {list(TASKS)}.")
    parser.add_argument("--json", help="Also write every run's curve to this file.")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # tables appear as each setting ends, also through a pipe
    torch.set_num_threads(1)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown --tasks {unknown}; expected some of {list(TASKS)}.")
    start, cpu_start = time.perf_counter(), time.process_time()
    results, data_cache = [], {}
    for name in tasks:
        run_task(name, args.seg_seeds if name.startswith("seg") else args.seeds, data_cache, results)
        print_table(results, name)
    print(
        f"\ntotal run time: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu_start:.0f} s CPU "
        f"({torch.get_num_threads()} torch thread)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
