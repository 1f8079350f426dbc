import numpy as np
import pytest

from cxr import UserError
from cxr.metrics import at_threshold, choose_threshold, curves, ranking


def test_threshold_reaches_target_recall_with_best_specificity():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300), np.ones(700)].astype(int)
    scores = np.r_[rng.beta(2, 5, 300), rng.beta(5, 2, 700)]
    for target in (0.9, 0.95, 0.99, 1.0):
        t = choose_threshold(labels, scores, target)
        m = at_threshold(labels, scores, t)
        assert m["recall"] >= target - 1e-9
        # The lowest kept score makes the same decisions; the next higher score loses the target.
        cut = np.min(scores[scores >= t])
        assert at_threshold(labels, scores, cut)["confusion"] == m["confusion"]
        higher = np.min(scores[scores > cut]) if np.any(scores > cut) else None
        if higher is not None:
            assert at_threshold(labels, scores, higher)["recall"] < target
        # ... and the threshold sits mid-gap, away from both neighbours.
        lower = np.max(scores[scores < t]) if np.any(scores < t) else 0.0
        assert t == pytest.approx((cut + lower) / 2)


def test_threshold_of_a_model_that_scores_everything_alike_survives_float_noise():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.full(5, 0.507152, np.float32)
    t = choose_threshold(labels, scores, 0.95)
    assert 0 < t < 0.507
    wobble = scores - np.float32(1e-5)
    assert at_threshold(labels, wobble, t)["confusion"] == at_threshold(labels, scores, t)["confusion"]


def test_confusion_and_rates():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.2, 0.7, 0.8, 0.4, 0.9])
    m = at_threshold(labels, scores, 0.5)
    assert m["confusion"] == {"tp": 3, "fp": 1, "tn": 2, "fn": 1}
    assert m["recall"] == 0.75 and m["specificity"] == round(2 / 3, 4) and m["precision"] == 0.75
    assert ranking(labels, scores)["roc_auc"] == round(11 / 12, 4)


def test_curves_are_thinned_and_monotone():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 5000)
    scores = rng.random(5000) + labels * 0.3
    c = curves(labels, scores, points=50)
    assert len(c["roc"]) <= 50 and len(c["pr"]) <= 50
    fpr = [r["fpr"] for r in c["roc"]]
    assert fpr == sorted(fpr) and fpr[0] == 0.0 and fpr[-1] == 1.0


def test_bad_target_recall():
    with pytest.raises(UserError, match="target_recall"):
        choose_threshold(np.array([0, 1]), np.array([0.1, 0.9]), 1.5)
