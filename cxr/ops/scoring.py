"""Score an exported model on the current test split the way the service will see it.

Raw image bytes -> :func:`cxr.imaging.preprocess.preprocess_bytes` (with the *model's own* imaging
config, from its card) -> the exported TFLite file. Used by the gate to measure the
champion on the challenger's test split, and the challenger itself, which doubles as a
check that the exported file on raw bytes reproduces the evaluate stage's figures. With a subtype
head in the export, its figures come from the same pass (P(bacterial) on the test PNEUMONIA films
with a known subtype, at the card's subtype threshold); an export without one has none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr import UserError
from cxr import layout
from cxr.data.dataset import known_subtype, load_split
from cxr.imaging.preprocess import preprocess_bytes
from cxr.io import file_digests
from cxr.metrics import at_threshold, ranking, subtype_figures
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
    scores, bacterial = [], []
    for start in range(0, len(test), batch_size):
        batch = [preprocess_bytes((raw / str(p)).read_bytes(), card.imaging) for p in test.paths[start:start + batch_size]]
        out = model.outputs_of(np.stack(batch))
        scores.append(out.probability)
        bacterial.append(out.p_bacterial)
    probs = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    at = at_threshold(test.labels, probs, card.decision_threshold)
    sub = {}
    films, kinds = known_subtype(test)
    if model.has_subtype and card.subtype_threshold is not None and len(films) and scores:
        m = subtype_figures(kinds, np.concatenate(bacterial)[films], card.subtype_threshold)
        sub = {"subtype_roc_auc": m["roc_auc"], "subtype_accuracy": m["accuracy"],
               "subtype_threshold": card.subtype_threshold, "subtype_films": m["films"]}
    figures = GatedFigures(roc_auc=ranking(test.labels, probs)["roc_auc"], recall=at["recall"],
                           specificity=at["specificity"], threshold=card.decision_threshold,
                           dataset_hash=card.dataset_hash, test_split_hash=card.test_split_hash,
                           synthetic=card.synthetic, confusion=at["confusion"], **sub)
    return {"figures": figures.to_dict(), "images": len(test),
            "files_sha256": file_digests(model_dir, ("model.tflite", JSON_NAME))}
