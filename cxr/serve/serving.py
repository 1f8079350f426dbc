"""The served model and its answers, shared by ``service.py`` and the Lambda handler.

Nothing here knows BentoML: it takes model input decoded by :mod:`cxr.serve.decoding` (THE
training preprocessing), runs the exported TFLite model (LiteRT: the prediction and, from the
same pass, the explanation that :mod:`cxr.serve.explain` draws and the bacterial/viral subtype;
no TensorFlow), refuses what is not a chest X-ray, and builds the answers. A PNEUMONIA answer
carries the subtype (``subtype``), a NORMAL one none; a model exported without the subtype head
says so in every answer (``subtype_unavailable``) and in its metadata.

Every refusal is a :class:`cxr.serve.decoding.RequestError` with an HTTP status and a specific
message; the service turns it into a JSON error, never a traceback. Image bytes are never logged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr import (HOW_TO_SERVE_REAL, LABELS, POSITIVE_LABEL, SCREENING_NOTICE, SUBTYPE_NOTICE, SUBTYPES,
                 SYNTHETIC_WARNING, UserError)
from cxr.imaging.preprocess import ImagingConfig
from cxr.records.model_card import MARKDOWN_NAME as CARD_MARKDOWN
from cxr.records.model_card import ModelCard
from cxr.serve.decoding import MAX_BATCH_IMAGES, RequestError, decode, without_local_details

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the served model


@dataclass
class ServedModel:
    """An exported model directory (model.tflite, model_card.json) ready to serve."""

    path: Path
    tag: str
    card: ModelCard  # the record that travels with the files: imaging and threshold come from it
    tflite_threads: int | None = None

    def __post_init__(self):
        from cxr.model import ood
        from cxr.model.runtime import TFLiteModel

        self._tflite = TFLiteModel(self.path / "model.tflite", num_threads=self.tflite_threads)
        self._tflite_lock = threading.Lock()
        # Explanations get their own interpreter: a /predict never waits for one to finish.
        self._explainer = TFLiteModel(self.path / "model.tflite", num_threads=self.tflite_threads)
        self._explainer_lock = threading.Lock()
        detector = self.path / ood.FILE_NAME
        self.detector = ood.load(detector) if detector.is_file() and self._tflite.has_embedding else None
        if self.detector is None:
            log.warning("model %s has no not-a-chest-X-ray detector (exported before it existed): every "
                        "image gets a label; re-export it to refuse what is not a chest X-ray", self.tag)
        # The subtype needs both the card's threshold and the file's outputs; without either, why not.
        self.subtype_threshold = self.card.subtype_threshold if self._tflite.has_subtype else None
        self.no_subtype = self.card.no_subtype_reason or (
            None if self._tflite.has_subtype else "this model.tflite lacks the subtype outputs: re-export it")
        if self.no_subtype:
            log.warning("model %s gives no bacterial/viral subtype: %s", self.tag, self.no_subtype)

    @classmethod
    def load(cls, path: str | Path, tag: str | None = None, tflite_threads: int | None = None) -> "ServedModel":
        path = Path(path)
        if not (path / "model.tflite").is_file():
            raise UserError(f"{path} lacks model.tflite: not an exported cxr model (re-export it)")
        card = ModelCard.read(path)
        return cls(path=path, tag=tag or card.name, card=card, tflite_threads=tflite_threads)

    @property
    def imaging(self) -> ImagingConfig:
        return self.card.imaging

    @property
    def threshold(self) -> float:
        return self.card.decision_threshold

    @property
    def synthetic(self) -> bool:
        return self.card.synthetic

    # -- inference
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """TFLite (LiteRT) probabilities for uint8 ``[N, S, S]`` (one interpreter, serialised)."""
        with self._tflite_lock:
            return self._tflite.predict(images)

    def screen(self, images: np.ndarray) -> tuple[np.ndarray, list[RequestError | None]]:
        """Probabilities and, per image, the refusal when it is not a chest X-ray (None when it
        is, or when the model has no detector): one forward pass for both."""
        probs, _, refusals = self.assess(images)
        return probs, refusals

    def assess(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[RequestError | None]]:
        """:meth:`screen` and P(bacterial | pneumonia) per image (None without a subtype), all from
        one forward pass."""
        with self._tflite_lock:
            out = self._tflite.outputs_of(images)
        bacterial = out.p_bacterial if self.subtype_threshold is not None else None
        if self.detector is None:
            return out.probability, bacterial, [None] * len(images)
        return out.probability, bacterial, self._refusals(out.embedding, images)

    def _refusals(self, embedding: np.ndarray, images: np.ndarray) -> list[RequestError | None]:
        from cxr.model.ood import Features

        # One scoring: an image with no failing test passes (what OodDetector.passes decides).
        refusal = unlike_synthetic_films if self.synthetic else not_a_chest_xray
        return [refusal(why) if why else None for why in self.detector.reasons(Features.of(embedding, images))]

    def predict_bytes(self, data: bytes | None) -> dict:
        """Image file bytes -> the answer for one image (RequestError for bad bytes, or for an
        image that is not a chest X-ray)."""
        image = decode(data, self.imaging)
        probs, bacterial, refusals = self.assess(image[None])
        if refusals[0] is not None:
            raise refusals[0]
        return self.answer(float(probs[0]), None if bacterial is None else float(bacterial[0]))

    def explain(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Heatmap in [0, 1] (Grad-CAM at out_relu, as the class activation map) and the
        probability, from one LiteRT forward pass, for one uint8 ``[S, S]`` image; a
        RequestError when it is not a chest X-ray."""
        heat, probability, _, _ = self.explain_all(image)
        return heat, probability

    def explain_all(self, image: np.ndarray) -> tuple[np.ndarray, float, float | None, np.ndarray | None]:
        """:meth:`explain`, and P(bacterial) with the subtype head's raw activation map ``[h, w]``
        (None without a subtype), from the same pass."""
        from cxr.model.runtime import activation_map

        if not self._explainer.map_channels:
            raise UserError("this model.tflite has no activation-map output: re-export it to explain")
        with self._explainer_lock:
            out = self._explainer.outputs_of(image[None])
        if self.detector is not None and out.embedding is not None:
            refusal = self._refusals(out.embedding, image[None])[0]
            if refusal is not None:
                raise refusal
        heat = activation_map(out.maps[0, ..., 0], image.shape[0])
        if self.subtype_threshold is None or out.maps.shape[-1] < 2:
            return heat, float(out.probability[0]), None, None
        return heat, float(out.probability[0]), float(out.p_bacterial[0]), out.maps[0, ..., 1]

    # -- answers
    def answer(self, probability: float, p_bacterial: float | None = None) -> dict:
        return prediction(probability, self.threshold, self.tag, synthetic=self.synthetic, p_bacterial=p_bacterial,
                          subtype_threshold=self.subtype_threshold, no_subtype=self.no_subtype)

    def model_card(self) -> dict:
        card_md = self.path / CARD_MARKDOWN
        return without_local_details({
            "model_tag": self.tag,
            "decision_threshold": self.threshold,
            "imaging": self.imaging.to_dict(),
            "labels": list(LABELS),
            "positive_label": POSITIVE_LABEL,
            "runtime": {"predict": "TFLite (LiteRT)",
                        "explain": "the same TFLite pass: class activation map at out_relu (= Grad-CAM for this head)",
                        "not_a_chest_xray": "refused (422) from the same pass's embedding (cxr/model/ood.py)"
                        if self.detector is not None else "not detected: this export predates the detector",
                        "subtype": "P(bacterial | pneumonia) from the same pass, given with PNEUMONIA answers only, "
                                   "with its own class activation map in /explain"
                        if self.no_subtype is None else f"none: {self.no_subtype}"},
            "subtype": {"available": True, "labels": list(SUBTYPES), "threshold": self.subtype_threshold,
                        "notice": SUBTYPE_NOTICE} if self.no_subtype is None
            else {"available": False, "reason": self.no_subtype},
            "notice": SCREENING_NOTICE,
            "warning": SYNTHETIC_WARNING if self.synthetic else None,
            "card": {k: v for k, v in self.card.to_dict().items() if k != "files"},  # no server paths
            "card_markdown": card_md.read_text() if card_md.is_file() else None,
        })


