"""The "not a chest X-ray" refusal: is this upload like the X-rays the model was trained on?

A photo, a document, a screenshot, a blank or noise image or another body part would otherwise
get a confident NORMAL/PNEUMONIA label. Two kinds of test, one decision:

- the model's own embedding (the global-average-pooled last feature map, ``[N, D]``) against a
  Gaussian fitted to the training X-rays' embeddings: the Mahalanobis distance. The covariance is
  shrunk (Ledoit-Wolf by default) because D is close to the number of training images, where the
  sample covariance is singular or badly conditioned;
- cheap statistics of the preprocessed image (:class:`ImageStats`), each tested on both sides of
  the training X-rays' median in units of their robust spread: what any embedding may miss
  (blank, noise, flat documents) is caught with no model at all, and the reason is plain.

Each test's score is divided by its own validation quantile, and an image is refused when the
largest of these ratios is over one threshold, chosen so that at least ``val_pass_rate`` of the
VALIDATION X-rays pass: one rule for the whole set (separate cut-offs at that rate would compound
and refuse more). The refusal's reasons are the tests over that threshold.

What it is fitted on decides what it lets through: fit it, and choose its threshold, on the
X-rays together with re-acquired copies of them (:func:`cxr.shift.robustness.random_acquisition`), or
ordinary acquisition changes (a collimation border, heavy JPEG compression) are refused as "not a
chest X-ray" too (``tests/code/test_ood.py`` measures both ways).

Scoring, saving and loading are numpy only: the server has neither scikit-learn nor TensorFlow;
scikit-learn is imported by :func:`fit` alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from cxr import UserError, params
from cxr.io import read_npz_with_header, write_npz_with_header

FORMAT = "cxr-ood-detector"
FILE_NAME = "ood.npz"  # in an export folder, beside the model whose embedding it reads
FORMAT_VERSION = 1
SHRINKAGE_METHODS = ("ledoit_wolf", "oas")
_GREY_LEVELS = np.arange(256, dtype=np.float64)
EDGE_STEP = 64  # grey levels between neighbours: a jump no blurred radiograph makes, text and screens do
VARIANCE_FLOOR = 1e-3  # of the mean variance: a dimension constant on training X-rays cannot dominate
EIGEN_FLOOR = 1e-9  # of the largest eigenvalue: keeps the whitening finite
STAT_SCALE_FLOOR = 1e-3  # statistics are fractions of the grey range or of the pixels
TEST_SCALE_FLOOR = 1.0  # within one robust spread of the training median is never unusual
ROUND = 4

_ARRAYS = ("mean", "scale", "whiten", "stat_center", "stat_scale", "test_scale")
HEADER_KEYS = ("format", "version", "threshold", "embedding_dim", "stats", "tests", "reasons", "edge_step")


@dataclass(frozen=True)
class OodConfig:
    """``params.yaml`` ``ood``. Other keys are left to the stages that read the same section."""

    val_pass_rate: float = 0.995
    shrinkage: str | float = "ledoit_wolf"  # ledoit_wolf | oas | a fixed shrinkage in (0, 1]
    # The threshold is the validation quantile times this: the quantile of a maximum over many
    # tests, taken on a few hundred images, sits below the one new X-rays reach.
    threshold_margin: float = 1.0

    @classmethod
    def from_params(cls, cfg: dict) -> "OodConfig":
        if not isinstance(cfg, dict):
            raise UserError(f"params.yaml: 'ood' must be a mapping, got {cfg!r}")
        merged = {"val_pass_rate": cls.val_pass_rate, "shrinkage": cls.shrinkage,
                  "threshold_margin": cls.threshold_margin, **cfg}
        rate = params.in_range(params.require(merged, "val_pass_rate", float, "ood"), 0.5, 1.0, "ood.val_pass_rate")
        shrinkage = merged["shrinkage"]
        numeric = isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool)
        if not (shrinkage in SHRINKAGE_METHODS or (numeric and 0.0 < shrinkage <= 1.0)):
            raise UserError(f"params.yaml: 'ood.shrinkage' must be one of {SHRINKAGE_METHODS} or a number in "
                            f"(0, 1], got {shrinkage!r}")
        margin = params.in_range(params.require(merged, "threshold_margin", float, "ood"), 1.0, 10.0,
                                 "ood.threshold_margin")
        return cls(val_pass_rate=rate, shrinkage=float(shrinkage) if numeric else shrinkage, threshold_margin=margin)

    def to_dict(self) -> dict:
        return {"val_pass_rate": self.val_pass_rate, "shrinkage": self.shrinkage,
                "threshold_margin": self.threshold_margin}


@dataclass(frozen=True)
class ImageStats:
    """Statistics of one uint8 ``[S, S]`` preprocessed image (:func:`cxr.imaging.preprocess.preprocess_bytes`).

    Chosen to survive histogram equalisation, which gives every non-flat image the same overall
    brightness and contrast: a blank image stays flat (no spread, one grey level), noise keeps its
    fine detail, text and screens keep sharp edges and large flat areas, a chest keeps its
    left-right symmetry. All are scale-free fractions, so any image size compares."""

    spread: float  # standard deviation of the grey levels, of the grey range
    mode_fraction: float  # share of the pixels at the most common grey level
    fine_detail: float  # mean absolute Laplacian, of the grey range
    asymmetry: float  # mean absolute difference from the mirror image, of the grey range
    edge_density: float  # share of neighbour pairs that step by more than EDGE_STEP

    NAMES: ClassVar[tuple[str, ...]] = ("spread", "mode_fraction", "fine_detail", "asymmetry", "edge_density")

    @classmethod
    def of(cls, image: np.ndarray) -> "ImageStats":
        # Run on every served request: in integers (an int16 copy, no float one), the spread from the histogram.
        img = np.asarray(image)
        if img.ndim != 2 or min(img.shape) < 3:
            raise ValueError(f"ImageStats needs a 2-D image of at least 3x3 pixels, got shape {img.shape}")
        u8 = np.ascontiguousarray(img, dtype=np.uint8)
        n = u8.size
        counts = np.bincount(u8.ravel(), minlength=256)
        mean = float(counts @ _GREY_LEVELS) / n
        variance = max(float(counts @ (_GREY_LEVELS * _GREY_LEVELS)) / n - mean * mean, 0.0)
        x = u8.astype(np.int16)
        lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
        dx, dy = np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0))
        half = x.shape[1] // 2  # each mirrored pair once (a middle column differs from itself by 0)
        mirrored = int(np.abs(x[:, :half] - x[:, ::-1][:, :half]).sum(dtype=np.int64))
        return cls(
            spread=float(np.sqrt(variance) / 255.0),
            mode_fraction=float(counts.max() / n),
            fine_detail=float(np.abs(lap).sum(dtype=np.int64) / lap.size / 255.0),
            asymmetry=float(2 * mirrored / n / 255.0),
            edge_density=float((np.count_nonzero(dx > EDGE_STEP) + np.count_nonzero(dy > EDGE_STEP))
                               / (dx.size + dy.size)),
        )

    def to_array(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in self.NAMES], np.float64)

    @classmethod
    def matrix(cls, images) -> np.ndarray:
        """``[N, len(NAMES)]`` for uint8 ``[N, S, S]`` images (an array or a list)."""
        rows = [cls.of(img).to_array() for img in images]
        return np.stack(rows) if rows else np.zeros((0, len(cls.NAMES)))


@dataclass(frozen=True)
class Features:
    """What the detector scores, per image: the model's pooled embedding and the image's stats."""

    embedding: np.ndarray  # float [N, D]
    stats: np.ndarray  # float [N, len(ImageStats.NAMES)]

    def __post_init__(self):
        emb = np.asarray(self.embedding, np.float64)
        stats = np.asarray(self.stats, np.float64)
        if emb.ndim != 2 or stats.ndim != 2 or stats.shape[1] != len(ImageStats.NAMES) or len(emb) != len(stats):
            raise ValueError(f"Features need embedding [N, D] and stats [N, {len(ImageStats.NAMES)}], got "
                             f"{emb.shape} and {stats.shape}")
        object.__setattr__(self, "embedding", emb)
        object.__setattr__(self, "stats", stats)

    @classmethod
    def of(cls, embedding: np.ndarray, images) -> "Features":
        """From the model's embeddings and the preprocessed images they were computed from."""
        return cls(embedding=embedding, stats=ImageStats.matrix(images))

    def __len__(self) -> int:
        return len(self.embedding)

    def take(self, index) -> "Features":
        return Features(self.embedding[index], self.stats[index])


