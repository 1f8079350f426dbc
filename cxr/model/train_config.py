"""What ``params.yaml`` ``train`` says (:class:`TrainConfig`, checked on load so a bad knob fails
before minutes of training, not after) and the per-film loss weights it implies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxr import UserError, params
from cxr.data.dataset import SplitData
from cxr.model.from_scratch import FromScratch
from cxr.model.inference import RUNTIMES
from cxr.shift.robustness import Reacquire


@dataclass(frozen=True)
class Augment:
    rotation_degrees: float = 7.0
    shift: float = 0.06
    zoom: float = 0.1
    contrast: float = 0.25
    brightness: float = 0.15
    gamma: float = 0.25


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    weights: str | None
    batch_size: int
    views: int
    head_epochs: int
    head_learning_rate: float
    fine_tune_epochs: int
    fine_tune_learning_rate: float
    fine_tune_from: str
    label_smoothing: float
    early_stopping_patience: int
    augment: Augment = field(default_factory=Augment)
    clean_view: bool = True
    select_on: str = "val"
    reacquire: Reacquire = field(default_factory=Reacquire)
    from_scratch: FromScratch = field(default_factory=FromScratch)
    frozen_runtime: str = "litert"
    consistency: float = 0.0  # weight of (logit(view 0) - logit(another view))^2 in fine-tuning; 0: off
    members: int = 1  # tops trained on the one backbone cache, averaged in one model (cxr.model.network.ensemble)
    weight_average_from: int = 0  # fine-tuning epoch from which the top's weights are averaged over steps; 0: off
    decorrelation: float = 0.0  # weight of the embedding's within-class correlation with the view's aspect position; 0: off
    logit_decorrelation: float = 0.0  # the same penalty on the logit itself; 0: off
    aspect_slope: float = 0.0  # weight of the logit's per-class slope on the aspect moved, paired within films; 0: off
    focal_gamma: float = 0.0  # the focal loss's gamma for the screening logit (cxr.model.fitting.screening_loss); 0: cross-entropy
    viral_weight: float = 1.0  # loss weight of a viral PNEUMONIA film against a bacterial one (the class's total kept)
    subtype_loss: float = 0.0  # weight of a bacterial-or-viral cross-entropy on the embedding in fine-tuning; 0: off

    SELECT_ON = ("val", "val+counterfactual")

    @classmethod
    def from_params(cls, cfg: dict) -> "TrainConfig":
        where = "train"
        aug = cfg.get("augment") or {}
        if not isinstance(aug, dict):
            raise UserError("params.yaml: 'train.augment' must be a mapping")
        unknown = set(aug) - set(Augment.__dataclass_fields__)
        if unknown:
            raise UserError(f"params.yaml: unknown 'train.augment' keys {sorted(unknown)}")
        clean_view = cfg.get("clean_view", True)
        if not isinstance(clean_view, bool):
            raise UserError(f"params.yaml: 'train.clean_view' must be true or false, got {clean_view!r}")
        select_on = cfg.get("select_on", "val")
        if select_on not in cls.SELECT_ON:
            raise UserError(f"params.yaml: 'train.select_on' must be one of {cls.SELECT_ON}, got {select_on!r}")
        out = cls(
            seed=params.require(cfg, "seed", int, where),
            weights=None if cfg.get("weights") in (None, "none") else str(cfg.get("weights")),
            batch_size=params.require(cfg, "batch_size", int, where),
            views=params.require(cfg, "views", int, where),
            head_epochs=params.require(cfg, "head_epochs", int, where),
            head_learning_rate=params.require(cfg, "head_learning_rate", float, where),
            fine_tune_epochs=params.require(cfg, "fine_tune_epochs", int, where),
            fine_tune_learning_rate=params.require(cfg, "fine_tune_learning_rate", float, where),
            fine_tune_from=params.require(cfg, "fine_tune_from", str, where),
            label_smoothing=params.require(cfg, "label_smoothing", float, where),
            early_stopping_patience=params.require(cfg, "early_stopping_patience", int, where),
            augment=Augment(**{k: float(v) for k, v in aug.items()}),
            clean_view=clean_view,
            select_on=select_on,
            reacquire=Reacquire.from_params(cfg.get("reacquire")),
            from_scratch=FromScratch.from_params(cfg.get("from_scratch")),
            frozen_runtime=str(cfg.get("frozen_runtime", "litert")),
            consistency=float(cfg.get("consistency", 0.0)),
            members=int(cfg.get("members", 1)),
            weight_average_from=params.require({"weight_average_from": 0, **cfg}, "weight_average_from", int, where),
            decorrelation=params.require({"decorrelation": 0.0, **cfg}, "decorrelation", float, where),
            logit_decorrelation=params.require({"logit_decorrelation": 0.0, **cfg}, "logit_decorrelation", float, where),
            aspect_slope=params.require({"aspect_slope": 0.0, **cfg}, "aspect_slope", float, where),
            viral_weight=params.require({"viral_weight": 1.0, **cfg}, "viral_weight", float, where),
            focal_gamma=params.require({"focal_gamma": 0.0, **cfg}, "focal_gamma", float, where),
            subtype_loss=params.require({"subtype_loss": 0.0, **cfg}, "subtype_loss", float, where),
        )
        params.in_range(out.subtype_loss, 0.0, 10.0, "train.subtype_loss")
        if out.subtype_loss and (out.consistency or out.aspect_slope):
            raise UserError("params.yaml: 'train.subtype_loss' is trained on single views: set train.consistency and "
                            "train.aspect_slope to 0 with it")
        params.in_range(out.focal_gamma, 0.0, 5.0, "train.focal_gamma")
        params.in_range(out.viral_weight, 0.1, 10.0, "train.viral_weight")
        if out.aspect_slope and (out.decorrelation or out.logit_decorrelation):
            raise UserError("params.yaml: 'train.aspect_slope' trains the top on pairs of views, the decorrelation "
                            "penalties on single views: set train.decorrelation and train.logit_decorrelation to 0 "
                            "with it")
        for knob in ("decorrelation", "logit_decorrelation", "aspect_slope"):
            params.in_range(getattr(out, knob), 0.0, 100.0, f"train.{knob}")
            if getattr(out, knob) and out.consistency:
                raise UserError(f"params.yaml: 'train.{knob}' and 'train.consistency' are two ways of training the "
                                "top; set one of them to 0")
            # From scratch (weights: none) caches no views, so there is nothing to read: the knob waits for the real data.
            if getattr(out, knob) and out.weights is not None and not out.reacquire.moves_aspect:
                raise UserError(f"params.yaml: 'train.{knob}' reads how far each cached view's aspect was moved: it "
                                f"needs train.reacquire.class_mix with 'aspect' in mix_cues (or set train.{knob}: 0)")
        if out.frozen_runtime not in RUNTIMES:
            raise UserError(f"params.yaml: 'train.frozen_runtime' must be one of {RUNTIMES}, got {out.frozen_runtime!r}")
        if out.batch_size < 1 or out.views < 1 or out.members < 1:
            raise UserError("params.yaml: 'train.batch_size', 'train.views' and 'train.members' must be >= 1")
        if not 0 <= out.weight_average_from <= out.fine_tune_epochs:
            raise UserError(f"params.yaml: 'train.weight_average_from' must be 0 (off) or a fine-tuning epoch, "
                            f"1..{out.fine_tune_epochs}, got {out.weight_average_from}")
        if out.head_epochs < 0 or out.fine_tune_epochs < 0 or out.head_epochs + out.fine_tune_epochs == 0:
            raise UserError("params.yaml: train.head_epochs + train.fine_tune_epochs must be > 0")
        params.in_range(out.label_smoothing, 0.0, 0.5, "train.label_smoothing")
        return out


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights (n / 2 n_c), so both classes weigh the same in the loss."""
    n = len(labels)
    pos = int(labels.sum())
    if pos == 0 or pos == n:
        raise UserError("the training split must contain both classes")
    return {0: n / (2.0 * (n - pos)), 1: n / (2.0 * pos)}


