"""Score an exported model on the current test split the way the service will see it.

Raw image bytes -> :func:`cxr.imaging.preprocess_bytes` (with the *model's own* imaging
config, from its card) -> the exported TFLite file. Used by the gate to measure the
champion on the challenger's test split, and the challenger itself, which doubles as a
check that the exported file on raw bytes reproduces the evaluate stage's figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxr import UserError
from cxr import layout
from cxr.dataset import load_split
from cxr.imaging import ImagingConfig, preprocess_bytes
from cxr.io import file_digests
from cxr.metrics import at_threshold, ranking


def score_export(model_dir: Path, project: Path, batch_size: int = 32) -> dict:
    """Figures shaped like ``metrics.json`` (``test``, ``threshold``, ``data``)."""
    from cxr.runtime import TFLiteModel

    card_path = model_dir / "model_card.json"
    if not card_path.exists() or not (model_dir / "model.tflite").exists():
        raise UserError(f"{model_dir} lacks model_card.json or model.tflite: not an exported model")
    card = json.loads(card_path.read_text())
    imaging = ImagingConfig.from_params((card.get("model") or {}).get("imaging") or {})
    threshold = float(card["decision_threshold"])
    test = load_split(layout.path("evaluate", "prepared", project), "test")
    raw = layout.path("evaluate", "raw", project)
    model = TFLiteModel(model_dir / "model.tflite")
    scores = []
    for start in range(0, len(test), batch_size):
        batch = [preprocess_bytes((raw / str(p)).read_bytes(), imaging) for p in test.paths[start:start + batch_size]]
        scores.append(model.predict(np.stack(batch)))
    probs = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    data = card.get("data") or {}
    return {
        "files_sha256": file_digests(model_dir, ("model.tflite", "model_card.json")),
        "threshold": threshold,
        "test": {**ranking(test.labels, probs), "images": len(test),
                 "at_threshold": at_threshold(test.labels, probs, threshold)},
        "data": {"dataset_hash": data.get("dataset_hash"), "test_split_hash": data.get("test_split_hash"),
                 "synthetic": bool(data.get("synthetic"))},
    }
