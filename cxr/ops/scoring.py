"""Score an exported model on the current test split the way the service will see it.

Raw image bytes -> :func:`cxr.imaging.preprocess.preprocess_bytes` (with the *model's own* imaging
config, from its card) -> the exported TFLite file. Used by the gate to measure the
champion on the challenger's test split, and the challenger itself, which doubles as a
check that the exported file on raw bytes reproduces the evaluate stage's figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr import UserError
from cxr import layout
from cxr.data.dataset import load_split
from cxr.imaging.preprocess import preprocess_bytes
from cxr.io import file_digests
from cxr.metrics import at_threshold, ranking
from cxr.records.evaluation import GatedFigures
from cxr.records.model_card import JSON_NAME, ModelCard


def score_export(model_dir: Path, project: Path, batch_size: int = 32) -> dict:
    """``figures`` (:class:`GatedFigures`, as a dict), the test ``images`` and the sha256 of
    the files scored (the gate ties promotion to exactly these files)."""
    from cxr.model.runtime import TFLiteModel

    if not (model_dir / "model.tflite").exists():
        raise UserError(f"{model_dir} lacks model.tflite: not an exported model")
    card = ModelCard.read(model_dir)
    test = load_split(layout.path("evaluate", "prepared", project), "test")
    raw = layout.path("evaluate", "raw", project)
    model = TFLiteModel(model_dir / "model.tflite")
    scores = []
    for start in range(0, len(test), batch_size):
        batch = [preprocess_bytes((raw / str(p)).read_bytes(), card.imaging) for p in test.paths[start:start + batch_size]]
        scores.append(model.predict(np.stack(batch)))
    probs = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    at = at_threshold(test.labels, probs, card.decision_threshold)
    figures = GatedFigures(roc_auc=ranking(test.labels, probs)["roc_auc"], recall=at["recall"],
                           specificity=at["specificity"], threshold=card.decision_threshold,
                           dataset_hash=card.dataset_hash, test_split_hash=card.test_split_hash,
                           synthetic=card.synthetic, confusion=at["confusion"])
    return {"figures": figures.to_dict(), "images": len(test),
            "files_sha256": file_digests(model_dir, ("model.tflite", JSON_NAME))}
