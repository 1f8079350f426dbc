"""Export formats, their parity check, and the model card.

Formats: ``model.keras`` (Keras 3), ``saved_model/`` (TF Serving / tf2onnx), and
``model.tflite`` (float; run with LiteRT, the runtime the Lambda handler uses). All take
the output of :func:`cxr.imaging.to_model_input` and return the calibrated probability.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
from pathlib import Path

import numpy as np

from cxr import SCREENING_NOTICE, SYNTHETIC_WARNING, UserError
from cxr.imaging import to_model_input

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
    "Bacterial vs viral pneumonia are not distinguished; other findings are not detected.",
    "Heavily re-compressed JPEGs and images with wide collimation borders raise false alarms (see the "
    "stress test table): send images at their original quality.",
]


def save_tflite(saved_model_dir: Path, out: Path) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    out.write_bytes(converter.convert())


def export_all(model, out_dir: Path) -> dict[str, Path]:
    """Write every format into ``out_dir`` (which must be a fresh directory)."""
    paths = {
        "keras": out_dir / "model.keras",
        "saved_model": out_dir / "saved_model",
        "tflite": out_dir / "model.tflite",
    }
    model.save(paths["keras"])
    model.export(str(paths["saved_model"]), format="tf_saved_model", verbose=False)
    save_tflite(paths["saved_model"], paths["tflite"])
    return paths


class TFLiteModel:
    """A LiteRT interpreter over an exported ``model.tflite`` (also used by the Lambda handler)."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = int(self.input["shape"][0])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for uint8 ``[N, S, S]`` images."""
        x = to_model_input(images)
        if self._batch != len(x):
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self.output["index"])).reshape(-1).copy()


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


def model_card(*, metrics: dict, params: dict, source: dict, train_summary: dict, parity_checks: list[dict], files: dict) -> dict:
    synthetic = bool(source.get("synthetic", False))
    return {
        "name": "cxr-pneumonia-mobilenetv2",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "warning": SYNTHETIC_WARNING if synthetic else None,
        "intended_use": INTENDED_USE,
        "not_intended_for": "Stand-alone diagnosis, adults, non-chest images, any use without clinician review.",
        "limitations": LIMITATIONS,
        "model": {
            "architecture": "MobileNetV2 (Keras 3), global average pooling, one logit, Platt-calibrated sigmoid",
            "input": "float32 [N, S, S, 1] in 0..255 from cxr.imaging.preprocess_bytes (grayscale, "
            "squashed to S x S, per-image intensity normalisation)",
            "output": "probability of PNEUMONIA",
            "imaging": params.get("imaging"),
            "weights_init": train_summary.get("weights"),
            "calibration": train_summary.get("calibration"),
        },
        "decision_threshold": metrics.get("threshold"),
        "target_recall": metrics.get("target_recall"),
        "data": {
            "source": source.get("source"),
            "synthetic": synthetic,
            "dataset_hash": source.get("dataset_hash"),
            "counts": source.get("counts"),
            "test_split": metrics.get("data", {}).get("test_split"),
            "test_split_hash": metrics.get("data", {}).get("test_split_hash"),
            "citation": CITATION,
        },
        "metrics": {"test": metrics.get("test"), "val": metrics.get("val"), "stress": metrics.get("stress")},
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
        f"{card['decision_threshold']} — the highest score reaching recall {card['target_recall']} on the "
        "validation split (chosen on validation, reported on test unchanged).",
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
