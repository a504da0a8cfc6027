"""Time to accuracy: HEM with sample skipping against CE given shorter schedules too.

    python benchmarks/time_to_accuracy.py [--settings skip_bench,slow,large] [--seeds 3] [--fractions 0.25,0.5,0.75,1]
        [--modes ce/off,hem/off,hem/exact,hem/stale] [--quick] [--json FILE] [--plot FILE]

Comparing losses at the same number of epochs says nothing to a user who wants a model of a given quality for less
compute: CE given a shorter schedule may get there sooner. So every loss / skip mode is trained at several schedule
lengths (fractions of the setting's full number of epochs, each schedule annealed to its own end: cosine with 5%
warm-up), with the same optimiser, learning rate and schedule family for all (AdamW, weight decay 0.05, batch 64).
Runs are interleaved round-robin over (seed, length, mode) with the order of the modes rotating, in one process on
one torch thread, so that load from other processes falls on all of them alike.

Settings (data: scikit-learn's 8x8 digits, upscaled; models from config, random weights):

* `skip_bench`: `benchmarks/skip_bench.py`'s: ConvNeXt (LayerNorm), 16 px, digits 0-7, 30 epochs, lr 3e-3.
* `slow`: a small ViT (LayerNorm, dropout 0; 2 layers of width 48, 2 px patches) at 8 px, digits 0-7, lr 2e-3, 16
  epochs: samples stay over their margin for much of training.
* `large`: all ten digits at 16 px with each training image also shifted by one pixel left and right (3x the data,
  4311 training images), the ConvNeXt of `skip_bench`, 4 epochs.

Time is the process's **CPU time** of `trainer.train()` (one thread): on a machine whose cores other jobs share, wall
time swings by 2-3x from run to run with their load, CPU time much less (wall time is printed beside it). Printed per
setting: mean training time and test accuracy (mean and std over seeds) of every (mode, length); then the **time to CE's best accuracy**. Definition: `A*` is the best mean test
accuracy of CE over its lengths and `s` the seed standard deviation of that run; a (mode, length) *reaches* it when
its mean accuracy is at least `A* - s`. A mode's time to it is the mean training time of its shortest length that
reaches it (no interpolation between lengths; `-` when none does). The ratio divides by CE's own time to it (CE's
shortest length reaching `A* - s`, which may be shorter than its best). The *deficit* is, over every time budget
where both have a finished run, the largest amount by which the best accuracy a mode reached within that budget
falls below CE's; `n/a budgets` counts CE runs shorter than the mode's shortest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from transformers import PrinterCallback


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from skip_bench import TensorDataset, recipe_config  # noqa: E402


DEFAULT_MODES = ("ce/off", "hem/off", "hem/exact", "hem/stale")
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)

#: name -> model, image size, classes, training-set shift augmentation, full epochs, learning rate
SETTINGS = {
    "skip_bench": {"model": "convnext", "image_size": 16, "classes": 8, "shifts": False, "epochs": 30, "lr": 3e-3},
    "slow": {"model": "vit_small", "image_size": 8, "classes": 8, "shifts": False, "epochs": 16, "lr": 2e-3},
    "large": {"model": "convnext", "image_size": 16, "classes": 10, "shifts": True, "epochs": 4, "lr": 3e-3},
}
#: `--quick`: tiny versions of the same settings, for a smoke test (seconds, not evidence).
QUICK = {
    "skip_bench": {"model": "convnext", "image_size": 8, "classes": 4, "shifts": False, "epochs": 2, "lr": 3e-3},
    "slow": {"model": "vit_small", "image_size": 8, "classes": 4, "shifts": False, "epochs": 2, "lr": 2e-3},
    "large": {"model": "convnext", "image_size": 8, "classes": 4, "shifts": True, "epochs": 2, "lr": 3e-3},
}


#: `--max_margin` of this run (a list so the training function reads what main() set).
MAX_MARGIN = [math.inf]


def digits_split(seed: int, image_size: int, classes: int, shifts: bool, limit: int | None = None):
    """Train/test tensors of digits `0..classes-1` (80/20 split by `seed`), 3 channels in [-1, 1]; with `shifts`
    the training set also holds every image moved by one pixel left and right (edges replicated)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target)
    keep = labels < classes
    images, labels = images[keep], labels[keep]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    split = int(0.8 * len(labels))
    train_x, train_y = images[:split], labels[:split]
    if shifts:
        padded = torch.nn.functional.pad(train_x, (1, 1, 1, 1), mode="replicate")
        size = image_size
        moved = [padded[..., 1 : 1 + size, 1 + dx : 1 + dx + size] for dx in (1, -1)]
        train_x = torch.cat([train_x, *moved])
        train_y = train_y.repeat(3)
    return (train_x, train_y), (images[split:], labels[split:])


