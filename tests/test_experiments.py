"""The experiments layer (`hf_hem.experiments`) through `hf-hem compare`: a tiny end-to-end comparison, resume,
`--until_converged`, and the report writer on synthetic run records."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hf_hem.cli import main as cli_main
from hf_hem.experiments import Metric, RunRecord, RunSpec, Task
from hf_hem.experiments.compare import run_compare, write_compare_report
from hf_hem.experiments.records import load_record
from hf_hem.experiments.runner import UntilConverged, check_margins, plan_runs, run_plan
from hf_hem.experiments.summary import summarize_records
from hf_hem.experiments.tasks import TASKS, get_task, task_names
from hf_hem.experiments.tasks._script import ScriptTask


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
    # One epoch is too short to judge convergence: the report says first that it is a smoke run.
    smoke, title = report.split("\n\n")[:2]
    assert smoke.startswith("> **Smoke run, not a verdict**") and "`hem (convergence undecided 1/1)`" in smoke
    assert title == "# hf-hem compare: `ce` vs `hem`"
    assert "- **Unknown classes**: 8, 9, held out of training" in report
    assert "| Metric | better | `ce` | `hem` |" in report
    for row in ("Accuracy", "Expected calibration error", "Unknown-class AUROC, MSP", "Unknown-class FPR at 95% TPR"):
        assert f"| {row}" in report, row
    assert (
        "## In short" in report and "`hem (convergence undecided 1/1)` vs `ce (convergence undecided 1/1)`" in report
    )
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
    # The curves come from each run's log history: the training loss and one point per evaluation.
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


def _synthetic_run(tmp_path, loss_name, seed, separation, margins=None, margin=None) -> RunRecord:
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
    arrays = {
        "eval_logits": known_logits,
        "eval_labels": labels,
        "unknown_logits": unknown_logits,
        "class_names": np.asarray(["a", "b", "c", "d"]),
        "unknown_class_names": np.asarray(["e"]),
    }
    name = loss_name if margin is None else f"{loss_name}-m{margin:g}"
    extras = {"output_dir": str(tmp_path / f"{name}-seed{seed}"), "margins": margins}
    return RunRecord("image", RunSpec(loss_name, seed, margin), metrics, arrays=arrays, extras=extras, wall_time_s=4.0)


def _curve(values):
    return {"epoch": [float(index + 1) for index in range(len(values))], "value": list(values)}


PLATEAU = [0.3, 0.6, 0.8, 0.9, 0.905, 0.902, 0.904, 0.903]
RISING = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def _converged(records):
    """Give every record a learning curve that has levelled off."""
    for record in records:
        record.curves = {"eval_accuracy": _curve(PLATEAU)}
    return records


def test_report_of_several_seeds_shows_spread_and_best_values(tmp_path):
    records = _converged(
        [
            _synthetic_run(tmp_path, loss, seed, separation, margins)
            for seed in (0, 1)
            for loss, separation, margins in (
                ("ce", 0.0, None),
                ("hem", 1.0, [0.5] * 4),
                ("hem+", 2.0, [0.3, 0.4, 0.5, 0.6]),
            )
        ]
    )
    report = write_compare_report(records, tmp_path / "report").read_text()
    assert report.startswith("# hf-hem compare: `ce` vs `hem` vs `hem+`")  # every run converged: no smoke line
    assert "| Metric | better | `ce` | `hem` | `hem+` |" in report
    assert "- **Seeds**: 0, 1 (mean ± standard deviation over seeds" in report
    # hem+ has the highest AUROC and the lowest ECE in every seed: bold, and no spread across identical seeds.
    assert "| Unknown-class AUROC, MSP | ↑ | 0.7000 ± 0.0000 | 0.7500 ± 0.0000 | **0.8000 ± 0.0000** |" in report
    assert "| Expected calibration error | ↓ | 0.1000 ± 0.0000 | 0.0900 ± 0.0000 | **0.0800 ± 0.0000** |" in report
    assert "| Margin μ | | n/a | 0.500 | 0.300–0.600 |" in report  # CE has no margin: the missing-value mark
    assert "- **`hem+` vs `ce`**: " in report and "unknown-class AUROC (MSP) 0.800 vs 0.700 (better" in report
    # Three losses: a ranking on the first summary metric, every loss converged so named plainly.
    assert "- **Ranking by accuracy**: " in report and "unconverged" not in report
    for link in _image_links(report):
        assert (tmp_path / "report" / link).read_bytes().startswith(PNG_MAGIC)
    assert len(json.loads((tmp_path / "report" / "compare_results.json").read_text())["runs"]) == 6


def test_verdicts_and_rankings_name_unconverged_losses(tmp_path):
    records = _converged(
        [
            _synthetic_run(tmp_path, loss, seed, sep)
            for seed in (0, 1, 2)
            for loss, sep in (("ce", 0.0), ("hem", 1.0), ("logitnorm", 2.0))
        ]
    )
    records[4].curves = {"eval_accuracy": _curve(RISING)}  # hem, seed 1
    summary = summarize_records(get_task("image"), records, "ce")
    assert summary.display("hem") == "hem (unconverged 1/3)" and summary.display("ce") == "ce"
    accuracy = Metric("eval_rejection_auroc_msp", "AUROC")
    assert summary.ranking(accuracy) == "`logitnorm` > `hem (unconverged 1/3)` > `ce`"
    verdicts = summary.verdicts([accuracy])
    assert verdicts[0].startswith("* **hem (unconverged 1/3) vs ce** — better (p < 0.05): AUROC (+0.050")
    report = write_compare_report(records, tmp_path / "report").read_text()
    assert report.startswith("> **Smoke run, not a verdict**: not every run converged (`hem (unconverged 1/3)`)")
    assert "- **`hem (unconverged 1/3)` vs `ce`**: " in report
    assert "- **Ranking by accuracy**: " in report and "`hem (unconverged 1/3)`" in report.split("Ranking")[1]
    assert "**Not converged**: `hem (unconverged 1/3)`." in report


def test_report_without_unknown_classes_skips_rejection_plots(tmp_path):
    records = [_synthetic_run(tmp_path, "ce", 0, 0.0), _synthetic_run(tmp_path, "hem", 0, 1.0)]
    for record in records:
        del record.arrays["unknown_logits"]
        for key in [key for key in record.metrics if "rejection" in key]:
            del record.metrics[key]
    report = write_compare_report(records, tmp_path / "report").read_text()
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
        ({"task": "ood"}, "expected one of"),  # a benchmark task is not offered by compare
    ],
)
def test_run_compare_rejects_bad_input_before_training(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_compare(output_dir=tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "report.md").exists()


def test_write_report_needs_predictions(tmp_path):
    record = _synthetic_run(tmp_path, "ce", 0, 0.0)
    del record.arrays["eval_logits"]
    with pytest.raises(ValueError, match=r"no \['eval_logits'\] predictions"):
        write_compare_report([record], tmp_path / "report")


def test_one_seed_shows_the_mean_alone_and_a_seed_without_a_value_is_left_out(tmp_path):
    records = [_synthetic_run(tmp_path, "ce", 0, 0.0), _synthetic_run(tmp_path, "hem", 0, 1.0, [0.5] * 4)]
    report = write_compare_report(records, tmp_path / "one").read_text()
    assert "| Unknown-class AUROC, MSP | ↑ | 0.7000 | **0.7500** |" in report  # one seed: no spread to show
    assert "Add `--seeds 0,1,2` for error bars." in report
    records = [_synthetic_run(tmp_path, "ce", seed, 0.0) for seed in (0, 1)]
    records += [_synthetic_run(tmp_path, "hem", seed, 1.0) for seed in (0, 1)]
    records[0].metrics["eval_ece"] = float("nan")  # undefined in one seed of ce: its other seed still counts
    records[2].metrics["eval_ece"] = records[3].metrics["eval_ece"] = float("nan")  # undefined in every seed of hem
    report = write_compare_report(records, tmp_path / "nan").read_text()
    assert "| Expected calibration error | ↓ | **0.1000** | n/a |" in report


def _synthetic_segmentation_run(tmp_path, loss_name, quality) -> RunRecord:
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
    }
    extras = {
        "output_dir": str(tmp_path / loss_name),
        "per_class_iou": {"sky": quality, "road": quality / 2, "car": None},
    }
    return RunRecord("segmentation", RunSpec(loss_name, 0), metrics, arrays=arrays, extras=extras, wall_time_s=6.0)


def test_the_one_writer_renders_segmentation_through_its_task(tmp_path):
    records = [
        _synthetic_segmentation_run(tmp_path, loss, q) for loss, q in (("ce", 0.5), ("hem", 0.6), ("dice", 0.4))
    ]
    setup = {"dataset": "`scenes`", "model": "SegFormer-tiny", "classes": ["sky", "road", "car"], "epochs": 1}
    setup.update(batch_size=8, learning_rate=6e-4, num_train_samples=20, num_eval_samples=2, seed_draws_split=True)
    report = write_compare_report(records, tmp_path / "report", setup=setup, task="semantic-segmentation")
    text = report.read_text()
    assert "- **Data**: `scenes`; 20 training and 2 validation images; classes sky, road, car." in text
    assert "- **Seeds**: 0; each seed also draws its own scenes." in text
    assert "| Mean IoU | ↑ | 0.5000 | **0.6000** | 0.4000 |" in text and "mIoU 0.600 vs 0.500 (better)" in text
    assert set(_image_links(text)) == {"segmentation_masks.png", "per_class_iou.png"}
    results = json.loads((tmp_path / "report" / "compare_results.json").read_text())
    assert results["runs"][1]["per_class_iou"] == {"sky": 0.6, "road": 0.3, "car": None}
    del records[0].arrays["labels"]
    with pytest.raises(ValueError, match=r"no \['labels'\] predictions"):
        write_compare_report(records, tmp_path / "report", task="segmentation")


def test_a_new_task_is_one_module_with_its_metrics_plots_and_sections(tmp_path):
    assert task_names("compare")["image-classification"] == "image"
    assert {"image", "segmentation", "text", "token"} <= set(TASKS)
    assert get_task("classification") is TASKS["image"] and get_task("semantic-segmentation") is TASKS["segmentation"]
    with pytest.raises(ValueError, match="expected one of"):
        get_task("detection")

    def draw(records, path):
        path.write_bytes(PNG_MAGIC)
        return path

    class F1Task(ScriptTask):
        name = "f1"
        metrics = (Metric("eval_f1", "F1"),)
        folder_contents = "a checkpoint"

        def run_plots(self, shown):
            return [("f1.png", "F1 per class", draw)]

        def sections(self, summary, records, settings):
            return ["## Per class", "", f"{len(records)} runs."]

    records = [
        RunRecord("f1", RunSpec(loss, 0), {"eval_f1": f1}, extras={"output_dir": str(tmp_path / loss)})
        for loss, f1 in (("ce", 0.8), ("hem", 0.9))
    ]
    text = write_compare_report(records, tmp_path / "f1", task=F1Task()).read_text()
    assert "| F1 | ↑ | 0.8000 | **0.9000** |" in text and "F1 0.900 vs 0.800 (better)" in text
    assert "## Per class\n\n2 runs.\n\n## Plots\n\n### F1 per class\n\n![F1 per class](f1.png)\n\n## Runs" in text
    assert text.endswith("Each folder holds a checkpoint.\n")


def test_learning_curves_and_the_convergence_row(tmp_path):
    records = []
    for seed in (0, 1):
        for loss, accuracy in (("ce", PLATEAU), ("hem", RISING if seed == 1 else PLATEAU)):
            record = _synthetic_run(tmp_path, loss, seed, 1.0, [0.5] * 4 if loss == "hem" else None)
            record.curves = {
                "loss": _curve([2.0 / (index + 1) for index in range(8)]),
                "eval_accuracy": _curve(accuracy),
            }
            if loss == "hem":
                record.curves["hem/violating_fraction"] = _curve([0.9 - 0.1 * index for index in range(8)])
            records.append(record)
    report = write_compare_report(records, tmp_path / "report").read_text()
    assert "| Converged | | yes (2/2; spread ≤ 0.0020) | no (1/2; spread ≤ 0.2000) |" in report
    assert "![Learning curves](learning_curves.png)" in report and "over its last 25% of evaluations" in report
    assert "**Not converged**: `hem (unconverged 1/2)`." in report
    assert (tmp_path / "report" / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)
    results = json.loads((tmp_path / "report" / "compare_results.json").read_text())
    assert [found["converged"] for found in results["convergence"]["losses"]["hem"]] == [True, False]
    assert results["runs"][0]["curves"]["eval_accuracy"]["value"] == PLATEAU


def test_margin_sweep_plan_report_and_plot(tmp_path):
    assert plan_runs(["ce", "hem"], [0], [0.1, 0.5]) == [
        RunSpec("ce", 0),
        RunSpec("hem", 0, 0.1),
        RunSpec("hem", 0, 0.5),
    ]
    assert plan_runs(["ce", "hem"], [0, 1]) == [
        RunSpec("ce", 0),
        RunSpec("hem", 0),
        RunSpec("ce", 1),
        RunSpec("hem", 1),
    ]
    for margins, losses, message in (
        ([0.1, -1], ["hem"], "positive"),
        ([0.1, 0.1], ["hem"], "repeat"),
        ([0.1], ["ce", "hem+"], "hem\\+"),
        ([0.1], ["ce", "dice"], "needs a margin loss"),
    ):
        with pytest.raises(ValueError, match=message):
            check_margins(margins, losses)
    with pytest.raises(ValueError, match="--margin and --margins"):
        run_compare(["hem"], output_dir=tmp_path, script_args=["--margin", "0.3"], margins=[0.1], progress=False)

    records = [_synthetic_run(tmp_path, "ce", seed, 0.0) for seed in (0, 1)]
    for seed in (0, 1):
        for margin, separation in ((0.1, 0.0), (0.5, 1.0), (1.0, 2.0)):
            records.append(_synthetic_run(tmp_path, "hem", seed, separation, [margin] * 4, margin=margin))
    assert records[2].label == "hem μ=0.1"
    report = write_compare_report(records, tmp_path / "sweep").read_text()
    assert "| Metric | better | `ce` | `hem μ=0.1` | `hem μ=0.5` | `hem μ=1` |" in report
    assert "## Margin sweep" in report and "![Metrics against the margin](margin_sweep.png)" in report
    assert (tmp_path / "sweep" / "margin_sweep.png").read_bytes().startswith(PNG_MAGIC)
    assert "| `hem μ=0.5`, seed 1 |" in report
    with pytest.raises(ValueError, match="same loss and seed"):
        write_compare_report(records + [records[-1]], tmp_path / "twice")


def test_segmentation_defaults_compare_hem_plus_over_two_seeds():
    task = get_task("segmentation")
    assert task.default_losses == ("ce", "hem", "hem+", "dice")
    assert task.default_seeds(task.settings()) == [0, 1]
    assert task.default_seeds(task.settings(["--dataset_name", "scene_parse_150"])) == [0]
    assert task.curve_key == "eval_mean_iou"


def test_cli_still_rejects_unknown_flags_outside_compare():
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--num_train_epochs", "1"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(("task", "metric"), [("text", "eval_accuracy"), ("token", "eval_f1")])
def test_compare_text_and_token_tasks_on_their_synthetic_defaults(tmp_path, task, metric):
    output_dir = tmp_path / task
    flags = ["--num_train_epochs", "1", "--max_train_samples", "64", "--max_eval_samples", "32"]
    command = ["compare", "--task", task, "--seeds", "0", "--output_dir", str(output_dir), "--no_progress", *flags]
    assert cli_main(command) == 0
    report = (output_dir / "report.md").read_text()
    assert "not evidence about HEM on language" in report and "## Learning curves" in report
    runs = json.loads((output_dir / "compare_results.json").read_text())["runs"]
    assert [run["loss_name"] for run in runs] == ["ce", "hem"]
    assert all(0.0 <= run["metrics"][metric] <= 1.0 for run in runs)


# --------------------------------------------------------------------------------------------------------------------
# Resume and --until_converged


def test_compare_resumes_an_interrupted_run_and_reruns_nothing_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = get_task("image")
    pipeline = task.pipeline
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[2].loss_name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the comparison during its second run
        return pipeline.run(*args, **kwargs)

    output_dir = tmp_path / "compare"
    command = ["compare", "--output_dir", str(output_dir), "--seeds", "0", "--no_progress", *TINY]
    monkeypatch.setattr(task, "pipeline", pipeline._replace(run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        cli_main(command)
    assert calls == ["ce", "hem"] and (output_dir / "ce" / "run_record.json").is_file()
    assert not (output_dir / "hem" / "run_record.json").exists()

    calls.clear()
    monkeypatch.setattr(
        task, "pipeline", pipeline._replace(run=lambda *a, **k: calls.append(a[2].loss_name) or pipeline.run(*a, **k))
    )
    assert cli_main(command) == 0
    assert calls == ["hem"]  # ce was read back, not trained again
    ce_record = load_record(output_dir / "ce" / "run_record.json")
    assert ce_record is not None and ce_record.attempts[0]["epochs"] == 1.0
    report = (output_dir / "report.md").read_text()
    assert set(_image_links(report)) >= {"msp_histograms.png", "reliability.png"}  # the read-back run's arrays too

    calls.clear()
    assert cli_main(command) == 0 and calls == []  # a finished comparison reruns nothing
    # Other settings make the finished runs stale: a different epoch count trains both again.
    assert cli_main([*command, "--num_train_epochs", "2"]) == 0 and calls == ["ce", "hem"]


class _CurveTask(Task):
    """A task without training: its learning curve converges once it trains for `converges_at` epochs or more."""

    name = "curve"
    metrics = (Metric("accuracy", "accuracy"),)
    curve_key = "accuracy"

    def __init__(self, converges_at):
        self.converges_at = converges_at
        self.trained = []

    def fingerprint(self, settings):
        return {"epochs": settings}

    def epochs(self, settings):
        return settings

    def with_epochs(self, settings, epochs):
        return float(epochs)

    def run(self, spec, settings, context):
        self.trained.append(settings)
        values = PLATEAU if settings >= self.converges_at else RISING
        return RunRecord(self.name, spec, {"accuracy": values[-1]}, curves={"accuracy": _curve(values)})


def test_until_converged_grows_the_epochs_and_stops_at_the_cap(tmp_path):
    def locate(spec):
        return None, tmp_path / f"{spec.slug}_seed{spec.seed}.json"

    never = _CurveTask(converges_at=1e9)
    records, _ = run_plan(
        never,
        2.0,
        [RunSpec("hem", 0)],
        tmp_path,
        locate,
        progress=False,
        until_converged=UntilConverged(max_epochs=5.0, growth=1.5),
    )
    assert never.trained == [2.0, 3.0, 4.5, 5.0]  # x1.5 each time, the last attempt at the cap
    assert [attempt["epochs"] for attempt in records[0].attempts] == [2.0, 3.0, 4.5, 5.0]
    assert [attempt["converged"] for attempt in records[0].attempts] == [False] * 4

    soon = _CurveTask(converges_at=3.0)
    records, _ = run_plan(
        soon,
        2.0,
        [RunSpec("ce", 0)],
        tmp_path,
        locate,
        progress=False,
        until_converged=UntilConverged(max_epochs=50.0),
    )
    assert soon.trained == [2.0, 3.0] and records[0].attempts[-1]["converged"] is True
    # The record keeps the fingerprint of the settings it started from, so the cell is read back next time.
    again, reused = run_plan(
        soon,
        2.0,
        [RunSpec("ce", 0)],
        tmp_path,
        locate,
        progress=False,
        until_converged=UntilConverged(max_epochs=50.0),
    )
    assert reused == 1 and soon.trained == [2.0, 3.0] and again[0].metrics == records[0].metrics
    # Without --until_converged the fingerprint differs: the cell is trained again, once.
    run_plan(soon, 2.0, [RunSpec("ce", 0)], tmp_path, locate, progress=False)
    assert soon.trained == [2.0, 3.0, 2.0]
    with pytest.raises(ValueError, match="growth must be a number > 1"):
        UntilConverged(max_epochs=5.0, growth=1.0)


def test_compare_until_converged_flags_and_epochs(tmp_path):
    task = get_task("image")
    settings = task.settings(["--num_train_epochs", "3"])
    longer = task.with_epochs(settings, 4.5)
    assert task.epochs(settings) == 3.0 and task.epochs(longer) == 4.5
    assert task.fingerprint(longer) != task.fingerprint(settings)
    with pytest.raises(ValueError, match="--until_converged needs --max_epochs"):
        cli_main(["compare", "--output_dir", str(tmp_path), "--until_converged"])


def test_run_records_round_trip_and_old_benchmark_files_read_back(tmp_path):
    record = RunRecord(
        "ood",
        RunSpec("hem+", 1, None),
        {"accuracy": 0.9, "x": float("nan"), "n": 64},
        curves={"accuracy": _curve([0.5, 0.9])},
        fingerprint={"epochs": 30},
        extras={"ood_sets": ["a"]},
    )
    record.save(tmp_path / "r.json")
    back = load_record(tmp_path / "r.json", {"epochs": 30})
    assert back.spec == record.spec and back.curves == record.curves and back.extras == {"ood_sets": ["a"]}
    assert back.metrics["n"] == 64 and np.isnan(back.metrics["x"])
    assert load_record(tmp_path / "r.json", {"epochs": 40}) is None  # other settings: run again
    old = {  # a run file of `hf-hem benchmark` before the experiments layer
        "format_version": 2,
        "task": "ood",
        "loss": "ce",
        "seed": 0,
        "settings": {"epochs": 30},
        "metrics": {"accuracy": 0.8},
        "details": {"curves": {"accuracy": _curve([0.8])}, "class_map": {"0": 0}},
        "elapsed_seconds": 3.5,
        "hf_hem_version": "0.1",
        "finished_at": "2026-01-01T00:00:00+00:00",
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    read = load_record(tmp_path / "old.json", {"epochs": 30})
    assert read.spec == RunSpec("ce", 0) and read.extras == {"class_map": {"0": 0}} and read.wall_time_s == 3.5
