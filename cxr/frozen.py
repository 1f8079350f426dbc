"""The frozen bottom of the network on the fastest exact runtime here: LiteRT (XNNPACK).

Training runs the frozen bottom of MobileNetV2 once per view over every training image and
caches its activations (:func:`cxr.training.train`); the not-a-chest-X-ray detector reuses
that cache for the images it has seen and runs the bottom only on its re-acquired copies.
Keras runs the bottom at about a third of LiteRT's speed on these CPUs (bench/pipeline.py), and
the cache is stored in float16, whose rounding is far larger than the two runtimes' float32
differences (checked on every conversion: :func:`convert` refuses a file that disagrees by more
than ``tolerance`` relative to the activations' range).

``train.frozen_runtime: keras`` keeps the old path (one tf.function per model).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from cxr import UserError

log = logging.getLogger(__name__)
RUNTIMES = ("litert", "keras")
PARITY_TOLERANCE = 1e-4  # max |LiteRT - Keras| / max |Keras| on the probe batch


class KerasRunner:
    """A Keras model called through one compiled tf.function (the reference)."""

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(x))


class LiteRTRunner:
    """The same model converted to a TFLite flatbuffer in memory, run by a LiteRT interpreter
    with every core; batches of any size (the input is resized when it changes)."""

    def __init__(self, model, threads: int | None = None):
        import os

        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        started = time.time()
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        self.flatbuffer = converter.convert()
        self.convert_s = time.time() - started
        self.interpreter = Interpreter(model_content=self.flatbuffer, num_threads=threads or os.cpu_count() or 1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = int(self.input["shape"][0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()


def runner(model, runtime: str, probe: np.ndarray | None = None):
    """A callable ``float32 [B, ...] -> activations`` for ``model`` on ``runtime``. With LiteRT,
    ``probe`` (a float input batch) is run on both and must agree within :data:`PARITY_TOLERANCE`."""
    if runtime not in RUNTIMES:
        raise UserError(f"params.yaml: 'train.frozen_runtime' must be one of {RUNTIMES}, got {runtime!r}")
    reference = KerasRunner(model)
    if runtime == "keras":
        return reference
    lite = LiteRTRunner(model)
    if probe is not None and len(probe):
        want, got = reference(probe), lite(probe)
        scale = float(np.abs(want).max()) or 1.0
        diff = float(np.abs(want - got).max()) / scale
        if diff > PARITY_TOLERANCE:
            raise UserError(f"the frozen layers on LiteRT differ from Keras by {diff:.2g} relative (tolerance "
                            f"{PARITY_TOLERANCE}): set train.frozen_runtime: keras, and report this")
        log.info("frozen layers on LiteRT (converted in %.0f s): %.2g relative difference from Keras on %d images",
                 lite.convert_s, diff, len(probe))
    return lite
