"""The subtype as served: the TFLite file's outputs told apart by shape (new exports and old), the
head in the file equal to the head evaluate measured, its activation map equal to Keras Grad-CAM
of the subtype logit, and the answers: a subtype with PNEUMONIA only, none with NORMAL, and an old
export that says in every answer that it has none.

The model is the serving fixtures' tiny network (tests/serving_fixtures.py) with its fitted subtype
head, exported twice: as today, and as the code before the subtype head exported it."""

from __future__ import annotations

import numpy as np
import pytest

from cxr import POSITIVE_LABEL, SUBTYPE_NOTICE
from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
from tests.serving_fixtures import blob_images, png_bytes, subtype_blobs

pytestmark = pytest.mark.slow  # the session's promoted model: built once for every served test


@pytest.fixture(scope="module")
def models(promoted_model):
    from cxr.serve.serving import ServedModel

    return ServedModel.load(promoted_model["export_dir"]), ServedModel.load(promoted_model["legacy_dir"])


def preprocessed(raw: np.ndarray, size: int) -> np.ndarray:
    return np.stack([preprocess_bytes(png_bytes(img), ImagingConfig(size, "equalize")) for img in raw])


def mixed_images(size: int) -> np.ndarray:
    """Blobs both ways (squares the tiny model flags, plain noise it does not) and hazes."""
    squares, _ = blob_images(12, 2 * size, seed=41)
    hazes, _ = subtype_blobs(8, 2 * size, seed=42)
    return preprocessed(np.concatenate([squares, hazes]), size)


def test_outputs_are_told_apart_by_shape_in_new_and_old_exports(promoted_model):
    from cxr.model.runtime import TFLiteModel
    from cxr.model.subtype import FILE_NAME, load

    new = TFLiteModel(promoted_model["export_dir"] / "model.tflite")
    old = TFLiteModel(promoted_model["legacy_dir"] / "model.tflite")
    assert new.has_subtype and new.map_channels == 2 and new.has_embedding
    assert not old.has_subtype and old.map_channels == 1 and old.has_embedding
    images = mixed_images(promoted_model["image_size"])
    a, b = new.outputs_of(images), old.outputs_of(images)
    assert np.array_equal(a.probability, b.probability)  # the screening output is the same network's
    assert b.p_bacterial is None and np.all((a.p_bacterial >= 0) & (a.p_bacterial <= 1))
    head = load(promoted_model["export_dir"] / FILE_NAME)
    assert np.abs(head.probabilities(a.embedding) - a.p_bacterial).max() < 1e-5  # the head evaluate measures
    # The second map channel is the head's kernel at every position: its mean plus the bias is the logit.
    logit = a.maps[..., 1].mean(axis=(1, 2)) + head.bias
    assert np.abs(1 / (1 + np.exp(-logit)) - a.p_bacterial).max() < 1e-5
    assert np.array_equal(a.maps[..., 0], b.maps[..., 0])


def test_the_subtype_map_is_keras_grad_cam_of_the_subtype_logit(promoted_model):
    """Grad-CAM of the answered subtype (bacterial: the head's logit; viral: its negative) computed by
    TensorFlow on the Keras model, against the TFLite map and numpy."""
    import keras
    import tensorflow as tf

    from cxr.model.network import LAST_CONV, POOLED
    from cxr.model.runtime import TFLiteModel, subtype_map
    from cxr.model.subtype import FILE_NAME, load

    size = promoted_model["image_size"]
    model = keras.saving.load_model(promoted_model["export_dir"] / "model.keras")
    head = load(promoted_model["export_dir"] / FILE_NAME)
    grads_of = keras.Model(model.input, [model.get_layer(LAST_CONV).output, model.get_layer(POOLED).output])
    lite = TFLiteModel(promoted_model["export_dir"] / "model.tflite")
    non_empty = 0
    for image in mixed_images(size)[::3]:
        out = lite.outputs_of(image[None])
        for bacterial in (True, False):
            with tf.GradientTape() as tape:
                conv, pooled = grads_of(tf.convert_to_tensor(image[None, ..., None].astype(np.float32)))
                tape.watch(conv)
                logit = tf.reduce_sum(pooled[0] * tf.constant(head.kernel, tf.float32))
                target = logit if bacterial else -logit
            weights = tf.reduce_mean(tape.gradient(target, conv), axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))[0].numpy()
            cam = cam / cam.max() if cam.max() > 0 else cam
            want = np.clip(tf.image.resize(cam[..., None], (size, size), method="bilinear").numpy()[..., 0], 0, 1)
            got = subtype_map(out.maps[0, ..., 1], size, bacterial)
            non_empty += int(want.max() > 0)
            assert np.abs(got - want).max() < 1e-4
    assert non_empty >= 3


