"""Tests for hf_hem.metrics: hand-computed values, agreement with scikit-learn, bad input, and the evaluate modules."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score, roc_curve

from hf_hem.metrics import (
    StreamingConfusionMatrix,
    accuracy,
    aupr,
    auroc,
    available_metrics,
    balanced_accuracy,
    confusion_matrix_metrics,
    energy_score,
    expected_calibration_error,
    fpr_at_tpr,
    load_metric,
    max_logit_score,
    msp_score,
    per_class_accuracy,
    rejection_metrics,
    reliability_diagram_bins,
    shot_group_accuracy,
    softmax,
)


try:  # tests/ may or may not become a package
    from .helpers import REPO_ROOT, with_repo_on_pythonpath
except ImportError:
    from helpers import REPO_ROOT, with_repo_on_pythonpath


HAS_EVALUATE = importlib.util.find_spec("evaluate") is not None

# --- classification -------------------------------------------------------------------------------------------------


def test_accuracy_and_balanced_accuracy_by_hand():
    predictions, references = [0, 0, 1, 1, 2], [0, 0, 0, 1, 2]
    assert accuracy(predictions, references) == pytest.approx(4 / 5)
    # recalls: class 0 -> 2/3, class 1 -> 1, class 2 -> 1
    assert balanced_accuracy(predictions, references) == pytest.approx((2 / 3 + 1 + 1) / 3)
    # class 3 never occurs in the references, so it is not averaged in
    assert balanced_accuracy(predictions, references, num_classes=4) == pytest.approx(8 / 9)
    np.testing.assert_allclose(per_class_accuracy(predictions, references, 4), [2 / 3, 1, 1, np.nan])


def test_balanced_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 7, 500)
    predictions = np.where(rng.random(500) < 0.6, references, rng.integers(0, 7, 500))
    assert balanced_accuracy(predictions, references) == pytest.approx(
        balanced_accuracy_score(references, predictions)
    )


def test_classification_accepts_torch_tensors():
    assert accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 0])) == pytest.approx(2 / 3)


def test_softmax_is_stable_and_normalised():
    probabilities = softmax([[1000.0, 1000.0, -1000.0], [0.0, math.log(3.0), -np.inf]])
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-12)


def test_expected_calibration_error_by_hand():
    probabilities = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]]
    references = [0, 1, 1, 0]  # correct, wrong, correct, wrong; confidences 0.9, 0.6, 0.7, 0.55
    # two bins: everything in (0.5, 1] -> |0.5 - mean(0.9, 0.6, 0.7, 0.55)| = |0.5 - 0.6875|
    assert expected_calibration_error(probabilities, references, n_bins=2) == pytest.approx(0.1875)
    # five bins: 0.6 and 0.55 share (0.4, 0.6] (acc 0, conf 0.575), 0.7 -> (0.6, 0.8], 0.9 -> (0.8, 1]
    expected = 0.5 * 0.575 + 0.25 * 0.3 + 0.25 * 0.1
    assert expected_calibration_error(probabilities, references, n_bins=5) == pytest.approx(expected)
    bins = reliability_diagram_bins(probabilities, references, n_bins=5)
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 1, 1])
    np.testing.assert_allclose(bins["confidence"], [np.nan, np.nan, 0.575, 0.7, 0.9])
    np.testing.assert_allclose(bins["accuracy"], [np.nan, np.nan, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(bins["bin_edges"], np.linspace(0, 1, 6))


def test_expected_calibration_error_is_zero_for_perfect_one_hot():
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0


def test_shot_group_accuracy_by_hand():
    # many: >100 (class 0); medium: 20..100 (classes 1, 3, 4); few: <20 (classes 2, 5; class 5 has no test samples)
    train_class_counts = [500, 50, 5, 100, 20, 19]
    references = [0, 0, 1, 1, 2, 2, 3, 4]
    predictions = [0, 0, 1, 0, 0, 0, 3, 4]
    result = shot_group_accuracy(predictions, references, train_class_counts)
    assert result == pytest.approx({"many": 1.0, "medium": (0.5 + 1 + 1) / 3, "few": 0.0})
    # groups without test classes are left out
    assert shot_group_accuracy([0, 1], [0, 1], [200, 300]) == {"many": 1.0}


def test_classification_bad_input():
    with pytest.raises(ValueError, match="same length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="integer labels"):
        accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match=r"out-of-range values \[3\]"):
        balanced_accuracy([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error([[0.5, 0.6]], [0])
    with pytest.raises(ValueError, match="pass softmax"):
        expected_calibration_error([[2.0, -1.0]], [0])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([[1.0, 0.0]], [0], n_bins=0)
    with pytest.raises(ValueError, match="few"):
        shot_group_accuracy([0], [0], [10], many=5, few=20)


# --- unknown-class rejection ----------------------------------------------------------------------------------------


def test_rejection_metrics_by_hand_with_ties():
    known, unknown = [0.9, 0.8, 0.7], [0.8, 0.1]
    # pairs won: 0.9 beats both (2), 0.8 ties 0.8 (0.5) and beats 0.1 (1), 0.7 beats 0.1 (1) -> 4.5 / 6
    assert auroc(known, unknown) == pytest.approx(0.75)
    # keeping >= 95% of 3 knowns needs all 3 -> threshold 0.7 -> unknown 0.8 accepted, 0.1 rejected
    assert fpr_at_tpr(known, unknown) == pytest.approx(0.5)
    # keeping >= 60% needs 2 knowns -> threshold 0.8 (ties count as accepted) -> 1 of 2 unknowns
    assert fpr_at_tpr(known, unknown, tpr=0.6) == pytest.approx(0.5)
    assert fpr_at_tpr(known, unknown, tpr=1 / 3) == pytest.approx(0.0)
    # ranked: 0.9 K | 0.8 K, 0.8 U | 0.7 K | 0.1 U -> precision 1, 2/3, 3/4 at recall 1/3, 2/3, 1
    assert aupr(known, unknown) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # unknowns as positives, ranked by -score: 0.1 U | 0.7 K | 0.8 K, 0.8 U | 0.9 K -> precision 1, 2/4 at recall 1/2, 1
    assert aupr(known, unknown, positive="unknown") == pytest.approx((1 + 0.5) / 2)


def test_fpr_at_tpr_exact_count_despite_float_rounding():
    # 0.95 * 20 is 19 up to rounding: the threshold must be the 19th largest known score, not the 20th
    known = np.arange(20, dtype=float)  # 19th largest is 1.0
    assert fpr_at_tpr(known, [0.5]) == 0.0
    assert fpr_at_tpr(known, [1.0]) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rejection_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    # rounding creates many ties, the hard case for ranks and precision-recall steps
    known = np.round(rng.normal(1.0, 1.0, 300), 1)
    unknown = np.round(rng.normal(0.0, 1.0, 200), 1)
    is_known = np.r_[np.ones(known.size), np.zeros(unknown.size)]
    scores = np.r_[known, unknown]
    assert auroc(known, unknown) == pytest.approx(roc_auc_score(is_known, scores), abs=1e-12)
    assert aupr(known, unknown) == pytest.approx(average_precision_score(is_known, scores), abs=1e-12)
    assert aupr(known, unknown, positive="unknown") == pytest.approx(
        average_precision_score(1 - is_known, -scores), abs=1e-12
    )
    false_positive_rate, true_positive_rate, _ = roc_curve(is_known, scores, drop_intermediate=False)
    expected_fpr95 = false_positive_rate[np.argmax(true_positive_rate >= 0.95)]
    assert fpr_at_tpr(known, unknown) == pytest.approx(expected_fpr95, abs=1e-12)


def test_logit_scores():
    logits = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(msp_score(logits), [math.e**2 / (math.e**2 + 2), 1 / 3])
    np.testing.assert_allclose(max_logit_score(logits), [2.0, 1.0])
    np.testing.assert_allclose(energy_score(logits), np.log(np.exp(logits).sum(axis=1)))
    np.testing.assert_allclose(energy_score(logits, temperature=2.0), 2 * np.log(np.exp(logits / 2).sum(axis=1)))
    np.testing.assert_allclose(energy_score([[1000.0, 1000.0]]), [1000 + math.log(2)])  # no overflow


def test_rejection_metrics_dict():
    rng = np.random.default_rng(0)
    known_logits = rng.normal(0, 1, (50, 5)) + 4 * np.eye(5)[rng.integers(0, 5, 50)]
    unknown_logits = rng.normal(0, 1, (40, 5))
    result = rejection_metrics(known_logits, unknown_logits)
    assert sorted(result) == sorted(f"{s}_{m}" for s in ("msp", "mls", "energy") for m in ("auroc", "fpr95", "aupr"))
    known, unknown = energy_score(known_logits), energy_score(unknown_logits)
    assert result["energy_auroc"] == auroc(known, unknown)
    assert result["mls_fpr95"] == fpr_at_tpr(max_logit_score(known_logits), max_logit_score(unknown_logits))
    assert result["msp_auroc"] > 0.8  # the known logits have a clear winning class


def test_rejection_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        auroc([0.5], [])
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([0.5], [0.1], tpr=0.0)
    with pytest.raises(ValueError, match="positive"):
        aupr([0.5], [0.1], positive="in")
    with pytest.raises(ValueError, match="finite"):
        auroc([np.nan], [0.1])
    with pytest.raises(ValueError, match="2-D"):
        msp_score([1.0, 2.0])
    with pytest.raises(ValueError, match="same number of classes"):
        rejection_metrics(np.zeros((2, 3)), np.zeros((2, 4)))


# --- segmentation ---------------------------------------------------------------------------------------------------

REFERENCE = np.array([[0, 0, 1], [2, 2, 255]])
PREDICTION = np.array([[0, 1, 1], [2, 0, 1]])


def test_confusion_matrix_by_hand():
    metric = StreamingConfusionMatrix(num_classes=3).update(PREDICTION, REFERENCE)
    np.testing.assert_array_equal(metric.confusion_matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    result = metric.compute()
    # IoU = TP / (ref + pred - TP): class 0: 1 / (2 + 2 - 1), class 1: 1 / (1 + 2 - 1), class 2: 1 / (2 + 1 - 1)
    np.testing.assert_allclose(result["per_category_iou"], [1 / 3, 1 / 2, 1 / 2])
    assert result["mean_iou"] == pytest.approx(4 / 9)
    np.testing.assert_allclose(result["per_category_accuracy"], [1 / 2, 1, 1 / 2])
    assert result["mean_accuracy"] == pytest.approx(2 / 3)
    assert result["overall_accuracy"] == pytest.approx(3 / 5)


def test_absent_class_is_nan_and_excluded():
    result = StreamingConfusionMatrix(num_classes=4).update(PREDICTION, REFERENCE).compute()
    assert math.isnan(result["per_category_iou"][3]) and math.isnan(result["per_category_accuracy"][3])
    assert result["mean_iou"] == pytest.approx(4 / 9)
    # a class only predicted (never in the reference) has IoU 0, which does count
    only_predicted = StreamingConfusionMatrix(num_classes=2).update([1, 1], [0, 0]).compute()
    assert only_predicted["per_category_iou"] == [0.0, 0.0]
    assert math.isnan(only_predicted["per_category_accuracy"][1])
    empty = confusion_matrix_metrics(np.zeros((2, 2), dtype=int))
    assert math.isnan(empty["mean_iou"]) and math.isnan(empty["overall_accuracy"])


def test_ignored_pixels_do_not_matter():
    other_prediction = PREDICTION.copy()
    other_prediction[1, 2] = 0  # under the ignored reference pixel; any value is fine there, even out of range
    first = StreamingConfusionMatrix(3).update(PREDICTION, REFERENCE).compute()
    assert StreamingConfusionMatrix(3).update(other_prediction, REFERENCE).compute() == first
    other_prediction[1, 2] = 77
    assert StreamingConfusionMatrix(3).update(other_prediction, REFERENCE).compute() == first


def test_merge_equals_single_update_and_accepts_torch():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 5, (4, 8, 8))
    references[rng.random(references.shape) < 0.1] = 255
    predictions = rng.integers(0, 5, (4, 8, 8))
    whole = StreamingConfusionMatrix(5).update(predictions, references)
    first_half = StreamingConfusionMatrix(5).update(
        torch.from_numpy(predictions[:2]), torch.from_numpy(references[:2])
    )
    second_half = StreamingConfusionMatrix(5).update(predictions[2:], references[2:])
    np.testing.assert_array_equal(first_half.merge(second_half).confusion_matrix, whole.confusion_matrix)
    assert whole.confusion_matrix.sum() == np.sum(references != 255)


def test_segmentation_bad_input():
    metric = StreamingConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"`references` .*\[3, 7\]"):
        metric.update([0, 0, 0], [3, 7, 255])
    with pytest.raises(ValueError, match=r"`predictions` .*\[-1\]"):
        metric.update([-1, 0], [0, 0])
    with pytest.raises(ValueError, match="same shape"):
        metric.update([[0, 1]], [0, 1])
    with pytest.raises(ValueError, match="integer"):
        metric.update([0.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="ignore_index"):
        StreamingConfusionMatrix(3, ignore_index=0)
    with pytest.raises(ValueError, match="Cannot merge"):
        metric.merge(StreamingConfusionMatrix(4))
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_metrics(np.zeros((2, 3)))
    assert metric.confusion_matrix.sum() == 0  # failed updates leave no partial counts


# --- evaluate modules -----------------------------------------------------------------------------------------------


def test_metrics_import_does_not_import_evaluate():
    code = "import sys, hf_hem.metrics; print('evaluate' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "False"


def test_load_metric_unknown_name():
    assert available_metrics() == ["hem_accuracy", "hem_calibration", "hem_mean_iou", "hem_rejection"]
    with pytest.raises(ValueError, match="hem_accuracy"):
        load_metric("accuracy")


_EVALUATE_SCRIPT = r"""
import json
import numpy as np
from hf_hem.metrics import load_metric

