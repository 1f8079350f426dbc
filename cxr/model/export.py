"""Export formats and their parity check (the model card is :mod:`cxr.records.model_card`).

Formats: ``model.keras`` (Keras 3), ``saved_model/`` (TF Serving / tf2onnx), and
``model.tflite`` (float; run with LiteRT, the runtime the Lambda handler uses). All take
the output of :func:`cxr.imaging.preprocess.to_model_input` and return the calibrated probability.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from cxr import UserError

log = logging.getLogger(__name__)


def save_tflite(saved_model_dir: Path, out: Path) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    out.write_bytes(converter.convert())


def with_activation_map(model):
    """The model with two more outputs: the class activation map ``[N, h, w, 1]``, the logit's
    Dense kernel applied at every position of the last feature map (see :mod:`cxr.model.runtime`), and
    the pooled embedding ``[N, D]`` the not-a-chest-X-ray detector scores (:mod:`cxr.model.ood`)."""
    import keras

    from cxr.model.network import LAST_CONV, POOLED

    kernel, _ = model.get_layer("logit").get_weights()
    cam = keras.layers.Dense(1, use_bias=False, name="class_activation")
    out = cam(model.get_layer(LAST_CONV).output)
    cam.set_weights([kernel])
    return keras.Model(model.input, [model.output, out, model.get_layer(POOLED).output], name="screening_with_map")


def export_all(model, out_dir: Path) -> dict[str, Path]:
    """Write every format into ``out_dir`` (which must be a fresh directory)."""
    paths = {
        "keras": out_dir / "model.keras",
        "saved_model": out_dir / "saved_model",
        "tflite": out_dir / "model.tflite",
    }
    model.save(paths["keras"])
    model.export(str(paths["saved_model"]), format="tf_saved_model", verbose=False)
    # The TFLite file also carries the activation map, so serving explains without TensorFlow.
    with tempfile.TemporaryDirectory() as tmp:
        with_activation_map(model).export(tmp + "/with_map", format="tf_saved_model", verbose=False)
        save_tflite(Path(tmp) / "with_map", paths["tflite"])
    return paths


def parity(keras_probs: np.ndarray, other_probs: np.ndarray, tolerance: float, name: str) -> dict:
    diff = np.abs(np.asarray(keras_probs) - np.asarray(other_probs))
    result = {
        "format": name,
        "images": int(len(diff)),
        "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
        "mean_abs_diff": float(diff.mean()) if len(diff) else 0.0,
        "tolerance": tolerance,
    }
    result["passed"] = result["max_abs_diff"] <= tolerance
    if not result["passed"]:
        raise UserError(
            f"export parity failed: {name} differs from Keras by up to {result['max_abs_diff']:.5f} "
            f"(tolerance {tolerance}) on {len(diff)} validation images"
        )
    return result
