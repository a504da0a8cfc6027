"""`hf-hem compare` (`hf_hem.compare`): a tiny end-to-end comparison, and the report writer on synthetic runs."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hf_hem.cli import main as cli_main
from hf_hem.compare import (
    TASK_ADAPTERS,
    TASKS,
    CompareRun,
    MetricRow,
    Plot,
    TaskAdapter,
    get_task_adapter,
    run_compare,
    write_report,
)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = [
    "--max_train_samples", "64",
    "--max_eval_samples", "40",
    "--num_train_epochs", "1",
    "--per_device_train_batch_size", "16",
]  # fmt: skip


def _image_links(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


def test_compare_command_writes_report_plots_and_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output_dir = tmp_path / "compare"
    # A training log every 2 steps: the 4 steps of the epoch give points of the training-loss curve.
    assert cli_main(["compare", "--output_dir", str(output_dir), "--seeds", "0", *TINY, "--logging_steps", "2"]) == 0
    captured = capsys.readouterr()
    assert "hf-hem compare" in captured.err  # the progress bar
    assert f"Report written to {output_dir / 'report.md'}" in captured.out
    assert "***** eval metrics *****" not in captured.out  # the Trainer's tables stay off the console

    report = (output_dir / "report.md").read_text()
    assert report.startswith("# hf-hem compare: `ce` vs `hem`")
    assert "- **Unknown classes**: 8, 9, held out of training" in report
    assert "| Metric | better | `ce` | `hem` |" in report
    for row in ("Accuracy", "Expected calibration error", "Unknown-class AUROC, MSP", "Unknown-class FPR at 95% TPR"):
        assert f"| {row}" in report, row
    assert "## In short" in report and "`hem` vs `ce`" in report
    links = _image_links(report)
    assert set(links) == {
        "learning_curves.png",
        "msp_histograms.png",
        "mls_histograms.png",
        "rejection_roc.png",
        "reliability.png",
        "per_class_accuracy.png",
    }
    # One epoch gives one evaluation: too few to call the runs converged either way.
    assert "## Learning curves" in report and "| Converged | | n/a | n/a |" in report
    for link in links:
        content = (output_dir / link).read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 5_000, link

    results = json.loads((output_dir / "compare_results.json").read_text())
    assert [run["loss_name"] for run in results["runs"]] == ["ce", "hem"]
    # The curves come from each run's trainer_state.json: the training loss and one point per evaluation.
    for run in results["runs"]:
        assert run["curves"]["loss"]["value"] and len(run["curves"]["eval_accuracy"]["value"]) == 1
    assert "hem/violating_fraction" in results["runs"][1]["curves"]
    assert results["convergence"]["criterion"]["metric"] == "eval_accuracy"
    for run in results["runs"]:
        run_dir = Path(run["output_dir"])
        assert json.loads((run_dir / "config.json").read_text())["hem_loss"] == run["loss_name"]
        assert (run_dir / "README.md").is_file()
        assert 0.0 <= run["metrics"]["eval_rejection_auroc_msp"] <= 1.0
    # Same data for both losses: the same validation labels, in the same order.
    labels = [np.load(Path(run["output_dir"]) / "predictions.npz")["eval_labels"] for run in results["runs"]]
    np.testing.assert_array_equal(labels[0], labels[1])
    assert results["runs"][0]["margins"] is None and len(results["runs"][1]["margins"]) == 8


def _synthetic_run(tmp_path, loss_name, seed, separation, margins=None) -> CompareRun:
    rng = np.random.default_rng(seed + 10 * len(loss_name))
    labels = np.repeat(np.arange(4), 10)
    known_logits = rng.normal(size=(40, 4))
    known_logits[np.arange(40), labels] += 2.0 + separation
    unknown_logits = rng.normal(size=(16, 4))
    metrics = {
        "eval_accuracy": float((known_logits.argmax(1) == labels).mean()),
        "eval_balanced_accuracy": 0.5,
        "eval_ece": 0.1 - 0.01 * separation,
        "eval_rejection_auroc_msp": 0.7 + 0.05 * separation,
        "eval_rejection_auroc_mls": 0.7,
        "eval_rejection_fpr95_msp": 0.5,
        "eval_rejection_fpr95_mls": 0.5,
        "train_runtime": 3.0,
    }
    predictions = {
        "eval_logits": known_logits,
        "eval_labels": labels,
        "unknown_logits": unknown_logits,
        "class_names": np.asarray(["a", "b", "c", "d"]),
        "unknown_class_names": np.asarray(["e"]),
    }
    return CompareRun(loss_name, seed, tmp_path / f"{loss_name}-{seed}", metrics, predictions, margins, 4.0)


def test_report_of_several_seeds_shows_spread_and_best_values(tmp_path):
    runs = [
        _synthetic_run(tmp_path, loss, seed, separation, margins)
        for seed in (0, 1)
        for loss, separation, margins in (
            ("ce", 0.0, None),
            ("hem", 1.0, [0.5] * 4),
            ("hem+", 2.0, [0.3, 0.4, 0.5, 0.6]),
        )
    ]
    report_path = write_report(runs, tmp_path / "report", progress=False)
    report = report_path.read_text()
    assert "| Metric | better | `ce` | `hem` | `hem+` |" in report
    assert "- **Seeds**: 0, 1 (mean ± standard deviation over seeds" in report
    # hem+ has the highest AUROC and the lowest ECE in every seed: bold, and no spread across identical seeds.
    assert "| Unknown-class AUROC, MSP | ↑ | 0.7000 ± 0.0000 | 0.7500 ± 0.0000 | **0.8000 ± 0.0000** |" in report
    assert "| Expected calibration error | ↓ | 0.1000 ± 0.0000 | 0.0900 ± 0.0000 | **0.0800 ± 0.0000** |" in report
    assert "| Margin μ | | n/a | 0.500 | 0.300–0.600 |" in report  # CE has no margin: the missing-value mark
    assert "- **`hem+` vs `ce`**: " in report and "unknown-class AUROC (MSP) 0.800 vs 0.700 (better)" in report
    for link in _image_links(report):
        assert (tmp_path / "report" / link).read_bytes().startswith(PNG_MAGIC)
    assert len(json.loads((tmp_path / "report" / "compare_results.json").read_text())["runs"]) == 6


def test_report_without_unknown_classes_skips_rejection_plots(tmp_path):
    runs = [_synthetic_run(tmp_path, "ce", 0, 0.0), _synthetic_run(tmp_path, "hem", 0, 1.0)]
    for run in runs:
        del run.predictions["unknown_logits"]
        for key in [key for key in run.metrics if "rejection" in key]:
            del run.metrics[key]
    report = write_report(runs, tmp_path / "report", progress=False).read_text()
    assert set(_image_links(report)) == {"reliability.png", "per_class_accuracy.png"}
    assert "Unknown-class" not in report


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"losses": ["ce", "nope"]}, r"unknown losses \['nope'\]"),
        ({"losses": ["hem", "hem"]}, "name a loss twice"),
        ({"seeds": [0, 0]}, "repeat a seed"),
        ({"script_args": ["--seed", "3"]}, "--seed is set by compare"),
        ({"script_args": ["--output_dir", "x"]}, "--output_dir is set by compare"),
        ({"num_threads": 0}, "num_threads must be a positive integer"),
    ],
)
def test_run_compare_rejects_bad_input_before_training(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_compare(output_dir=tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "report.md").exists()


def test_write_report_needs_predictions(tmp_path):
    run = _synthetic_run(tmp_path, "ce", 0, 0.0)
    del run.predictions["eval_logits"]
    with pytest.raises(ValueError, match=r"no \['eval_logits'\] predictions"):
        write_report([run], tmp_path / "report", progress=False)


def test_one_seed_shows_the_mean_alone_and_a_seed_without_a_value_is_left_out(tmp_path):
    runs = [_synthetic_run(tmp_path, "ce", 0, 0.0), _synthetic_run(tmp_path, "hem", 0, 1.0, [0.5] * 4)]
    report = write_report(runs, tmp_path / "one", progress=False).read_text()
    assert "| Unknown-class AUROC, MSP | ↑ | 0.7000 | **0.7500** |" in report  # one seed: no spread to show
    assert "Add `--seeds 0,1,2` for error bars." in report
    runs = [_synthetic_run(tmp_path, "ce", seed, 0.0) for seed in (0, 1)]
    runs += [_synthetic_run(tmp_path, "hem", seed, 1.0) for seed in (0, 1)]
    runs[0].metrics["eval_ece"] = float("nan")  # undefined in one seed of ce: its other seed still counts
    runs[2].metrics["eval_ece"] = runs[3].metrics["eval_ece"] = float("nan")  # undefined in every seed of hem
    report = write_report(runs, tmp_path / "nan", progress=False).read_text()
    assert "| Expected calibration error | ↓ | **0.1000** | n/a |" in report


def _synthetic_segmentation_run(tmp_path, loss_name, quality) -> CompareRun:
    rng = np.random.default_rng(len(loss_name))
    labels = rng.integers(0, 3, size=(2, 12, 12))
    labels[:, :2] = 255
    noise = rng.integers(0, 3, size=labels.shape)
    predictions = np.where((rng.random(labels.shape) < quality) & (labels != 255), labels, noise)
    metrics = {
        "eval_mean_iou": quality,
        "eval_mean_accuracy": quality + 0.1,
        "eval_overall_accuracy": quality + 0.2,
        "train_runtime": 5.0,
    }
    arrays = {
        "images": rng.integers(0, 255, size=(2, 12, 12, 3)).astype(np.uint8),
        "labels": labels,
        "predictions": predictions,
        "class_names": np.asarray(["sky", "road", "car"]),
        "confusion_matrix": np.asarray([[9, 1, 0], [2, 7, 1], [0, 1, 3]]),
        "per_class_iou": {"sky": quality, "road": quality / 2, "car": None},
    }
    return CompareRun(loss_name, 0, tmp_path / loss_name, metrics, arrays, None, 6.0)


def test_the_one_writer_renders_segmentation_through_its_adapter(tmp_path):
    runs = [_synthetic_segmentation_run(tmp_path, loss, q) for loss, q in (("ce", 0.5), ("hem", 0.6), ("dice", 0.4))]
    setup = {"dataset": "`scenes`", "model": "SegFormer-tiny", "classes": ["sky", "road", "car"], "epochs": 1}
    setup.update(batch_size=8, learning_rate=6e-4, num_train_samples=20, num_eval_samples=2, seed_draws_split=True)
    report = write_report(runs, tmp_path / "report", setup=setup, progress=False, task="semantic-segmentation")
    text = report.read_text()
    assert "- **Data**: `scenes`; 20 training and 2 validation images; classes sky, road, car." in text
    assert "- **Seeds**: 0; each seed also draws its own scenes." in text
    assert "| Mean IoU | ↑ | 0.5000 | **0.6000** | 0.4000 |" in text and "mIoU 0.600 vs 0.500 (better)" in text
    assert set(_image_links(text)) == {"segmentation_masks.png", "per_class_iou.png"}
    results = json.loads((tmp_path / "report" / "compare_results.json").read_text())
    assert results["runs"][1]["per_class_iou"] == {"sky": 0.6, "road": 0.3, "car": None}
    del runs[0].predictions["labels"]
    with pytest.raises(ValueError, match=r"no \['labels'\] predictions"):
        write_report(runs, tmp_path / "report", progress=False, task="segmentation")


def test_a_new_task_is_one_adapter_with_its_rows_plots_and_sections(tmp_path):
    assert TASKS["image-classification"] == "classification" and set(TASK_ADAPTERS) == {
        "classification",
        "segmentation",
        "text",
        "token",
    }
    assert get_task_adapter("semantic-segmentation") is TASK_ADAPTERS["segmentation"]
    with pytest.raises(ValueError, match="expected one of classification"):
        get_task_adapter("detection")

    def draw(runs, path):
        path.write_bytes(PNG_MAGIC)
        return path

    class TextAdapter(TaskAdapter):
        name = "text"
        metric_rows = (MetricRow("eval_f1", "F1", True),)
        summary_keys = metric_rows
        folder_contents = "a checkpoint"

        def plots(self, shown):
            return [Plot("f1.png", "F1 per class", draw)]

        def sections(self):
            return (*super().sections(), lambda context: ["## Learning curves", "", f"{len(context.runs)} runs."])

    runs = [CompareRun(loss, 0, tmp_path / loss, {"eval_f1": f1}) for loss, f1 in (("ce", 0.8), ("hem", 0.9))]
    text = write_report(runs, tmp_path / "text", progress=False, task=TextAdapter()).read_text()
    assert "| F1 | ↑ | 0.8000 | **0.9000** |" in text and "F1 0.900 vs 0.800 (better)" in text
    assert "### F1 per class\n\n![F1 per class](f1.png)\n\n## Runs" in text
    assert text.endswith("Each folder holds a checkpoint.\n\n## Learning curves\n\n2 runs.\n")


def _curve(values):
    return {"epoch": [float(index + 1) for index in range(len(values))], "value": list(values)}


def test_learning_curves_and_the_convergence_row(tmp_path):
    plateau = [0.3, 0.6, 0.8, 0.9, 0.905, 0.902, 0.904, 0.903]
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    runs = []
    for seed in (0, 1):
        for loss, accuracy in (("ce", plateau), ("hem", rising if seed == 1 else plateau)):
            run = _synthetic_run(tmp_path, loss, seed, 1.0, [0.5] * 4 if loss == "hem" else None)
            run.curves = {
                "loss": _curve([2.0 / (index + 1) for index in range(8)]),
                "eval_accuracy": _curve(accuracy),
            }
            if loss == "hem":
                run.curves["hem/violating_fraction"] = _curve([0.9 - 0.1 * index for index in range(8)])
            runs.append(run)
    report = write_report(runs, tmp_path / "report", progress=False).read_text()
    assert "| Converged | | yes (2/2; spread ≤ 0.0020) | no (1/2; spread ≤ 0.2000) |" in report
    assert "![Learning curves](learning_curves.png)" in report and "over its last 25% of evaluations" in report
    assert "**Not converged**: `hem`." in report
    assert (tmp_path / "report" / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)
    results = json.loads((tmp_path / "report" / "compare_results.json").read_text())
    assert [found["converged"] for found in results["convergence"]["losses"]["hem"]] == [True, False]
    assert results["runs"][0]["curves"]["eval_accuracy"]["value"] == plateau


def test_margin_sweep_plan_report_and_plot(tmp_path):
    from hf_hem.compare import _check_margins, _run_plan

    assert _run_plan(["ce", "hem"], [0], [0.1, 0.5]) == [(0, "ce", None), (0, "hem", 0.1), (0, "hem", 0.5)]
    assert _run_plan(["ce", "hem"], [0, 1], []) == [
        (0, "ce", None),
        (0, "hem", None),
        (1, "ce", None),
        (1, "hem", None),
    ]
    for margins, losses, message in (
        ([0.1, -1], ["hem"], "positive"),
        ([0.1, 0.1], ["hem"], "repeat"),
        ([0.1], ["ce", "hem+"], "hem\\+"),
        ([0.1], ["ce", "dice"], "needs a margin loss"),
    ):
        with pytest.raises(ValueError, match=message):
            _check_margins(margins, losses)
    with pytest.raises(ValueError, match="--margin and --margins"):
        run_compare(["hem"], output_dir=tmp_path, script_args=["--margin", "0.3"], margins=[0.1], progress=False)

    runs = [_synthetic_run(tmp_path, "ce", seed, 0.0) for seed in (0, 1)]
    for seed in (0, 1):
        for margin, separation in ((0.1, 0.0), (0.5, 1.0), (1.0, 2.0)):
            run = _synthetic_run(tmp_path, "hem", seed, separation, [margin] * 4)
            run.margin_override = margin
            run.output_dir = tmp_path / f"hem-m{margin:g}-seed{seed}"
            runs.append(run)
    assert runs[2].label == "hem μ=0.1"
    report = write_report(runs, tmp_path / "sweep", progress=False).read_text()
    assert "| Metric | better | `ce` | `hem μ=0.1` | `hem μ=0.5` | `hem μ=1` |" in report
    assert "## Margin sweep" in report and "![Metrics against the margin](margin_sweep.png)" in report
    assert (tmp_path / "sweep" / "margin_sweep.png").read_bytes().startswith(PNG_MAGIC)
    assert "| `hem μ=0.5`, seed 1 |" in report
    with pytest.raises(ValueError, match="same loss and seed"):
        write_report(runs + [runs[-1]], tmp_path / "twice", progress=False)


def test_segmentation_defaults_compare_hem_plus_over_two_seeds():
    adapter = TASK_ADAPTERS["segmentation"]
    assert adapter.default_losses == ("ce", "hem", "hem+", "dice")
    assert adapter.default_seeds(embedded=True) == [0, 1] and adapter.default_seeds(embedded=False) == [0]
    assert adapter.convergence_key == "eval_mean_iou"


def test_cli_still_rejects_unknown_flags_outside_compare():
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--num_train_epochs", "1"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(("task", "metric"), [("text", "eval_accuracy"), ("token", "eval_f1")])
def test_compare_text_and_token_tasks_on_their_synthetic_defaults(tmp_path, task, metric):
    from hf_hem.cli import main as cli_main

    output_dir = tmp_path / task
    flags = ["--num_train_epochs", "1", "--max_train_samples", "64", "--max_eval_samples", "32"]
    command = ["compare", "--task", task, "--seeds", "0", "--output_dir", str(output_dir), "--no_progress", *flags]
    assert cli_main(command) == 0
    report = (output_dir / "report.md").read_text()
    assert "not evidence about HEM on language" in report and "## Learning curves" in report
    runs = json.loads((output_dir / "compare_results.json").read_text())["runs"]
    assert [run["loss_name"] for run in runs] == ["ce", "hem"]
    assert all(0.0 <= run["metrics"][metric] <= 1.0 for run in runs)