def build_model(model_type: str, seed: int, image_size: int, classes: int):
    from transformers import AutoModelForImageClassification, ViTConfig

    from hf_hem.pipelines.image_classification import scratch_model_config

    torch.manual_seed(seed)
    if model_type == "vit_small":  # smaller than scratch_model_config's ViT: 2 layers of width 48, dropout 0
        config = ViTConfig(
            image_size=image_size,
            patch_size=2,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            num_labels=classes,
            num_channels=3,
        )
    else:
        config = scratch_model_config(model_type, image_size, classes)
    return AutoModelForImageClassification.from_config(config)


def train_one(setting: dict, mode: str, seed: int, epochs: int, data) -> dict:
    from hf_hem.trainer import HEMTrainer

    loss_name, skip = mode.split("/")
    (train_x, train_y), (test_x, test_y) = data
    model = build_model(setting["model"], seed, setting["image_size"], setting["classes"])
    with tempfile.TemporaryDirectory() as output_dir:
        args = recipe_config(output_dir, loss_name, skip, epochs, seed, setting["lr"], MAX_MARGIN[0])
        trainer = HEMTrainer(
            model=model,
            args=args,
            train_dataset=TensorDataset(train_x, train_y),
            class_counts=torch.bincount(train_y, minlength=setting["classes"]).tolist(),
        )
        trainer.remove_callback(PrinterCallback)
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(pixel_values=x).logits.argmax(1) for x in test_x.split(256)])
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "epoch" in entry]
    return {
        "seconds": cpu_seconds,
        "wall_seconds": seconds,
        "accuracy": float((predictions == test_y).float().mean()),
        "violating": [entry.get("hem/violating_fraction", float("nan")) for entry in logs],
        "skipped": [entry.get("hem/skipped_fraction", 0.0) for entry in logs],
    }


def schedule_epochs(full_epochs: int, fraction: float) -> int:
    return max(1, round(full_epochs * fraction))


def run_setting(name: str, setting: dict, modes, fractions, seeds, limit: int | None, log=print) -> dict:
    """`{mode: {epochs: [run per seed]}}`, interleaved round-robin over (seed, length, mode)."""
    lengths = sorted({schedule_epochs(setting["epochs"], f) for f in fractions})
    results = {mode: {epochs: [] for epochs in lengths} for mode in modes}
    turn = 0
    for seed in seeds:
        data = digits_split(seed, setting["image_size"], setting["classes"], setting["shifts"], limit)
        for epochs in lengths:
            rotation = turn % len(modes)
            turn += 1
            for mode in modes[rotation:] + modes[:rotation]:
                run = train_one(setting, mode, seed, epochs, data)
                run["seed"] = seed
                results[mode][epochs].append(run)
                log(
                    f"{name} seed {seed} {mode:10s} {epochs:3d} epochs {run['seconds']:6.1f} s CPU "
                    f"({run['wall_seconds']:6.1f} s wall) acc {run['accuracy']:.4f}",
                    flush=True,
                )
    return results


