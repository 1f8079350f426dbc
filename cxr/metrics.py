"""Screening metrics, and the decision threshold chosen on validation.

A screening tool must not miss the sick, so the threshold keeps the *fewest* validation
images positive that still reach ``target_recall`` (the best specificity at that recall).
It sits in the middle of the gap below the lowest kept score, not on that score: the same
validation decisions, but a margin for the exported file's float differences (a model that
scores many images alike would otherwise flip them all). Chosen on validation, never on
test, and then reported on test as is.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from cxr import UserError


def choose_threshold(labels: np.ndarray, scores: np.ndarray, target_recall: float) -> float:
    if not 0.0 < target_recall <= 1.0:
        raise UserError(f"params.yaml: 'evaluate.target_recall' must be in (0, 1], got {target_recall}")
    positives = np.sort(scores[labels == 1])
    if len(positives) == 0:
        raise UserError("the validation split has no PNEUMONIA image: cannot choose a threshold")
    # Keep at least ceil(target * P) positives at or above the threshold.
    keep = int(np.ceil(target_recall * len(positives) - 1e-9))
    if keep == 0:
        return float(positives[-1]) + 1e-6
    cut = float(positives[len(positives) - keep])
    below = scores[scores < cut]
    # Scores are probabilities: with nothing below the cut, the gap reaches down to 0.
    return (cut + (float(below.max()) if below.size else 0.0)) / 2


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
