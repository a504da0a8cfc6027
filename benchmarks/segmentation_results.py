"""The segmentation results of docs/semantic_segmentation.md (`python benchmarks/make_results.py --segmentation`).

    python benchmarks/make_results.py --segmentation [--output_dir hem-benchmark] [--reuse_only] [--jobs 2]

The verdict setting is one the model can fit, unlike the quick default of `hf-hem compare --task segmentation` (a tiny
SegFormer from scratch, which underfits the scenes): a small UperNet on a ConvNeXt backbone whose stem does not
downsample (`MODEL_CONFIG`: its finest features, and so its fused logits, are at the full 32-pixel resolution, where
SegFormer's are at a quarter, coarser than the digits' strokes), trained from scratch without the random rescaling
(`SETTING_FLAGS`), so that every loss fits its training scenes within the schedule and the comparison is one of
generalisation to unseen handwriting. Per seed, `hf-hem compare --task segmentation` in that setting; the same with
1.5x the epochs; and a margin sweep of HEM on seed 0. A folder whose results exist is reused; `--jobs 2` runs two
seeds' comparisons side by side.

Fit is checked directly: every saved model is evaluated on its own training scenes without augmentation (training
pixel accuracy), next to HEM's training violating fraction of the last epoch and the validation pixel accuracy.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


REPO = Path(__file__).resolve().parents[1]
PAGE_BEGIN = "<!-- results:begin (python benchmarks/make_results.py --segmentation) -->"
PAGE_END = "<!-- results:end -->"
#: `UperNetForSemanticSegmentation` on a ConvNeXt backbone (16-128 channels, one block per stage, 0.39M parameters)
#: whose stem has patch size 1: its stages are 32x32 to 4x4 grids at 32 pixels and UperNet fuses them at the finest.
#: The tiny SegFormer's logits are 8x8 there, and with stride-2 patch embeddings 16x16: both learned the scenes so
#: slowly that no loss fitted them in 60 epochs (an encoder pretrained on the digits did not change that).
MODEL_CONFIG = "docs/results/segmentation/upernet-convnext-stride1"
#: The setting, the same for every loss: the model above from scratch, and no random rescaling of the training
#: scenes. With the rescaling (0.8-1.25) no loss fitted its training scenes within the schedule; without it they do,
#: and the comparison is one of generalisation to the validation scenes' unseen handwriting.
SETTING_FLAGS = ("--config_name", MODEL_CONFIG, "--min_scale", "1", "--max_scale", "1")
SEEDS = (0, 1)
#: `hf-hem compare --task segmentation`'s training defaults (AdamW at 5e-3, 5% warmup, batch 16), except the epochs
#: and the schedule.
#: 36, not 24: with 24 (and a 36-epoch rerun) HEM's mean mIoU still rose by 0.032 from 24 to 36 epochs, CE's by 0.004.
EPOCHS = 36
LONGER_EPOCHS = 54
#: The schedule ends flat, as the paper's step drops do, so that the convergence window (the last 25% of the
#: evaluations) is judged after the last drop: the full rate until half-way, a cosine decay to `FINAL_LR_RATIO` of it
#: by three quarters (1%, where the paper's two 10x drops at 50% and 75% end), then that rate to the end. At 5% the
#: validation mIoU of a flat tail still swung by up to 0.011 from epoch to epoch, over the tolerance. A cosine decay to zero ends flat whether or not the model has
#: settled, and over the criterion's window its rate still falls from 15% to 0: curves that were still climbing in
#: that window failed the check while ones stalled by a zero rate would pass. transformers' `warmup_stable_decay`
#: schedule with a stable phase that ends before the training does.
STABLE_UNTIL, DECAYED_BY, FINAL_LR_RATIO = 0.5, 0.75, 0.01
_TRAIN_SCENES = {"num_images": 1000, "image_size": 32}  # the pipeline's embedded default at compare's image size
_TRAIN_IMAGES = 800  # 80% of `_TRAIN_SCENES["num_images"]`, the scenes' training split


def default_name(seed: int) -> str:
    """The folder of a seed's comparison; folders name their epochs, so a change of `EPOCHS` reruns nothing it had."""
    return f"default-e{EPOCHS}-seed{seed}"


