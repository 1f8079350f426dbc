"""The exported model at run time, on LiteRT alone (no TensorFlow): ``model.tflite`` gives the
probability and, from the same forward pass, the explanation, the embedding and (exports with a
subtype head) P(bacterial | pneumonia) and the head's own activation map.

The head is global average pooling -> Dense, so Grad-CAM at the last convolution is the class
activation map: the Dense kernel applied to each position of the feature map
(``CAM = sum_k w_k A_k``; the logit is its mean plus the bias). ``model.tflite`` outputs that
map beside the probability; :func:`activation_map` does Grad-CAM's ReLU, scaling and bilinear
resize in numpy, so a server needs no TensorFlow to explain (``tests/model/test_explain.py``
checks it against :func:`cxr.model.network.grad_cam`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr import UserError
from cxr.imaging.preprocess import to_model_input


@dataclass
class Outputs:
    """One forward pass of ``model.tflite`` over N images; what an export lacks is None."""

    probability: np.ndarray  # [N]
    embedding: np.ndarray | None = None  # [N, D]
    p_bacterial: np.ndarray | None = None  # [N]: P(bacterial | pneumonia)
    maps: np.ndarray | None = None  # [N, h, w, C]: channel 0 the screening CAM, 1 the subtype's


class TFLiteModel:
    """A LiteRT interpreter over an exported ``model.tflite``: one thread at a time (callers lock)."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self._batch = int(self.input["shape"][0])
        # Told apart by shape (the file does not keep the outputs' order): the probability [N, 1],
        # the activation map [N, h, w, C], the embedding [N, D] (D > 2: 8 or more in every
        # architecture) and the subtype pair [N, 2] (P(bacterial), P(viral)). Older exports lack the
        # pair (and have a one-channel map), older still the embedding and the map.
        shapes = [tuple(o["shape"]) for o in self.outputs]
        self._prob = next(i for i, s in enumerate(shapes) if len(s) == 2 and s[-1] == 1)
        self._map = next((i for i, s in enumerate(shapes) if len(s) == 4), None)
        self._embedding = next((i for i, s in enumerate(shapes) if len(s) == 2 and s[-1] > 2), None)
        self._subtype = next((i for i, s in enumerate(shapes) if len(s) == 2 and s[-1] == 2), None)
        self.map_channels = 0 if self._map is None else int(shapes[self._map][-1])

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """Every output, in the file's order, for uint8 ``[N, S, S]`` images."""
        x = to_model_input(images)
        if self._batch != len(x):
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return [np.asarray(self.interpreter.get_tensor(o["index"])).copy() for o in self.outputs]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for uint8 ``[N, S, S]`` images."""
        return self.run(images)[self._prob].reshape(-1)

    @property
    def has_embedding(self) -> bool:
        return self._embedding is not None

    @property
    def has_subtype(self) -> bool:
        """The export carries the subtype head (P(bacterial) and, with a map, its own channel)."""
        return self._subtype is not None

    def outputs_of(self, images: np.ndarray) -> Outputs:
        """Every output of one pass over uint8 ``[N, S, S]`` images, by what it is."""
        outs = self.run(images)

        def pick(index):
            return None if index is None else outs[index]

        pair = pick(self._subtype)
        return Outputs(probability=outs[self._prob].reshape(-1), embedding=pick(self._embedding),
                       p_bacterial=None if pair is None else pair[:, 0].copy(), maps=pick(self._map))

    def predict_with_embedding(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities ``[N]``, embeddings ``[N, D]``) from one forward pass."""
        if self._embedding is None:
            raise UserError("this model.tflite has no embedding output: re-export it")
        outs = self.run(images)
        return outs[self._prob].reshape(-1), outs[self._embedding]

    def explain(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(heatmap in [0, 1] at the image's size, probability) for one uint8 ``[S, S]`` image,
        from one forward pass."""
        heat, probability, _ = self.explain_with_embedding(image)
        return heat, probability

    def explain_with_embedding(self, image: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None]:
        """:meth:`explain` and the embedding ``[1, D]`` of the same pass (None in older exports)."""
        if self._map is None:
            raise UserError("this model.tflite has no activation-map output: re-export it to explain")
        outs = self.run(image[None])
        embedding = outs[self._embedding] if self._embedding is not None else None
        return (activation_map(outs[self._map][0, ..., 0], image.shape[0]), float(outs[self._prob].reshape(-1)[0]),
                embedding)


def resize_bilinear(values: np.ndarray, size: int) -> np.ndarray:
    """``[h, w]`` -> ``[size, size]``, bilinear with half-pixel centres and clamped edges: what
    ``tf.image.resize(method="bilinear")`` computes."""
    def axis(n_in: int):
        centres = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(centres).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (centres - lo)[:, None]

    ylo, yhi, fy = axis(values.shape[0])
    xlo, xhi, fx = axis(values.shape[1])
    rows = values[ylo] * (1 - fy) + values[yhi] * fy  # [size, w]
    return (rows[:, xlo] * (1 - fx.T) + rows[:, xhi] * fx.T).astype(np.float32)


def subtype_map(cam: np.ndarray, size: int, bacterial: bool) -> np.ndarray:
    """The subtype head's picture for its answer: its raw map ``[h, w]`` points towards bacterial,
    so a viral answer's Grad-CAM (the gradient of the viral logit, its negative) is the map negated."""
    return activation_map(cam if bacterial else -np.asarray(cam, np.float32), size)


def activation_map(cam: np.ndarray, size: int) -> np.ndarray:
    """Grad-CAM's picture from the raw class activation map ``[h, w]``: ReLU, scaled to a max of
    1, resized to the image; all zero when nothing pushes towards PNEUMONIA."""
    cam = np.maximum(np.asarray(cam, np.float32), 0)
    if cam.max() > 0:
        cam = cam / cam.max()
    return np.clip(resize_bilinear(cam, size), 0.0, 1.0)
