"""export: Keras, SavedModel and TFLite files, a parity check, and the model card.

Reads params ``export`` (and records in the card every section that made the model); writes
``models/export/``: the TFLite file carries the subtype head's outputs when train fitted one
(checked against the head on the Keras embedding), and ``subtype.npz`` travels beside it.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np

from cxr import cli, params
from cxr.data.dataset import load_split
from cxr.data.manifest import read_source_info
from cxr.io import atomic_path
from cxr.model.export import export_all, parity
from cxr.model.ood import FILE_NAME as OOD_FILE
from cxr.model.runtime import TFLiteModel
from cxr.model.subtype import FILE_NAME as SUBTYPE_FILE
from cxr.model.subtype import load as load_subtype
from cxr.records import predictions
from cxr.records.evaluation import Evaluation
from cxr.records.model_card import ModelCard
from cxr.records.train_summary import TrainSummary

log = logging.getLogger("export")


def main(argv: list[str] | None = None) -> None:
    p = cli.paths(argv, "export", model="the trained model", ood="the not-a-chest-X-ray detector",
                  subtype="the subtype head",
                  prepared="the prepared splits (parity images)",
                  source="the download stage's source.json", metrics="the evaluate stage's metrics.json",
                  predictions="the evaluate stage's predictions (the drift monitor's reference)",
                  train_summary="the train stage's summary.json", out="the export folder to write")
    cfg = params.section("export")
    tolerance = params.require(cfg, "parity_tolerance", float, "export")
    n_images = params.require(cfg, "parity_images", int, "export")
    import keras

    from cxr.model.network import embeddings, predict

    evaluation, summary = Evaluation.read(p.metrics), TrainSummary.read(p.train_summary)
    model = keras.saving.load_model(p.model)
    head = load_subtype(p.subtype)
    val = load_split(p.prepared, "val")
    sample = val.images[:n_images]
    keras_probs = predict(model, sample)
    with atomic_path(p.out) as tmp:
        tmp.mkdir(parents=True)
        files = export_all(model, tmp, head)
        lite = TFLiteModel(files["tflite"]).outputs_of(sample)
        checks = [parity(keras_probs, lite.probability, tolerance, "tflite (LiteRT)")]
        keras_embedding = embeddings(model, sample)
        scale = max(float(np.abs(keras_embedding).max()), 1e-12)  # the detector reads the embedding: same check
        checks.append(parity(keras_embedding.ravel() / scale, lite.embedding.ravel() / scale, tolerance,
                             "tflite embedding (relative to its largest value)"))
        if head.fitted:  # the served subtype is the head evaluate measured, on the Keras embedding
            checks.append(parity(head.probabilities(keras_embedding), lite.p_bacterial, tolerance,
                                 "tflite P(bacterial) (subtype head)"))
        shutil.copy2(p.ood, tmp / OOD_FILE)
        shutil.copy2(p.subtype, tmp / SUBTYPE_FILE)
        reloaded = keras.saving.load_model(files["keras"])
        checks.append(parity(keras_probs, predict(reloaded, sample), tolerance, "keras (reloaded)"))
        card = ModelCard.build(
            evaluation=evaluation,
            summary=summary,
            params=params.sections(("download", "validate", "split", "imaging", "acquisition", "model", "train",
                                    "ood", "subtype", "evaluate", "export")),
            source=read_source_info(p.source),
            parity_checks=checks,
            files={k: v.relative_to(tmp) for k, v in files.items()},
            val_probabilities=predictions.probabilities(p.predictions, "val").tolist(),
            subtype_head=head.to_dict(),
        )
        card.write(tmp)
    for check in checks:
        log.info("parity %s: max |dp| %.2e (tolerance %s)", check["format"], check["max_abs_diff"], tolerance)
    if card.warning:
        log.warning(card.warning)


if __name__ == "__main__":
    cli.run(main, "export")