# The detector's tests, in the order of its score columns: the embedding, then each statistic's sides.
TESTS = ("embedding", *(f"{name}_{side}" for name in ImageStats.NAMES for side in ("low", "high")))


REASONS = {
    "embedding": "embedding far from training X-rays",
    "spread_low": "too little contrast (blank or near-uniform image)",
    "spread_high": "too much contrast for an X-ray",
    "mode_fraction_low": "grey-level histogram unlike an X-ray",
    "mode_fraction_high": "large flat areas of one grey level (blank, document or screenshot)",
    "fine_detail_low": "too smooth for an X-ray (blank or gradient)",
    "fine_detail_high": "too much fine detail or noise for an X-ray",
    "asymmetry_low": "more left-right symmetric than a chest X-ray",
    "asymmetry_high": "not left-right symmetric like a chest X-ray",
    "edge_density_low": "fewer edges than an X-ray",
    "edge_density_high": "sharp edges like text, drawings or a screen",
}


def pass_threshold(scores: np.ndarray, pass_rate: float) -> float:
    """The smallest score that at least ``pass_rate`` of ``scores`` are at or below: the
    ``ceil(pass_rate * n)``-th smallest.

    Rounded up, the conservative side for the X-rays: never fewer pass than asked, and with
    fewer than ``1 / (1 - pass_rate)`` images it is the largest score. The product is rounded
    to a few decimals first, so float error in it cannot add one image."""
    s = np.sort(np.asarray(scores, np.float64).ravel())
    if not len(s):
        raise UserError("no validation X-rays to choose the not-a-chest-X-ray threshold on")
    k = min(max(math.ceil(round(pass_rate * len(s), 9)), 1), len(s))
    return float(s[k - 1])