def summarise(results: dict) -> dict:
    """Per mode: the points (mean time, mean accuracy, accuracy std) per length, and the time-to-accuracy figures."""
    points = {
        mode: [
            {
                "epochs": epochs,
                "seconds": statistics.fmean(run["seconds"] for run in runs),
                "wall_seconds": statistics.fmean(run["wall_seconds"] for run in runs),
                "accuracy": statistics.fmean(run["accuracy"] for run in runs),
                "std": statistics.stdev([run["accuracy"] for run in runs]) if len(runs) > 1 else 0.0,
            }
            for epochs, runs in sorted(by_length.items())
        ]
        for mode, by_length in results.items()
    }
    ce = points["ce/off"]
    best = max(ce, key=lambda point: point["accuracy"])
    target = best["accuracy"] - best["std"]

    def time_to(mode_points):
        reached = [point["seconds"] for point in mode_points if point["accuracy"] >= target]
        return min(reached) if reached else None

    def best_within(mode_points, budget):
        done = [point["accuracy"] for point in mode_points if point["seconds"] <= budget]
        return max(done) if done else None

    ce_time = time_to(ce)
    summary = {"target": target, "ce_best": best["accuracy"], "ce_best_std": best["std"], "modes": {}}
    for mode, mode_points in points.items():
        seconds = time_to(mode_points)
        deficits, unavailable = [], 0
        for budget in sorted({point["seconds"] for point in ce + mode_points}):
            ours, theirs = best_within(mode_points, budget), best_within(ce, budget)
            if theirs is None:
                continue
            if ours is None:
                unavailable += 1
            else:
                deficits.append(theirs - ours)
        summary["modes"][mode] = {
            "points": mode_points,
            "time_to_target": seconds,
            "ratio": None if seconds is None or ce_time is None else seconds / ce_time,
            "max_deficit": max(deficits) if deficits else None,
            "unavailable_budgets": unavailable,
        }
    return summary


def format_setting(name: str, setting: dict, summary: dict, results: dict) -> str:
    lines = [f"\n## {name}: {setting}"]
    lines.append(
        "| mode | epochs | CPU time (s) | wall time (s) | accuracy | violating fraction, last epoch | skipped, last epoch |"
    )
    lines.append("|---|---:|---:|---:|---|---:|---:|")
    for mode, entry in summary["modes"].items():
        for point in entry["points"]:
            runs = results[mode][point["epochs"]]
            with warnings.catch_warnings():  # runs read from a log carry no fractions: nan, not a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                violating = np.nanmean([run["violating"][-1] for run in runs])
                skipped = np.nanmean([run["skipped"][-1] for run in runs])
            lines.append(
                f"| {mode} | {point['epochs']} | {point['seconds']:.1f} | {point['wall_seconds']:.1f} "
                f"| {point['accuracy']:.4f} ± {point['std']:.4f} "
                f"| {violating:.3f} | {skipped:.2f} |"
            )
    lines.append(
        f"\nCE's best accuracy {summary['ce_best']:.4f} ± {summary['ce_best_std']:.4f}: "
        f"target (best - seed std) {summary['target']:.4f}"
    )
    lines.append(
        "| mode | CPU time to target (s) | / CE's time | largest deficit below CE at a time budget | n/a budgets |"
    )
    lines.append("|---|---:|---:|---:|---:|")
    for mode, entry in summary["modes"].items():
        seconds = "-" if entry["time_to_target"] is None else f"{entry['time_to_target']:.1f}"
        ratio = "-" if entry["ratio"] is None else f"{entry['ratio']:.2f}"
        deficit = "-" if entry["max_deficit"] is None else f"{entry['max_deficit']:+.4f}"
        lines.append(f"| {mode} | {seconds} | {ratio} | {deficit} | {entry['unavailable_budgets']} |")
    return "\n".join(lines)


def plot(summaries: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(summaries), figsize=(5 * len(summaries), 4), squeeze=False)
    for axis, (name, summary) in zip(axes[0], summaries.items()):
        for mode, entry in summary["modes"].items():
            points = entry["points"]
            axis.errorbar(
                [p["seconds"] for p in points],
                [p["accuracy"] for p in points],
                yerr=[p["std"] for p in points],
                marker="o",
                capsize=3,
                label=mode,
            )
        axis.axhline(summary["target"], color="grey", linestyle=":", linewidth=1, label="CE best - std")
        axis.set_title(f"{name}: test accuracy vs training time")
        axis.set_xlabel("training CPU time (s, one thread, mean over seeds)")
        axis.set_ylabel("test accuracy")
        lows = [p["accuracy"] for e in summary["modes"].values() for p in e["points"]]
        axis.set_ylim(max(min(lows) - 0.02, 0.0), 1.0)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


LOG_LINE = re.compile(
    r"^(?P<name>\S+) seed (?P<seed>\d+) (?P<mode>\S+) +(?P<epochs>\d+) epochs +(?P<cpu>[\d.]+) s CPU "
    r"\( *(?P<wall>[\d.]+) s wall\) acc (?P<accuracy>[\d.]+)$"
)