def longer_name(seed: int) -> str:
    """The folder of a seed's 1.5x rerun."""
    return f"longer-e{LONGER_EPOCHS}-seed{seed}"


def schedule_flags(epochs: int) -> list[str]:
    """The flags of the flat-ending schedule for `epochs` epochs (its phases are counted in optimizer steps)."""
    from hf_hem.pipelines._segmentation_args import EMBEDDED_SEGMENTATION_TRAINING_DEFAULTS as DEFAULTS

    total = math.ceil(_TRAIN_IMAGES / DEFAULTS["per_device_train_batch_size"]) * epochs
    warmup = math.ceil(DEFAULTS["warmup_steps"] * total)  # a ratio, as the Trainer reads a warmup below 1
    stable = round(STABLE_UNTIL * total) - warmup
    decay = round((DECAYED_BY - STABLE_UNTIL) * total)
    kwargs = {"num_stable_steps": stable, "num_decay_steps": decay, "min_lr_ratio": FINAL_LR_RATIO}
    return ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", json.dumps(kwargs)]


#: HEM's fixed margins of the sweep; the rule's margin (capped at 1.0 below S = 2000) is the default comparison's.
SWEEP_MARGINS = "0.2,0.5"
SWEEP_SEED = 0
SWEEP_NAME = f"sweep-e{EPOCHS}-seed{SWEEP_SEED}"
#: Training pixel accuracy (on the training scenes, without augmentation) from which a run counts as fitting them.
FIT_ACCURACY = 0.95
_MARGIN_LOSSES = ("hem", "hem+")


def hf_hem_executable() -> str:
    """The `hf-hem` console script of this Python (its environment's `bin/`), else the first on `PATH`."""
    found = shutil.which("hf-hem", path=str(Path(sys.executable).parent)) or shutil.which("hf-hem")
    if found is None:
        raise SystemExit("no `hf-hem` command found: install the package (`pip install -e .`) in this environment.")
    return found


def _shown(arguments, output_dir: Path) -> str:
    """A command line as the page shows it: the output folder as `<out>`."""
    return shlex.join(arguments).replace(str(output_dir), "<out>")


class _Plan:
    """The runs of the results block, their commands and folders."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def compare_command(self, name: str, seed: int, epochs: int, extra=()) -> list[str]:
        return [
            "hf-hem",
            "compare",
            "--task",
            "segmentation",
            *extra,
            "--seeds",
            str(seed),
            *SETTING_FLAGS,
            "--num_train_epochs",
            str(epochs),
            *schedule_flags(epochs),
            "--output_dir",
            str(self.output_dir / name),
            "--no_progress",
        ]

    def comparisons(self) -> list[tuple[str, int, list[str]]]:
        """`(folder name, seed, command)` in the order they run: what the verdict needs most comes first."""
        plan = [(default_name(seed), seed, self.compare_command(default_name(seed), seed, EPOCHS)) for seed in SEEDS]
        plan += [
            (longer_name(seed), seed, self.compare_command(longer_name(seed), seed, LONGER_EPOCHS)) for seed in SEEDS
        ]
        extra = ("--losses", "hem", "--margins", SWEEP_MARGINS)
        plan.append(
            (
                SWEEP_NAME,
                SWEEP_SEED,
                self.compare_command(SWEEP_NAME, SWEEP_SEED, EPOCHS, extra),
            )
        )
        return plan


def _run(command: list[str]) -> None:
    executable = {"python": sys.executable, "hf-hem": hf_hem_executable()}[command[0]]
    print("running:", shlex.join(command), flush=True)
    subprocess.run([executable, *command[1:]], cwd=REPO, check=True)


def _load_results(folder: Path) -> dict | None:
    path = folder / "compare_results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _label(run: dict) -> str:
    return (
        run["loss_name"] if run.get("margin_override") is None else f"{run['loss_name']} μ={run['margin_override']:g}"
    )


def _run_dir(run: dict, results_folder: Path) -> Path:
    path = Path(run["output_dir"])
    return path if path.is_absolute() else results_folder / path


def _last_epoch_mean(run_dir: Path, key: str) -> float:
    """Mean of training log entry `key` over the last epoch (`trainer_state.json`); NaN if never logged."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    logged = [(entry["epoch"], entry[key]) for entry in history if key in entry and "eval_loss" not in entry]
    if not logged:
        return math.nan
    last = max(epoch for epoch, _ in logged)
    values = [value for epoch, value in logged if epoch > last - 1]
    return sum(values) / len(values)


