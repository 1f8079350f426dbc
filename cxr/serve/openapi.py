"""The service's OpenAPI contract: what BentoML generates, amended to say what the service does.

BentoML derives ``/docs.json`` from the API signatures, which cannot say that ``/predict``
needs the file ``image`` (or a JSON ``url``), that every refusal is a JSON
``{"error", "status"}`` body with its own status code (400, 403, 408, 413, 415, 422, 429, 503),
what an answer holds (``Prediction``: the label, its probability and threshold, and with a
PNEUMONIA answer the bacterial/viral ``subtype``, or ``subtype_unavailable`` from a model without
one), or that ``/predict_raw`` exists (it is a plain Starlette route). :func:`amend` adds exactly
that to the generated document; :class:`OpenAPIContract` applies it to the ``/docs.json``
response as ASGI middleware, so no BentoML internals are touched.
"""

from __future__ import annotations

import copy
import json

from cxr import LABELS, SUBTYPES
from cxr.serve.decoding import MAX_BATCH_IMAGES

DOCS_PATH = "/docs.json"
ERROR_STATUSES = {
    "400": "Malformed request: missing or extra fields, an unreadable or unsupported image, a bad URL",
    "403": "Fetching by URL is off on this server, or the host is not allowed",
    "408": "The request body arrived too slowly",
    "413": "The upload is too large (bytes, pixels or decoded memory)",
    "415": "Not an image format the service reads",
    "422": "An image, but not one the model can score (e.g. too small)",
    "429": "Too many requests in flight: retry later",
    "503": "The server's memory budget for decoding is in use: retry later",
}
ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, for a person to read"},
        "status": {"type": "integer"},
        "detail": {"description": "Field-level details of a validation error"},
    },
}
PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
SUBTYPE_SCHEMA = {
    "title": "Subtype",
    "description": "Bacterial or viral, given only with a PNEUMONIA answer: a screening aid too, not a diagnosis",
    "type": "object",
    "required": ["label", "probability", "probability_bacterial", "threshold", "notice"],
    "properties": {
        "label": {"type": "string", "enum": list(SUBTYPES)},
        "probability": {**PROBABILITY, "description": "P(label | pneumonia)"},
        "probability_bacterial": {**PROBABILITY, "description": "P(bacterial | pneumonia)"},
        "threshold": {**PROBABILITY, "description": "bacterial when probability_bacterial >= threshold"},
        "notice": {"type": "string"},
    },
}
PREDICTION_SCHEMA = {
    "title": "Prediction",
    "type": "object",
    "required": ["label", "probability", "decision_threshold", "model_tag", "notice"],
    "properties": {
        "label": {"type": "string", "enum": list(LABELS)},
        "probability": {**PROBABILITY, "description": "P(PNEUMONIA)"},
        "decision_threshold": PROBABILITY,
        "model_tag": {"type": "string"},
        "notice": {"type": "string", "description": "Screening aid, not a diagnosis"},
        "warning": {"type": "string", "description": "Present for a model trained on synthetic data"},
        "subtype": {"$ref": "#/components/schemas/Subtype"},
        "subtype_unavailable": {"type": "string", "description": "Why this model gives no subtype (a model exported "
                                                                  "before it): present in every answer of such a model"},
    },
}
EXPLANATION_SCHEMA = {"allOf": [{"$ref": "#/components/schemas/Prediction"}, {
    "type": "object", "required": ["heatmap_png_base64", "heatmap"],
    "properties": {"heatmap_png_base64": {"type": "string"}, "heatmap": {"type": "object"},
                   "subtype_heatmap_png_base64": {"type": "string", "description": "With a subtype: the subtype "
                                                  "head's Grad-CAM towards the subtype answered"},
                   "subtype_heatmap": {"type": "object"}}}]}
