"""DICOM over real HTTP (``bentoml serve`` of the tiny promoted model) and through the Lambda
handler: /predict, /predict_raw, /predict_batch, /explain all answer a DICOM of an X-ray's
pixels with the probability of the PNG of the same pixels, refuse unsuitable or hostile DICOM
with the right 4xx and a JSON error, and never show or log the file's patient data.

Tolerances: a DICOM whose pixels are the PNG's (8 bits; 12/16 bits without a window; lossless
RLE / JPEG 2000) gives the PNG's model input byte for byte, so the same probability
(|dp| <= 1e-6, the answers' rounding); so does a MONOCHROME1 one, inverted within its stored
bits before the window.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests.dicom_files import PATIENT_MARKERS, dicom, png, refused_variants, xray8, xray16

pytestmark = pytest.mark.slow
EXACT_DP = 1e-6
DICOM_TYPE = "application/dicom"


def answered_variants() -> dict[str, tuple[bytes, bytes | None, float]]:
    """name -> (DICOM bytes, the PNG of the same pixels or None, tolerance on |dp|)."""
    x8, x12, x16 = xray8(), xray16(12), xray16(16)
    return {
        "8-bit MONOCHROME2, uncompressed": (dicom(x8), png(x8), EXACT_DP),
        "8-bit MONOCHROME2, RLE lossless": (dicom(x8, RLELossless), png(x8), EXACT_DP),
        "8-bit MONOCHROME2, JPEG 2000 lossless": (dicom(x8, JPEG2000Lossless), png(x8), EXACT_DP),
        "8-bit MONOCHROME1, uncompressed": (dicom(255 - x8, photometric="MONOCHROME1"), png(x8), EXACT_DP),
        "12-bit MONOCHROME2, uncompressed": (dicom(x12, bits_stored=12), png(x12), EXACT_DP),
        "12-bit MONOCHROME2, RLE lossless": (dicom(x12, RLELossless, bits_stored=12), png(x12), EXACT_DP),
        "12-bit MONOCHROME2, JPEG 2000 lossless": (dicom(x12, JPEG2000Lossless, bits_stored=12), png(x12), EXACT_DP),
        "16-bit MONOCHROME2, uncompressed": (dicom(x16), png(x16), EXACT_DP),
        "12-bit MONOCHROME1, uncompressed": (dicom(4095 - x12, photometric="MONOCHROME1", bits_stored=12), png(x12),
                                             EXACT_DP),
        "12-bit window center/width": (dicom(x12, bits_stored=12, WindowCenter=1500, WindowWidth=1200), None,
                                       EXACT_DP),
        "12-bit rescale slope/intercept + window": (
            dicom(x12, bits_stored=12, RescaleSlope=2.0, RescaleIntercept=-1024.0, WindowCenter=2000,
                  WindowWidth=3000), None, EXACT_DP),
        "12-bit rescale slope/intercept, no window": (
            dicom(x12, bits_stored=12, RescaleSlope=2.0, RescaleIntercept=-1024.0), None, EXACT_DP),
        "8-bit, no body part given, CR": (dicom(x8, modality="CR", body_part=None), png(x8), EXACT_DP),
    }


ANSWERED = answered_variants()
REFUSED = refused_variants()


@pytest.fixture(scope="module")
def local_probability(promoted_model):
    """THE preprocessing and the exported TFLite model in this process: what the service must answer."""
    from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
    from cxr.model.runtime import TFLiteModel

    tflite = TFLiteModel(promoted_model["export_dir"] / "model.tflite")
    cfg = ImagingConfig(image_size=promoted_model["image_size"], intensity="equalize")
    return lambda data: float(tflite.predict(preprocess_bytes(data, cfg)[None])[0])


@pytest.fixture(scope="module")
def lam(promoted_model):
    mp = pytest.MonkeyPatch()
    version = promoted_model["tag"].split(":")[1]
    mp.setenv("CXR_MODEL_DIR", str(promoted_model["bentoml_home"] / "models" / "cxr-pneumonia" / version))
    mp.setenv("CXR_MODEL_TAG", promoted_model["tag"])
    from cxr.serve import lambda_handler

    lambda_handler._MODELS.clear()
    yield lambda_handler
    lambda_handler._MODELS.clear()
    mp.undo()


def lambda_call(lam, body: bytes, path: str = "/predict", content_type: str = DICOM_TYPE) -> tuple[int, dict, str]:
    event = {"version": "2.0", "rawPath": path, "headers": {"content-type": content_type},
             "requestContext": {"http": {"method": "POST", "path": path}},
             "body": base64.b64encode(body).decode("ascii"), "isBase64Encoded": True}
    out = lam.handler(event, None)
    return out["statusCode"], json.loads(out["body"]), out["body"]


def post_image(service, route: str, data: bytes, name: str = "x.dcm"):
    if route == "predict_raw":
        return requests.post(f"{service.url}/predict_raw", data=data, headers={"Content-Type": DICOM_TYPE},
                             timeout=60)
    return requests.post(f"{service.url}/{route}", files={"image": (name, data, DICOM_TYPE)}, timeout=60)


def no_patient_data(text: str) -> None:
    leaked = [m for m in PATIENT_MARKERS if m in text]
    assert not leaked, leaked


def test_dicom_gets_the_probability_of_the_png_of_the_same_pixels(service, lam, local_probability):
    """Every answered variant on every route; the figures are printed (pytest -s) for the record."""
    rows = []
    for name, (data, png_data, tolerance) in ANSWERED.items():
        reference = (requests.post(f"{service.url}/predict", files={"image": ("x.png", png_data)}, timeout=60)
                     .json()["probability"] if png_data is not None else round(local_probability(data), 6))
        got = {}
        for route in ("predict", "predict_raw", "explain"):
            resp = post_image(service, route, data)
            assert resp.status_code == 200, (name, route, resp.text)
            no_patient_data(resp.text)
            got[route] = resp.json()["probability"]
            if route == "explain":
                assert base64.b64decode(resp.json()["heatmap_png_base64"])[:8] == b"\x89PNG\r\n\x1a\n"
        status, body, text = lambda_call(lam, data)
        assert status == 200, (name, body)
        no_patient_data(text)
        got["lambda"] = body["probability"]
        status, body, text = lambda_call(lam, json.dumps({"image": base64.b64encode(data).decode()}).encode(),
                                         "/explain", "application/json")
        assert status == 200, (name, body)
        got["lambda explain"] = body["probability"]
        dp = max(abs(p - reference) for p in got.values())
        rows.append((name, reference, dp))
        assert dp <= tolerance, (name, reference, got)
        # and the service is THE preprocessing + the exported model, whatever the reference
        assert got["predict"] == pytest.approx(local_probability(data), abs=1e-5)
    print("\nDICOM vs PNG of the same pixels (max |dp| over /predict, /predict_raw, /explain, Lambda):")
    for name, reference, dp in rows:
        print(f"  {name:45s} p={reference:.6f}  max|dp|={dp:.2e}")


def test_batch_scores_dicom_beside_png_and_refuses_bad_items_alone(service):
    good = list(ANSWERED.items())[:4]
    bad = list(REFUSED.items())
    files = [("images", (f"{i}.dcm", data, DICOM_TYPE)) for i, (_, (data, _, _)) in enumerate(good)]
    files += [("images", (f"bad{i}.dcm", data, DICOM_TYPE)) for i, (_, (data, _, _)) in enumerate(bad[:12])]
    resp = requests.post(f"{service.url}/predict_batch", files=files, timeout=120)
    assert resp.status_code == 200, resp.text
    no_patient_data(resp.text)
    results = resp.json()["results"]
    for i, (name, (_, png_data, tolerance)) in enumerate(good):
        single = requests.post(f"{service.url}/predict", files={"image": ("x.png", png_data)}, timeout=60).json()
        assert abs(results[i]["probability"] - single["probability"]) <= tolerance, name
    for j, (name, (_, status, words)) in enumerate(bad[:12]):
        item = results[len(good) + j]
        assert item["status"] == status and words in item["error"], (name, item)
    assert resp.json()["failed"] == 12


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsuitable_dicom_is_refused_with_a_json_error_on_every_route(service, lam, name):
    data, status, words = REFUSED[name]
    for route in ("predict", "predict_raw", "explain"):
        resp = post_image(service, route, data)
        assert resp.status_code == status, (route, resp.status_code, resp.text)
        body = resp.json()
        assert body["status"] == status and words in body["error"], (route, body)
        no_patient_data(resp.text)
    got, body, text = lambda_call(lam, data)
    assert got == status and words in body["error"], body
    no_patient_data(text)


def test_server_log_holds_no_patient_data(service):
    """Run after the others (file order): everything above went through this server."""
    for data, _, _ in list(ANSWERED.values())[:2] + [(d, None, None) for d, _, _ in REFUSED.values()]:
        post_image(service, "predict", data)
    no_patient_data(service.log_text())


def test_upload_page_offers_dicom(service):
    page = requests.get(f"{service.url}/ui/", timeout=10).text
    assert "application/dicom" in page and ".dcm" in page