def runs_from_log(path: str) -> dict:
    """The runs printed in a log of this script (one line per run), as saved by `--json`: for runs whose process
    was stopped before it wrote its JSON. The per-epoch violating and skipped fractions are not in the log."""
    results, settings = {}, {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = LOG_LINE.match(line.strip())
            if match is None:
                continue
            run = {
                "seconds": float(match["cpu"]),
                "wall_seconds": float(match["wall"]),
                "accuracy": float(match["accuracy"]),
                "violating": [float("nan")],
                "skipped": [float("nan")],
                "seed": int(match["seed"]),
            }
            name = match["name"]
            settings[name] = SETTINGS[name]
            results.setdefault(name, {}).setdefault(match["mode"], {}).setdefault(match["epochs"], []).append(run)
    return {"settings": settings, "results": results}


def report_saved(paths, plot_path) -> dict:
    """The tables and plot of runs saved with `--json` (or their logs), e.g. one setting, seed or length per process,
    in one report: the runs of the same setting, mode and length are pooled."""
    merged, settings = {}, {}
    for path in paths:
        if path.endswith(".log"):
            saved = runs_from_log(path)
        else:
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
        settings.update(saved["settings"])
        for name, results in saved["results"].items():
            for mode, by_length in results.items():
                for epochs, runs in by_length.items():
                    merged.setdefault(name, {}).setdefault(mode, {}).setdefault(int(epochs), []).extend(runs)
    summaries = {}
    for name, results in merged.items():
        summaries[name] = summarise(results)
        seeds = sorted({run.get("seed") for runs in results["ce/off"].values() for run in runs})
        print(format_setting(name, settings[name], summaries[name], results) + f"\n(seeds {seeds})")
    if plot_path:
        plot(summaries, plot_path)
    return summaries


def parse_list(text: str, kind=str):
    return tuple(kind(item) for item in text.split(",") if item)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES))
    parser.add_argument("--fractions", default=",".join(str(f) for f in DEFAULT_FRACTIONS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--only_seeds",
        default=None,
        help="comma-separated seeds to run (e.g. one per process, merged with --from_json)",
    )
    parser.add_argument(
        "--max_margin",
        type=float,
        default=math.inf,
        help="HEMConfig.max_margin; default inf: the paper's rule sqrt(2000 / S) uncapped, as the documented figures "
        "were measured (the library's default caps it at 1.0 below S = 2000)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings and data: a smoke test, not evidence")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument(
        "--from_json",
        default=None,
        help="comma-separated --json files (or logs, *.log) of earlier runs: summarise and plot them",
    )
    options = parser.parse_args(argv)
    MAX_MARGIN[0] = options.max_margin
    if options.from_json:
        return report_saved(parse_list(options.from_json), options.plot)
    torch.set_num_threads(1)
    table = QUICK if options.quick else SETTINGS
    names = parse_list(options.settings)
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"--settings {unknown} unknown; expected names from {list(table)}.")
    modes = parse_list(options.modes)
    if "ce/off" not in modes:
        raise ValueError(f"--modes {options.modes!r} must include ce/off, the reference of the time to accuracy.")
    fractions = parse_list(options.fractions, float)
    if not fractions or any(not 0 < f <= 1 or math.isnan(f) for f in fractions):
        raise ValueError(f"--fractions {options.fractions!r}: expected fractions in (0, 1].")
    started = time.perf_counter()
    summaries, everything = {}, {}
    for name in names:
        seeds = parse_list(options.only_seeds, int) if options.only_seeds else tuple(range(options.seeds))
        results = run_setting(name, table[name], modes, fractions, seeds, 120 if options.quick else None)
        summaries[name] = summarise(results)
        everything[name] = results
        print(format_setting(name, table[name], summaries[name], results), flush=True)
    print(
        f"\ntorch {torch.__version__}, 1 thread, {options.seeds} seeds, fractions {fractions}; "
        f"whole run {time.perf_counter() - started:.0f} s"
    )
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"settings": {n: table[n] for n in names}, "results": everything, "summaries": summaries}, handle
            )
    if options.plot:
        plot(summaries, options.plot)
    return summaries


if __name__ == "__main__":
    main()
