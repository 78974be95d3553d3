"""Screening metrics agree with scikit-learn and produce strict JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from engine.metrics import (
    cohen_kappa,
    confusion_matrix,
    evaluate_predictions,
    expected_calibration_error,
    predicted_labels,
    reliability_bins,
    roc_auc_binary,
)

SEEDS = [0, 1, 2, 3]


def random_probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    z = rng.normal(size=(n, c)) * 2.0
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def noisy_labels(rng: np.random.Generator, probs: np.ndarray, flip: float = 0.4) -> np.ndarray:
    """Labels that agree with argmax most of the time, so metrics are informative."""
    y = probs.argmax(axis=1)
    mask = rng.random(y.size) < flip
    y[mask] = rng.integers(0, probs.shape[1], size=mask.sum())
    return y


def test_evaluation_modules_import_without_heavy_libraries():
    # The store-only CLI imports these; they must not drag in torch, Qt or matplotlib.
    code = (
        "import sys, engine.metrics, engine.calibration, engine.conformal, engine.referral, "
        "engine.uncertainty_stats, engine.plots; "
        "bad = [m for m in ('torch', 'sklearn', 'matplotlib', 'PySide6') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matrix_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    expected = skm.confusion_matrix(t, p, labels=range(5))
    np.testing.assert_array_equal(confusion_matrix(t, p, 5), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn_even_with_tied_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * y, 1)  # coarse rounding -> many ties
    assert roc_auc_binary(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


def test_auc_is_undefined_when_only_one_class_present():
    assert np.isnan(roc_auc_binary([1, 1, 1], [0.2, 0.5, 0.9]))


def test_auc_of_a_perfect_ranking_is_one_and_reversed_is_zero():
    y = np.array([0, 0, 1, 1])
    assert roc_auc_binary(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc_binary(y, [0.9, 0.8, 0.2, 0.1]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_sklearn(seed, weights):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, 150)
    b = np.clip(a + rng.integers(-1, 2, 150), 0, 4)
    ours = cohen_kappa(a, b, 5, weights=weights)
    ref = skm.cohen_kappa_score(a, b, labels=list(range(5)), weights=weights)
    assert ours == pytest.approx(ref, abs=1e-12)


def test_cohen_kappa_of_identical_gradings_is_one():
    a = [0, 1, 2, 3, 4, 2]
    assert cohen_kappa(a, a, weights="quadratic") == pytest.approx(1.0)


def test_ece_hand_computed_examples():
    # Stated 75% for four images, three right -> perfectly calibrated.
    assert expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)
    # Stated 90% and always wrong -> gap 0.9.
    assert expected_calibration_error([0.9] * 5, [0] * 5) == pytest.approx(0.9)
    # Two bins of equal weight: |0.95 - 0.5| and |0.55 - 0.5| -> mean 0.25.
    ece = expected_calibration_error([0.95, 0.95, 0.55, 0.55], [1, 0, 1, 0], n_bins=10)
    assert ece == pytest.approx(0.25)


def test_reliability_bins_account_for_every_image():
    rng = np.random.default_rng(0)
    conf = rng.random(500)
    correct = rng.random(500) < conf
    bins = reliability_bins(conf, correct, n_bins=10)
    assert len(bins) == 10
    assert sum(b["count"] for b in bins) == 500
    for b in bins:
        if b["count"]:
            assert b["lo"] <= b["confidence"] <= b["hi"]
            assert 0.0 <= b["accuracy"] <= 1.0
    # ECE equals the count-weighted gap read off the bins.
    gap = sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"]) / 500
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(gap)


def _check_single_label_against_sklearn(report, y, probs, yp, present):
    c = probs.shape[1]
    assert report["n"] == y.size
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, yp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, yp))
        assert report["f1_macro"] == pytest.approx(skm.f1_score(y, yp, average="macro"))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, yp, labels=range(c)).tolist()
    aucs = [skm.roc_auc_score(y == k, probs[:, k]) for k in present]
    assert report["auc"] == pytest.approx(np.mean(aucs))
    recalls = skm.recall_score(y, yp, labels=range(c), average=None, zero_division=np.nan)
    precisions = skm.precision_score(y, yp, labels=range(c), average=None, zero_division=np.nan)
    for k, stats in enumerate(report["per_class"].values()):
        for ours, ref in ((stats["sensitivity"], recalls[k]), (stats["precision"], precisions[k])):
            assert (ours is None) == bool(np.isnan(ref))
            if ours is not None:
                assert ours == pytest.approx(ref)
        spec_ref = skm.recall_score(y != k, yp != k, zero_division=np.nan)
        assert stats["specificity"] == pytest.approx(spec_ref)
        assert stats["support"] == int(np.sum(y == k))


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs = random_probs(rng, 240, 4)
    y = noisy_labels(rng, probs)
    report = evaluate_predictions(y, probs, "multiclass", ["cataract", "dr", "glaucoma", "normal"])
    assert report["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    _check_single_label_against_sklearn(report, y, probs, probs.argmax(1), range(4))
    assert set(report["per_class"]) == {"cataract", "dr", "glaucoma", "normal"}


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_multiclass_report_with_a_class_absent_from_truth(seed):
    rng = np.random.default_rng(seed)
    probs = random_probs(rng, 200, 4)
    y = noisy_labels(rng, probs)
    y[y == 2] = 0  # nobody has class 2, but the model still predicts it
    report = evaluate_predictions(y, probs, "multiclass", list("abcd"))
    assert report["per_class"]["c"]["sensitivity"] is None
    assert report["per_class"]["c"]["auc"] is None
    _check_single_label_against_sklearn(report, y, probs, probs.argmax(1), [0, 1, 3])
    json.dumps(report, allow_nan=False)


def test_perfect_predictions_score_one_everywhere():
    y = np.repeat(np.arange(5), 8)
    probs = np.full((40, 5), 0.02)
    probs[np.arange(40), y] = 0.92
    report = evaluate_predictions(y, probs, "ordinal", ["0", "1", "2", "3", "4"])
    for key in ("accuracy", "balanced_accuracy", "auc", "f1_macro", "qwk"):
        assert report[key] == pytest.approx(1.0), key
    assert report["ece"] == pytest.approx(0.08)  # 92% stated, 100% right


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    p1 = rng.random(300)
    y = (rng.random(300) < p1).astype(int)
    probs = np.c_[1 - p1, p1]
    report = evaluate_predictions(y, probs, "binary", ["no_dme", "dme"])
    yp = probs.argmax(1)
    assert report["auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert report["sensitivity"] == pytest.approx(skm.recall_score(y, yp))
    assert report["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - yp))
    _check_single_label_against_sklearn(report, y, probs, yp, [0, 1])


def test_binary_threshold_changes_the_operating_point():
    p1 = np.array([0.1, 0.3, 0.45, 0.6, 0.9])
    y = np.array([0, 1, 1, 1, 1])
    probs = np.c_[1 - p1, p1]
    default = evaluate_predictions(y, probs, "binary", ["no", "yes"])
    lenient = evaluate_predictions(y, probs, "binary", ["no", "yes"], thresholds=0.25)
    assert default["sensitivity"] == pytest.approx(0.5)
    assert lenient["sensitivity"] == pytest.approx(1.0)
    assert lenient["auc"] == default["auc"]


def test_ordinal_prediction_is_the_median_grade():
    probs = np.array([[0.40, 0.0, 0.0, 0.35, 0.25], [0.1, 0.6, 0.2, 0.05, 0.05]])
    np.testing.assert_array_equal(predicted_labels(probs, "ordinal"), [3, 1])
    np.testing.assert_array_equal(predicted_labels(probs, "multiclass"), [0, 1])


@pytest.mark.parametrize("seed", SEEDS)
def test_ordinal_report_qwk_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs = random_probs(rng, 250, 5)
    y = noisy_labels(rng, probs)
    report = evaluate_predictions(y, probs, "ordinal", ["none", "mild", "mod", "severe", "pdr"])
    yp = np.argmax(np.cumsum(probs, axis=1) >= 0.5, axis=1)
    ref = skm.cohen_kappa_score(y, yp, labels=list(range(5)), weights="quadratic")
    assert report["qwk"] == pytest.approx(ref)
    _check_single_label_against_sklearn(report, y, probs, yp, range(5))


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((200, 4))
    y = (rng.random((200, 4)) < probs).astype(int)
    thresholds = [0.5, 0.3, 0.6, 0.5]
    labels = ["dr", "glaucoma", "amd", "normal"]
    report = evaluate_predictions(y, probs, "multilabel", labels, thresholds=thresholds)
    yp = (probs >= np.array(thresholds)).astype(int)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, yp))
    assert report["f1_macro"] == pytest.approx(skm.f1_score(y, yp, average="macro"))
    assert report["f1_micro"] == pytest.approx(skm.f1_score(y, yp, average="micro"))
    assert report["auc"] == pytest.approx(skm.roc_auc_score(y, probs, average="macro"))
    bal = np.mean([skm.balanced_accuracy_score(y[:, j], yp[:, j]) for j in range(4)])
    assert report["balanced_accuracy"] == pytest.approx(bal)
    assert report["confusion_matrix"] == skm.multilabel_confusion_matrix(y, yp).tolist()
    for j, name in enumerate(labels):
        stats = report["per_label"][name]
        assert stats["f1"] == pytest.approx(skm.f1_score(y[:, j], yp[:, j]))
        assert stats["sensitivity"] == pytest.approx(skm.recall_score(y[:, j], yp[:, j]))
        assert stats["auc"] == pytest.approx(skm.roc_auc_score(y[:, j], probs[:, j]))
    json.dumps(report, allow_nan=False)


def test_multilabel_ece_is_small_for_honest_probabilities_and_large_for_overconfident():
    rng = np.random.default_rng(0)
    probs = rng.random((4000, 3))
    y = (rng.random((4000, 3)) < probs).astype(int)
    honest = evaluate_predictions(y, probs, "multilabel", ["a", "b", "c"])["ece"]
    extreme = np.where(probs >= 0.5, 0.99, 0.01)
    overconfident = evaluate_predictions(y, extreme, "multilabel", ["a", "b", "c"])["ece"]
    assert honest < 0.03
    assert overconfident > 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "regression"}, "unknown task"),
        ({"labels": ["a", "b"]}, "label names"),
        ({"y_true": [0, 1, 7]}, "class index 7"),
        ({"probs": [[0.9, 0.9, 0.1]] * 3}, "sum to 1"),
        ({"y_true": [0, 1]}, "entries"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, message):
    args = {
        "y_true": [0, 1, 2],
        "probs": [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],
        "task": "multiclass",
        "labels": ["a", "b", "c"],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(**args)


def test_binary_sensitivity_is_about_the_finding_class_whatever_its_position():
    """Folder-named classes sort alphabetically: ["glaucoma", "normal"] puts the finding
    first. Sensitivity must still be the share of glaucoma found."""
    from sklearn.metrics import recall_score

    from engine.findings import positive_label
    from engine.modelfile import ModelSpec

    spec = ModelSpec(arch="resnet10t", task="binary", labels=["glaucoma", "normal"])
    spec.negative_labels = ["normal"]
    assert positive_label(spec) == "glaucoma"
    y = np.array([0] * 10 + [1] * 30)  # 10 glaucoma, 30 normal
    pred = np.array([0] * 6 + [1] * 4 + [1] * 27 + [0] * 3)
    probs = np.where(pred[:, None] == np.arange(2)[None, :], 0.9, 0.1)
    m = evaluate_predictions(y, probs, "binary", spec.labels, positive=positive_label(spec))
    assert m["positive_label"] == "glaucoma"
    assert m["sensitivity"] == pytest.approx(recall_score(y == 0, pred == 0))  # 6 of 10
    assert m["sensitivity"] == pytest.approx(0.6)
    assert m["specificity"] == pytest.approx(0.9)  # 27 of 30 normal called normal
    # without the model's word, the second label is taken as the finding
    assert evaluate_predictions(y, probs, "binary", spec.labels)["sensitivity"] == pytest.approx(
        0.9
    )


def test_an_answer_names_the_same_grade_as_every_report():
    """The screen's answer and the evaluation reports use one median rule, rounding included."""
    from engine.modelfile import ModelSpec
    from engine.triage import median_grade_spread, read_answer

    spec = ModelSpec(arch="tiny", task="ordinal", labels=["0", "NPDR", "PDR"])
    for probs in ([0.15, 0.42, 0.43], [0.5 - 1e-13, 0.2, 0.3 + 1e-13], [0.1, 0.1, 0.8]):
        p = np.array(probs)
        assert (
            read_answer(spec, p, 0.85).label == spec.labels[predicted_labels(p[None], "ordinal")[0]]
        )
    # the middle grade wins with less probability than PDR: the spread says why
    assert read_answer(spec, np.array([0.15, 0.42, 0.43]), 0.85).label == "NPDR"
    milder, worse = median_grade_spread(spec.labels, {"0": 0.15, "NPDR": 0.42, "PDR": 0.43}, "NPDR")
    assert (milder, worse) == (pytest.approx(0.57), pytest.approx(0.85))
    assert median_grade_spread(spec.labels, {"0": 0.1, "NPDR": 0.1, "PDR": 0.8}, "PDR") is None
