"""What is not a chest X-ray is refused, never labelled: the detector the train stage fits
(:func:`cxr.model.ood_fit.fit_on_views`), exported beside the TFLite file whose embedding output it
reads, and the served paths (/predict's ``predict_bytes``, the batch, /explain, the Lambda
handler) that answer 422 from the same forward pass.

The model is the serving fixtures' tiny network trained on blob images, so its "X-rays" are
blobs: the test is that what it was fitted on passes and that other kinds of image are refused
with a reason, not a figure for real X-rays (those are in metrics.json, ``ood``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr.data.non_xray import non_xray_images
from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
from tests.serving_fixtures import blob_images, png_bytes, train_tiny

SIZE = 64


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import dataclasses

    from cxr.model import ood
    from cxr.model.export import export_all
    from cxr.model.ood_fit import fit_on_views
    from cxr.model.runtime import TFLiteModel
    from cxr.serve.serving import ServedModel
    from tests.code.test_model_card import card, metrics

    imaging = ImagingConfig(SIZE, "equalize")
    out = tmp_path_factory.mktemp("with-detector")
    model = train_tiny(SIZE, 0.35, steps=30)
    files = export_all(model, out)
    tflite = TFLiteModel(files["tflite"])

    def embed(images):
        return tflite.predict_with_embedding(images)[1]

    def blobs(n, seed):
        raw, _ = blob_images(n, 2 * SIZE, seed)
        return np.stack([preprocess_bytes(png_bytes(img), imaging) for img in raw])

    detector = fit_on_views(embed, blobs(96, 1), blobs(96, 2), imaging,
                            ood.OodConfig(val_pass_rate=0.995), seed=3)
    detector.save(out / ood.FILE_NAME)
    c = card(metrics())
    dataclasses.replace(c, imaging=imaging, name="cxr-pneumonia-tiny", git={"commit": "0" * 40, "dirty": False},
                        monitoring={"val_probabilities": [0.5], "val_refusal_rate": 0.0}).write(out)
    return ServedModel.load(out, tag="cxr-pneumonia:tiny"), blobs


def test_what_the_detector_was_fitted_on_passes(served):
    model, blobs = served
    held_out = blobs(64, 9)
    probs, refusals = model.screen(held_out)
    passed = sum(r is None for r in refusals)
    print(f"held-out blob 'X-rays' passing: {passed} of {len(held_out)}")
    assert passed >= 0.95 * len(held_out) and np.all((probs >= 0) & (probs <= 1))
    assert model.model_card()["runtime"]["not_a_chest_xray"].startswith("refused")


def test_other_images_get_422_with_a_reason_and_no_label(served):
    from cxr.serve.decoding import RequestError
    from cxr.serve.serving import predict_many

    model, _ = served
    images = non_xray_images(seed=1, per_family=2, families=("document", "blank", "screenshot", "noise", "photo"))
    refused = []
    for family, name, data in images:
        try:
            model.predict_bytes(data)
        except RequestError as exc:
            assert exc.status == 422 and exc.reason == "not_a_chest_xray", (name, exc)
            assert str(exc).startswith("not a chest X-ray (") and "no label" in str(exc)
            refused.append(family)
    print(f"non-X-ray images refused: {len(refused)} of {len(images)} ({refused})")
    for family in ("document", "blank"):  # blob "X-rays" are noise: noise and screenshots may pass here
        assert refused.count(family) == 2, family
    batch = predict_many(model, [data for _, _, data in images[:3]])
    assert batch["failed"] >= 2 and all("label" not in r for r in batch["results"] if "error" in r)


def test_explain_refuses_from_the_same_pass(served):
    from cxr.serve.decoding import RequestError, decode

    model, blobs = served
    heat, probability = model.explain(blobs(1, 11)[0])
    assert heat.shape == (SIZE, SIZE) and 0 <= probability <= 1
    _, _, blank = non_xray_images(seed=1, per_family=1, families=("blank",))[0]
    with pytest.raises(RequestError, match="not a chest X-ray"):
        model.explain(decode(blank, model.imaging))


def test_the_lambda_handler_answers_422(served, monkeypatch):
    import base64

    from cxr.serve import lambda_handler

    model, _ = served
    monkeypatch.setenv("CXR_MODEL_DIR", str(model.path))
    _, _, document = non_xray_images(seed=2, per_family=1, families=("document",))[0]
    event = {"httpMethod": "POST", "path": "/predict", "headers": {"content-type": "image/png"},
             "body": base64.b64encode(document).decode(), "isBase64Encoded": True}
    out = lambda_handler.handler(event)
    body = json.loads(out["body"])
    assert out["statusCode"] == 422 and "not a chest X-ray" in body["error"] and "label" not in body


@pytest.mark.slow
def test_a_real_server_answers_a_document_422_and_a_blob_200(served, tmp_path):
    """Promoted into a store of its own and served by ``bentoml serve``: the same refusal over HTTP,
    with its reason code in the audit trail."""
    import subprocess
    import sys

    import requests

    from cxr.records.audit_line import parse
    from tests.conftest import REPO, serving_env, start_server

    model, blobs = served
    home = tmp_path / "bentoml"
    promote = ("import sys; from cxr.ops.registry import promote; "
               "print(promote(sys.argv[1], {'passed': True, 'reason': 'test'}))")
    subprocess.run([sys.executable, "-c", promote, str(model.path)], cwd=REPO, env=serving_env(home), check=True,
                   capture_output=True)
    trail = tmp_path / "audit.jsonl"
    server = start_server(home, tmp_path / "serve.log", CXR_AUDIT=f"file:{trail}")
    try:
        _, _, document = non_xray_images(seed=3, per_family=1, families=("document",))[0]
        refused = requests.post(f"{server.url}/predict", files={"image": ("d.png", document)}, timeout=60)
        answered = requests.post(f"{server.url}/predict", files={"image": ("b.png", png_bytes(blobs(1, 12)[0]))},
                                 timeout=60)
    finally:
        server.stop()
    assert refused.status_code == 422 and refused.json()["error"].startswith("not a chest X-ray (")
    assert answered.status_code == 200 and answered.json()["label"] in ("NORMAL", "PNEUMONIA")
    lines = [parse(text)[0] for text in trail.read_text().splitlines()]
    assert [(r["refusal"], r["label"]) for r in lines] == [("not_a_chest_xray", None), (None, answered.json()["label"])]
