"""Shortcut audit: how well the label can be told from the acquisition alone.

A handful of global, non-anatomical image features (how squashed the image looks, how much
fine detail and noise it carries, its exposure and its borders) go into a small classifier,
cross-validated by patient within a split, or fitted on train and scored on another split.
A high AUC is a shortcut a network can learn instead of the lungs; run on the training views
it shows whether augmentation took it away; correlated with a trained model's scores within
each class it shows whether the model took it. Figures land in ``metrics.json``
(``shortcut_audit``) and the train summary (``shortcut_audit_views``).
"""

from __future__ import annotations

import numpy as np

FEATURES = (
    "gradient_anisotropy",  # log(mean |d/dx| / mean |d/dy|): grows when the anatomy is squashed across
    "laplacian",            # mean |Laplacian|: fine detail and sharpening
    "fine_noise",           # median |image - 3x3 mean|: noise texture, compression
    "mean", "std", "p05", "p95",
    "edge_dark",            # share of the 4 % edge band below 20: background, collimation
    "edge_bright",          # share of the edge band above 235: burnt-in borders, markers
    "centre_minus_edge",    # mean of the centre minus the edge band: framing, field of view
)


def features(images: np.ndarray, chunk: int = 256, workers: int = 2) -> np.ndarray:
    """float32 ``[N, len(FEATURES)]`` for uint8 ``[N, S, S]`` images (chunks in threads: numpy
    releases the GIL in every step)."""
    from concurrent.futures import ThreadPoolExecutor

    if not len(images):
        return np.zeros((0, len(FEATURES)), np.float32)
    starts = range(0, len(images), chunk)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        out = list(pool.map(lambda start: _chunk_features(images[start : start + chunk]), starts))
    return np.concatenate(out).astype(np.float32)


def _chunk_features(images: np.ndarray) -> np.ndarray:
    a = images.astype(np.float32)
    n, s = a.shape[0], a.shape[1]
    band = max(2, round(0.04 * s))
    gx = np.abs(np.diff(a, axis=2)).mean(axis=(1, 2))
    gy = np.abs(np.diff(a, axis=1)).mean(axis=(1, 2))
    lap = np.abs(4 * a[:, 1:-1, 1:-1] - a[:, :-2, 1:-1] - a[:, 2:, 1:-1] - a[:, 1:-1, :-2] - a[:, 1:-1, 2:])
    box = sum(a[:, 1 + dy : s - 1 + dy, 1 + dx : s - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    noise = np.median(np.abs(a[:, 1:-1, 1:-1] - box).reshape(n, -1), axis=1)
    flat = a.reshape(n, -1)
    edge = np.concatenate([a[:, :band].reshape(n, -1), a[:, -band:].reshape(n, -1),
                           a[:, :, :band].reshape(n, -1), a[:, :, -band:].reshape(n, -1)], axis=1)
    q = s // 4
    centre = a[:, q:-q, q:-q].mean(axis=(1, 2))
    p05, p95 = np.percentile(flat, [5, 95], axis=1)
    return np.stack([
        np.log((gx + 1e-3) / (gy + 1e-3)), lap.mean(axis=(1, 2)), noise, flat.mean(axis=1), flat.std(axis=1),
        p05, p95, (edge < 20).mean(axis=1), (edge > 235).mean(axis=1), centre - edge.mean(axis=1),
    ], axis=1)


def _classifier(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, max_leaf_nodes=15, random_state=seed)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, scores)), 4) if len(set(labels.tolist())) == 2 else None


def univariate(feats: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per feature: AUC of the feature alone, direction-free (0.5 = no information)."""
    out = {}
    for i, name in enumerate(FEATURES):
        auc = _auc(labels, feats[:, i])
        out[name] = None if auc is None else round(max(auc, 1 - auc), 4)
    return out


def cross_validated(feats: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 0, folds: int = 5) -> dict:
    """Patient-grouped cross-validated AUC of the shortcut classifier within one split."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    counts = np.bincount(labels.astype(int), minlength=2)
    folds = int(min(folds, counts.min(), len(set(groups.tolist()))))
    if folds < 2:
        return {"images": int(len(labels)), "cv_auc": None, "features": univariate(feats, labels)}
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(_classifier(seed), feats, labels, groups=groups, cv=cv, method="predict_proba")[:, 1]
    return {"images": int(len(labels)), "cv_auc": _auc(labels, scores), "features": univariate(feats, labels)}


class Audit:
    """The shortcut classifier fitted on one split (train), to score others."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray, seed: int = 0):
        self.model = _classifier(seed).fit(feats, labels)

    def score(self, feats: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(feats)[:, 1]

    def transfer(self, feats: np.ndarray, labels: np.ndarray) -> float | None:
        """AUC on another split: what the shortcut would be worth there."""
        return _auc(labels, self.score(feats))


def within_class_reliance(model_scores: np.ndarray, shortcut_scores: np.ndarray, labels: np.ndarray,
                          names: tuple[str, str] = ("NORMAL", "PNEUMONIA")) -> dict:
    """Spearman correlation, within each class (``names``: class 0, class 1), of the model's score
    with the shortcut score. Inside a class the label is fixed, so a model that reads the lungs has
    no reason to follow the acquisition; a positive correlation is the shortcut being used."""
    from scipy.stats import spearmanr

    out = {}
    for cls, name in enumerate(names):
        sel = labels == cls
        if sel.sum() < 3:
            out[name] = None
            continue
        rho = spearmanr(model_scores[sel], shortcut_scores[sel]).statistic
        out[name] = None if not np.isfinite(rho) else round(float(rho), 4)
    return out


def subtype_audit(feats: dict[str, np.ndarray], subtypes: dict[str, np.ndarray], groups: dict[str, np.ndarray],
                  head_scores: np.ndarray) -> dict:
    """The audit's subtype row: on the PNEUMONIA films of a known subtype of each split (``feats``,
    ``subtypes`` 1 bacterial / 0 viral, patient ``groups``, per split name), how well acquisition
    features alone tell bacterial from viral (patient-grouped cross-validated ROC AUC), the
    train-fitted classifier on test, and whether the subtype head's test scores (``head_scores``,
    P(bacterial)) follow that acquisition score within each subtype."""
    out: dict = {name: cross_validated(feats[name], subtypes[name], groups[name]) for name in feats}
    both = "train" in feats and "test" in feats and len(set(subtypes["train"].tolist())) == 2 and len(feats["test"])
    if both:
        audit = Audit(feats["train"], subtypes["train"])
        out["train_fitted_on_test_auc"] = audit.transfer(feats["test"], subtypes["test"])
        out["head_follows_shortcut"] = within_class_reliance(head_scores, audit.score(feats["test"]),
                                                             subtypes["test"], names=("viral", "bacterial"))
    return out
