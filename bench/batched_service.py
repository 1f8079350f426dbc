"""Variant for measurement only: BentoML adaptive batching in a separate inference service.

    bentoml serve bench.batched_service:Front   (same model resolution as service.py)

Front decodes/preprocesses (threads), then calls Inferencer.infer, a batchable API that
BentoML's dispatcher fills from concurrent requests. Kept to reproduce the comparison in
docs/serving.md; service.py does not batch across requests (it measured faster).
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np

from cxr.model.runtime import TFLiteModel
from cxr.serve import decoding, serving
from service import MODEL_TAG

MAX_LATENCY_MS = int(os.environ.get("CXR_BATCH_LATENCY_MS", "20"))


@bentoml.service(workers=1, threads=1)
class Inferencer:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.tflite = TFLiteModel(Path(bentoml.models.get(MODEL_TAG).path) / "model.tflite", num_threads=1)

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.tflite.predict(images)


@bentoml.service(workers=1, threads=4)
class Front:
    inferencer = bentoml.depends(Inferencer)

    def __init__(self) -> None:
        stored = bentoml.models.get(MODEL_TAG)
        self.model = serving.ServedModel.load(stored.path, tag=str(stored.tag), tflite_threads=1)

    @bentoml.api
    def predict(self, image: Path = None) -> dict:  # type: ignore[assignment]
        array = decoding.decode(Path(image).read_bytes(), self.model.imaging)
        return self.model.answer(float(self.inferencer.infer(array[None])[0]))
