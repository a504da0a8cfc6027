"""The report reading of `benchmarks/make_results.py` (no training): verdict lines, "where HEM loses", windows."""

import importlib.util
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_results.py"
VERDICT = (
    "* **hem vs ce** — better (p < 0.05): PGD-L2 acc (+0.294, p<0.001); worse (p < 0.05): ECE (lower is better) "
    "(+0.183, p<0.001); no clear difference: acc (-0.002, p=0.285), few-shot (+0.023, p=0.337), "
    "far MSP FPR95 (lower is better) (+0.082, p=0.582), forgetting (lower is better) (-0.147, p=0.105)."
)


def load_script():
    spec = importlib.util.spec_from_file_location("make_results_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdict_line_is_read_with_labels_differences_and_p_values():
    verdict = load_script()._verdict(VERDICT, "hem")
    assert verdict["better"] == [("PGD-L2 acc", 0.294, "p<0.001")]
    assert verdict["worse"] == [("ECE (lower is better)", 0.183, "p<0.001")]
    assert [label for label, _, _ in verdict["unclear"]] == [
        "acc",
        "few-shot",
        "far MSP FPR95 (lower is better)",
        "forgetting (lower is better)",
    ]


def test_where_hem_loses_follows_each_metrics_direction():
    (line,) = load_script()._where_hem_loses("Task", VERDICT, ["ce", "hem"])
    worse, behind = line.split("; behind on the mean, not significant: ")
    assert "ECE (lower is better) (+0.183, p<0.001)" in worse
    # Lower accuracy and a higher FPR are behind; a higher few-shot accuracy and lower forgetting are not.
    assert behind == "acc (-0.002, p=0.285), far MSP FPR95 (lower is better) (+0.082, p=0.582)."


def test_a_report_without_a_readable_verdict_line_fails_loudly():
    with pytest.raises(SystemExit, match="update `_verdict`"):
        load_script()._where_hem_loses("Task", "* **hem vs ce** — a changed format.", ["ce", "hem"])


def test_window_of_the_check_against_the_learning_rate_drops():
    script = load_script()
    criterion = {"min_evaluations": 3, "window_fraction": 0.25}
    assert script._window_text(40, (0.5, 0.75), criterion).endswith("epochs 31-40, all after the last drop")
    # The quick default: the last drop comes inside the window, after most of it.
    assert script._window_text(30, (0.91, 0.955), criterion).endswith("7 of them before the last drop")