rng = np.random.default_rng(0)
labels = rng.integers(0, 4, 60).tolist()
predictions = np.where(rng.random(60) < 0.5, labels, rng.integers(0, 4, 60)).tolist()
probabilities = rng.dirichlet(np.ones(4), 60).tolist()
scores = np.round(rng.normal(0, 1, 60), 1).tolist()
is_known = (rng.random(60) < 0.6).astype(int).tolist()
maps = [rng.integers(0, 3, 12).tolist() for _ in range(3)]
references = [np.where(rng.random(12) < 0.2, 255, rng.integers(0, 3, 12)).tolist() for _ in range(3)]

out = {}
out["hem_accuracy"] = load_metric("hem_accuracy").compute(predictions=predictions, references=labels, num_classes=4)
out["hem_calibration"] = load_metric("hem_calibration").compute(probabilities=probabilities, references=labels, n_bins=10)
out["hem_rejection"] = load_metric("hem_rejection").compute(scores=scores, is_known=is_known)
mean_iou = load_metric("hem_mean_iou")
mean_iou.add_batch(predictions=maps[:2], references=references[:2])
out["hem_mean_iou"] = mean_iou.compute(predictions=maps[2:], references=references[2:], num_labels=3)
inputs = dict(labels=labels, predictions=predictions, probabilities=probabilities, scores=scores, is_known=is_known,
              maps=maps, references=references)