def health(tag: str, card: ModelCard) -> dict:
    """What ``/healthz`` says: the served model, its data, whether it gives the subtype, and for a
    synthetic one the warning."""
    return {"status": "ok", "model_tag": tag, "trained_on": "synthetic films (NOT a medical model)" if card.synthetic
            else without_local_details(str(card.data.get("source"))), "synthetic": card.synthetic,
            "decision_threshold": card.decision_threshold, "subtype": card.no_subtype_reason is None,
            "notice": SCREENING_NOTICE, **({"warning": SYNTHETIC_WARNING} if card.synthetic else {})}


def not_a_chest_xray(reasons: list[str]) -> RequestError:
    return RequestError(f"not a chest X-ray ({'; '.join(reasons)}): this service screens chest radiographs only "
                        "and gives no label for other images", 422, "not_a_chest_xray")


def unlike_synthetic_films(reasons: list[str]) -> RequestError:
    """The refusal of a model trained on the synthetic default: its detector knows only generated
    films, so a real chest X-ray is as far from them as a photograph. Saying "not a chest X-ray"
    would be true of the detector and wrong for the user."""
    return RequestError(f"unlike the SYNTHETIC films this demo model was trained on ({'; '.join(reasons)}): it "
                        "knows only generated images, so it refuses real chest X-rays too and gives no label. "
                        + HOW_TO_SERVE_REAL, 422, "unlike_synthetic_films")


