"""``model_card.json`` (and its Markdown): what a model is, how it was made and measured,
and what it must not be used for. It travels with the model files into the store and to
every server: the imaging config and the decision threshold are read from it, and from
nowhere else, wherever the model runs; so is the subtype's threshold (``subtype``, version 2: a
version-1 card has none, and its model serves without a subtype).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cxr import SCREENING_NOTICE, SUBTYPE_NOTICE, SUBTYPE_POSITIVE, SYNTHETIC_WARNING, UserError
from cxr.imaging.preprocess import ImagingConfig
from cxr.io import write_text
from cxr.records import Fields, Format
from cxr.records.card_markdown import CITATION, KERMANY_SUBTYPE, NO_SUBTYPE, THRESHOLD_METHODS, markdown
from cxr.records.evaluation import Evaluation
from cxr.records.train_summary import TrainSummary

FORMAT = Format("cxr-model-card", 2, "the model card (model_card.json)", "re-export the model (dvc repro export)",
                oldest=1)
JSON_NAME, MARKDOWN_NAME = "model_card.json", "model_card.md"

INTENDED_USE = (
    "Screening aid that flags pediatric chest X-rays (anterior-posterior, ages 1-5, as in the "
    "training data) likely to show pneumonia, for prioritised review by a clinician. "
    + SCREENING_NOTICE
)
LIMITATIONS = [
    "Trained on one hospital's pediatric films (Guangzhou Women and Children's Medical Center); "
    "performance on adults, other hospitals or other acquisition chains is unknown.",
    "The decision threshold was chosen on a validation split carved from train; the official "
    "test split was acquired differently and a validation-tuned threshold can lose specificity there.",
    "In the training data the two classes were acquired differently (NORMAL films squarer and with "
    "more fine detail): a model can learn the acquisition instead of the lungs. Training takes this "
    "cue away by class-conditional re-acquisition, and the counterfactual proxy below measures what "
    "is left; NORMAL images from a chain like the training PNEUMONIA ones may still be flagged.",
    "Bacterial vs viral is a second screening aid, given only with a PNEUMONIA answer: its labels are the "
    "data set's (read from its file names, not confirmed here), and its figures are on few films (see its "
    "section). It does not replace clinical and laboratory assessment; other findings are not detected.",
    "Heavily re-compressed JPEGs and images with wide collimation borders raise false alarms (see the "
    "stress test table): send images at their original quality.",
]
NOT_INTENDED_FOR = "Stand-alone diagnosis, adults, non-chest images, any use without clinician review."


def subtype_section(evaluation: Evaluation, head: dict | None) -> dict:
    """The card's ``subtype``: what the served subtype is, its threshold and how it was measured,
    from metrics.json's ``subtype`` and the head's own record (``subtype.npz``'s header)."""
    sub = evaluation.subtype
    if sub is None or head is None:
        return {"available": False, "reason": "no subtype figures in metrics.json or no subtype head: rerun the "
                                              "train and evaluate stages"}
    if not sub.available or not head.get("fitted"):
        return {"available": False, "reason": sub.reason or head.get("reason")}
    return {"available": True, "output": head.get("output"), "positive": SUBTYPE_POSITIVE,
            "threshold": sub.threshold, "threshold_rule": sub.threshold_rule,
            "figures": {"test": sub.test, "val": sub.val, "as_served": sub.as_served},
            "fit": {k: head.get(k) for k in ("films", "views_per_film", "steps", "best_step", "val_auc",
                                             "calibration", "config")},
            "notice": SUBTYPE_NOTICE, "reference": KERMANY_SUBTYPE}


def git_revision() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    rev = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": rev or None, "dirty": dirty}


@dataclass(frozen=True)
class ModelCard:
    name: str
    decision_threshold: float
    imaging: ImagingConfig  # kept at model.imaging in the file
    synthetic: bool  # kept at data.synthetic
    model: dict  # architecture, backbone, input, output, weights_init, calibration
    data: dict  # source, dataset_hash, counts, test_split, test_split_hash, citation
    target_recall: float | None = None
    decision_threshold_method: str | None = None
    decision_threshold_basis: dict | None = None  # metrics.json threshold_rule: the rule and what validation vouches for
    metrics: dict = field(default_factory=dict)  # test, val and the diagnostics of metrics.json
    training_views: dict = field(default_factory=dict)
    monitoring: dict | None = None  # the validation probabilities a drift monitor compares against
    subtype: dict | None = None  # subtype_section(); None in cards from before the subtype (cxr-model-card/1)
    params: dict = field(default_factory=dict)
    git: dict = field(default_factory=dict)
    parity: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    created: str | None = None
    intended_use: str = INTENDED_USE
    not_intended_for: str = NOT_INTENDED_FOR
    limitations: list = field(default_factory=lambda: list(LIMITATIONS))

    @property
    def warning(self) -> str | None:
        return SYNTHETIC_WARNING if self.synthetic else None

    @property
    def dataset_hash(self) -> str | None:
        return self.data.get("dataset_hash")

    @property
    def test_split_hash(self) -> str | None:
        return self.data.get("test_split_hash")

    @property
    def test_figures(self) -> dict:
        return self.metrics.get("test") or {}

    @property
    def subtype_threshold(self) -> float | None:
        """The threshold on P(bacterial) the served subtype uses; None when the model has no subtype."""
        sub = self.subtype or {}
        return float(sub["threshold"]) if sub.get("available") and sub.get("threshold") is not None else None

    @property
    def no_subtype_reason(self) -> str | None:
        """Why the model gives no subtype, in words for its answers; None when it gives one."""
        if self.subtype is None:
            return NO_SUBTYPE
        if self.subtype_threshold is None:
            return f"this model gives no bacterial/viral subtype: {self.subtype.get('reason')}"
        return None

    @classmethod
    def build(cls, *, evaluation: Evaluation, summary: TrainSummary, source: dict, params: dict,
              parity_checks: list[dict], files: dict, val_probabilities: list[float] | None = None,
              subtype_head: dict | None = None) -> "ModelCard":
        """The card of a freshly exported model, from the records of the stages that made it
        (``subtype_head``: :meth:`cxr.model.subtype.SubtypeHead.to_dict` of the head exported)."""
        synthetic = bool(source.get("synthetic", False))
        monitoring = None
        if val_probabilities is not None:
            passed = (evaluation.get("ood") or {}).get("val_pass_rate_achieved")
            monitoring = {"val_probabilities": [round(float(p), 4) for p in val_probabilities],
                          "val_refusal_rate": round(1.0 - passed, 4) if passed is not None else 0.0}
        return cls(
            name=f"cxr-pneumonia-{summary.backbone.replace('_', '')}",
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            decision_threshold=evaluation.threshold,
            target_recall=evaluation.target_recall,
            decision_threshold_method=THRESHOLD_METHODS.get(evaluation.threshold_chosen_on),
            decision_threshold_basis=evaluation.threshold_rule,
            imaging=summary.imaging,
            synthetic=synthetic,
            model={
                "architecture": f"{summary.architecture['description']}, global average pooling, one logit, "
                                "Platt-calibrated sigmoid",
                "backbone": summary.architecture,
                "input": "float32 [N, S, S, 1] in 0..255 from cxr.imaging.preprocess.preprocess_bytes (grayscale, "
                         "squashed to S x S, per-image intensity normalisation)",
                "output": "probability of PNEUMONIA",
                "weights_init": summary.weights,
                "calibration": summary.calibration,
            },
            data={"source": source.get("source"), "dataset_hash": source.get("dataset_hash"),
                  "counts": source.get("counts"), "test_split": evaluation.data.test_split,
                  "test_split_hash": evaluation.data.test_split_hash, "citation": CITATION},
            metrics={"test": evaluation.test.to_dict(), "val": evaluation.val.to_dict(),
                     **{k: evaluation.get(k) for k in ("stress", "counterfactual", "proxy", "shortcut_audit",
                                                       "served_vs_copy", "ood")}},
            training_views={"reacquire": summary.reacquire, "selected_on": summary.selected_on,
                            "shortcut_audit_views": summary.shortcut_audit_views,
                            "aspect_response": summary.training.get("aspect_response")},
            monitoring=monitoring,
            subtype=subtype_section(evaluation, subtype_head),
            params=params,
            git=git_revision(),
            parity=parity_checks,
            files={k: str(v) for k, v in files.items()},
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name, "created": self.created, "warning": self.warning,
            "intended_use": self.intended_use, "not_intended_for": self.not_intended_for,
            "limitations": self.limitations,
            "model": {**self.model, "imaging": self.imaging.to_dict()},
            "decision_threshold": self.decision_threshold, "target_recall": self.target_recall,
            "decision_threshold_method": self.decision_threshold_method,
            "decision_threshold_basis": self.decision_threshold_basis,
            "data": {**self.data, "synthetic": self.synthetic},
            "metrics": self.metrics, "training_views": self.training_views, "monitoring": self.monitoring,
            **({"subtype": self.subtype} if self.subtype is not None else {}),
            "params": self.params, "git": self.git, "parity": self.parity, "files": self.files,
        }

    def write(self, folder: str | Path) -> None:
        """``model_card.json`` and ``model_card.md`` into ``folder``."""
        folder = Path(folder)
        FORMAT.write(folder / JSON_NAME, self.to_dict())
        write_text(folder / MARKDOWN_NAME, self.markdown())

    @classmethod
    def from_dict(cls, body: dict, origin: str = JSON_NAME) -> "ModelCard":
        f = Fields(body, origin, FORMAT)
        model, data = f.mapping("model"), f.mapping("data")
        try:
            imaging = ImagingConfig.from_params(Fields(model, f"{origin} model", FORMAT).mapping("imaging"))
        except UserError as exc:
            raise UserError(f"{origin}: the model's imaging record is missing or invalid ({exc}): "
                            f"{FORMAT.remedy}") from None
        return cls(
            name=f.text("name"), decision_threshold=f.number("decision_threshold"), imaging=imaging,
            synthetic=Fields(data, f"{origin} data", FORMAT).flag("synthetic"),
            model={k: v for k, v in model.items() if k != "imaging"},
            data={k: v for k, v in data.items() if k != "synthetic"},
            target_recall=f.number("target_recall", optional=True),
            decision_threshold_method=f.text("decision_threshold_method", optional=True),
            decision_threshold_basis=f.mapping("decision_threshold_basis", optional=True),
            metrics=f.mapping("metrics", optional=True) or {},
            training_views=f.mapping("training_views", optional=True) or {},
            monitoring=f.mapping("monitoring", optional=True),
            subtype=_subtype_from(f),
            params=f.mapping("params", optional=True) or {}, git=f.mapping("git", optional=True) or {},
            parity=list(body.get("parity") or []), files=f.mapping("files", optional=True) or {},
            created=f.text("created", optional=True),
            intended_use=f.text("intended_use", optional=True) or INTENDED_USE,
            not_intended_for=f.text("not_intended_for", optional=True) or NOT_INTENDED_FOR,
            limitations=list(body.get("limitations") or LIMITATIONS),
        )

    @classmethod
    def read(cls, folder: str | Path) -> "ModelCard":
        """The card of the exported model in ``folder`` (an export folder or a store entry)."""
        path = Path(folder) / JSON_NAME
        return cls.from_dict(FORMAT.load(path), str(path))

    def markdown(self) -> str:
        return markdown(self.to_dict())


def _subtype_from(f: Fields) -> dict | None:
    """The card's subtype section, checked where serving reads it (available, the threshold)."""
    sub = f.mapping("subtype", optional=True)
    if sub is None:
        return None
    g = Fields(sub, f"{f.origin} subtype", FORMAT)
    if g.flag("available"):
        g.number("threshold")
    return sub
