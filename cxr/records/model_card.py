"""``model_card.json`` (and its Markdown): what a model is, how it was made and measured,
and what it must not be used for. It travels with the model files into the store and to
every server: the imaging config and the decision threshold are read from it, and from
nowhere else, wherever the model runs.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cxr import SCREENING_NOTICE, SYNTHETIC_WARNING, UserError
from cxr.imaging.preprocess import ImagingConfig
from cxr.io import write_text
from cxr.records import Fields, Format
from cxr.records.evaluation import Evaluation
from cxr.records.train_summary import TrainSummary

FORMAT = Format("cxr-model-card", 1, "the model card (model_card.json)", "re-export the model (dvc repro export)")
JSON_NAME, MARKDOWN_NAME = "model_card.json", "model_card.md"

CITATION = (
    "Kermany, D., Zhang, K., Goldbaum, M. (2018). Large Dataset of Labeled Optical Coherence "
    "Tomography (OCT) and Chest X-Ray Images. Mendeley Data, V2. doi:10.17632/rscbjbr9sj.2. "
    "License: CC BY 4.0."
)
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
    "Bacterial vs viral pneumonia are not distinguished; other findings are not detected.",
    "Heavily re-compressed JPEGs and images with wide collimation borders raise false alarms (see the "
    "stress test table): send images at their original quality.",
]




THRESHOLD_METHODS = {
    "val": "chosen for the target recall on the validation split",
    "val+counterfactual": "chosen for the target recall on the validation split and its counterfactual copies "
                          "(each image given the other class's acquisition), so that the recall holds when the "
                          "acquisition changes",
}
NOT_INTENDED_FOR = "Stand-alone diagnosis, adults, non-chest images, any use without clinician review."


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

    @classmethod
    def build(cls, *, evaluation: Evaluation, summary: TrainSummary, source: dict, params: dict,
              parity_checks: list[dict], files: dict, val_probabilities: list[float] | None = None) -> "ModelCard":
        """The card of a freshly exported model, from the records of the stages that made it."""
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
                            "shortcut_audit_views": summary.shortcut_audit_views},
            monitoring=monitoring,
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
        return _markdown(self.to_dict())


def _markdown(card: dict) -> str:
    """The card for people; every section reads with what the card holds (older cards hold less)."""
    data, model, git = card["data"], card["model"], card["git"]
    t = card["metrics"].get("test") or {}
    at_thr = t.get("at_threshold", {})
    at_half = t.get("at_0.5", {})
    lines = [f"# Model card: {card['name']}", ""]
    if card.get("warning"):
        lines += [f"> **{card['warning']}**", ""]
    lines += [
        f"> **{SCREENING_NOTICE}**",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        f"Not intended for: {card['not_intended_for']}",
        "",
        "## Decision threshold",
        f"{card['decision_threshold']}: {card.get('decision_threshold_method') or THRESHOLD_METHODS['val']}, "
        f"for recall {card['target_recall']}. Chosen without the test split, and reported on test unchanged.",
        *(["", f"How: {card['decision_threshold_basis']['statement']}"]
          if (card.get("decision_threshold_basis") or {}).get("statement") else []),
        "",
        "## Test-split metrics",
        f"Test split: {data.get('test_split')}; ROC AUC {t.get('roc_auc')}, PR AUC {t.get('pr_auc')}, "
        f"{t.get('images')} images.",
        "",
        "| at | accuracy | precision | recall | specificity | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in (("chosen threshold", at_thr), ("0.5", at_half)):
        lines.append(
            f"| {name} | {m.get('accuracy')} | {m.get('precision')} | {m.get('recall')} | {m.get('specificity')} | {m.get('f1')} |"
        )
    lines += [
        "",
        *_counterfactual_lines(card["metrics"].get("counterfactual")),
        *_audit_lines(card["metrics"].get("shortcut_audit"), (card.get("training_views") or {}).get("shortcut_audit_views")),
        *_served_lines(card["metrics"].get("served_vs_copy")),
        *_stress_lines(card["metrics"].get("stress")),
        *_ood_lines(card["metrics"].get("ood")),
        "## Data",
        f"Source: `{data.get('source')}`; dataset hash `{data.get('dataset_hash')}`.",
        "",
        f"Citation: {data.get('citation', CITATION)}",
        "",
        "## Model",
        f"{model.get('architecture')}. Input: {model.get('input')}. Imaging: `{model['imaging']}`. "
        f"Weights init: `{model.get('weights_init')}`. Calibration: `{model.get('calibration')}`.",
        "",
        "## Limitations",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Lineage",
        f"Git commit `{git.get('commit')}` (dirty: {git.get('dirty')}); created {card.get('created')}.",
        "",
        "## Export parity",
        *[f"- {p['format']}: max |Δp| {p['max_abs_diff']:.2e} on {p['images']} images (tolerance {p['tolerance']})"
          for p in card["parity"]],
        "",
    ]
    return "\n".join(lines)


def _ood_lines(ood: dict | None) -> list[str]:
    if not ood:
        return []
    xray, non = ood["xray"], ood["non_xray"]
    lines = ["## Not a chest X-ray: refused",
             "Uploads unlike the training X-rays (the model's embedding far from theirs, or image statistics no "
             "radiograph has) are answered 422 with the reason, never labelled (cxr/model/ood.py). The threshold lets "
             f"{ood.get('val_pass_rate_achieved')} of the validation X-rays and their re-acquired copies pass "
             f"(target {ood.get('val_pass_rate')}). Measured on sets it was neither fitted nor tuned on: the test "
             f"X-rays pass at {xray['pass_rate']} ({xray['passed']} of {xray['images']}); generated non-X-ray "
             f"images (cxr/data/non_xray.py) are refused at {non['refusal_rate']} "
             f"({non['refused']} of {non['images']}).",
             "", "| family | images | refused |", "|---|---|---|"]
    lines += [f"| {family} | {m['images']} | {m['refusal_rate']} |" for family, m in non["by_family"].items()]
    perturbed = ood.get("xray_perturbed")
    if perturbed:
        lines += ["", f"Test X-rays as other chains would send them ({perturbed['images']} images, the stress test's "
                  "perturbations), share passing: " + ", ".join(f"{k} {v}" for k, v in perturbed["pass_rate"].items())
                  + "."]
    return lines + [""]


def _stress_lines(stress: dict | None) -> list[str]:
    if not stress:
        return []
    lines = ["## Acquisition-shift stress test",
             f"{stress['images']} test images re-sent as other X-ray chains would send them (cxr/shift/robustness.py), "
             f"at the same threshold {stress['threshold']}. A validation-chosen threshold is known to lose "
             "specificity on a new chain: read these before trusting the test figures elsewhere. Training "
             "re-acquires its augmented views with the same family of changes; the held-out ones were never "
             "trained on.", "",
             "| perturbation | ROC AUC | recall | specificity | Δ specificity |", "|---|---|---|---|---|"]
    for name, m in stress["perturbations"].items():
        name = f"{name} (held out)" if name in stress.get("held_out", []) else name
        lines.append(f"| {name} | {m['roc_auc']} | {m['recall']} | {m['specificity']} | {m['specificity_change']:+.4f} |")
    return lines + [""]


def _counterfactual_lines(cf: dict | None) -> list[str]:
    if not cf:
        return []
    lines = ["## Counterfactual proxy: the class-conditional acquisition shift",
             f"The {cf['images']} test images again, with one class's films re-acquired as the other class's "
             f"chain would have made them (aspect of the film, fine detail: cxr/shift/acquisition.py), at the same "
             f"threshold {cf['threshold']}. `normal_as_pneumonia` is the known shape of the official test split "
             "(its NORMAL films were acquired like the training PNEUMONIA ones). A model that reads the lungs "
             "keeps its figures here; one that reads the acquisition loses specificity. In-house proxy, not "
             "the official split.", "",
             "| variant | ROC AUC | recall | specificity | mean p(NORMAL) |", "|---|---|---|---|---|"]
    for name, m in cf.items():
        if isinstance(m, dict) and "roc_auc" in m:
            lines.append(f"| {name} | {m['roc_auc']} | {m['recall']} | {m['specificity']} | "
                         f"{m['mean_probability']['NORMAL']} |")
    return lines + [""]


def _audit_lines(audit: dict | None, views: dict | None) -> list[str]:
    if not audit:
        return []
    lines = ["## Shortcut audit",
             "How well acquisition features alone (aspect, detail, noise, exposure, borders; cxr/shift/shortcuts.py) "
             "tell the labels, patient-grouped cross-validated ROC AUC (0.5 = nothing to learn):", ""]
    lines += [f"- {split}: {audit[split]['cv_auc']}" for split in ("train", "val", "test") if split in audit]
    if views:
        lines += [f"- training images as acquired: {views.get('as_acquired', {}).get('cv_auc')}; "
                  f"re-acquired training views: {(views.get('reacquired_views') or {}).get('cv_auc')}"]
    follows = audit.get("model_follows_shortcut") or {}
    lines += [f"- the model's test scores follow the shortcut within a class (Spearman): {follows}", ""]
    return lines


def _served_lines(served: dict | None) -> list[str]:
    if not served or not served.get("images"):
        return []
    change = served["abs_change"]
    return ["## Served versus evaluated",
            f"{served['images']} full-size originals as the service preprocesses them, against the data set's "
            f"224-px copies of the same films (another resize chain): |Δp| median {change['median']}, 90th "
            f"percentile {change['p90']}, max {change['max']}; same label for {served['label_agreement']:.0%}.", ""]