BATCH_SCHEMA = {
    "type": "object", "required": ["results", "count", "failed", "model_tag", "notice"],
    "properties": {
        "results": {"type": "array", "items": {"anyOf": [
            {"allOf": [{"$ref": "#/components/schemas/Prediction"},
                       {"type": "object", "required": ["index"], "properties": {"index": {"type": "integer"}}}]},
            {"type": "object", "required": ["index", "error", "status"],
             "properties": {"index": {"type": "integer"}, "error": {"type": "string"}, "status": {"type": "integer"}}},
        ]}},
        "count": {"type": "integer"}, "failed": {"type": "integer"}, "model_tag": {"type": "string"},
        "notice": {"type": "string"},
    },
}
ANSWERS = {"/predict": {"$ref": "#/components/schemas/Prediction"},
           "/predict_raw": {"$ref": "#/components/schemas/Prediction"},
           "/explain": EXPLANATION_SCHEMA, "/predict_batch": BATCH_SCHEMA}
IMAGE_FILE = {"type": "string", "format": "binary", "minLength": 1, "description": "A chest X-ray: JPEG, PNG or DICOM"}
IMAGE_FORM = {"type": "object", "required": ["image"], "properties": {"image": IMAGE_FILE}}
URL_JSON = {"type": "object", "required": ["url"], "additionalProperties": False,
            "properties": {"url": {"type": "string", "format": "uri",
                                   "description": "http(s) URL of the image, fetched only from hosts the "
                                                  "operator allowed (CXR_URL_ALLOWLIST); off by default"}}}
REQUEST_BODIES = {
    "/predict": {"multipart/form-data": IMAGE_FORM, "application/json": URL_JSON},
    "/explain": {"multipart/form-data": IMAGE_FORM, "application/json": URL_JSON},
    "/predict_batch": {"multipart/form-data": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_IMAGES,
                                  # a bad item (even empty) gets its own error inside a 200 answer
                                  "items": {"type": "string", "format": "binary"}}}}},
}
PREDICT_RAW = {
    "post": {
        "operationId": "cxr_screening__predict_raw",
        "summary": "The image file itself as the body: /predict's answer for less CPU",
        "description": "The format is read from the bytes, never from the Content-Type. Screening aid, "
                       "not a diagnosis.",
        "requestBody": {"required": True, "content": {
            media: {"schema": IMAGE_FILE}
            for media in ("application/octet-stream", "image/jpeg", "image/png")}},
        "responses": {"200": {"description": "Successful Response", "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}}}},
        "tags": ["Service APIs"],
    }
}


def amend(spec: dict) -> dict:
    """The generated document with the service's real request and error contract."""
    spec = copy.deepcopy(spec)
    paths = spec.setdefault("paths", {})
    paths.setdefault("/predict_raw", copy.deepcopy(PREDICT_RAW))
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(Error=ERROR_SCHEMA, Prediction=PREDICTION_SCHEMA, Subtype=SUBTYPE_SCHEMA)
    ref = {"$ref": "#/components/schemas/Error"}
    error = {"application/json": {"schema": ref}}
    # BentoML's own field validation answers a list of errors (one per bad item of a list field)
    bad_request = {"application/json": {"schema": {"anyOf": [ref, {"type": "array", "items": ref}]}}}
    for path, item in paths.items():
        operation = item.get("post")
        if operation is None:
            continue
        if path in REQUEST_BODIES:
            operation["requestBody"] = {"required": True, "content": {
                media: {"schema": schema} for media, schema in REQUEST_BODIES[path].items()}}
        responses = operation.setdefault("responses", {})
        if path in ANSWERS:
            responses["200"] = {"description": "The answer (a screening aid, not a diagnosis)",
                                "content": {"application/json": {"schema": copy.deepcopy(ANSWERS[path])}}}
        for status in [s for s in responses if s.startswith(("4", "5"))]:
            responses[status] = {"description": responses[status].get("description", ""), "content": error}
        for status, description in ERROR_STATUSES.items():
            responses[status] = {"description": description, "content": bad_request if status == "400" else error}
    return spec


class OpenAPIContract:
    """ASGI middleware: ``GET /docs.json`` answers :func:`amend` of what the app generated."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != DOCS_PATH or scope.get("method") != "GET":
            return await self.app(scope, receive, send)
        start: dict = {}
        body = bytearray()

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start.get("status") == 200:
            body = bytearray(json.dumps(amend(json.loads(bytes(body)))).encode())
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": bytes(body)})
