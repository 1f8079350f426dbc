"""Keras models run on the fastest exact runtime here: LiteRT (XNNPACK), checked against Keras.

Training runs the frozen bottom of MobileNetV2 once per view over every training image and
caches its activations (:func:`cxr.model.training.train`); evaluation scores thousands of images
(test, counterfactual, stress views) for probabilities and embeddings at once. Keras runs these
at about a third of LiteRT's speed on these CPUs (bench/pipeline.py). The float32 results of the
two differ far less than the float16 rounding of training's cache or the export's parity
tolerance; :func:`runner` checks that on a probe batch at every conversion and refuses a file
that disagrees by more than :data:`PARITY_TOLERANCE` relative to the outputs' range.

``keras`` (``train.frozen_runtime``, ``evaluate.runtime``) keeps the reference path: one
compiled tf.function per model.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from cxr import UserError

log = logging.getLogger(__name__)
RUNTIMES = ("litert", "keras")
PARITY_TOLERANCE = 1e-4  # max |LiteRT - Keras| / max |Keras| per output, on the probe batch


class KerasRunner:
    """A Keras model called through one compiled tf.function (the reference). Returns an array,
    or a list of arrays for a model with several outputs."""

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, x: np.ndarray):
        out = self._call(np.ascontiguousarray(x, dtype=np.float32))
        return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


class LiteRTRunner:
    """The same model converted to a TFLite flatbuffer in memory, run by a LiteRT interpreter on
    every core; batches of any size (the input is resized when it changes). Outputs in the Keras
    model's order (a TFLite file does not keep it: they are matched by shape)."""

    def __init__(self, model, threads: int | None = None):
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        started = time.time()
        self.flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        self.convert_s = time.time() - started
        self.interpreter = Interpreter(model_content=self.flatbuffer, num_threads=threads or os.cpu_count() or 1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        details = self.interpreter.get_output_details()
        wanted = [tuple(o.shape[1:]) for o in (model.outputs if isinstance(model.outputs, list) else [model.outputs])]
        have = [tuple(int(d) for d in o["shape"][1:]) for o in details]
        if sorted(wanted) != sorted(have) or len(set(wanted)) != len(wanted):
            raise UserError(f"cannot match the LiteRT outputs {have} to the model's {wanted}: set the runtime to keras")
        self.outputs = [details[have.index(shape)]["index"] for shape in wanted]
        self.several = len(wanted) > 1
        self._batch = int(self.input["shape"][0])

    def __call__(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        out = [self.interpreter.get_tensor(i).copy() for i in self.outputs]
        return out if self.several else out[0]


def runner(model, runtime: str, probe: np.ndarray | None = None, what: str = "train.frozen_runtime"):
    """A callable ``float32 [B, ...] -> output(s)`` for ``model`` on ``runtime``. With LiteRT,
    ``probe`` (a float input batch) is run on both and must agree within :data:`PARITY_TOLERANCE`."""
    if runtime not in RUNTIMES:
        raise UserError(f"params.yaml: '{what}' must be one of {RUNTIMES}, got {runtime!r}")
    reference = KerasRunner(model)
    if runtime == "keras":
        return reference
    lite = LiteRTRunner(model)
    if probe is not None and len(probe):
        want, got = reference(probe), lite(probe)
        pairs = zip(want, got) if isinstance(want, list) else [(want, got)]
        diff = max(float(np.abs(w - g).max()) / (float(np.abs(w).max()) or 1.0) for w, g in pairs)
        if diff > PARITY_TOLERANCE:
            raise UserError(f"{model.name} on LiteRT differs from Keras by {diff:.2g} relative (tolerance "
                            f"{PARITY_TOLERANCE}): set {what}: keras, and report this")
        log.info("%s on LiteRT (converted in %.0f s): %.2g relative difference from Keras on %d images",
                 model.name, lite.convert_s, diff, len(probe))
    return lite


def in_batches(run, x: np.ndarray, batch_size: int = 32):
    """``run`` over float32 ``x`` in batches, outputs concatenated (a list for several outputs)."""
    parts = [run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    if parts and isinstance(parts[0], list):
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