@torch.no_grad()
def training_pixel_accuracy(run_dir: Path, seed: int) -> tuple[float, float]:
    """Pixel accuracy of a saved model on its seed's training scenes and on the validation scenes, evaluated as the
    pipeline evaluates (no augmentation; logits upsampled to the labels). The validation figure must equal the run's
    `eval_overall_accuracy`: it checks that the training figure was computed the same way."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from hf_hem.data import load_digits_segmentation_dataset
    from hf_hem.data.transforms import build_segmentation_transforms
    from hf_hem.heads import head_named
    from hf_hem.pipelines.semantic_segmentation import upsample_and_argmax

    model = AutoModelForSemanticSegmentation.from_pretrained(run_dir).eval()
    ignore_index = head_named("semantic-segmentation").config_ignore_index(model.config)  # each segmenter's own field
    processor = AutoImageProcessor.from_pretrained(run_dir)
    scenes = load_digits_segmentation_dataset(seed=seed, **_TRAIN_SCENES)
    accuracies = []
    for split in ("train", "validation"):
        dataset = scenes[split]
        dataset.set_transform(
            build_segmentation_transforms(
                processor,
                train=False,
                num_labels=model.config.num_labels,
                do_reduce_labels=True,
                ignore_index=ignore_index,
                size=_TRAIN_SCENES["image_size"],
                index_column=None,
            )
        )
        correct = labelled = 0
        for start in range(0, len(dataset), 64):
            batch = dataset[start : start + 64]
            pixels = torch.as_tensor(np.stack(batch["pixel_values"]))
            labels = torch.as_tensor(np.stack(batch["labels"]))
            predictions = upsample_and_argmax(model(pixel_values=pixels).logits, labels)
            keep = labels != ignore_index
            correct += int((predictions[keep] == labels[keep]).sum())
            labelled += int(keep.sum())
        accuracies.append(correct / labelled)
    return accuracies[0], accuracies[1]


def _fit_of(results: dict, folder: Path) -> dict:
    """`{(label, seed): {...}}`: final metrics, training pixel accuracy and HEM's last-epoch training diagnostics."""
    fit = {}
    for run in results["runs"]:
        run_dir = _run_dir(run, folder)
        cache = run_dir / "fit.json"
        if cache.is_file():
            entry = json.loads(cache.read_text())
        else:
            train_accuracy, eval_accuracy = training_pixel_accuracy(run_dir, run["seed"])
            entry = {"train_pixel_accuracy": train_accuracy, "recomputed_eval_pixel_accuracy": eval_accuracy}
            cache.write_text(json.dumps(entry, indent=2))
        reported = run["metrics"]["eval_overall_accuracy"]
        if abs(entry["recomputed_eval_pixel_accuracy"] - reported) > 1e-6:
            raise SystemExit(
                f"{run_dir}: validation pixel accuracy recomputed as {entry['recomputed_eval_pixel_accuracy']:.6f}, "
                f"the run reported {reported:.6f}; the training pixel accuracy would not be comparable."
            )
        entry = {
            **entry,
            "miou": run["metrics"]["eval_mean_iou"],
            "pixel_accuracy": reported,
            "violating_fraction": _last_epoch_mean(run_dir, "hem/violating_fraction"),
            "margins": run.get("margins"),
            "wall_time": run["wall_time"],
        }
        fit[(_label(run), run["seed"])] = entry
    return fit