def prediction(probability: float, threshold: float, tag: str, *, synthetic: bool = False,
               p_bacterial: float | None = None, subtype_threshold: float | None = None,
               no_subtype: str | None = None) -> dict:
    """The answer for one image. Positive when ``probability >= threshold`` (as in cxr.metrics).
    A PNEUMONIA answer carries the subtype when the model has one (``p_bacterial`` and its
    threshold); a NORMAL answer none; a model without a subtype says why (``no_subtype``)."""
    p = float(probability)
    label = POSITIVE_LABEL if p >= threshold else LABELS[0]
    out = {
        "label": label,
        "probability": round(p, 6),
        "decision_threshold": threshold,
        "model_tag": tag,
        "notice": SCREENING_NOTICE,
        **({"warning": SYNTHETIC_WARNING} if synthetic else {}),
    }
    if no_subtype is not None:
        out["subtype_unavailable"] = no_subtype
    elif label == POSITIVE_LABEL and p_bacterial is not None and subtype_threshold is not None:
        out["subtype"] = subtype_answer(p_bacterial, subtype_threshold)
    return out


def subtype_answer(p_bacterial: float, threshold: float) -> dict:
    """Bacterial when ``p_bacterial >= threshold`` (the threshold chosen on validation, from the card)."""
    b = float(p_bacterial)
    bacterial = b >= threshold
    return {"label": SUBTYPES[0] if bacterial else SUBTYPES[1], "probability": round(b if bacterial else 1.0 - b, 6),
            "probability_bacterial": round(b, 6), "threshold": threshold, "notice": SUBTYPE_NOTICE}


def predict_many(model: ServedModel, items: list[bytes | None], errors: dict | None = None) -> dict:
    """Batch answer: one result per item, in order (``index``); a bad item gets its own error and
    status, the others are scored in one TFLite call. An ``errors`` dict, if given, receives each
    refused item's RequestError by index (for the audit trail's reason codes)."""
    errors = {} if errors is None else errors
    if not items:
        raise RequestError("no images: send one or more files in the multipart field 'images'", 400)
    if len(items) > MAX_BATCH_IMAGES:
        raise RequestError(f"too many images: {len(items)} (limit {MAX_BATCH_IMAGES} per request)", 413,
                           "too_many_images")
    arrays, results = [], []
    for index, data in enumerate(items):
        try:
            arrays.append((index, decode(data, model.imaging, what=f"image {index}")))
            results.append(None)
        except RequestError as exc:
            errors[index] = exc
            results.append({"index": index, **exc.to_dict()})
    if arrays:
        probs, bacterial, refusals = model.assess(np.stack([a for _, a in arrays]))
        bacterial = [None] * len(probs) if bacterial is None else bacterial.tolist()
        for (index, _), p, b, refusal in zip(arrays, probs, bacterial, refusals):
            results[index] = {"index": index, **(refusal.to_dict() if refusal else model.answer(float(p), b))}
            if refusal:
                errors[index] = refusal
    failed = sum(1 for r in results if "error" in r)
    return {"results": results, "count": len(results), "failed": failed,
            "model_tag": model.tag, "notice": SCREENING_NOTICE}