def test_a_pneumonia_answer_carries_the_subtype_and_a_normal_one_none(models, promoted_model):
    from cxr.serve.serving import predict_many

    model, _ = models
    images = mixed_images(promoted_model["image_size"])
    probs, bacterial, _ = model.assess(images)
    labels = set()
    for p, b in zip(probs, bacterial):
        answer = model.answer(float(p), float(b))
        labels.add(answer["label"])
        assert "subtype_unavailable" not in answer
        if answer["label"] != POSITIVE_LABEL:
            assert "subtype" not in answer
            continue
        sub = answer["subtype"]
        assert sub["label"] == ("bacterial" if b >= promoted_model["subtype_threshold"] else "viral")
        assert sub["probability_bacterial"] == pytest.approx(b, abs=1e-6)
        assert sub["probability"] == pytest.approx(b if sub["label"] == "bacterial" else 1 - b, abs=1e-6)
        assert sub["threshold"] == promoted_model["subtype_threshold"] and sub["notice"] == SUBTYPE_NOTICE
    assert labels == {"NORMAL", "PNEUMONIA"}, "the fixture images should get both answers"
    batch = predict_many(model, [png_bytes(img) for img in images[:6]])
    assert all(("subtype" in r) == (r["label"] == POSITIVE_LABEL) for r in batch["results"])


def test_an_old_export_serves_without_the_subtype_and_says_so_everywhere(models, promoted_model):
    from cxr.serve.explain import explanation
    from cxr.serve.serving import predict_many

    model, legacy = models
    assert legacy.subtype_threshold is None and "exported before the bacterial/viral subtype" in legacy.no_subtype
    card = legacy.model_card()
    assert card["subtype"]["available"] is False and "exported before" in card["subtype"]["reason"]
    assert card["runtime"]["subtype"].startswith("none: this model was exported before")
    images = mixed_images(promoted_model["image_size"])
    for image in images[:4]:
        answer = legacy.predict_bytes(png_bytes(image))
        assert "subtype" not in answer and answer["subtype_unavailable"] == legacy.no_subtype
        assert answer["probability"] == pytest.approx(model.predict_bytes(png_bytes(image))["probability"], abs=1e-6)
    batch = predict_many(legacy, [png_bytes(img) for img in images[:3]])
    assert all(r["subtype_unavailable"] and "subtype" not in r for r in batch["results"])
    explained = explanation(legacy, images[0])
    assert "subtype_heatmap_png_base64" not in explained and explained["subtype_unavailable"]


def test_explain_gives_the_subtype_heatmap_with_a_pneumonia_answer_only(models, promoted_model):
    import base64

    from cxr.serve.explain import explanation

    model, _ = models
    seen = set()
    for image in mixed_images(promoted_model["image_size"]):
        body = explanation(model, image)
        seen.add(body["label"])
        probs, bacterial, _ = model.assess(image[None])  # what /predict answers for the same model input
        assert body["probability"] == pytest.approx(float(probs[0]), abs=1e-6)
        if body["label"] != POSITIVE_LABEL:
            assert "subtype" not in body and "subtype_heatmap_png_base64" not in body
            continue
        assert body["subtype"]["probability_bacterial"] == pytest.approx(float(bacterial[0]), abs=1e-6)
        assert body["subtype_heatmap"]["towards"] == body["subtype"]["label"]
        assert base64.b64decode(body["subtype_heatmap_png_base64"]).startswith(b"\x89PNG")
    assert seen == {"NORMAL", "PNEUMONIA"}


def test_the_lambda_handler_answers_with_the_subtype(promoted_model, monkeypatch):
    import base64
    import json

    from cxr.serve import lambda_handler

    images = mixed_images(promoted_model["image_size"])
    for directory, has_subtype in ((promoted_model["export_dir"], True), (promoted_model["legacy_dir"], False)):
        monkeypatch.setenv("CXR_MODEL_DIR", str(directory))
        lambda_handler._MODELS.clear()
        for path in ("/predict", "/explain"):
            for image in images[:6]:
                event = {"httpMethod": "POST", "path": path, "headers": {"content-type": "image/png"},
                         "body": base64.b64encode(png_bytes(image)).decode(), "isBase64Encoded": True}
                out = lambda_handler.handler(event)
                body = json.loads(out["body"])
                assert out["statusCode"] == 200
                assert ("subtype" in body) == (has_subtype and body["label"] == POSITIVE_LABEL)
                assert ("subtype_unavailable" in body) == (not has_subtype)
    lambda_handler._MODELS.clear()
