"""Screening metrics, and the decision threshold chosen on validation.

A screening tool must not miss the sick, so the threshold is the highest one whose expected
recall on *new* PNEUMONIA images still reaches ``target_recall`` (the best specificity at that
recall), chosen on validation, never on test, and reported on test as is.

How many validation PNEUMONIA images there are decides what can be said (:func:`choose_threshold`):

- ``order_statistic`` (enough positives: at least one expected miss, n (1 - target) >= 1): the
  strictest threshold keeping ceil(target n) of them, i.e. below the k-th lowest score with
  k = n - ceil(target n) + 1; a new positive image falls below it with probability k / (n + 1).
- ``fitted_tail`` (fewer: n < 100 for 0.99): keeping them all says only that the threshold is
  below the lowest one, and on a separable split the lowest one is just the edge of a gap that
  moves between near-identical models. A normal distribution is fitted to the lower half of the
  positives' logits (their median and the spread below it) and the threshold is its
  ``1 - target`` quantile, never above the lowest positive score: it depends on all the
  positives, not on the two extreme scores, and it says that the recall is extrapolated.

Either way the threshold sits in the middle of the gap below the lowest kept score, not on
it: the same validation decisions, with a margin for the exported file's float differences.
What the validation split can *vouch* for is reported beside it: the Clopper-Pearson lower
bound on the recall at the threshold, at ``confidence``, and how many validation positives
(none missed) it would take to vouch for the target itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from cxr import UserError


THRESHOLD_RULES = ("tail", "empirical")


@dataclass(frozen=True)
class ThresholdChoice:
    """The decision threshold and what the validation split says about it (metrics.json
    ``threshold_rule``, the model card's decision threshold section)."""

    value: float
    rule: str  # the rule asked for: tail | empirical
    method: str  # how it was placed: order_statistic | fitted_tail | empirical
    target_recall: float
    positives: int  # validation PNEUMONIA images
    kept: int  # of them at or above the threshold
    confidence: float
    certified_recall: float  # Clopper-Pearson lower bound at `confidence`, from `kept` of `positives`
    positives_to_certify: int  # positives needed (none missed) to vouch for target_recall at `confidence`
    order_statistic: int | None = None  # k: below the k-th lowest positive score (1: the lowest)
    tail: dict | None = None  # the fitted normal on logits: median, spread, quantile

    def to_dict(self) -> dict:
        out = {"value": round(self.value, 6), "rule": self.rule, "method": self.method,
               "target_recall": self.target_recall, "validation_positives": self.positives,
               "validation_positives_kept": self.kept, "confidence": self.confidence,
               "certified_recall": round(self.certified_recall, 4), "positives_to_certify": self.positives_to_certify}
        if self.order_statistic is not None:
            out["order_statistic"] = self.order_statistic
        if self.tail is not None:
            out["tail"] = self.tail
        out["statement"] = self.describe()
        return out

    def describe(self) -> str:
        """One sentence for people: how it was placed and what validation vouches for."""
        k, n = self.order_statistic, self.positives
        if self.method == "fitted_tail":
            how = (f"at the {1 - self.target_recall:.2%} quantile of a normal tail fitted to the logits of {n} "
                   "validation PNEUMONIA images (too few for any of their scores to stand for that quantile: the "
                   "recall is extrapolated)")
        else:
            how = (f"below the {_ordinal(k)} lowest of {n} validation PNEUMONIA scores (a new PNEUMONIA image falls below "
                   f"it with probability {k}/{n + 1} = {k / (n + 1):.2%})")
        return (f"{self.value:.6g}, {how}. Validation vouches for recall >= {self.certified_recall:.3f} at "
                f"{self.confidence:.0%} confidence ({self.kept} of {self.positives} above it); vouching for "
                f"{self.target_recall} would take {self.positives_to_certify} validation PNEUMONIA images, none missed.")


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _check_target(target_recall: float, confidence: float) -> None:
    if not 0.0 < target_recall <= 1.0:
        raise UserError(f"params.yaml: 'evaluate.target_recall' must be in (0, 1], got {target_recall}")
    if not 0.0 < confidence < 1.0:
        raise UserError(f"params.yaml: 'evaluate.threshold_confidence' must be in (0, 1), got {confidence}")


def _mid_gap_below(cut: float, scores: np.ndarray) -> float:
    """The middle of the gap between ``cut`` and the next lower score (scores are
    probabilities: with nothing below, the gap reaches down to 0)."""
    below = scores[scores < cut]
    return (cut + (float(below.max()) if below.size else 0.0)) / 2


def certified_recall(kept: int, positives: int, confidence: float) -> float:
    """Clopper-Pearson lower confidence bound on a recall of ``kept`` of ``positives``."""
    from scipy.stats import beta

    return 0.0 if kept == 0 else float(beta.ppf(1.0 - confidence, kept, positives - kept + 1))


def positives_to_certify(target_recall: float, confidence: float) -> int:
    """Positives, none missed, whose Clopper-Pearson bound reaches ``target_recall``."""
    if target_recall >= 1.0:
        return 0  # never: reported as 0 (no finite number)
    return int(np.ceil(np.log(1.0 - confidence) / np.log(target_recall)))


def fitted_tail(positive_scores: np.ndarray, target_recall: float) -> dict:
    """The ``1 - target`` quantile of a normal fitted to the lower half of the positives' logits:
    centre = median, spread = median - 15.87th percentile (one standard deviation below the
    median of a normal; the saturated upper half, near probability 1, says nothing about misses)."""
    from scipy.stats import norm

    p = np.clip(positive_scores.astype(np.float64), 1e-6, 1 - 1e-6)
    logits = np.log(p / (1 - p))
    centre = float(np.median(logits))
    spread = centre - float(np.quantile(logits, norm.cdf(-1.0)))
    if spread <= 0:  # all alike: nothing to extrapolate with but their own spread
        spread = float(np.std(logits))
    q = centre + spread * float(norm.ppf(1.0 - target_recall)) if spread > 0 else centre
    return {"logit_median": round(centre, 4), "logit_spread": round(spread, 4), "quantile_logit": round(q, 4),
            "quantile": round(float(1 / (1 + np.exp(-q))), 6)}


def choose_threshold(labels: np.ndarray, scores: np.ndarray, target_recall: float, rule: str = "tail",
                     confidence: float = 0.95) -> ThresholdChoice:
    _check_target(target_recall, confidence)
    if rule not in THRESHOLD_RULES:
        raise UserError(f"params.yaml: 'evaluate.threshold_rule' must be one of {THRESHOLD_RULES}, got {rule!r}")
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.sort(scores[np.asarray(labels) == 1])
    n = len(positives)
    if n == 0:
        raise UserError("the validation split has no PNEUMONIA image: cannot choose a threshold")
    keep = int(np.ceil(target_recall * n - 1e-9))  # the strictest threshold keeps ceil(target n) positives
    k, tail = (n - keep + 1 if keep else None), None
    if keep == 0:
        value, method = float(positives[-1]) + 1e-6, "empirical"
    elif rule == "empirical" or n * (1.0 - target_recall) >= 1.0 - 1e-9:
        value = _mid_gap_below(float(positives[k - 1]), scores)
        method = "empirical" if rule == "empirical" else "order_statistic"
    else:
        tail = fitted_tail(positives, target_recall)
        value = min(tail["quantile"], _mid_gap_below(float(positives[0]), scores))
        method, k = "fitted_tail", None
    kept = int(np.sum(positives >= value))
    return ThresholdChoice(value=float(value), rule=rule, method=method, target_recall=target_recall, positives=n,
                           kept=kept, confidence=confidence, certified_recall=certified_recall(kept, n, confidence),
                           positives_to_certify=positives_to_certify(target_recall, confidence),
                           order_statistic=k, tail=tail)


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    pred = scores >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    tn = int(np.sum(~pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))

    def ratio(a: int, b: int) -> float:
        return round(a / b, 4) if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "threshold": round(float(threshold), 6),
        "accuracy": ratio(tp + tn, len(labels)),
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def ranking(labels: np.ndarray, scores: np.ndarray) -> dict:
    if len(set(labels.tolist())) < 2:
        return {"roc_auc": None, "pr_auc": None}
    return {
        "roc_auc": round(float(roc_auc_score(labels, scores)), 4),
        "pr_auc": round(float(average_precision_score(labels, scores)), 4),
    }


def curves(labels: np.ndarray, scores: np.ndarray, points: int = 200) -> dict[str, list[dict]]:
    """ROC and PR curves thinned to about ``points`` rows each, for DVC plots."""
    fpr, tpr, roc_t = roc_curve(labels, scores)
    precision, recall, pr_t = precision_recall_curve(labels, scores)

    def thin(n: int) -> np.ndarray:
        return np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))

    roc_rows = [
        {"fpr": round(float(fpr[i]), 5), "tpr": round(float(tpr[i]), 5), "threshold": round(float(min(roc_t[i], 1.0)), 5)}
        for i in thin(len(fpr))
    ]
    pr_rows = [
        {"recall": round(float(recall[i]), 5), "precision": round(float(precision[i]), 5)}
        for i in thin(len(recall))
    ]
    return {"roc": roc_rows, "pr": pr_rows, "roc_auc_trapezoid": float(auc(fpr, tpr))}