def _wrap(text: str, width: int = 119) -> str:
    """Fills the prose paragraphs of `text` (separated by blank lines) to the page's line length."""
    return "\n\n".join(
        textwrap.fill(" ".join(paragraph.split()), width, break_long_words=False, break_on_hyphens=False)
        for paragraph in text.split("\n\n")
    )


def _wrap_item(item: str, width: int = 119) -> str:
    """Fills a `* ` list item, continuation lines indented under its text."""
    return textwrap.fill(
        " ".join(item.split()), width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )


def _mean_std(values) -> str:
    from hf_hem.experiments.stats import format_mean_std, mean_std

    return format_mean_std(*mean_std(values, omit_nonfinite=True), digits=3)


def _mean(values) -> float:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return sum(finite) / len(finite) if finite else math.nan


def _run_missing(plan: _Plan, jobs: int) -> None:
    """Runs the comparisons without results, one lane per seed (in plan order within it), `jobs` lanes at a time."""
    lanes: dict[int, list[list[str]]] = {}
    for name, seed, command in plan.comparisons():
        if _load_results(plan.output_dir / name) is None:
            lanes.setdefault(seed, []).append(command)

    def run_lane(commands: list[list[str]]) -> None:
        for command in commands:
            _run(command)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for finished in [pool.submit(run_lane, commands) for commands in lanes.values()]:
            finished.result()  # a failed run stops the script with its error


