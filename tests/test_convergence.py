"""Learning curves and the convergence criterion (`hf_hem.experiments.convergence`, `curves`, `plots.curves`)."""

import json
import math

import numpy as np
import pytest

from hf_hem.experiments.convergence import (
    Convergence,
    ConvergenceCriterion,
    check_convergence,
    convergence_cell,
    run_convergence,
)
from hf_hem.experiments.curves import curves_from_history, curves_from_log_history, read_trainer_curves
from hf_hem.experiments.plots.curves import mean_curve, plot_learning_curves


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_rising_curve_fails_and_a_plateau_passes():
    rising = np.linspace(0.1, 0.6, 20)  # +0.026 per evaluation, to the end
    assert check_convergence(rising).converged is False
    plateau = np.r_[np.linspace(0.1, 0.6, 14), 0.6 + np.array([0.002, -0.003, 0.004, 0.0, -0.002, 0.003])]
    result = check_convergence(plateau)
    assert result.converged is True and result.window == 5 and result.spread == pytest.approx(0.007)


def test_a_slow_climb_through_the_window_fails():
    # Each step is below the tolerance, but the last quarter still gains 0.02: not levelled off.
    slow = np.r_[np.linspace(0.1, 0.5, 30), 0.5 + 0.005 * np.arange(1, 11)]
    assert check_convergence(slow).converged is False


def test_window_tolerance_and_undecided_cases():
    criterion = ConvergenceCriterion(tolerance=0.05, window_fraction=0.5, min_evaluations=2)
    assert criterion.window(10) == 5 and criterion.window(2) == 2
    assert check_convergence([0.0, 0.5, 0.52, 0.54, 0.55], criterion).converged is True
    assert check_convergence([0.3, 0.4], ConvergenceCriterion()).converged is None  # fewer than 3 evaluations
    assert check_convergence([0.5, 0.5, float("nan")]).converged is False  # a NaN metric has not settled
    assert check_convergence([0.5, 0.51, 0.5]).converged is True  # exactly the tolerance passes
    for bad in ({"tolerance": -1}, {"window_fraction": 0}, {"min_evaluations": 1}):
        with pytest.raises(ValueError):
            ConvergenceCriterion(**bad)
    assert "0.01" in ConvergenceCriterion().describe("mIoU") and "25%" in ConvergenceCriterion().describe()


def test_convergence_cell():
    yes, no, open_ = Convergence(True, 0.004, 5), Convergence(False, 0.03, 5), Convergence(None, math.nan, 1)
    assert convergence_cell([yes, yes]) == "yes (2/2; spread ≤ 0.0040)"
    assert convergence_cell([yes, no, open_]) == "no (1/2; spread ≤ 0.0300)"
    assert convergence_cell([open_]) == "n/a" and convergence_cell([]) == "n/a"


def test_curves_from_log_history_splits_train_and_eval_entries(tmp_path):
    log_history = [
        {"epoch": 0.5, "step": 5, "loss": 2.0, "hem/violating_fraction": 0.9, "learning_rate": 1e-3},
        {"epoch": 1.0, "step": 10, "eval_loss": 1.5, "eval_accuracy": 0.4, "eval_runtime": 0.2, "eval_samples": 3},
        {"epoch": 1.5, "step": 15, "loss": 1.2, "hem/violating_fraction": 0.6, "learning_rate": 5e-4},
        {"epoch": 2.0, "step": 20, "eval_loss": 1.1, "eval_accuracy": 0.6, "eval_steps_per_second": 9.0},
        {"epoch": 2.0, "step": 20, "train_runtime": 3.0, "train_loss": 1.6},  # the summary: no point of a curve
    ]
    curves = curves_from_log_history(log_history)
    assert set(curves) == {"loss", "hem/violating_fraction", "learning_rate", "eval_loss", "eval_accuracy"}
    assert curves["loss"] == {"epoch": [0.5, 1.5], "value": [2.0, 1.2]}
    assert curves["eval_accuracy"] == {"epoch": [1.0, 2.0], "value": [0.4, 0.6]}
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": log_history}))
    assert read_trainer_curves(tmp_path) == curves
    assert read_trainer_curves(tmp_path / "missing") == {}


def test_curves_from_history_and_segments():
    history = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}, {"epoch": 2, "loss": 0.5, "accuracy": 0.7}]
    curves = curves_from_history(history, epoch_offset=10)
    assert curves["accuracy"] == {"epoch": [11.0, 12.0], "value": [0.5, 0.7]}
    # Two trainings (continual learning): both stretches must level off.
    chained = {"accuracy": {"epoch": list(range(8)), "value": [0.1, 0.9, 0.9, 0.9, 0.1, 0.5, 0.7, 0.9]}}
    assert run_convergence(chained, "accuracy", [[0, 4], [4, 8]]).converged is False
    flat = {"accuracy": {"epoch": list(range(8)), "value": [0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8]}}
    assert run_convergence(flat, "accuracy", [[0, 4], [4, 8]]).converged is True
    assert run_convergence(flat, "accuracy").converged is True
    assert run_convergence({}, "accuracy").converged is None
    # A NaN stored as JSON null is no plateau either.
    assert (
        run_convergence({"accuracy": {"epoch": [1, 2, 3], "value": [0.5, None, 0.5]}}, "accuracy").converged is False
    )


def test_mean_curve_and_plot(tmp_path):
    first = {"epoch": [1, 2, 3], "value": [0.2, 0.4, 0.6]}
    second = {"epoch": [1, 2, 3], "value": [0.4, 0.6, 0.8]}
    shifted = {"epoch": [0, 4], "value": [0.0, 0.8]}  # other epochs: interpolated onto the first run's
    epochs, mean, std = mean_curve([first, second, shifted])
    np.testing.assert_allclose(epochs, [1, 2, 3])
    np.testing.assert_allclose(mean, [(0.2 + 0.4 + 0.2) / 3, (0.4 + 0.6 + 0.4) / 3, (0.6 + 0.8 + 0.6) / 3])
    assert np.isnan(mean_curve([first])[2]).all()  # one seed: no spread
    curves = {"ce": [{"eval_accuracy": first}, {"eval_accuracy": second}], "hem": [{"eval_accuracy": second}]}
    path = plot_learning_curves(
        curves, [("eval_accuracy", "accuracy"), ("absent", "nobody has it")], tmp_path / "c.png"
    )
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert plot_learning_curves(curves, [("absent", "x")], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
