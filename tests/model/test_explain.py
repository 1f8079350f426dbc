"""The heatmap without TensorFlow: model.tflite's activation-map output + numpy equals Keras
Grad-CAM, and its probability output is the model's.

The head is global average pooling -> Dense, so Grad-CAM at ``out_relu`` is the class
activation map; this checks it numerically on a calibrated model (the Platt scaling folded into
the logit layer, as training leaves it), on random and structured images.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.serving_fixtures import blob_images

MAP_TOLERANCE = 1e-4  # max |difference| of the [0, 1] heatmaps, at every pixel
PROB_TOLERANCE = 1e-4  # TFLite vs Keras float order; export parity allows 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from cxr.model.export import export_all
    from cxr.model.network import fold_calibration
    from tests.serving_fixtures import train_tiny

    model = train_tiny(128, 0.35, steps=20)  # trained on blobs, a 4x4 map: maps with structure
    fold_calibration(model, 1.7, -0.4)
    out = tmp_path_factory.mktemp("explain")
    return model, export_all(model, out)


def test_explain_tflite_equals_keras_grad_cam(exported):
    from cxr.model.network import grad_cam
    from cxr.model.runtime import TFLiteModel

    model, files = exported
    explainer = TFLiteModel(files["tflite"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 128), dtype=np.uint8), *blob_images(6, 128, seed=5)[0]]
    worst, non_empty = 0.0, 0
    for image in images:
        want, p_keras = grad_cam(model, image)
        non_empty += int(want.max() > 0 and want.min() < want.max())
        got, p_lite = explainer.explain(image)
        assert got.shape == want.shape == (128, 128) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
        assert p_lite == pytest.approx(p_keras, abs=PROB_TOLERANCE)
        assert p_lite == explainer.predict(image[None])[0]  # the same output /predict reads
    print(f"max |heatmap difference| over {len(images)} images ({non_empty} non-trivial maps): {worst:.2e}")
    assert worst <= MAP_TOLERANCE and non_empty >= 3


def test_resize_matches_tensorflow_bilinear():
    import tensorflow as tf

    from cxr.model.runtime import resize_bilinear

    values = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    want = tf.image.resize(values[..., None], (224, 224), method="bilinear").numpy()[..., 0]
    assert np.abs(resize_bilinear(values, 224) - want).max() < 1e-5


def test_explaining_imports_no_tensorflow(exported):
    from pathlib import Path

    _, files = exported
    code = ("import sys, numpy as np; from cxr.model.runtime import TFLiteModel; "
            f"cam, p = TFLiteModel({str(files['tflite'])!r}).explain(np.zeros((128, 128), np.uint8)); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[2]))