def write_segmentation_results(output_dir: Path, docs: Path, reuse_only: bool = False, jobs: int = 1) -> None:
    """Runs what is missing (unless `reuse_only`; `jobs` seeds side by side), then rewrites the results block of
    docs/semantic_segmentation.md."""
    from hf_hem.experiments.convergence import DEFAULT_CRITERION, Convergence, convergence_cell

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}.")
    plan = _Plan(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not reuse_only:
        _run_missing(plan, jobs)

    found = {name: _load_results(output_dir / name) for name, _, _ in plan.comparisons()}
    missing = [name for name, results in found.items() if results is None]
    defaults = [found[default_name(seed)] for seed in SEEDS if found[default_name(seed)] is not None]
    if not defaults:
        raise SystemExit(f"no default comparison in {output_dir}; run without --reuse_only.")

    fits = {name: _fit_of(results, output_dir / name) for name, results in found.items() if results is not None}
    default_fit = {
        key: value for name, fit in fits.items() if name.startswith("default") for key, value in fit.items()
    }
    longer_fit = {key: value for name, fit in fits.items() if name.startswith("longer") for key, value in fit.items()}
    losses = list(dict.fromkeys(label for label, _ in default_fit))
    default_seeds = sorted({seed for _, seed in default_fit})
    longer_seeds = sorted({seed for _, seed in longer_fit})

    def column(fit, loss, key, seeds):
        return [fit[(loss, seed)][key] for seed in seeds if (loss, seed) in fit]

    def convergence(prefix, loss):
        entries = [
            Convergence(**entry)
            for name, results in found.items()
            if name.startswith(prefix) and results is not None
            for entry in results["convergence"]["losses"].get(loss, [])
        ]
        return entries

    tolerance = DEFAULT_CRITERION.tolerance
    rows = [
        "| loss | mIoU | pixel accuracy | training pixel accuracy | HEM's violating fraction | converged "
        f"| mIoU with {LONGER_EPOCHS} epochs | converged | change of the mean |",
        "|---|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    changes, all_converged, fitting = {}, True, True
    for loss in losses:
        miou = column(default_fit, loss, "miou", default_seeds)
        longer_miou = column(longer_fit, loss, "miou", longer_seeds)
        # The change compares the seeds both comparisons ran.
        both = [seed for seed in longer_seeds if (loss, seed) in default_fit]
        change = _mean(column(longer_fit, loss, "miou", both)) - _mean(column(default_fit, loss, "miou", both))
        changes[loss] = change
        checks = convergence("default", loss)
        all_converged &= bool(checks) and all(check.converged for check in checks)
        all_converged &= math.isfinite(change) and abs(change) <= tolerance
        train_accuracy = column(default_fit, loss, "train_pixel_accuracy", default_seeds)
        fitting &= min(train_accuracy) >= FIT_ACCURACY
        violating = column(default_fit, loss, "violating_fraction", default_seeds)
        rows.append(
            f"| `{loss}` | {_mean_std(miou)} | {_mean_std(column(default_fit, loss, 'pixel_accuracy', default_seeds))} "
            f"| {_mean_std(train_accuracy)} | {_mean_std(violating) if loss in _MARGIN_LOSSES else '—'} "
            f"| {convergence_cell(checks)} | {_mean_std(longer_miou) if longer_miou else 'not run'} "
            f"| {convergence_cell(convergence('longer', loss)) if longer_miou else '—'} "
            f"| {f'{change:+.3f}' if math.isfinite(change) else '—'} |"
        )
    all_converged &= not any(name.startswith("longer") for name in missing)

    def ranking(fit, seeds):
        means = {loss: _mean(column(fit, loss, "miou", seeds)) for loss in losses}
        return " > ".join(f"`{loss}` {means[loss]:.3f}" for loss in sorted(means, key=lambda loss: -means[loss]))

    best = max(losses, key=lambda loss: _mean(column(default_fit, loss, "miou", default_seeds)))
    train_range = [value["train_pixel_accuracy"] for value in default_fit.values()]
    verdict_line = (
        f"**Every loss converged in every seed, and the {LONGER_EPOCHS}-epoch rerun moved no mean mIoU by more than "
        f"{tolerance:g}.**"
        if all_converged
        else f"**Not a converged verdict**: not every loss passed both convergence checks below (the curve's and the "
        f"{LONGER_EPOCHS}-epoch rerun's){'; some comparisons were not run' if missing else ''}; the best measured is "
        f"`{best}` at mIoU {_mean(column(default_fit, best, 'miou', default_seeds)):.3f}."
    )
    fit_line = (
        f"Every model fits its training scenes (training pixel accuracy ≥ {FIT_ACCURACY:g})."
        if fitting
        else f"**The models do not fit their training scenes**: training pixel accuracy "
        f"{min(train_range):.3f}–{max(train_range):.3f} (below {FIT_ACCURACY:g}), so the ranking is one of "
        "underfitted models."
    )

    sweep = found.get(SWEEP_NAME)
    sweep_rows = []
    if sweep is not None:
        sweep_fit = fits[SWEEP_NAME]
        reference = {label: value for (label, seed), value in default_fit.items() if seed == SWEEP_SEED}
        entries = [
            (f"{label} (rule: μ = {value['margins'][0]:g})" if label == "hem" else label, value)
            for label, value in reference.items()
            if label in ("ce", "hem")
        ]
        entries += [(label, value) for (label, _), value in sweep_fit.items()]
        sweep_rows = [
            f"| run | mIoU (seed {SWEEP_SEED}) | pixel accuracy | training pixel accuracy |",
            "|---|---:|---:|---:|",
        ] + [
            f"| `{label}` | {value['miou']:.3f} | {value['pixel_accuracy']:.3f} | {value['train_pixel_accuracy']:.3f} |"
            for label, value in entries
        ]

    margins = {}
    for (label, _seed), value in sorted(default_fit.items(), key=lambda item: item[0][1]):
        if value["margins"]:
            margins.setdefault(label, value["margins"])
    plus = margins.get("hem+") or [math.nan]
    wall = {name: sum(value["wall_time"] for value in fits[name].values()) for name in fits}
    default_wall = sum(seconds for name, seconds in wall.items() if name.startswith("default"))
    longer_wall = sum(seconds for name, seconds in wall.items() if name.startswith("longer"))
    sweep_wall = sum(seconds for name, seconds in wall.items() if name.startswith("sweep"))

    figures = docs / "results" / "segmentation"
    figures.mkdir(parents=True, exist_ok=True)
    pictures = []
    for name, file, caption in (
        (default_name(0), "learning_curves.png", "Learning curves, seed 0"),
        (default_name(1), "learning_curves.png", "Learning curves, seed 1"),
        (longer_name(0), "learning_curves.png", f"Learning curves with {LONGER_EPOCHS} epochs, seed 0"),
        (default_name(0), "segmentation_masks.png", "Predicted masks, seed 0"),
    ):
        source = output_dir / name / file
        if source.is_file():
            target = f"{name}_{file}"
            shutil.copy(source, figures / target)
            pictures.append(f"![{caption}](results/segmentation/{target})")

    def commands(prefix):
        return "\n".join(
            _shown(command, output_dir) for name, _, command in plan.comparisons() if name.startswith(prefix)
        )

    def loses(fit, seeds):
        means = {loss: _mean(column(fit, loss, "miou", seeds)) for loss in losses}
        parts = []
        for hem in (loss for loss in losses if loss in _MARGIN_LOSSES):
            above = [other for other in losses if other not in _MARGIN_LOSSES and means[other] > means[hem]]
            if above:
                gaps = ", ".join(f"`{other}` by {means[other] - means[hem]:.3f}" for other in above)
                parts.append(f"`{hem}` is below {gaps}")
        return "; ".join(parts) or "nowhere: no HEM variant is below a baseline"

    seeds_text = ", ".join(map(str, default_seeds))
    intro = f"""{verdict_line} {fit_line}

Produced by `python benchmarks/make_results.py --segmentation --output_dir DIR` (`<out>` below is `DIR/segmentation`)
on {platform.machine()}, torch {torch.__version__}, CPU only, one thread per run. Setting, the same for every loss: a
small UperNet on a ConvNeXt backbone whose stem keeps the full resolution (`{MODEL_CONFIG}`), trained from scratch
on the 32-pixel scenes (800 training, 200 validation images per seed) without random rescaling, for {EPOCHS} epochs
of AdamW at 5e-3 on a schedule that ends flat: the full rate until half-way, a cosine decay to {FINAL_LR_RATIO:.0%} of it by
three quarters, then that rate to the end (transformers' `warmup_stable_decay`), so that the convergence window is
the last drop's. mIoU and pixel
accuracy are the final validation evaluation's, mean ± std over seeds {seeds_text}; *training pixel accuracy*: each
saved model evaluated on its own training scenes without augmentation; *HEM's violating fraction*: the share of
training pixels violating their margin, mean over the last epoch's logs; *converged*: the validation mIoU varied by at
most {tolerance:g} over the last 25% of the evaluations (one per epoch). The {LONGER_EPOCHS}-epoch columns rerun the
comparison with 1.5x the epochs (seeds {", ".join(map(str, longer_seeds)) or "none"}); a change of the mean above
{tolerance:g} means the {EPOCHS}-epoch runs had not finished learning. HEM's margin from the rule: μ =
{margins.get("hem", [math.nan])[0]:.3f} (S = 800 training images, capped at 1.0 below S = 2000); HEM+:
{min(plus):.3f}–{max(plus):.3f} per class (seed {default_seeds[0]})."""
    findings = [
        f"* **Ranking by mean mIoU** ({EPOCHS} epochs): {ranking(default_fit, default_seeds)}; with {LONGER_EPOCHS} "
        f"epochs: {ranking(longer_fit, longer_seeds) if longer_fit else 'not run'}.",
        f"* **Where HEM loses** (mean mIoU, {EPOCHS} epochs): {loses(default_fit, default_seeds)}"
        + (f". With {LONGER_EPOCHS} epochs: {loses(longer_fit, longer_seeds)}." if longer_fit else "."),
        f"* **Per seed** ({EPOCHS} epochs; mIoU / training pixel accuracy): "
        + "; ".join(
            f"`{loss}` "
            + ", ".join(
                f"seed {seed} {default_fit[(loss, seed)]['miou']:.3f} / "
                f"{default_fit[(loss, seed)]['train_pixel_accuracy']:.3f}"
                for seed in default_seeds
                if (loss, seed) in default_fit
            )
            for loss in losses
        )
        + ". A run stuck near chance has a flat curve, which the curve criterion calls converged.",
        "* **Wall time** (sum of the runs' wall times, one thread each, on a 2-core machine shared with other jobs): "
        f"{(default_wall + longer_wall + sweep_wall) / 60:.1f} min in all: "
        f"the {EPOCHS}-epoch comparison {default_wall / 60:.1f} min, the "
        f"{LONGER_EPOCHS}-epoch rerun {longer_wall / 60:.1f} min, the margin sweep "
        + (f"{sweep_wall / 60:.1f} min." if sweep is not None else "not run."),
    ]
    paired = {
        loss: [
            longer_fit[(loss, seed)]["miou"] - default_fit[(loss, seed)]["miou"]
            for seed in longer_seeds
            if (loss, seed) in default_fit and (loss, seed) in longer_fit
        ]
        for loss in losses
    }
    if any(paired.values()):
        seed_gaps = [
            max(column(default_fit, loss, "miou", default_seeds))
            - min(column(default_fit, loss, "miou", default_seeds))
            for loss in losses
        ]
        findings.append(
            f"* **Run-to-run noise against the 1.5x check**: per seed, the {LONGER_EPOCHS}-epoch rerun changed mIoU by "
            + "; ".join(f"`{loss}` " + ", ".join(f"{change:+.3f}" for change in paired[loss]) for loss in losses)
            + f". At {EPOCHS} epochs the seeds of one loss differ by up to {max(seed_gaps):.3f}. A change of the mean "
            f"of {len(longer_seeds)} seeds is read against a tolerance of {tolerance:g}: where the per-seed changes "
            "differ in sign or by several times the tolerance, the check measures this noise as much as learning."
        )
    if missing:
        findings.append(f"* **Not run** (out of time): {', '.join(missing)}.")
    parts = [PAGE_BEGIN + "\n" + _wrap(intro), "\n".join(rows), "\n".join(_wrap_item(item) for item in findings)]
    if sweep_rows:
        parts.append(
            _wrap(
                f"Margin sweep on seed {SWEEP_SEED} (`--losses hem --margins {SWEEP_MARGINS}`, in "
                f"the same setting): HEM with fixed margins, next to CE and HEM with the rule's margin from the "
                f"{EPOCHS}-epoch comparison."
            )
        )
        parts.append("\n".join(sweep_rows))
    parts.append(
        "Commands:\n\n```bash\n" + "\n".join([commands("default"), commands("longer"), commands("sweep")]) + "\n```"
    )
    parts += pictures
    block = "\n\n".join(parts) + "\n" + PAGE_END
    page = docs / "semantic_segmentation.md"
    text = page.read_text()
    if PAGE_BEGIN not in text or PAGE_END not in text:
        raise SystemExit(
            f"{page} has no results markers ({PAGE_BEGIN} ... {PAGE_END}); add them where the block goes."
        )
    text = text[: text.index(PAGE_BEGIN)] + block + text[text.index(PAGE_END) + len(PAGE_END) :]
    page.write_text(text)
    print(f"wrote {page}")
