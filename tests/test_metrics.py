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
    evaluate_module_path,
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
    assert available_metrics() == [
        "accuracy",
        "hem_accuracy",
        "hem_calibration",
        "hem_mean_iou",
        "hem_rejection",
        "mean_iou",
        "seqeval",
    ]
    with pytest.raises(ValueError, match="hem_accuracy"):
        load_metric("f1")
    with pytest.raises(ValueError, match="seqeval"):
        evaluate_module_path("squad")
    assert evaluate_module_path("seqeval") == str(REPO_ROOT / "hf_hem" / "metrics" / "evaluate_modules" / "seqeval")


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


@pytest.mark.slow
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


# --- drop-ins for the Hub's mean_iou, seqeval and accuracy --------------------------------------------------------
# Hand-computed cases, shared by the plain functions and the `evaluate` modules loaded by path.

# Two maps of different sizes, 255 ignored. Kept pixels (prediction, reference): (0,0) (1,1) (2,1) | (1,1) (1,0) (0,0).
# Class 0: intersection 2, predicted 2, reference 3 -> IoU 2/3, accuracy 2/3. Class 1: intersection 2, predicted 3,
# reference 3 -> IoU 2/4, accuracy 2/3. Class 2: predicted once, never right, no reference -> IoU 0, accuracy NaN.
IOU_PREDICTIONS = [[[0, 1], [2, 2]], [[1, 1, 0]]]
IOU_REFERENCES = [[[0, 1], [1, 255]], [[1, 0, 0]]]
IOU_EXPECTED = {
    "mean_iou": (2 / 3 + 1 / 2 + 0) / 3,
    "mean_accuracy": 2 / 3,
    "overall_accuracy": 4 / 6,
    "per_category_iou": [2 / 3, 1 / 2, 0.0],
    "per_category_accuracy": [2 / 3, 2 / 3, np.nan],
}
# As transformers' run_semantic_segmentation.py calls it: (batch, height, width) arrays, ignore_index=0 (background).
# Kept (label != 0), (prediction, reference): (1,1) (2,1) (2,2) | (1,1) (0,2). Class 0: predicted once, no reference
# -> IoU 0, accuracy NaN. Class 1: intersection 2, predicted 2, reference 3 -> IoU 2/3, accuracy 2/3. Class 2:
# intersection 1, predicted 2, reference 2 -> IoU 1/3, accuracy 1/2.
SCRIPT_PREDICTIONS = np.array([[[0, 1], [2, 2]], [[1, 1], [0, 0]]])
SCRIPT_LABELS = np.array([[[0, 1], [1, 2]], [[1, 0], [2, 0]]])
SCRIPT_EXPECTED = {
    "mean_iou": (0 + 2 / 3 + 1 / 3) / 3,
    "mean_accuracy": (2 / 3 + 1 / 2) / 2,
    "overall_accuracy": 3 / 5,
    "per_category_iou": [0.0, 2 / 3, 1 / 3],
    "per_category_accuracy": [np.nan, 2 / 3, 1 / 2],
}

# As run_ner.py passes them: lists of lists of tag strings. True entities PER(0-1), LOC(3), ORG(5); predicted PER(0-1),
# ORG(5), MISC(6): 2 right of 3 predicted and 3 true; 4 of 6 tokens right.
NER_REFERENCES = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
NER_PREDICTIONS = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
NER_EXPECTED = {
    "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1},
    "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 0},
    "ORG": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1},
    "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1},
    "overall_precision": 2 / 3,
    "overall_recall": 2 / 3,
    "overall_f1": 2 / 3,
    "overall_accuracy": 4 / 6,
}


def _assert_seqeval(result: dict, expected: dict) -> None:
    assert list(result) == list(expected)  # entity types sorted, then the overall scores
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key


def _assert_mean_iou(result: dict, expected: dict) -> None:
    assert set(result) == set(expected)
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert isinstance(result[key], np.floating) and result[key] == pytest.approx(expected[key]), key
    for key in ("per_category_iou", "per_category_accuracy"):
        assert isinstance(result[key], np.ndarray), key  # the segmentation script calls .tolist() on them
        np.testing.assert_allclose(result[key], expected[key], err_msg=key)


