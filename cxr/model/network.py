"""The screening model: build, split for cached training, calibrate, Grad-CAM.

The model is one flat Keras graph: ``image`` (float 0..255, ``[S, S, 1]``) -> rescale
to [-1, 1] -> backbone -> pooled features -> ``logit`` -> ``probability``. Flat (the
backbone is not a nested model) so that training can cut it at any layer, and Grad-CAM
can read the last convolution directly.

Two backbones. ``mobilenet_v2`` (gray copied to 3 channels) is the medical model: it starts
from ImageNet features. ``small_cnn`` is what ``train.weights: none`` trains by default:
with nothing pretrained to transfer, a few convolution blocks on a downsampled image learn
the synthetic set on 2 cores in seconds, where MobileNetV2 from scratch learns little in
minutes. Both end in a ReLU named ``out_relu``, the map explanations read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr import UserError, params

log = logging.getLogger(__name__)

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5"
LAST_CONV = "out_relu"  # MobileNetV2's last activation map (Grad-CAM target)
POOLED = "pooled"  # its global average: the embedding
IMAGENET_SIZES = (96, 128, 160, 192, 224)
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
BACKBONES = ("mobilenet_v2", "small_cnn")
SMALL_CNN_BLOCKS = 4  # conv-BN-ReLU blocks, 2x max-pooling between them


def resolve_weights(spec: str | None, alpha: float, image_size: int) -> str | None:
    """``none`` | ``imagenet`` | a path -> what ``keras.applications`` accepts.

    ``imagenet`` uses the Keras cache (``$KERAS_HOME/models``) when the file is there,
    so offline machines work with a pre-filled cache; otherwise Keras downloads it.
    """
    if spec is None or str(spec).lower() in ("none", "null", ""):
        return None
    if str(spec).lower() == "imagenet":
        if alpha not in IMAGENET_ALPHAS or image_size not in IMAGENET_SIZES:
            raise UserError(
                f"ImageNet weights exist for alpha in {IMAGENET_ALPHAS} and image_size in "
                f"{IMAGENET_SIZES}; got alpha={alpha}, image_size={image_size}"
            )
        return "imagenet"
    path = Path(os.path.expanduser(str(spec)))
    if not path.is_file():
        raise UserError(
            f"train.weights: file {path} not found (use 'none', 'imagenet' or the path of "
            f"the MobileNetV2 no-top .h5 file, e.g. ../shared/weights/{WEIGHTS_FILE.format(alpha='1.0', size=224)})"
        )
    return str(path)


def weights_fingerprint(resolved: str | None) -> str | None:
    if resolved in (None, "imagenet"):
        return resolved
    digest = hashlib.sha256(Path(resolved).read_bytes()).hexdigest()
    return f"sha256:{digest}"


@dataclass(frozen=True)
class Architecture:
    """What :func:`build` builds; recorded with the model (train summary -> model card)."""

    backbone: str = "mobilenet_v2"
    alpha: float = 1.0        # mobilenet_v2 width multiplier
    width: int = 16           # small_cnn: channels of the first block, doubled per block
    downsample: int = 2       # small_cnn: input average-pooled by this factor first
    dropout: float = 0.2

    @classmethod
    def from_params(cls, cfg: dict, from_scratch: bool) -> "Architecture":
        """``params.yaml`` ``model``: its top level, or with ``from_scratch`` its
        ``from_scratch`` section over the top level."""
        where = "model"
        merged = dict(cfg)
        if from_scratch:
            scratch = cfg.get("from_scratch") or {}
            if not isinstance(scratch, dict):
                raise UserError("params.yaml: 'model.from_scratch' must be a mapping")
            merged.update(scratch)
            where = "model.from_scratch"
        unknown = set(merged) - set(cls.__dataclass_fields__) - {"from_scratch"}
        if unknown:
            raise UserError(f"params.yaml: unknown '{where}' keys {sorted(unknown)}")
        merged = {"backbone": "mobilenet_v2", "width": cls.width, "downsample": cls.downsample, **merged}
        out = cls(
            backbone=params.require(merged, "backbone", str, where),
            alpha=params.require(merged, "alpha", float, "model"),
            width=params.require(merged, "width", int, where),
            downsample=params.require(merged, "downsample", int, where),
            dropout=params.in_range(params.require(merged, "dropout", float, "model"), 0.0, 0.9, "model.dropout"),
        )
        if out.backbone not in BACKBONES:
            raise UserError(f"params.yaml: '{where}.backbone' must be one of {BACKBONES}, got {out.backbone!r}")
        if not 1 <= out.width <= 256 or not 1 <= out.downsample <= 8:
            raise UserError(f"params.yaml: '{where}.width' must be in [1, 256] and 'downsample' in [1, 8], "
                            f"got {out.width} and {out.downsample}")
        return out

    def to_dict(self) -> dict:
        if self.backbone == "mobilenet_v2":
            return {"backbone": self.backbone, "alpha": self.alpha, "dropout": self.dropout}
        return {"backbone": self.backbone, "width": self.width, "downsample": self.downsample,
                "blocks": SMALL_CNN_BLOCKS, "dropout": self.dropout}

    def describe(self) -> str:
        if self.backbone == "mobilenet_v2":
            return f"MobileNetV2 (Keras 3, width {self.alpha})"
        return (f"a small CNN ({SMALL_CNN_BLOCKS} conv-BN-ReLU blocks from {self.width} channels, "
                f"input average-pooled {self.downsample}x)")


def build(image_size: int, arch: Architecture | None = None, weights: str | None = None):
    """The full inference model (dropout is only active while training)."""
    import keras
    from keras import layers

    arch = arch or Architecture()
    if arch.backbone != "mobilenet_v2" and weights is not None:
        raise UserError(f"train.weights: pretrained weights are for mobilenet_v2, not {arch.backbone}")
    if arch.backbone == "small_cnn" and image_size // arch.downsample < 2 ** (SMALL_CNN_BLOCKS - 1):
        raise UserError(f"imaging.image_size {image_size} is too small for model.from_scratch.downsample "
                        f"{arch.downsample} ({SMALL_CNN_BLOCKS - 1} poolings follow)")
    image = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(image)
    if arch.backbone == "small_cnn":
        last = _small_cnn(x, arch)
    else:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
        try:
            backbone = keras.applications.MobileNetV2(
                input_tensor=x, alpha=arch.alpha, include_top=False, weights=weights
            )
        except ValueError as exc:
            raise UserError(f"cannot load MobileNetV2 weights {weights!r}: {exc}") from None
        except OSError as exc:
            raise UserError(
                f"cannot load MobileNetV2 weights {weights!r} ({exc}); offline, pass the .h5 path "
                f"or pre-fill $KERAS_HOME/models/"
            ) from None
        last = backbone.output
    features = layers.GlobalAveragePooling2D(name=POOLED)(last)
    features = layers.Dropout(arch.dropout, name="dropout")(features)
    logit = layers.Dense(1, name="logit")(features)
    probability = layers.Activation("sigmoid", name="probability", dtype="float32")(logit)
    return keras.Model(image, probability, name=f"cxr_{arch.backbone}")


def _small_cnn(x, arch: Architecture):
    from keras import layers

    if arch.downsample > 1:
        x = layers.AveragePooling2D(arch.downsample, name="downsample")(x)
    width = arch.width
    for block in range(SMALL_CNN_BLOCKS):
        if block:
            x = layers.MaxPooling2D(2, name=f"block_{block}_pool")(x)
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block_{block}_conv")(x)
        x = layers.BatchNormalization(name=f"block_{block}_bn")(x)
        last = block == SMALL_CNN_BLOCKS - 1
        x = layers.ReLU(name=LAST_CONV if last else f"block_{block}_relu")(x)
        width *= 2
    return x


def recalibrate_batch_norm(model, images: np.ndarray, batch_size: int = 64) -> int:
    """Set every batch norm's moving mean and variance to the statistics of ``images``
    (uint8 ``[N, S, S]``), averaged over batches; returns the number of layers set.

    The moving averages lag the weights (MobileNetV2's momentum is 0.999): after a short
    training from scratch they still describe the initial network, and inference-mode
    outputs are near constant although training-mode outputs separate the classes."""
    import keras

    from cxr.imaging.preprocess import to_model_input

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms or not len(images):
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in norms]
    try:
        for layer in norms:
            layer.trainable = True  # a frozen batch norm runs in inference mode and updates nothing
        for k, start in enumerate(range(0, len(images), batch_size)):
            for layer in norms:
                layer.momentum = k / (k + 1)  # running mean over the batches seen so far
            model(to_model_input(images[start : start + batch_size]), training=True)
    finally:
        for layer, (momentum, trainable) in zip(norms, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(norms)


def split_at(model, layer_name: str):
    """(bottom, top): ``bottom`` maps images to the input of ``layer_name``; ``top`` maps
    that activation to the logit. Used to run the frozen bottom once and cache it."""
    import keras

    try:
        cut = model.get_layer(layer_name).input
    except ValueError:
        raise UserError(f"train.fine_tune_from: no layer named {layer_name!r} in MobileNetV2") from None
    bottom = keras.Model(model.input, cut, name="bottom")
    top = keras.Model(cut, model.get_layer("logit").output, name="top")
    return bottom, top


def ensemble(model, cut: str, member_weights: list[dict[str, list[np.ndarray]]]):
    """One model whose logit is the mean of several trained tops on ``model``'s shared bottom.

    ``member_weights`` holds, per member, the weights of the layers from ``cut`` to ``logit`` by
    layer name (what :func:`split_at`'s top held after that member was trained). Each member's
    top up to ``out_relu`` becomes a nested model on the bottom's output; their maps are
    concatenated into one ``out_relu``, pooled into one ``pooled`` embedding, and one ``logit``
    Dense holds the members' kernels side by side, divided by their number. The logit is then
    exactly the mean of the members' logits, and everything that reads ``out_relu``, ``pooled``
    and ``logit`` (calibration, the activation map, the embedding, export) works unchanged; the
    bottom runs once."""
    import keras
    from keras import layers

    cut_tensor = model.get_layer(cut).input
    trunk = keras.Model(cut_tensor, model.get_layer(LAST_CONV).output)
    maps = []
    for k, weights in enumerate(member_weights):
        inp = keras.Input(cut_tensor.shape[1:], name=f"member_{k}_input")
        clone = keras.models.clone_model(trunk, input_tensors=inp)
        member = keras.Model(inp, clone.output, name=f"member_{k}")
        for layer in member.layers:
            if layer.name in weights:
                layer.set_weights(weights[layer.name])
        maps.append(member(cut_tensor))
    last = layers.Concatenate(name=LAST_CONV)(maps)
    features = layers.GlobalAveragePooling2D(name=POOLED)(last)
    features = layers.Dropout(model.get_layer("dropout").rate, name="dropout")(features)
    dense = layers.Dense(1, name="logit")
    logit = dense(features)
    probability = layers.Activation("sigmoid", name="probability", dtype="float32")(logit)
    out = keras.Model(model.input, probability, name=model.name)
    n = len(member_weights)
    dense.set_weights([np.concatenate([w["logit"][0] for w in member_weights]) / n,
                       np.mean([w["logit"][1] for w in member_weights], axis=0)])
    return out


def fold_calibration(model, scale: float, bias: float) -> None:
    """Platt scaling ``sigmoid(scale * logit + bias)`` folded into the logit layer, so every
    exported format outputs calibrated probabilities with no extra code."""
    dense = model.get_layer("logit")
    kernel, b = dense.get_weights()
    dense.set_weights([kernel * scale, b * scale + bias])


def logit_model(model):
    import keras

    return keras.Model(model.input, model.get_layer("logit").output)


_PREDICT_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def predict(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities for uint8 ``[N, S, S]`` images.

    A compiled ``tf.function`` per model: measured (bench/export.py) 17.5 ms/image at batch
    32 against 32 ms for the eager call and 21 ms for ``model.predict``."""
    import tensorflow as tf

    from cxr.imaging.preprocess import to_model_input

    fn = _PREDICT_FNS.get(model)
    if fn is None:
        fn = _PREDICT_FNS[model] = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    out = []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size])
        out.append(np.asarray(fn(tf.constant(batch))).reshape(-1))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def embeddings(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The pooled features ``[N, D]`` (the input of the logit) for uint8 ``[N, S, S]`` images: what
    the not-a-chest-X-ray detector (:mod:`cxr.model.ood`) scores; ``model.tflite`` outputs the same."""
    import keras

    from cxr.imaging.preprocess import to_model_input

    sub = getattr(model, "_cxr_embedding_model", None)
    if sub is None:
        sub = model._cxr_embedding_model = keras.Model(model.input, model.get_layer(POOLED).output)
    out = [np.asarray(sub(to_model_input(images[i : i + batch_size]), training=False))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, sub.output.shape[-1]), np.float32)


class Scorer:
    """Probabilities and embeddings of uint8 ``[N, S, S]`` images from one forward pass of a
    two-output graph, on ``runtime`` (:func:`cxr.model.inference.runner`). Each image array is scored
    once: asked again for the same array (the stress views for the stress test and then for the
    not-a-chest-X-ray refusal), it answers from memory. The arrays it has seen are held, so their
    ids stay theirs."""

    def __init__(self, model, runtime: str = "keras", probe: np.ndarray | None = None, batch_size: int = 32):
        import keras

        from cxr.imaging.preprocess import to_model_input
        from cxr.model.inference import runner

        both = keras.Model(model.input, [model.output, model.get_layer(POOLED).output], name="probability_and_embedding")
        self.run = runner(both, runtime, None if probe is None else to_model_input(probe), what="evaluate.runtime")
        self.batch_size = batch_size
        self._seen: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def both(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities ``[N]``, embeddings ``[N, D]``)."""
        from cxr.imaging.preprocess import to_model_input
        from cxr.model.inference import in_batches

        hit = self._seen.get(id(images))
        if hit is not None and hit[0] is images:
            return hit[1], hit[2]
        if len(images):
            probs, emb = in_batches(self.run, to_model_input(images), self.batch_size)
            probs, emb = probs.reshape(-1).astype(np.float32), emb.astype(np.float32)
        else:
            probs, emb = np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
        self._seen[id(images)] = (images, probs, emb)
        return probs, emb

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.both(images)[0]

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        return self.both(images)[1]


def grad_cam(model, image: np.ndarray) -> tuple[np.ndarray, float]:
    """Grad-CAM over ``out_relu`` for one uint8 ``[S, S]`` image.

    Returns a heatmap in [0, 1] at the image's size and the probability. Gradients are of
    the logit (not the saturating probability), as in Selvaraju et al.
    """
    import keras
    import tensorflow as tf

    from cxr.imaging.preprocess import to_model_input

    grad_model = getattr(model, "_cxr_grad_model", None)
    if grad_model is None:
        grad_model = keras.Model(
            model.input, [model.get_layer(LAST_CONV).output, model.get_layer("logit").output]
        )
        model._cxr_grad_model = grad_model
    x = tf.convert_to_tensor(to_model_input(image))
    with tf.GradientTape() as tape:
        conv, logit = grad_model(x, training=False)
        tape.watch(conv)
        target = logit[:, 0]
    grads = tape.gradient(target, conv)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))[0].numpy()
    if cam.max() > 0:
        cam = cam / cam.max()
    size = image.shape[0]
    cam_img = tf.image.resize(cam[..., None], (size, size), method="bilinear").numpy()[..., 0]
    probability = float(tf.sigmoid(logit[0, 0]).numpy())
    return np.clip(cam_img, 0.0, 1.0), probability