def sample_weights(split: SplitData, viral_weight: float = 1.0) -> np.ndarray:
    """Per-film loss weights: the classes balanced (:func:`class_weights`), and within PNEUMONIA a
    viral film weighing ``viral_weight`` times a bacterial one (or one whose name gives no subtype),
    the class's total unchanged. Viral films are most of the few lowest-scoring PNEUMONIA films of
    validation, and those place the threshold at 99 % recall (docs/model.md)."""
    from cxr.data.dataset import subtype_labels

    weights = class_weights(split.labels)
    out = np.where(split.labels == 1, weights[1], weights[0]).astype(np.float64)
    if viral_weight != 1.0:
        sick = split.labels == 1
        tilt = np.where(sick & (subtype_labels(split.paths) == 0), viral_weight, 1.0)
        out[sick] *= tilt[sick] * sick.sum() / tilt[sick].sum()
    return out.astype(np.float32)


def subtype_targets(split: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """Per film, the auxiliary subtype loss's target (1 bacterial, 0 viral) and weight: the PNEUMONIA
    films whose names give a subtype, the two subtypes balanced (n / 2 n_k over those films); 0 for
    every other film, which the loss then ignores."""
    from cxr.data.dataset import known_subtype

    idx, labels = known_subtype(split)
    target, weight = np.zeros(len(split), np.float32), np.zeros(len(split), np.float32)
    if len(idx) and 0 < labels.sum() < len(labels):
        target[idx] = labels
        counts = np.bincount(labels, minlength=2)
        weight[idx] = len(labels) / (2.0 * counts[labels])
    return target, weight
