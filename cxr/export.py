"""Export formats, their parity check, and the model card.

Formats: ``model.keras`` (Keras 3), ``saved_model/`` (TF Serving / tf2onnx), and
``model.tflite`` (float; run with LiteRT, the runtime the Lambda handler uses). All take
the output of :func:`cxr.imaging.to_model_input` and return the calibrated probability.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from cxr import SCREENING_NOTICE, SYNTHETIC_WARNING, UserError

log = logging.getLogger(__name__)
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


def save_tflite(saved_model_dir: Path, out: Path) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    out.write_bytes(converter.convert())


def with_activation_map(model):
    """The model with a second output: the class activation map ``[N, h, w, 1]``, the logit's
    Dense kernel applied at every position of the last feature map (see :mod:`cxr.runtime`)."""
    import keras

    from cxr.model import LAST_CONV

    kernel, _ = model.get_layer("logit").get_weights()
    cam = keras.layers.Dense(1, use_bias=False, name="class_activation")
    out = cam(model.get_layer(LAST_CONV).output)
    cam.set_weights([kernel])
    return keras.Model(model.input, [model.output, out], name="screening_with_map")


def export_all(model, out_dir: Path) -> dict[str, Path]:
    """Write every format into ``out_dir`` (which must be a fresh directory)."""
    paths = {
        "keras": out_dir / "model.keras",
        "saved_model": out_dir / "saved_model",
        "tflite": out_dir / "model.tflite",
    }
    model.save(paths["keras"])
    model.export(str(paths["saved_model"]), format="tf_saved_model", verbose=False)
    # The TFLite file also carries the activation map, so serving explains without TensorFlow.
    with tempfile.TemporaryDirectory() as tmp:
        with_activation_map(model).export(tmp + "/with_map", format="tf_saved_model", verbose=False)
        save_tflite(Path(tmp) / "with_map", paths["tflite"])
    return paths


def parity(keras_probs: np.ndarray, other_probs: np.ndarray, tolerance: float, name: str) -> dict:
    diff = np.abs(np.asarray(keras_probs) - np.asarray(other_probs))
    result = {
        "format": name,
        "images": int(len(diff)),
        "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
        "mean_abs_diff": float(diff.mean()) if len(diff) else 0.0,
        "tolerance": tolerance,
    }
    result["passed"] = result["max_abs_diff"] <= tolerance
    if not result["passed"]:
        raise UserError(
            f"export parity failed: {name} differs from Keras by up to {result['max_abs_diff']:.5f} "
            f"(tolerance {tolerance}) on {len(diff)} validation images"
        )
    return result


def git_revision() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    rev = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": rev or None, "dirty": dirty}


THRESHOLD_METHODS = {
    "val": "the strictest threshold reaching the target recall on the validation split",
    "val+counterfactual": "the strictest threshold reaching the target recall on the validation split and its "
                          "counterfactual copies (each image given the other class's acquisition), so that "
                          "the recall holds when the acquisition changes",
}


def model_card(*, metrics: dict, params: dict, source: dict, train_summary: dict, parity_checks: list[dict], files: dict) -> dict:
    synthetic = bool(source.get("synthetic", False))
    for record in ("imaging", "architecture"):
        if not isinstance(train_summary.get(record), dict):
            raise UserError(f"the train summary has no '{record}' record: rerun the train stage")
    return {
        "name": f"cxr-pneumonia-{train_summary['architecture']['backbone'].replace('_', '')}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "warning": SYNTHETIC_WARNING if synthetic else None,
        "intended_use": INTENDED_USE,
        "not_intended_for": "Stand-alone diagnosis, adults, non-chest images, any use without clinician review.",
        "limitations": LIMITATIONS,
        "model": {
            "architecture": f"{train_summary['architecture']['description']}, global average pooling, one logit, "
                            "Platt-calibrated sigmoid",
            "backbone": train_summary["architecture"],
            "input": "float32 [N, S, S, 1] in 0..255 from cxr.imaging.preprocess_bytes (grayscale, "
            "squashed to S x S, per-image intensity normalisation)",
            "output": "probability of PNEUMONIA",
            "imaging": train_summary["imaging"],
            "weights_init": train_summary.get("weights"),
            "calibration": train_summary.get("calibration"),
        },
        "decision_threshold": metrics.get("threshold"),
        "target_recall": metrics.get("target_recall"),
        "decision_threshold_method": THRESHOLD_METHODS.get(metrics.get("threshold_chosen_on", "val")),
        "data": {
            "source": source.get("source"),
            "synthetic": synthetic,
            "dataset_hash": source.get("dataset_hash"),
            "counts": source.get("counts"),
            "test_split": metrics.get("data", {}).get("test_split"),
            "test_split_hash": metrics.get("data", {}).get("test_split_hash"),
            "citation": CITATION,
        },
        "metrics": {"test": metrics.get("test"), "val": metrics.get("val"), "stress": metrics.get("stress"),
                    "counterfactual": metrics.get("counterfactual"), "proxy": metrics.get("proxy"),
                    "shortcut_audit": metrics.get("shortcut_audit"), "served_vs_copy": metrics.get("served_vs_copy")},
        "training_views": {"reacquire": train_summary.get("reacquire"), "selected_on": train_summary.get("selected_on"),
                           "shortcut_audit_views": train_summary.get("shortcut_audit_views")},
        "params": params,
        "git": git_revision(),
        "parity": parity_checks,
        "files": {k: str(v) for k, v in files.items()},
    }


def model_card_markdown(card: dict) -> str:
    t = card["metrics"]["test"] or {}
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
        "",
        "## Test-split metrics",
        f"Test split: {card['data']['test_split']}; ROC AUC {t.get('roc_auc')}, PR AUC {t.get('pr_auc')}, "
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
        "## Data",
        f"Source: `{card['data']['source']}`; dataset hash `{card['data']['dataset_hash']}`.",
        "",
        f"Citation: {card['data']['citation']}",
        "",
        "## Model",
        f"{card['model']['architecture']}. Input: {card['model']['input']}. Imaging: `{card['model']['imaging']}`. "
        f"Weights init: `{card['model']['weights_init']}`. Calibration: `{card['model']['calibration']}`.",
        "",
        "## Limitations",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Lineage",
        f"Git commit `{card['git']['commit']}` (dirty: {card['git']['dirty']}); created {card['created']}.",
        "",
        "## Export parity",
        *[f"- {p['format']}: max |Δp| {p['max_abs_diff']:.2e} on {p['images']} images (tolerance {p['tolerance']})"
          for p in card["parity"]],
        "",
    ]
    return "\n".join(lines)


def _stress_lines(stress: dict | None) -> list[str]:
    if not stress:
        return []
    lines = ["## Acquisition-shift stress test",
             f"{stress['images']} test images re-sent as other X-ray chains would send them (cxr/robustness.py), "
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
             f"chain would have made them (aspect of the film, fine detail: cxr/acquisition.py), at the same "
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
             "How well acquisition features alone (aspect, detail, noise, exposure, borders; cxr/shortcuts.py) "
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
