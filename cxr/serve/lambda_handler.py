"""AWS Lambda (API Gateway) entry point: the exported TFLite model on LiteRT, no TensorFlow.

Handler: ``cxr.serve.lambda_handler.handler``. The model directory (``model.tflite`` and
``model_card.json`` -- an export directory or a BentoML store entry copied into the
deployment package or a layer) is ``$CXR_MODEL_DIR``, default ``$LAMBDA_TASK_ROOT/model``.
It is loaded once per container (cold start) and reused.

Requests (API Gateway REST or HTTP API events, body usually base64 as API Gateway sends
binary media):

- ``POST .../predict`` with the image bytes as the body (``Content-Type: image/jpeg``,
  ``image/png`` or ``application/dicom``; any other binary type is sniffed) -> one prediction
  (list ``application/dicom`` among the API's binary media types, or API Gateway sends DICOM
  as text);
- ``POST`` with JSON ``{"image": "<base64>"}`` -> one prediction, or
  ``{"images": ["<base64>", ...]}`` -> a batch (per-image results and errors);
- ``POST .../explain`` (either body) -> the prediction plus the heatmap, as the service's
  ``/explain`` (LiteRT too);
- ``GET .../metadata`` -> the model card.

Answers: the same JSON as the BentoML service (label, probability, decision threshold,
model tag, screening-aid notice; with a PNEUMONIA answer the bacterial/viral ``subtype``, and from a
model exported before the subtype ``subtype_unavailable``), with the same 4xx statuses and
messages for bad input.
No URL fetching and no file paths: only the bytes in the event are read.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path

from cxr import UserError
from cxr.serve.decoding import MAX_REQUEST_BYTES, RequestError, decode
from cxr.serve.explain import explanation
from cxr.serve.serving import ServedModel, predict_many

log = logging.getLogger(__name__)
_MODELS: dict[str, ServedModel] = {}


def model_dir() -> Path:
    default = Path(os.environ.get("LAMBDA_TASK_ROOT", Path(__file__).resolve().parents[2])) / "model"
    return Path(os.environ.get("CXR_MODEL_DIR", default))


def load_model(path: Path | None = None) -> ServedModel:
    path = Path(path or model_dir())
    key = str(path.resolve())
    if key not in _MODELS:
        threads = int(os.environ.get("CXR_TFLITE_THREADS", "0")) or None
        _MODELS[key] = ServedModel.load(path, tag=os.environ.get("CXR_MODEL_TAG"), tflite_threads=threads)
    return _MODELS[key]


def _response(status: int, body: dict) -> dict:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(body), "isBase64Encoded": False}


def _b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(f"{what} must be a base64 string", 400)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not valid base64", 400) from None


def _headers(event: dict) -> dict:
    return {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}


def _method_and_path(event: dict) -> tuple[str, str]:
    http = (event.get("requestContext") or {}).get("http") or {}
    method = event.get("httpMethod") or http.get("method") or "POST"
    path = event.get("rawPath") or event.get("path") or http.get("path") or "/predict"
    return method.upper(), path


def handle(event: dict, model: ServedModel) -> tuple[int, dict]:
    if not isinstance(event, dict):
        raise RequestError("the event must be an API Gateway request object", 400)
    method, path = _method_and_path(event)
    if path.rstrip("/").endswith("/metadata"):
        return 200, model.model_card()
    if method != "POST":
        raise RequestError(f"{method} not allowed: POST an image to /predict", 405)
    body = event.get("body")
    if body is None or body == "":
        raise RequestError("empty body: send the image bytes, or JSON {\"image\": \"<base64>\"}", 400)
    if not isinstance(body, str):
        raise RequestError("the event body must be a string", 400)
    raw = _b64(body, "body") if event.get("isBase64Encoded") else body.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_REQUEST_BYTES:
        raise RequestError(f"request body of {len(raw)} bytes is over the {MAX_REQUEST_BYTES} byte limit", 413)
    content_type = _headers(event).get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or (not content_type and raw[:1] == b"{"):
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("body is not valid JSON", 400) from None
        if not isinstance(doc, dict):
            raise RequestError("JSON body must be an object with 'image' or 'images'", 400)
        if "images" in doc:
            images = doc["images"]
            if not isinstance(images, list):
                raise RequestError("'images' must be a list of base64 strings", 400)
            return 200, predict_many(model, [_b64(s, f"images[{i}]") for i, s in enumerate(images)])
        if "image" not in doc:
            raise RequestError("JSON body needs 'image' (base64) or 'images' (list of base64)", 400)
        raw = _b64(doc["image"], "'image'")
    if path.rstrip("/").endswith("/explain"):
        return 200, explanation(model, decode(raw, model.imaging))
    return 200, model.predict_bytes(raw)


def handler(event, context=None):
    """AWS Lambda entry point (API Gateway proxy integration)."""
    try:
        model = load_model()
    except UserError as exc:
        log.error("model not loadable: %s", exc)
        return _response(503, {"error": f"model unavailable: {exc}", "status": 503})
    try:
        status, body = handle(event, model)
        return _response(status, body)
    except RequestError as exc:
        return _response(exc.status, exc.to_dict())
