"""Export formats and their parity check (the model card is :mod:`cxr.records.model_card`).

Formats: ``model.keras`` (Keras 3), ``saved_model/`` (TF Serving / tf2onnx), and
``model.tflite`` (float; run with LiteRT, the runtime the Lambda handler uses). All take
the output of :func:`cxr.imaging.preprocess.to_model_input` and return the calibrated probability;
``model.tflite`` also carries what serving needs from the same pass (:func:`with_activation_map`),
the subtype head's outputs included when there is one (the Keras and SavedModel files stay the
screening model alone; the head itself is ``subtype.npz`` beside them).
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


def with_activation_map(model, subtype=None):
    """The model with more outputs, each told apart by its shape (:class:`cxr.model.runtime.TFLiteModel`):

    - the probability ``[N, 1]`` (the model's own output);
    - the class activation map ``[N, h, w, C]``: the logit's Dense kernel applied at every position
      of the last feature map (see :mod:`cxr.model.runtime`); with a fitted ``subtype`` head
      (:class:`cxr.model.subtype.SubtypeHead`) a second channel applies its kernel the same way
      (towards bacterial: its sign flipped for a viral answer);
    - the pooled embedding ``[N, D]`` the not-a-chest-X-ray detector scores (:mod:`cxr.model.ood`);
    - with the head, ``[N, 2]``: P(bacterial | pneumonia) and P(viral | pneumonia). Two columns, so
      no shape is shared with the probability: exports from before the head (no ``[N, 2]``, a
      one-channel map) still serve, without a subtype."""
    import keras

    from cxr.model.network import LAST_CONV, POOLED

    kernel, _ = model.get_layer("logit").get_weights()
    fitted = subtype is not None and subtype.fitted
    if fitted:
        kernel = np.concatenate([kernel, subtype.kernel.astype(np.float32)[:, None]], axis=1)
    cam = keras.layers.Dense(kernel.shape[1], use_bias=False, name="class_activation")
    out = cam(model.get_layer(LAST_CONV).output)
    cam.set_weights([kernel])
    pooled = model.get_layer(POOLED).output
    outputs = [model.output, out, pooled]
    if fitted:
        pair = keras.layers.Dense(2, activation="sigmoid", name="subtype", dtype="float32")
        outputs.append(pair(pooled))
        k = subtype.kernel.astype(np.float32)[:, None]
        pair.set_weights([np.concatenate([k, -k], axis=1), np.array([subtype.bias, -subtype.bias], np.float32)])
    return keras.Model(model.input, outputs, name="screening_with_map")


def export_all(model, out_dir: Path, subtype=None) -> dict[str, Path]:
    """Write every format into ``out_dir`` (which must be a fresh directory)."""
    paths = {
        "keras": out_dir / "model.keras",
        "saved_model": out_dir / "saved_model",
        "tflite": out_dir / "model.tflite",
    }
    model.save(paths["keras"])
    model.export(str(paths["saved_model"]), format="tf_saved_model", verbose=False)
    # The TFLite file also carries the activation map (and the subtype), so serving needs no TensorFlow.
    with tempfile.TemporaryDirectory() as tmp:
        with_activation_map(model, subtype).export(tmp + "/with_map", format="tf_saved_model", verbose=False)
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
