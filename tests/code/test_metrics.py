import numpy as np
import pytest

from cxr import UserError
from cxr.metrics import at_threshold, choose_threshold, curves, ranking


def test_empirical_rule_reaches_target_recall_with_best_specificity():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300), np.ones(700)].astype(int)
    scores = np.r_[rng.beta(2, 5, 300), rng.beta(5, 2, 700)]
    for target in (0.9, 0.95, 0.99, 1.0):
        t = choose_threshold(labels, scores, target, "empirical").value
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
    t = choose_threshold(labels, scores, 0.95).value
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


def test_with_enough_positives_the_tail_rule_is_the_order_statistic_of_the_empirical_rule():
    """n (1 - target) >= 1: the same threshold as keeping ceil(target n) positives, below the
    k-th lowest, k = n - ceil(target n) + 1; new positives fall below it at about k / (n + 1)."""
    rng = np.random.default_rng(3)
    misses = []
    for _ in range(300):
        labels = np.r_[np.zeros(200), np.ones(400)].astype(int)
        scores = np.r_[rng.beta(2, 5, 200), rng.beta(5, 2, 400)]
        c = choose_threshold(labels, scores, 0.99)
        assert c.method == "order_statistic" and c.order_statistic == 5
        assert c.value == choose_threshold(labels, scores, 0.99, "empirical").value
        misses.append(np.mean(rng.beta(5, 2, 2000) < c.value))
    assert abs(np.mean(misses) - 5 / 401) < 0.002
    assert choose_threshold(np.r_[0, np.ones(100)].astype(int), np.r_[0.0, np.linspace(0.5, 1, 100)], 0.99).method \
        == "order_statistic"  # n = 100: one expected miss
    assert choose_threshold(np.r_[0, np.ones(99)].astype(int), np.r_[0.0, np.linspace(0.5, 1, 99)], 0.99).method \
        == "fitted_tail"


def test_a_separable_small_validation_split_gets_a_tail_threshold_below_its_lowest_positive():
    """The front door's failure: 29 validation positives all above every negative. The empirical rule
    puts the threshold mid-gap between two extreme scores; the fitted tail goes below the lowest
    positive by what the positives' own spread says, and does not hinge on the negatives."""
    rng = np.random.default_rng(4)
    pos_logits = rng.normal(3.5, 1.8, 29).clip(0.8, None)
    neg_logits = rng.normal(-3.0, 1.0, 20).clip(None, -0.2)
    scores = 1 / (1 + np.exp(-np.r_[neg_logits, pos_logits]))
    labels = np.r_[np.zeros(20), np.ones(29)].astype(int)
    c = choose_threshold(labels, scores, 0.99)
    e = choose_threshold(labels, scores, 0.99, "empirical")
    assert c.method == "fitted_tail" and c.tail is not None and c.order_statistic is None
    assert c.value < e.value and c.value < scores[labels == 1].min()
    assert c.kept == 29 and 0.89 < c.certified_recall < 0.91   # 29 of 29 vouch for ~0.90 at 95 %
    assert c.positives_to_certify == 299
    # Moving the largest negative (which sets the empirical gap) does not move the tail threshold.
    moved = scores.copy()
    moved[np.argmax(np.where(labels == 0, scores, -1))] = 0.01
    assert choose_threshold(labels, moved, 0.99).value == c.value
    assert choose_threshold(labels, moved, 0.99, "empirical").value != e.value
    assert "extrapolated" in c.describe() and "29" in c.describe()


def test_threshold_record_round_trips_the_facts():
    labels = np.r_[np.zeros(50), np.ones(150)].astype(int)
    scores = np.r_[np.linspace(0.0, 0.4, 50), np.linspace(0.3, 1.0, 150)]
    d = choose_threshold(labels, scores, 0.99).to_dict()
    assert d["method"] == "order_statistic" and d["order_statistic"] == 2
    assert d["validation_positives"] == 150 and d["validation_positives_kept"] == 149
    assert d["statement"].startswith(f"{d['value']:.6g}")


def test_bad_rule_and_confidence():
    with pytest.raises(UserError, match="threshold_rule"):
        choose_threshold(np.array([0, 1]), np.array([0.1, 0.9]), 0.99, "median")
    with pytest.raises(UserError, match="threshold_confidence"):
        choose_threshold(np.array([0, 1]), np.array([0.1, 0.9]), 0.99, "tail", 1.0)
