"""``metrics.json``: what the evaluate stage measured, as ``dvc metrics diff`` shows it.

The gated figures (test ranking and the operating point at the chosen threshold, and which
data they were measured on) are typed fields, and so is the second question's section,
``subtype`` (bacterial or viral among PNEUMONIA films, :class:`SubtypeFigures`; version 2: a
version-1 file has none and is read without it); the diagnostic sections are kept as their
owners build them (:mod:`cxr.shift.robustness`, :mod:`cxr.shift.shortcuts`) and carried through unread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxr.records import Fields, Format

FORMAT = Format("cxr-metrics", 2, "the evaluate stage's metrics.json", "rerun the evaluate stage (dvc repro evaluate)",
                oldest=1)
DIAGNOSTICS = ("stress", "counterfactual", "threshold_alternatives", "proxy", "shortcut_audit", "served_vs_copy",
               "ood")


@dataclass(frozen=True)
class SplitFigures:
    """Ranking and operating points of one split (``cxr.metrics.ranking`` / ``at_threshold``)."""

    roc_auc: float | None
    pr_auc: float | None
    images: int
    at_threshold: dict
    at_half: dict | None = None  # "at_0.5": the test split only

    def to_dict(self) -> dict:
        out = {"roc_auc": self.roc_auc, "pr_auc": self.pr_auc, "images": self.images,
               "at_threshold": self.at_threshold}
        if self.at_half is not None:
            out["at_0.5"] = self.at_half
        return out

    @classmethod
    def from_fields(cls, f: Fields) -> "SplitFigures":
        return cls(roc_auc=f.number("roc_auc", optional=True), pr_auc=f.number("pr_auc", optional=True),
                   images=f.integer("images"), at_threshold=f.mapping("at_threshold"),
                   at_half=f.mapping("at_0.5", optional=True))


@dataclass(frozen=True)
class DataFacts:
    """Which data the figures come from: the gate compares two models only on the same test split."""

    synthetic: bool
    dataset_hash: str | None
    test_split: str
    test_split_hash: str | None

    def to_dict(self) -> dict:
        return {"synthetic": self.synthetic, "dataset_hash": self.dataset_hash, "test_split": self.test_split,
                "test_split_hash": self.test_split_hash}

    @classmethod
    def from_fields(cls, f: Fields) -> "DataFacts":
        return cls(synthetic=f.flag("synthetic"), dataset_hash=f.text("dataset_hash", optional=True),
                   test_split=f.text("test_split"), test_split_hash=f.text("test_split_hash", optional=True))


@dataclass(frozen=True)
class SubtypeFigures:
    """``subtype``: the subtype head (P(bacterial | pneumonia), :mod:`cxr.model.subtype`) on the
    PNEUMONIA films whose file names give their subtype, at a threshold chosen on validation
    (:func:`cxr.metrics.subtype_threshold`). ``test`` and ``val`` are
    :func:`cxr.metrics.subtype_figures`; ``as_served``: the same on the test PNEUMONIA films the
    screening flagged (those whose answers carry a subtype). Without a fitted head, ``available``
    is false and ``reason`` says why."""

    available: bool
    reason: str | None = None
    threshold: float | None = None
    threshold_rule: dict | None = None  # cxr.metrics.subtype_threshold()
    test: dict | None = None
    val: dict | None = None
    as_served: dict | None = None
    positive: str = "bacterial"

    def to_dict(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        return {"available": True, "positive": self.positive, "threshold": self.threshold,
                "threshold_rule": self.threshold_rule, "test": self.test, "val": self.val,
                "as_served": self.as_served}

    @classmethod
    def from_fields(cls, f: Fields) -> "SubtypeFigures":
        if not f.flag("available"):
            return cls(available=False, reason=f.text("reason", optional=True))
        test = f.sub("test")
        test.integer("films")
        test.number("roc_auc", optional=True)
        return cls(available=True, threshold=f.number("threshold"), threshold_rule=f.mapping("threshold_rule"),
                   test=f.mapping("test"), val=f.mapping("val", optional=True),
                   as_served=f.mapping("as_served", optional=True), positive=f.text("positive"))


@dataclass(frozen=True)
class GatedFigures:
    """The figures the gate judges, from metrics.json or re-measured from an exported model. The
    subtype's are None for a model without a subtype head (exported before it, or trained on data
    that names no subtype): the gate then judges the screening figures alone, and says so."""

    roc_auc: float | None
    recall: float | None
    specificity: float | None
    threshold: float | None
    dataset_hash: str | None
    test_split_hash: str | None
    synthetic: bool
    confusion: dict | None = None  # tp, fp, tn, fn at the threshold: what a failed floor means in images
    subtype_roc_auc: float | None = None  # bacterial vs viral on the test PNEUMONIA films with a known subtype
    subtype_accuracy: float | None = None  # at the subtype threshold chosen on validation
    subtype_threshold: float | None = None
    subtype_films: int | None = None

    @property
    def has_subtype(self) -> bool:
        return self.subtype_roc_auc is not None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    target_recall: float
    threshold_chosen_on: str
    test: SplitFigures
    val: SplitFigures
    data: DataFacts
    diagnostics: dict = field(default_factory=dict)  # name -> section, for the names in DIAGNOSTICS
    threshold_rule: dict | None = None  # cxr.metrics.ThresholdChoice.to_dict(); None in files from before it
    subtype: SubtypeFigures | None = None  # None in files from before the subtype head (cxr-metrics/1)

    def __post_init__(self):
        unknown = set(self.diagnostics) - set(DIAGNOSTICS)
        if unknown:
            raise ValueError(f"unknown metrics.json sections {sorted(unknown)}: add them to DIAGNOSTICS")

    def get(self, name: str) -> dict | None:
        """A diagnostic section (``proxy``, ``stress``, ...), or None when evaluate did not run it."""
        return self.diagnostics.get(name)

    def gated(self) -> GatedFigures:
        at = self.test.at_threshold
        sub = self.subtype if self.subtype is not None and self.subtype.available else None
        return GatedFigures(roc_auc=self.test.roc_auc, recall=at.get("recall"), specificity=at.get("specificity"),
                            threshold=self.threshold, dataset_hash=self.data.dataset_hash,
                            test_split_hash=self.data.test_split_hash, synthetic=self.data.synthetic,
                            confusion=at.get("confusion"),
                            subtype_roc_auc=sub.test.get("roc_auc") if sub else None,
                            subtype_accuracy=sub.test.get("accuracy") if sub else None,
                            subtype_threshold=sub.threshold if sub else None,
                            subtype_films=sub.test.get("films") if sub else None)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "target_recall": self.target_recall,
                "threshold_chosen_on": self.threshold_chosen_on,
                **({"threshold_rule": self.threshold_rule} if self.threshold_rule is not None else {}),
                "test": self.test.to_dict(),
                "val": self.val.to_dict(), "data": self.data.to_dict(),
                **({"subtype": self.subtype.to_dict()} if self.subtype is not None else {}),
                **{k: self.diagnostics[k] for k in DIAGNOSTICS if self.diagnostics.get(k) is not None}}

    def write(self, path: str | Path) -> None:
        FORMAT.write(path, self.to_dict())

    @classmethod
    def from_dict(cls, body: dict, origin: str = "metrics.json") -> "Evaluation":
        f = Fields(body, origin, FORMAT)
        return cls(threshold=f.number("threshold"), target_recall=f.number("target_recall"),
                   threshold_chosen_on=f.text("threshold_chosen_on", optional=True) or "val",
                   test=SplitFigures.from_fields(f.sub("test")), val=SplitFigures.from_fields(f.sub("val")),
                   data=DataFacts.from_fields(f.sub("data")),
                   threshold_rule=f.mapping("threshold_rule", optional=True),
                   subtype=SubtypeFigures.from_fields(f.sub("subtype")) if body.get("subtype") is not None else None,
                   diagnostics={k: body[k] for k in DIAGNOSTICS if isinstance(body.get(k), dict)})

    @classmethod
    def read(cls, path: str | Path) -> "Evaluation":
        return cls.from_dict(FORMAT.load(path), str(path))
