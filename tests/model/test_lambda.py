"""The Lambda handler, driven by simulated API Gateway events (no AWS; the handler is the
same function Lambda would call, on the promoted store entry's model.tflite via LiteRT).

Parity with the service: both run the same model.tflite on the same preprocessing, so the
probabilities agree to 1e-5 (float summation order may differ with the thread count).
"""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import pytest
import requests

from tests.serving_fixtures import blob_images, jpeg_bytes, png_bytes

PARITY_TOLERANCE = 1e-5
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lam(promoted_model, monkeypatch_module):
    version = promoted_model["tag"].split(":")[1]
    entry = promoted_model["bentoml_home"] / "models" / "cxr-pneumonia" / version
    assert (entry / "model.tflite").is_file()
    monkeypatch_module.setenv("CXR_MODEL_DIR", str(entry))
    monkeypatch_module.setenv("CXR_MODEL_TAG", promoted_model["tag"])
    from cxr.serve import lambda_handler

    lambda_handler._MODELS.clear()
    return lambda_handler


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def api_gateway_event(body: bytes, content_type: str = "image/jpeg", path: str = "/predict", method: str = "POST",
                      version: str = "2.0") -> dict:
    """What API Gateway sends for a binary upload (HTTP API v2 or REST v1 proxy integration)."""
    encoded = base64.b64encode(body).decode("ascii")
    if version == "2.0":
        return {"version": "2.0", "routeKey": f"{method} {path}", "rawPath": path, "rawQueryString": "",
                "headers": {"content-type": content_type, "content-length": str(len(body))},
                "requestContext": {"http": {"method": method, "path": path}, "stage": "$default"},
                "body": encoded, "isBase64Encoded": True}
    return {"resource": path, "path": path, "httpMethod": method, "headers": {"Content-Type": content_type},
            "requestContext": {"resourcePath": path, "httpMethod": method}, "body": encoded,
            "isBase64Encoded": True}


def call(lam, event):
    out = lam.handler(event, None)
    assert set(out) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert out["headers"]["Content-Type"] == "application/json"
    return out["statusCode"], json.loads(out["body"])


def test_handler_does_not_import_tensorflow(lam):
    import subprocess

    code = ("import sys, base64; from cxr.serve import lambda_handler; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(lam.Path(lam.__file__).parents[2]))


def test_predictions_match_the_service(lam, service, promoted_model):
    images, _ = blob_images(6, 180, seed=21)
    for i, img in enumerate(images):
        data = jpeg_bytes(img) if i % 2 else png_bytes(img)
        ctype = "image/jpeg" if i % 2 else "image/png"
        status, body = call(lam, api_gateway_event(data, ctype, version="2.0" if i % 3 else "1.0"))
        assert status == 200, body
        served = requests.post(f"{service.url}/predict", files={"image": ("x", data)}, timeout=60).json()
        assert body["probability"] == pytest.approx(served["probability"], abs=PARITY_TOLERANCE)
        assert body["label"] == served["label"]
        assert body["decision_threshold"] == served["decision_threshold"]
        assert body["model_tag"] == served["model_tag"] == promoted_model["tag"]
        assert body["notice"] == served["notice"]


def test_json_single_and_batch_events(lam):
    images, _ = blob_images(3, 128, seed=4)
    encoded = [base64.b64encode(png_bytes(img)).decode() for img in images]
    status, one = call(lam, api_gateway_event(json.dumps({"image": encoded[0]}).encode(), "application/json"))
    assert status == 200
    status, batch = call(lam, api_gateway_event(json.dumps({"images": encoded + ["bm90IGFuIGltYWdl"]}).encode(),
                                                "application/json"))
    assert status == 200 and batch["count"] == 4 and batch["failed"] == 1
    assert batch["results"][0]["probability"] == pytest.approx(one["probability"], abs=PARITY_TOLERANCE)
    assert batch["results"][3]["status"] == 415


def test_metadata_route(lam, promoted_model):
    status, card = call(lam, {"rawPath": "/metadata", "requestContext": {"http": {"method": "GET"}}})
    assert status == 200 and card["model_tag"] == promoted_model["tag"]
    assert card["imaging"]["image_size"] == promoted_model["image_size"]


@pytest.mark.parametrize("event,status,message", [
    ({"rawPath": "/predict", "body": None}, 400, "empty body"),
    ({"rawPath": "/predict", "body": "!!!", "isBase64Encoded": True}, 400, "not valid base64"),
    (api_gateway_event(b"plain text, not an image", "application/octet-stream"), 415, "not a JPEG or PNG"),
    (api_gateway_event(png_bytes(np.zeros((1, 1), np.uint8)), "image/png"), 422, "too small"),
    (api_gateway_event(b"{not json", "application/json"), 400, "not valid JSON"),
    (api_gateway_event(b'{"url": "http://example.org/x.png"}', "application/json"), 400, "needs 'image'"),
    ({"rawPath": "/predict", "requestContext": {"http": {"method": "GET"}}}, 405, "not allowed"),
], ids=["no body", "bad base64", "not an image", "1x1", "bad json", "url refused", "GET"])
def test_bad_events_get_4xx(lam, event, status, message):
    got, body = call(lam, event)
    assert got == status and message in body["error"]


def test_missing_model_is_a_clear_503(lam, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODEL_DIR", str(tmp_path))
    status, body = call(lam, api_gateway_event(b"x"))
    assert status == 503 and "lacks model.tflite" in body["error"]


def test_explain_route_gives_the_services_heatmap(lam, service, promoted_model):
    images, _ = blob_images(2, promoted_model["image_size"], seed=31)
    data = png_bytes(images[1])  # the class with the bright square: a non-empty map
    status, body = call(lam, api_gateway_event(data, "image/png", path="/explain"))
    assert status == 200 and body["heatmap_png_base64"]
    served = requests.post(f"{service.url}/explain", files={"image": ("x.png", data)}, timeout=60).json()
    assert body["probability"] == pytest.approx(served["probability"], abs=PARITY_TOLERANCE)
    assert body["heatmap"] == served["heatmap"]
    assert body["heatmap_png_base64"] == served["heatmap_png_base64"]