def test_split_hash(dataset_hash: str | None, paths) -> str:
    """Identity of a test split: the data set and exactly which of its images. Two models'
    test figures are comparable only when this matches (the gate's no-regression rule)."""
    import hashlib

    digest = hashlib.sha256(f"{dataset_hash}\n".encode())
    for path in sorted(str(p) for p in paths):
        digest.update(f"{path}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- the subtype: bacterial or viral

SUBTYPE_THRESHOLD_RULES = ("youden", "half")


def subtype_threshold(labels: np.ndarray, scores: np.ndarray, rule: str = "youden") -> dict:
    """The subtype head's threshold on P(bacterial), from validation PNEUMONIA films with a known
    subtype (``labels`` 1 bacterial, 0 viral). Neither kind is the one a screen must not miss, so
    the rule weighs them alike:

    - ``youden``: the threshold maximising Youden's J = sensitivity + specificity - 1 (the
      balanced accuracy) on validation, in the middle of the gap between the two validation
      scores it separates (ties: the one nearest 0.5);
    - ``half``: 0.5 on the calibrated probability (right for the validation mix of subtypes,
      which favours the commoner one)."""
    if rule not in SUBTYPE_THRESHOLD_RULES:
        raise UserError(f"params.yaml: 'subtype.threshold_rule' must be one of {SUBTYPE_THRESHOLD_RULES}, "
                        f"got {rule!r}")
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, np.float64)
    n1, n0 = int(labels.sum()), int(len(labels) - labels.sum())
    if rule == "half" or not n1 or not n0:
        value, j = 0.5, None
        how = "0.5 on the calibrated P(bacterial)" + ("" if rule == "half" else
                                                      " (validation lacks one subtype: no Youden threshold)")
    else:
        levels = np.unique(scores)
        cuts = np.concatenate([[levels[0] / 2], (levels[:-1] + levels[1:]) / 2, [(levels[-1] + 1) / 2]])
        pred = scores[None, :] >= cuts[:, None]
        youden = (pred[:, labels == 1].mean(axis=1) - pred[:, labels == 0].mean(axis=1)).round(12)
        best = np.flatnonzero(youden == youden.max())
        pick = best[np.argmin(np.abs(cuts[best] - 0.5))]
        value, j = float(cuts[pick]), float(youden[pick])
        how = (f"maximising Youden's J (sensitivity + specificity - 1 = {j:.3f}) on {n1} bacterial and {n0} viral "
               "validation films, mid-gap between the validation scores it separates")
    return {"value": round(value, 6), "rule": rule, "validation_bacterial": n1, "validation_viral": n0,
            "youden_j": None if j is None else round(j, 4), "statement": f"{value:.6g}, {how}."}


def subtype_figures(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """ROC AUC, accuracy, sensitivity (bacterial called bacterial) and specificity (viral called
    viral) of P(bacterial) at ``threshold``, over films with a known subtype (1 bacterial, 0 viral)."""
    labels = np.asarray(labels).astype(int)
    n1, n0 = int(labels.sum()), int(len(labels) - labels.sum())
    m = at_threshold(labels, np.asarray(scores, np.float64), threshold)
    return {"films": int(len(labels)), "bacterial": n1, "viral": n0,
            "roc_auc": ranking(labels, np.asarray(scores))["roc_auc"] if len(labels) else None,
            "accuracy": m["accuracy"] if len(labels) else None, "sensitivity": m["recall"] if n1 else None,
            "specificity": m["specificity"] if n0 else None, "confusion": m["confusion"]}