@dataclass(frozen=True, eq=False)
class OodDetector:
    """A fitted refusal: :func:`fit` makes it, :meth:`save`/:func:`load` carry it to the server.

    The arrays hold float32 values (what the file stores) so that a loaded detector scores
    exactly as the fitted one did; scoring is in float64."""

    mean: np.ndarray  # [D]: training embeddings' mean
    scale: np.ndarray  # [D]: the per-dimension spread the embedding is standardised by
    whiten: np.ndarray  # [D, D]: |((x - mean) / scale) @ whiten| is the Mahalanobis distance
    stat_center: np.ndarray  # [K]: training X-rays' median statistics
    stat_scale: np.ndarray  # [K]: their robust spread
    test_scale: np.ndarray  # [T]: each test's score at its own validation quantile
    threshold: float  # on the largest ratio score / test_scale
    info: dict = field(default_factory=dict)  # how it was fitted: config, counts, validation pass rate

    def __post_init__(self):
        for name in _ARRAYS:
            value = np.asarray(getattr(self, name), np.float32).astype(np.float64)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "threshold", float(self.threshold))
        d, k, t = len(self.mean), len(ImageStats.NAMES), len(TESTS)
        shapes = {"mean": (d,), "scale": (d,), "whiten": (d, d), "stat_center": (k,), "stat_scale": (k,),
                  "test_scale": (t,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"OodDetector.{name} must have shape {shape}, got {getattr(self, name).shape}")

    @property
    def embedding_dim(self) -> int:
        return len(self.mean)

    def _check(self, features: Features) -> None:
        if features.embedding.shape[1] != self.embedding_dim:
            raise UserError(f"the not-a-chest-X-ray detector was fitted on {self.embedding_dim}-dimensional "
                            f"embeddings, got {features.embedding.shape[1]}: refit it with this model")

    def embedding_distance(self, features: Features) -> np.ndarray:
        """Mahalanobis distance of each embedding to the training X-rays' Gaussian."""
        self._check(features)
        z = ((features.embedding - self.mean) / self.scale) @ self.whiten
        return np.sqrt(np.einsum("nd,nd->n", z, z))

    def test_scores(self, features: Features) -> np.ndarray:
        """``[N, T]``: each test's score over its validation quantile (columns: :data:`TESTS`)."""
        z = (features.stats - self.stat_center) / self.stat_scale
        raw = [self.embedding_distance(features)]
        for j in range(z.shape[1]):
            raw += [np.maximum(-z[:, j], 0.0), np.maximum(z[:, j], 0.0)]
        ratios = np.stack(raw, axis=1) / self.test_scale
        return np.where(np.isnan(ratios), np.inf, ratios)  # a non-finite embedding is refused, with its reason

    def score(self, features: Features) -> np.ndarray:
        """The largest test ratio per image: refused when over :attr:`threshold`."""
        return self.test_scores(features).max(axis=1)

    def passes(self, features: Features) -> np.ndarray:
        return self.score(features) <= self.threshold

    def reasons(self, features: Features) -> list[list[str]]:
        """Per image, why it was refused (the failing tests, worst first); empty when it passes."""
        out = []
        for row in self.test_scores(features):
            failing = [j for j in np.argsort(-row, kind="stable") if row[j] > self.threshold]
            out.append([REASONS[TESTS[j]] for j in failing])
        return out

    def to_dict(self) -> dict:
        """The JSON header of the file: everything but the arrays (also for the model card)."""
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "threshold": self.threshold,
            "embedding_dim": self.embedding_dim,
            "stats": list(ImageStats.NAMES),
            "tests": list(TESTS),
            "reasons": {name: REASONS[name] for name in TESTS},
            "edge_step": EDGE_STEP,
        }
        return {**header, **{k: v for k, v in self.info.items() if k not in header}}

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.npz``: float32 arrays and the JSON header, written atomically."""
        return write_npz_with_header(path, self.to_dict(),
                                     {name: getattr(self, name).astype(np.float32) for name in _ARRAYS})


def load(path: str | os.PathLike) -> OodDetector:
    """A detector saved by :meth:`OodDetector.save`; :class:`UserError` when missing, corrupt or of
    another format version."""
    header, arrays = read_npz_with_header(path, _ARRAYS, "not-a-chest-X-ray detector", FORMAT)
    if header.get("version") != FORMAT_VERSION:
        raise UserError(f"not-a-chest-X-ray detector {path} has format version {header.get('version')!r}; this "
                        f"code reads version {FORMAT_VERSION}: refit it")
    if header.get("stats") != list(ImageStats.NAMES) or header.get("tests") != list(TESTS):
        raise UserError(f"not-a-chest-X-ray detector {path} was fitted on other image statistics "
                        f"{header.get('stats')!r}: refit it")
    if header.get("edge_step") != EDGE_STEP:
        raise UserError(f"not-a-chest-X-ray detector {path} measured edges at step {header.get('edge_step')!r}, "
                        f"this code at {EDGE_STEP}: refit it")
    info = {k: v for k, v in header.items() if k not in HEADER_KEYS}
    try:
        return OodDetector(**arrays, threshold=header["threshold"], info=info)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"not-a-chest-X-ray detector {path} is corrupt ({exc}): refit it") from None


def _covariance(z: np.ndarray, shrinkage) -> tuple[np.ndarray, float]:
    from sklearn.covariance import OAS, LedoitWolf, ShrunkCovariance

    if shrinkage == "ledoit_wolf":
        est = LedoitWolf(assume_centered=True).fit(z)
        return est.covariance_, float(est.shrinkage_)
    if shrinkage == "oas":
        est = OAS(assume_centered=True).fit(z)
        return est.covariance_, float(est.shrinkage_)
    est = ShrunkCovariance(shrinkage=float(shrinkage), assume_centered=True).fit(z)
    return est.covariance_, float(shrinkage)


def fit(train: Features, val: Features, cfg: OodConfig) -> OodDetector:
    """Fit on the training X-rays, choose the threshold on the validation X-rays."""
    if len(train) < 2:
        raise UserError(f"the not-a-chest-X-ray detector needs at least 2 training X-rays, got {len(train)}")
    if len(val) < 1:
        raise UserError("the not-a-chest-X-ray detector needs validation X-rays to choose its threshold")
    if val.embedding.shape[1] != train.embedding.shape[1]:
        raise ValueError(f"train and val embeddings differ in width: {train.embedding.shape[1]} and "
                         f"{val.embedding.shape[1]}")
    x = train.embedding
    mean = x.mean(axis=0).astype(np.float32).astype(np.float64)
    var = x.var(axis=0)
    floor = VARIANCE_FLOOR * float(var.mean()) if var.mean() > 0 else 1.0
    scale = np.sqrt(var + floor).astype(np.float32).astype(np.float64)
    cov, shrinkage = _covariance((x - mean) / scale, cfg.shrinkage)
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval, EIGEN_FLOOR * max(float(eigval.max()), 1e-12))
    whiten = eigvec / np.sqrt(eigval)

    center = np.median(train.stats, axis=0)
    spread = 1.4826 * np.median(np.abs(train.stats - center), axis=0)  # MAD as a normal's sigma
    stat_scale = np.maximum(spread, STAT_SCALE_FLOOR)

    unit = np.ones(len(TESTS))
    draft = OodDetector(mean, scale, whiten, center, stat_scale, unit, threshold=0.0)
    raw = draft.test_scores(val)
    test_scale = np.array([max(pass_threshold(raw[:, j], cfg.val_pass_rate), TEST_SCALE_FLOOR)
                           for j in range(raw.shape[1])])
    scored = OodDetector(mean, scale, whiten, center, stat_scale, test_scale, threshold=0.0)
    threshold = pass_threshold(scored.score(val), cfg.val_pass_rate) * cfg.threshold_margin
    passed = int((scored.score(val) <= threshold).sum())
    info = {
        "config": cfg.to_dict(),
        "shrinkage_fitted": round(shrinkage, 6),
        "train_images": len(train),
        "val_images": len(val),
        "val_passed": passed,
        "val_pass_rate_achieved": round(passed / len(val), 6),
    }
    return OodDetector(mean, scale, whiten, center, stat_scale, test_scale, threshold=threshold, info=info)


def _rate(k: int, n: int) -> float | None:
    return round(k / n, ROUND) if n else None


def _reason_counts(reasons: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for given in reasons:
        for reason in given:
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def report(detector: OodDetector, xray: Features, non_xray_by_family: dict[str, Features]) -> dict:
    """Pass rate on X-rays, refusal rate per non-X-ray family and overall, for metrics.json and the
    model card. Reason counts count every failing test of a refused image, so they can add up to
    more than the refusals."""
    xray_pass = detector.passes(xray) if len(xray) else np.zeros(0, bool)
    families = {}
    total = refused_total = 0
    for family, feats in non_xray_by_family.items():
        refused = ~detector.passes(feats) if len(feats) else np.zeros(0, bool)
        families[family] = {
            "images": int(len(feats)),
            "refused": int(refused.sum()),
            "refusal_rate": _rate(int(refused.sum()), len(feats)),
            "reasons": _reason_counts(detector.reasons(feats.take(np.flatnonzero(refused)))) if refused.any() else {},
        }
        total += len(feats)
        refused_total += int(refused.sum())
    refused_xrays = np.flatnonzero(~xray_pass)
    return {
        "threshold": round(detector.threshold, ROUND),
        "val_pass_rate": detector.info.get("config", {}).get("val_pass_rate"),
        "xray": {
            "images": int(len(xray)),
            "passed": int(xray_pass.sum()),
            "pass_rate": _rate(int(xray_pass.sum()), len(xray)),
            "reasons": _reason_counts(detector.reasons(xray.take(refused_xrays))) if len(refused_xrays) else {},
        },
        "non_xray": {
            "images": int(total),
            "refused": int(refused_total),
            "refusal_rate": _rate(refused_total, total),
            "by_family": families,
        },
    }