print(json.dumps({"inputs": inputs, "outputs": out}))
"""


@pytest.mark.skipif(not HAS_EVALUATE, reason="evaluate is not installed")
def test_evaluate_modules_match_numpy_offline(tmp_path):
    # A fresh interpreter, so the offline variables and the empty caches are in place before evaluate is imported.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env = with_repo_on_pythonpath(env)
    completed = subprocess.run(
        [sys.executable, "-c", _EVALUATE_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    inputs, outputs = result["inputs"], result["outputs"]

    assert outputs["hem_accuracy"] == pytest.approx(
        {
            "accuracy": accuracy(inputs["predictions"], inputs["labels"]),
            "balanced_accuracy": balanced_accuracy(inputs["predictions"], inputs["labels"]),
        }
    )
    expected_ece = expected_calibration_error(inputs["probabilities"], inputs["labels"], n_bins=10)
    assert outputs["hem_calibration"] == pytest.approx({"expected_calibration_error": expected_ece})
    scores, is_known = np.array(inputs["scores"]), np.array(inputs["is_known"])
    known, unknown = scores[is_known == 1], scores[is_known == 0]
    assert outputs["hem_rejection"] == pytest.approx(
        {"auroc": auroc(known, unknown), "fpr95": fpr_at_tpr(known, unknown), "aupr": aupr(known, unknown)}
    )
    expected_iou = StreamingConfusionMatrix(3).update(
        np.concatenate(inputs["maps"]), np.concatenate(inputs["references"])
    )
    expected_iou = expected_iou.compute()
    assert outputs["hem_mean_iou"]["mean_iou"] == pytest.approx(expected_iou["mean_iou"])
    assert outputs["hem_mean_iou"]["overall_accuracy"] == pytest.approx(expected_iou["overall_accuracy"])
    np.testing.assert_allclose(outputs["hem_mean_iou"]["per_category_iou"], expected_iou["per_category_iou"])
