"""`hf-hem compare` (`hf_hem.compare`): a tiny end-to-end comparison, and the report writer on synthetic runs."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hf_hem.cli import main as cli_main
from hf_hem.compare import CompareRun, run_compare, write_report


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
    assert cli_main(["compare", "--output_dir", str(output_dir), "--seeds", "0", *TINY]) == 0
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
        "msp_histograms.png",
        "mls_histograms.png",
        "rejection_roc.png",
        "reliability.png",
        "per_class_accuracy.png",
    }
    for link in links:
        content = (output_dir / link).read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 5_000, link

    results = json.loads((output_dir / "compare_results.json").read_text())
    assert [run["loss_name"] for run in results["runs"]] == ["ce", "hem"]
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
    assert "| Margin μ | | – | 0.500 | 0.300–0.600 |" in report
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


def test_cli_still_rejects_unknown_flags_outside_compare():
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--num_train_epochs", "1"])
    assert exit_info.value.code == 2
