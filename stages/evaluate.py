"""evaluate: test-split metrics at 0.5 and at the threshold chosen on validation.

Reads params ``evaluate``; writes ``metrics.json`` (git-tracked, for ``dvc metrics diff``),
``reports/plots/`` (ROC, PR, confusion matrix for ``dvc plots``) and
``reports/predictions.csv`` (every val/test probability, for audits and serving checks).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cxr import LABELS, SYNTHETIC_WARNING, cli, params
from cxr.dataset import load_split
from cxr.io import write_csv, write_json
from cxr.metrics import at_threshold, choose_threshold, curves, ranking, test_split_hash

log = logging.getLogger("evaluate")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.keras")
PLOTS = Path("reports/plots")
SOURCE = Path("data/raw/source.json")
RAW = Path("data/raw")


def main() -> None:
    cfg = params.section("evaluate")
    target_recall = params.require(cfg, "target_recall", float, "evaluate")
    points = params.require(cfg, "plot_points", int, "evaluate")
    stress_images = params.require(cfg, "stress_images", int, "evaluate")
    stress_seed = params.require(cfg, "stress_seed", int, "evaluate")
    import keras

    from cxr.model import predict

    model = keras.saving.load_model(MODEL)
    val, test = load_split(PREPARED, "val"), load_split(PREPARED, "test")
    val_scores = predict(model, val.images)
    test_scores = predict(model, test.images)

    threshold = choose_threshold(val.labels, val_scores, target_recall)
    source = json.loads(SOURCE.read_text()) if SOURCE.exists() else {}
    raw_splits = set(source.get("counts", {}).keys()) if isinstance(source.get("counts"), dict) else set()
    metrics = {
        "threshold": round(threshold, 6),
        "target_recall": target_recall,
        "test": {
            **ranking(test.labels, test_scores),
            "images": len(test),
            "at_threshold": at_threshold(test.labels, test_scores, threshold),
            "at_0.5": at_threshold(test.labels, test_scores, 0.5),
        },
        "val": {
            **ranking(val.labels, val_scores),
            "images": len(val),
            "at_threshold": at_threshold(val.labels, val_scores, threshold),
        },
        "data": {
            "synthetic": bool(source.get("synthetic", False)),
            "dataset_hash": source.get("dataset_hash"),
            "test_split": "source test/ folder" if "test" in raw_splits else "carved from train by patient",
            "test_split_hash": test_split_hash(source.get("dataset_hash"), test.paths),
        },
    }
    if stress_images > 0:
        metrics["stress"] = _stress(model, test, threshold, stress_images, stress_seed)
    write_json("metrics.json", metrics)

    test_curves = curves(test.labels, test_scores, points)
    write_json(PLOTS / "roc.json", test_curves["roc"])
    write_json(PLOTS / "pr.json", test_curves["pr"])
    predicted = test_scores >= threshold
    write_csv(
        PLOTS / "confusion.csv",
        ({"actual": LABELS[int(y)], "predicted": LABELS[int(p)]} for y, p in zip(test.labels, predicted)),
        ["actual", "predicted"],
    )
    write_csv(
        "reports/predictions.csv",
        (
            {"split": name, "path": path, "label": LABELS[int(y)], "probability": f"{s:.6f}"}
            for name, data, scores in (("val", val, val_scores), ("test", test, test_scores))
            for path, y, s in zip(data.paths, data.labels, scores)
        ),
        ["split", "path", "label", "probability"],
    )
    t = metrics["test"]
    log.info(
        "test: AUC %s | threshold %.4f (val recall target %.2f): recall %.3f specificity %.3f "
        "accuracy %.3f | at 0.5: recall %.3f specificity %.3f",
        t["roc_auc"], threshold, target_recall, t["at_threshold"]["recall"], t["at_threshold"]["specificity"],
        t["at_threshold"]["accuracy"], t["at_0.5"]["recall"], t["at_0.5"]["specificity"],
    )
    if metrics["data"]["synthetic"]:
        log.warning(SYNTHETIC_WARNING)


def _stress(model, test, threshold: float, n_images: int, seed: int) -> dict:
    """The acquisition-shift stress test on a stratified sample of the test split."""
    from cxr.imaging import ImagingConfig
    from cxr.model import predict
    from cxr.robustness import stratified_sample, stress_test

    summary = json.loads(Path("reports/train/summary.json").read_text()) if Path("reports/train/summary.json").exists() else {}
    imaging = ImagingConfig.from_params(summary.get("imaging") or {"image_size": int(test.images.shape[1])})
    idx = stratified_sample(test.labels, n_images, seed)
    raw = [(RAW / str(test.paths[i])).read_bytes() for i in idx]
    result = stress_test(raw, test.labels[idx], threshold, imaging, lambda x: predict(model, x))
    for name, m in result["perturbations"].items():
        log.info("stress %-20s AUC %s recall %.3f specificity %.3f (%+.3f)", name, m["roc_auc"], m["recall"],
                 m["specificity"], m["specificity_change"])
    return result


if __name__ == "__main__":
    cli.run(main, "evaluate")