def test_mean_iou_matches_hand_computed_values_for_every_input_shape():
    from hf_hem.metrics import mean_iou

    _assert_mean_iou(mean_iou(IOU_PREDICTIONS, IOU_REFERENCES, num_labels=3, ignore_index=255), IOU_EXPECTED)
    as_arrays = [np.array(values) for values in IOU_PREDICTIONS], [np.array(values) for values in IOU_REFERENCES]
    _assert_mean_iou(mean_iou(*as_arrays, num_labels=3, ignore_index=255), IOU_EXPECTED)
    for predictions, labels in [
        (SCRIPT_PREDICTIONS, SCRIPT_LABELS),
        (torch.tensor(SCRIPT_PREDICTIONS), SCRIPT_LABELS),
    ]:
        _assert_mean_iou(mean_iou(predictions, labels, num_labels=3, ignore_index=0), SCRIPT_EXPECTED)


def test_mean_iou_reduce_labels_label_map_nan_to_num_and_out_of_range_values():
    from hf_hem.metrics import mean_iou

    # reduce_labels: reference 0 -> 255 (ignored here), every other label one lower: the same pixels as IOU_REFERENCES.
    reduced = [[[1, 2], [2, 0]], [[2, 1, 1]]]
    _assert_mean_iou(
        mean_iou(IOU_PREDICTIONS, reduced, num_labels=3, ignore_index=255, reduce_labels=True), IOU_EXPECTED
    )
    # label_map renames all at once (a swap stays a swap), before reduce_labels.
    swapped = [[[0, 2], [2, 255]], [[2, 0, 0]]]
    result = mean_iou(IOU_PREDICTIONS, swapped, num_labels=3, ignore_index=255, label_map={1: 2, 2: 1})
    _assert_mean_iou(result, IOU_EXPECTED)
    result = mean_iou(IOU_PREDICTIONS, IOU_REFERENCES, num_labels=3, ignore_index=255, nan_to_num=-1.0)
    assert result["per_category_accuracy"].tolist() == pytest.approx([2 / 3, 2 / 3, -1.0])
    # A prediction outside [0, num_labels) counts for no class, as the Hub module's histogram drops it.
    result = mean_iou([[[7, 1]]], [[[1, 1]]], num_labels=3, ignore_index=255)
    np.testing.assert_allclose(result["per_category_iou"], [np.nan, 0.5, np.nan])
    assert result["overall_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"predictions\[1\] has shape \(1, 3\) but references\[1\] has shape"):
        mean_iou(IOU_PREDICTIONS, [IOU_REFERENCES[0], [[1, 0]]], num_labels=3, ignore_index=255)
    with pytest.raises(ValueError, match="num_classes"):
        mean_iou(IOU_PREDICTIONS, IOU_REFERENCES, num_labels=0, ignore_index=255)
    with pytest.raises(ValueError, match="one reference map per prediction"):
        mean_iou(IOU_PREDICTIONS, IOU_REFERENCES[:1], num_labels=3, ignore_index=255)


# (tags, entities as (type, first, last)) under seqeval's default rules, which read IOB1, IOB2, IOE and IOBES alike.
DEFAULT_MODE_TABLE = [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),  # IOB1: I after O starts an entity
    (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),  # a type change splits
    (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    (["I-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    (["B-PER", "I-PER", "E-PER", "S-LOC"], [("PER", 0, 2), ("LOC", 3, 3)]),  # IOBES
    (["E-PER", "E-PER"], [("PER", 0, 0), ("PER", 1, 1)]),  # an entity ends after E
    (["S-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    (["B-PER", "E-PER", "I-PER"], [("PER", 0, 1), ("PER", 2, 2)]),
    (["B", "I", "O"], [("_", 0, 1)]),  # tags without a type
    (["U-PER", "U-PER", "O"], [("PER", 0, 1)]),  # BILOU's U is no prefix of the default rules: one entity
    (["B-PER-X", "I-PER-X"], [("PER-X", 0, 1)]),  # the type is everything after the first "-"
]


@pytest.mark.parametrize(("tags", "entities"), DEFAULT_MODE_TABLE)
def test_seqeval_default_mode_chunking_table(tags, entities):
    from hf_hem.metrics.sequence_labeling import default_mode_entities

    assert default_mode_entities([tags]) == entities


def test_seqeval_default_mode_joins_sequences_with_an_outside_tag():
    from hf_hem.metrics.sequence_labeling import default_mode_entities

    assert default_mode_entities([["B-PER", "I-PER"], ["I-PER"]]) == [("PER", 0, 1), ("PER", 3, 3)]
    assert default_mode_entities([["PER-B", "PER-I", "O"]], suffix=True) == [("PER", 0, 1)]


STRICT_MODE_TABLE = [
    ("IOB2", ["I-PER", "I-PER", "O", "B-LOC", "I-LOC"], [("LOC", 3, 4)]),  # no B: no entity
    ("IOB2", ["B-PER", "I-LOC"], [("PER", 0, 0)]),
    ("IOBES", ["B-PER", "I-PER", "O"], []),  # never closed
    ("IOBES", ["S-PER", "B-LOC", "E-LOC", "E-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),
    ("BILOU", ["U-PER", "B-LOC", "I-LOC", "L-LOC", "B-ORG"], [("PER", 0, 0), ("LOC", 1, 3)]),
    ("IOE2", ["I-PER", "E-PER", "E-LOC", "I-ORG", "O"], [("PER", 0, 1), ("LOC", 2, 2)]),
    ("IOE2", ["I-PER", "I-LOC", "E-LOC"], [("LOC", 1, 2)]),
]


@pytest.mark.parametrize(("scheme", "tags", "entities"), STRICT_MODE_TABLE)
def test_seqeval_strict_mode_table(scheme, tags, entities):
    from hf_hem.metrics.sequence_labeling import seqeval_scores, strict_mode_entities

    assert strict_mode_entities([tags], scheme) == [(0, kind, first, last) for kind, first, last in entities]
    # Predicting exactly the well-formed entities scores 1 in strict mode.
    scores = seqeval_scores([tags], [tags], mode="strict", scheme=scheme, zero_division=1)
    assert {kind: scores[kind]["number"] for kind, _, _ in entities} == {
        kind: sum(entity[0] == kind for entity in entities) for kind, _, _ in entities
    }


def test_seqeval_scores_as_the_hub_module_returns_them():
    from hf_hem.metrics import seqeval_scores

    with pytest.warns(UserWarning, match="zero_division"):
        scores = seqeval_scores(NER_PREDICTIONS, NER_REFERENCES)
    _assert_seqeval(scores, NER_EXPECTED)
    ones = seqeval_scores(NER_PREDICTIONS, NER_REFERENCES, zero_division=1, sample_weight=[1.0, 2.0])
    assert ones["LOC"] == pytest.approx({"precision": 1.0, "recall": 0.0, "f1": 0.0, "number": 1})
    assert ones["MISC"] == pytest.approx({"precision": 0.0, "recall": 1.0, "f1": 0.0, "number": 0})
    nothing = seqeval_scores([["O", "O"]], [["O", "O"]], zero_division=1)
    assert nothing == {"overall_precision": 1.0, "overall_recall": 1.0, "overall_f1": 1.0, "overall_accuracy": 1.0}
    assert seqeval_scores([["O", "O"]], [["O", "O"]], zero_division=0)["overall_f1"] == 0.0
    # Strict IOB2 drops the predicted I-PER without B: default mode counts it as right.
    stray = [["I-PER", "O"]]
    assert seqeval_scores(stray, [["B-PER", "O"]], zero_division=0)["overall_f1"] == 1.0
    assert seqeval_scores(stray, [["B-PER", "O"]], mode="strict", zero_division=0)["overall_f1"] == 0.0  # detected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zero_division": 2}, "zero_division"),
        ({"scheme": "IOB3"}, "Scheme should be one of"),
        ({"mode": "lenient"}, "mode"),
        ({"mode": "strict", "scheme": "IOB1"}, "strict mode of the IOB1 scheme is not supported"),
        ({"mode": "strict", "scheme": "IOE2"}, "tag 'B-PER' .* the IOE2 scheme allows I, O, E"),
    ],
)
def test_seqeval_scores_reject_bad_arguments(kwargs, message):
    from hf_hem.metrics import seqeval_scores

    with pytest.raises(ValueError, match=message):
        seqeval_scores(NER_PREDICTIONS, NER_REFERENCES, **kwargs)


def test_seqeval_strict_mode_needs_a_scheme_it_can_detect():
    from hf_hem.metrics import seqeval_scores

    with pytest.raises(
        ValueError, match=r"cannot detect the tagging scheme from the prefixes \['B', 'E', 'I', 'O', 'U'\]"
    ):
        seqeval_scores(
            [["B-PER", "E-PER", "U-LOC", "I-X", "O"]] * 2, [["B-PER", "E-PER", "U-LOC", "I-X", "O"]] * 2, mode="strict"
        )


def test_seqeval_scores_reject_mismatched_sequences():
    from hf_hem.metrics import seqeval_scores

    with pytest.raises(ValueError, match="sequence 1 has 1 predicted and 2 reference tags"):
        seqeval_scores([["O"], ["O"]], [["O"], ["O", "O"]])
    with pytest.raises(ValueError, match="1 predicted and 2 reference sequences"):
        seqeval_scores([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="list of tag sequences"):
        seqeval_scores(["B-PER", "O"], ["B-PER", "O"])


def test_accuracy_score_has_the_hub_arguments():
    from hf_hem.metrics import accuracy_score

    assert accuracy_score([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    assert accuracy_score([0, 1, 1, 2], [0, 1, 2, 2], normalize=False) == 3.0
    assert accuracy_score([0, 1, 1, 2], [0, 1, 2, 2], sample_weight=[1, 1, 2, 0]) == 0.5  # right: 1 + 1 of 4
    assert accuracy_score([0, 1, 1, 2], [0, 1, 2, 2], normalize=False, sample_weight=[1, 1, 2, 0.5]) == 2.5
    assert accuracy_score([[0, 1], [1, 1]], [[0, 1], [1, 0]]) == 0.5  # label sets: all labels must match
    with pytest.raises(ValueError, match="same shape"):
        accuracy_score([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="one weight per sample"):
        accuracy_score([0, 1], [0, 1], sample_weight=[1.0])


@pytest.fixture(scope="module")
def offline_evaluate(tmp_path_factory):
    """`evaluate`, imported once for this module (it takes seconds) with the Hub switched off, and a fresh module
    cache; the loads below must not need it."""
    if not HAS_EVALUATE:
        pytest.skip("evaluate is not installed")
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE"):
            patch.setenv(variable, "1")
        import evaluate

        patch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.mktemp("modules"))
        yield evaluate


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the drop-ins load from their folders alone."""
    import socket

    def refuse(self, address):
        raise AssertionError(f"network access to {address} while loading an offline metric")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_mean_iou_module_is_a_drop_in_for_the_hub_module(offline_evaluate, no_network):
    metric = offline_evaluate.load(evaluate_module_path("mean_iou"))
    # Exactly as run_semantic_segmentation.py calls it (arrays from `.cpu().numpy()` and the Trainer's labels) ...
    result = metric.compute(
        predictions=SCRIPT_PREDICTIONS, references=SCRIPT_LABELS, num_labels=3, ignore_index=0, reduce_labels=False
    )
    _assert_mean_iou(result, SCRIPT_EXPECTED)
    # ... as nested lists (`.tolist()`), maps of different sizes, and in batches.
    lists = metric.compute(predictions=IOU_PREDICTIONS, references=IOU_REFERENCES, num_labels=3, ignore_index=255)
    _assert_mean_iou(lists, IOU_EXPECTED)
    metric.add_batch(predictions=[np.array(IOU_PREDICTIONS[0])], references=[np.array(IOU_REFERENCES[0])])
    metric.add_batch(predictions=IOU_PREDICTIONS[1:], references=IOU_REFERENCES[1:])
    _assert_mean_iou(metric.compute(num_labels=3, ignore_index=255), IOU_EXPECTED)
    reduced = [[[1, 2], [2, 0]], [[2, 1, 1]]]
    result = metric.compute(
        predictions=IOU_PREDICTIONS, references=reduced, num_labels=3, ignore_index=255, reduce_labels=True
    )
    _assert_mean_iou(result, IOU_EXPECTED)


def test_seqeval_module_is_a_drop_in_for_the_hub_module(offline_evaluate, no_network):
    metric = offline_evaluate.load(evaluate_module_path("seqeval"))
    # As run_ner.py calls it: lists of lists of tag strings.
    _assert_seqeval(
        metric.compute(predictions=NER_PREDICTIONS, references=NER_REFERENCES, zero_division=0), NER_EXPECTED
    )
    strict = metric.compute(
        predictions=[["I-PER", "O"]], references=[["B-PER", "O"]], mode="strict", scheme="IOB2", zero_division=0
    )
    assert strict["overall_f1"] == 0.0 and strict["PER"]["number"] == 1


def test_accuracy_module_is_a_drop_in_for_the_hub_module(offline_evaluate, no_network):
    metric = offline_evaluate.load(evaluate_module_path("accuracy"))
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2]) == {"accuracy": 0.75}
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], normalize=False) == {"accuracy": 3.0}
    weighted = metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], sample_weight=[1, 1, 2, 0])
    assert weighted == {"accuracy": 0.5}
    multilabel = offline_evaluate.load(evaluate_module_path("accuracy"), "multilabel")
    assert multilabel.compute(predictions=[[0, 1], [1, 1]], references=[[0, 1], [1, 0]]) == {"accuracy": 0.5}


def test_seqeval_drop_in_agrees_with_the_seqeval_package_on_random_tag_sequences():
    """Only where the `seqeval` package happens to be installed (it is no dependency): random, often ill-formed,
    sequences of every prefix, scored as the Hub module scores them (`classification_report(output_dict=True)`)."""
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    seqeval_scheme = pytest.importorskip("seqeval.scheme")
    import warnings

    from hf_hem.metrics import seqeval_scores

    def hub_module(predictions, references, **kwargs):  # what the Hub's seqeval module computes
        scheme = kwargs.pop("scheme", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = seqeval_metrics.classification_report(
                references, predictions, output_dict=True, scheme=scheme and getattr(seqeval_scheme, scheme), **kwargs
            )
        report.pop("macro avg"), report.pop("weighted avg")
        overall = report.pop("micro avg")
        scores = {
            kind: {"precision": s["precision"], "recall": s["recall"], "f1": s["f1-score"], "number": s["support"]}
            for kind, s in report.items()
        }
        scores.update(
            {f"overall_{key}": overall[f"{key}{'-score' * (key == 'f1')}"] for key in ("precision", "recall", "f1")}
        )
        scores["overall_accuracy"] = seqeval_metrics.accuracy_score(references, predictions)
        return scores

    rng = np.random.default_rng(0)

    def sequence(prefixes: str, length: int) -> list[str]:
        return [p if p == "O" else f"{p}-{rng.choice(['PER', 'LOC'])}" for p in rng.choice(list(prefixes), length)]

    cases = [("default", None, "BIESOUL"), ("strict", "IOB2", "BIO"), ("strict", "IOBES", "BIESO")]
    cases += [("strict", "BILOU", "BILOU"), ("strict", "IOE2", "IEO")]
    for mode, scheme, prefixes in cases:
        for _ in range(40):
            lengths = rng.integers(1, 7, size=3)
            references = [sequence(prefixes, n) for n in lengths]
            predictions = [sequence(prefixes, n) for n in lengths]
            for zero_division in (0, 1):
                kwargs = {"zero_division": zero_division}
                if mode == "strict":
                    kwargs.update(mode="strict", scheme=scheme)
                expected = hub_module(predictions, references, **dict(kwargs))
                _assert_seqeval(seqeval_scores(predictions, references, **kwargs), expected)
