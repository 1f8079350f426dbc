"""``metrics.json``: what the evaluate stage measured, as ``dvc metrics diff`` shows it.

The gated figures (test ranking and the operating point at the chosen threshold, and which
data they were measured on) are typed fields; the diagnostic sections are kept as their
owners build them (:mod:`cxr.shift.robustness`, :mod:`cxr.shift.shortcuts`) and carried through unread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxr.records import Fields, Format

FORMAT = Format("cxr-metrics", 1, "the evaluate stage's metrics.json", "rerun the evaluate stage (dvc repro evaluate)")
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
class GatedFigures:
    """The figures the gate judges, from metrics.json or re-measured from an exported model."""

    roc_auc: float | None
    recall: float | None
    specificity: float | None
    threshold: float | None
    dataset_hash: str | None
    test_split_hash: str | None
    synthetic: bool
    confusion: dict | None = None  # tp, fp, tn, fn at the threshold: what a failed floor means in images

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

    def __post_init__(self):
        unknown = set(self.diagnostics) - set(DIAGNOSTICS)
        if unknown:
            raise ValueError(f"unknown metrics.json sections {sorted(unknown)}: add them to DIAGNOSTICS")

    def get(self, name: str) -> dict | None:
        """A diagnostic section (``proxy``, ``stress``, ...), or None when evaluate did not run it."""
        return self.diagnostics.get(name)

    def gated(self) -> GatedFigures:
        at = self.test.at_threshold
        return GatedFigures(roc_auc=self.test.roc_auc, recall=at.get("recall"), specificity=at.get("specificity"),
                            threshold=self.threshold, dataset_hash=self.data.dataset_hash,
                            test_split_hash=self.data.test_split_hash, synthetic=self.data.synthetic,
                            confusion=at.get("confusion"))

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "target_recall": self.target_recall,
                "threshold_chosen_on": self.threshold_chosen_on,
                **({"threshold_rule": self.threshold_rule} if self.threshold_rule is not None else {}),
                "test": self.test.to_dict(),
                "val": self.val.to_dict(), "data": self.data.to_dict(),
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
                   diagnostics={k: body[k] for k in DIAGNOSTICS if isinstance(body.get(k), dict)})

    @classmethod
    def read(cls, path: str | Path) -> "Evaluation":
        return cls.from_dict(FORMAT.load(path), str(path))
