"""The subtype over real HTTP: ``bentoml serve`` of the tiny promoted model (with its subtype head)
and of the same network as exported before the head (``legacy_service``), on every image route,
``/metadata``, ``/healthz`` and the OpenAPI contract."""

from __future__ import annotations

import base64

import pytest
import requests

from cxr import POSITIVE_LABEL, SUBTYPE_NOTICE
from tests.serving_fixtures import blob_images, png_bytes, subtype_blobs

pytestmark = pytest.mark.slow


def uploads() -> list[bytes]:
    """Images the tiny model answers both ways: bright squares (PNEUMONIA), noise and hazes."""
    squares, _ = blob_images(6, 160, seed=51)
    hazes, _ = subtype_blobs(4, 160, seed=52)
    return [png_bytes(img) for img in (*squares, *hazes)]


def answers(server, route: str) -> list[dict]:
    out = []
    for data in uploads():
        if route == "predict_raw":
            resp = requests.post(f"{server.url}/predict_raw", data=data, headers={"Content-Type": "image/png"},
                                 timeout=60)
        else:
            resp = requests.post(f"{server.url}/{route}", files={"image": ("x.png", data)}, timeout=60)
        assert resp.status_code == 200, resp.text[:300]
        out.append(resp.json())
    return out


@pytest.mark.parametrize("route", ["predict", "predict_raw", "explain"])
def test_a_pneumonia_answer_carries_the_subtype_and_a_normal_one_nothing(service, promoted_model, route):
    got = answers(service, route)
    assert {a["label"] for a in got} == {"NORMAL", "PNEUMONIA"}
    for a in got:
        assert "subtype_unavailable" not in a
        if a["label"] != POSITIVE_LABEL:
            assert not any(k.startswith("subtype") for k in a), a.keys()
            continue
        sub = a["subtype"]
        assert sub["label"] == ("bacterial" if sub["probability_bacterial"] >= sub["threshold"] else "viral")
        assert sub["threshold"] == promoted_model["subtype_threshold"] and sub["notice"] == SUBTYPE_NOTICE
        if route == "explain":
            assert a["subtype_heatmap"]["towards"] == sub["label"] and a["subtype_heatmap"]["layer"] == "out_relu"
            assert base64.b64decode(a["subtype_heatmap_png_base64"]).startswith(b"\x89PNG")
    if route == "predict":  # the same answers, one request for them all
        resp = requests.post(f"{service.url}/predict_batch", timeout=60,
                             files=[("images", (f"{i}.png", data)) for i, data in enumerate(uploads())])
        batch = resp.json()["results"]
        assert [r.get("subtype") for r in batch] == [a.get("subtype") for a in got]


def test_metadata_and_health_say_the_model_gives_the_subtype(service, promoted_model):
    meta = requests.post(f"{service.url}/metadata", json={}, timeout=30).json()
    assert meta["subtype"] == {"available": True, "labels": ["bacterial", "viral"],
                               "threshold": promoted_model["subtype_threshold"], "notice": SUBTYPE_NOTICE}
    assert meta["card"]["subtype"]["available"] and "Bacterial or viral" in meta["card_markdown"]
    assert requests.get(f"{service.url}/healthz", timeout=30).json()["subtype"] is True


def test_an_export_from_before_the_subtype_still_serves_and_says_so(legacy_service, service, promoted_model):
    meta = requests.post(f"{legacy_service.url}/metadata", json={}, timeout=30).json()
    assert meta["model_tag"] == promoted_model["legacy_tag"]
    assert meta["subtype"]["available"] is False and "exported before the bacterial/viral subtype" in \
        meta["subtype"]["reason"]
    assert requests.get(f"{legacy_service.url}/healthz", timeout=30).json()["subtype"] is False
    for route in ("predict", "predict_raw", "explain"):
        old, new = answers(legacy_service, route), answers(service, route)
        for a, b in zip(old, new):
            assert "subtype" not in a and "exported before the bacterial/viral subtype" in a["subtype_unavailable"]
            assert (a["label"], a["probability"]) == (b["label"], pytest.approx(b["probability"], abs=1e-6))
    batch = requests.post(f"{legacy_service.url}/predict_batch", timeout=60,
                          files=[("images", ("a.png", uploads()[0]))]).json()
    assert batch["results"][0]["subtype_unavailable"]


def test_the_contract_documents_the_answer_and_its_subtype(service):
    spec = requests.get(f"{service.url}/docs.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    assert schemas["Subtype"]["properties"]["label"]["enum"] == ["bacterial", "viral"]
    assert {"subtype", "subtype_unavailable"} <= set(schemas["Prediction"]["properties"])
    for path in ("/predict", "/predict_raw"):
        ok = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/Prediction"}
    explain = spec["paths"]["/explain"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "subtype_heatmap_png_base64" in explain["allOf"][1]["properties"]
