"""The backbone cache of the cached training path (:func:`cxr.model.training.train`) and the
batches fine-tuning draws from it.

The frozen bottom runs once per view over every training image (on :mod:`cxr.model.inference`'s
runtime) and its activations are kept in float16; fine-tuning then draws one random view of each
image per epoch, or, with a consistency weight, the image as acquired beside another view of it,
or, with the decorrelation penalty, with how far that view's aspect was moved. The training-only
models those losses need, and how a trained top's score follows the moved views' shape, are here
too. The cache is handed on (:class:`BackboneCache`) to whoever needs the same images again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr import LABELS
from cxr.model.fitting import screening_loss


def _image_batches(images: np.ndarray, batch_size: int, augment=None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    ds = ds.map(lambda x: tf.cast(x, tf.float32)[..., None])
    if augment is not None:
        ds = ds.map(augment)
    return ds.prefetch(tf.data.AUTOTUNE)


def run_in_batches(run, images: np.ndarray, batch_size: int, augment=None, desc: str = "", dtype=np.float16):
    """Apply ``run`` (:func:`cxr.model.inference.runner`: float32 batch -> array) over uint8 images in
    batches, augmented first if asked, with a progress bar."""
    from tqdm import tqdm

    out = []
    steps = (len(images) + batch_size - 1) // batch_size
    for x in tqdm(_image_batches(images, batch_size, augment), total=steps, desc=desc, unit="batch", mininterval=5):
        out.append(run(x.numpy()).astype(dtype))
    return np.concatenate(out)


@dataclass
class BackboneCache:
    """What the cached path computed once, for whoever needs the same images again (the
    not-a-chest-X-ray detector, the subtype head): the frozen bottom's runner, its activations of
    the training images as acquired (view 0 with ``clean_view``), of every cached view, and of the
    selection split, and the map from those activations to the embedding (the top of the trained
    network up to the pooling)."""

    frozen: object  # float32 [B, S, S, 1] -> activations at the cut
    pooled: object  # Keras model: activations at the cut -> embedding [B, D]
    train_clean: np.ndarray | None  # [N, h, w, c] float16, None without a clean view
    val: np.ndarray
    train_views: np.ndarray | None = None  # [N, V, h, w, c] float16: every view training saw

    def embed_activations(self, acts: np.ndarray, batch: int = 256) -> np.ndarray:
        return np.concatenate([np.asarray(self.pooled(acts[i:i + batch].astype(np.float32), training=False))
                               for i in range(0, len(acts), batch)]).astype(np.float32)

    def embed_images(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Embeddings of new uint8 ``[N, S, S]`` images: the bottom once, then the top."""
        return self.embed_activations(run_in_batches(self.frozen, images, batch_size, None, "backbone (new images)",
                                                     dtype=np.float32))


def _cached_batches(acts, labels, weights, batch_size: int, seed: int, paired: bool, positions=None,
                    penalties: int = 1, subtype=None):
    """Keras PyDataset over cached activations ``[N, V, ...]``, reshuffled each epoch. Unpaired: one
    random view of each image. Paired (the consistency loss): the image as acquired (view 0) beside
    one random other view of it, targets (label, label, 0 gap). With ``positions`` (``[N, V]``, the
    view's aspect position, NaN where it was not moved): targets (label, [position, moved, label])
    for :func:`decorrelated_top`, once per penalty. With ``subtype`` (``(targets, weights)``, each
    ``[N]``): one more target last, for :func:`decorrelated_top`'s subtype output."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.labels = labels.astype(np.float32)
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self):
            return (len(self.labels) + batch_size - 1) // batch_size

        def on_epoch_end(self):
            n, views = acts.shape[:2]
            self.order = self.rng.permutation(n)
            self.view = self.rng.integers(1 if paired else 0, views, size=n)

        def __getitem__(self, idx):
            sel = self.order[idx * batch_size : (idx + 1) * batch_size]
            other = acts[sel, self.view[sel]].astype(np.float32)
            y, w = self.labels[sel], weights[sel]
            if positions is not None and paired:  # the shift's target: how far the other view was moved
                pos = positions[sel, self.view[sel]]
                moved = ~np.isnan(pos)
                shift = np.where(moved, pos - y, 0.0)  # from the film's own acquisition (0 NORMAL, 1 PNEUMONIA)
                target = np.stack([shift, moved, y], axis=1).astype(np.float32)
                return (acts[sel, 0].astype(np.float32), other), (y, y, target), (w, w, np.ones_like(w))
            aux = ((subtype[0][sel],), (subtype[1][sel],)) if subtype is not None else ((), ())
            if positions is not None and penalties:
                pos = positions[sel, self.view[sel]]
                moved = ~np.isnan(pos)
                target = np.stack([np.where(moved, pos, 0.0), moved, y], axis=1).astype(np.float32)
                return other, (y,) + (target,) * penalties + aux[0], (w,) + (np.ones_like(w),) * penalties + aux[1]
            if subtype is not None:
                return other, (y,) + aux[0], (w,) + aux[1]
            if not paired:
                return other, y, w
            return (acts[sel, 0].astype(np.float32), other), (y, y, np.zeros_like(y)), (w, w, w)

    return Batches()


def ViewBatches(acts, labels, weights, batch_size: int, seed: int):  # noqa: N802 - reads as the class it makes
    """One random view of each image per epoch."""
    return _cached_batches(acts, labels, weights, batch_size, seed, paired=False)


def PositionBatches(acts, labels, weights, positions, batch_size: int, seed: int, penalties: int = 1,  # noqa: N802
                    subtype=None):
    """One random view of each image per epoch, with where that view's acquisition was moved (as
    many times as :func:`decorrelated_top` has penalties), and the subtype target if it has one."""
    return _cached_batches(acts, labels, weights, batch_size, seed, paired=False, positions=positions,
                           penalties=penalties, subtype=subtype)


def PairBatches(acts, labels, weights, batch_size: int, seed: int, positions=None):  # noqa: N802
    """Each image as acquired beside one random other view of it (the consistency loss); with
    ``positions``, the gap's target is how far that view's aspect was moved from the film's own
    (:func:`aspect_slope`)."""
    return _cached_batches(acts, labels, weights, batch_size, seed, paired=True, positions=positions)


def paired_top(top, weight: float, learning_rate: float, label_smoothing: float, gap_loss="mse",
               focal_gamma: float = 0.0):
    """``top`` applied to two views of the same images: both classified, and the gap between
    their logits penalised (invariance to what differs between the views: the acquisition), as a
    whole (``mse``) or only where it follows how far the view was moved (:func:`aspect_slope`)."""
    import keras

    shape = top.input.shape[1:]
    a, b = keras.Input(shape, name="view_0"), keras.Input(shape, name="view_k")
    la, lb = top(a), top(b)
    model = keras.Model([a, b], [keras.layers.Identity(name="clean")(la), keras.layers.Identity(name="shifted")(lb),
                                 keras.layers.Subtract(name="gap")([la, lb])], name="paired_top")
    bce = screening_loss(label_smoothing, focal_gamma)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=[bce, bce, gap_loss],
                  loss_weights=[0.5, 0.5, weight], metrics=[[keras.metrics.AUC(from_logits=True, name="auc")], [], []])
    return model


def decorrelated_top(cut, logit, embedding, weight: float, learning_rate: float, label_smoothing: float,
                     logit_weight: float = 0.0, focal_gamma: float = 0.0, subtype_weight: float = 0.0):
    """The top (``cut`` activations -> ``logit``) trained with a penalty, scaled by ``weight``, on
    how much its pooled ``embedding`` follows how far each view's aspect was moved between the
    classes' acquisitions, within each class (:func:`aspect_correlation`), and one, scaled by
    ``logit_weight``, on how much the logit itself does: the mean over the embedding's units is
    carried by units the logit hardly reads. A healthy film given a sick film's shape should embed
    and score as a healthy film. With ``subtype_weight``, one more output last: a bacterial-or-viral
    logit on the embedding, its cross-entropy scaled by ``subtype_weight`` (PNEUMONIA films with a
    known subtype only, by their sample weights), so the embedding also tells the subtypes apart.
    Training only: the top's layers are shared; the other outputs are the penalised tensors
    themselves and that logit, and nothing of them is kept."""
    import keras

    outputs, weights = [keras.layers.Identity(name="screening")(logit)], [1.0]
    if weight > 0:
        outputs.append(keras.layers.Identity(name="embedding")(embedding))
        weights.append(weight)
    if logit_weight > 0:
        outputs.append(keras.layers.Identity(name="logit_position")(logit))
        weights.append(logit_weight)
    if subtype_weight > 0:
        outputs.append(keras.layers.Dense(1, name="subtype_auxiliary")(embedding))
        weights.append(subtype_weight)
    model = keras.Model(cut, outputs, name="decorrelated_top")
    bce = screening_loss(label_smoothing, focal_gamma)
    penalties = [aspect_correlation] * (weight > 0) + [logit_aspect_correlation] * (logit_weight > 0)
    penalties += [keras.losses.BinaryCrossentropy(from_logits=True)] * (subtype_weight > 0)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=[bce] + penalties,
                  loss_weights=weights,
                  metrics=[[keras.metrics.AUC(from_logits=True, name="auc")]] + [[]] * (len(outputs) - 1))
    return model


def aspect_correlation(target, embedding):
    """Mean over the embedding's units of their squared correlation with the view's position,
    pooled within the classes (each class centred on its own means, then one correlation over the
    batch's moved views): a batch-level penalty that a unit telling the classes apart does not pay.
    ``target`` is ``[B, 3]``: position, 1 where the view was moved (only those count), label.
    Bounded (a correlation), so fine-tuning cannot buy it down by growing the features."""
    from keras import ops

    position, moved, label = target[:, 0:1], target[:, 1:2], target[:, 2:3]
    e_centred, p_centred = ops.zeros_like(embedding), ops.zeros_like(position)
    for cls in (0.0, 1.0):
        w = moved * ops.cast(ops.equal(label, cls), "float32")
        n = ops.maximum(ops.sum(w), 1.0)
        e_centred = e_centred + w * (embedding - ops.sum(w * embedding, axis=0, keepdims=True) / n)
        p_centred = p_centred + w * (position - ops.sum(w * position) / n)
    cov = ops.sum(e_centred * p_centred, axis=0)
    corr2 = ops.square(cov) / (ops.sum(ops.square(e_centred), axis=0) * ops.sum(ops.square(p_centred)) + 1e-6)
    return ops.where(ops.sum(moved) >= 4.0, ops.mean(corr2), 0.0)


def aspect_slope(target, gap):
    """How far, per unit of aspect moved, the logit moves between a film as acquired and a moved
    view of it: per class, the least-squares slope of the logit gap on the move (with an
    intercept, so the augmentation's own mean shift is not counted), squared, averaged over the two
    classes (a class with fewer than 4 moved films in the batch adds nothing). Paired within films,
    the film-to-film spread of the logit cancels: the batch estimates the systematic response to the
    shape, not noise. ``target`` is ``[B, 3]``: the move (the view's position minus the film's own),
    1 where the view was moved, label; ``gap`` is the logit as acquired minus the moved view's."""
    from keras import ops

    def slope2(g, s):
        return ops.square(ops.sum(g * s) / (ops.sum(ops.square(s)) + 1e-6))

    return _per_class(target, gap, slope2)


def logit_aspect_correlation(target, logit):
    """The mean over the two classes of the logit's squared correlation with the view's position,
    each class on its own moved views (at least 4 of them in the batch, or that class adds nothing).
    Not pooled as :func:`aspect_correlation` is: a healthy film's score rising with the sick film's
    shape and a sick film's falling with it would cancel in one pooled covariance."""
    from keras import ops

    def corr2(z, p):
        return ops.square(ops.sum(z * p)) / (ops.sum(ops.square(z)) * ops.sum(ops.square(p)) + 1e-6)

    return _per_class(target, logit, corr2)


def _per_class(target, score, statistic):
    """The mean over the two classes of ``statistic(score, target's first column)``, both centred
    on the class's moved views of the batch (zero elsewhere); a class with fewer than 4 of them
    adds nothing."""
    from keras import ops

    value, moved, label = target[:, 0:1], target[:, 1:2], target[:, 2:3]
    total = 0.0
    for cls in (0.0, 1.0):
        w = moved * ops.cast(ops.equal(label, cls), "float32")
        n = ops.sum(w)
        centred = [w * (x - ops.sum(w * x) / ops.maximum(n, 1.0)) for x in (score, value)]
        total = total + ops.where(n >= 4.0, statistic(*centred), 0.0)
    return total / 2.0


def aspect_response(top, acts: np.ndarray, positions: np.ndarray, labels: np.ndarray, limit: int = 2000) -> dict:
    """Per class, the correlation between the trained top's logit and how far each moved cached
    view's aspect was moved (the response the proxy's drop is made of): near 0, the score no
    longer follows the film's shape."""
    flat = acts.reshape((-1,) + acts.shape[2:])
    pos = positions.reshape(-1)
    lab = np.repeat(labels, positions.shape[1])
    idx = np.flatnonzero(~np.isnan(pos))
    idx = idx[:: max(1, len(idx) // limit)]  # a fixed, evenly spread subsample: a forward pass each
    logits = np.concatenate([np.asarray(top(flat[idx[i:i + 256]].astype(np.float32), training=False)).reshape(-1)
                             for i in range(0, len(idx), 256)])
    out = {"views_scored": int(len(idx))}
    for cls, name in enumerate(LABELS):
        sel = lab[idx] == cls
        if sel.sum() >= 3:
            out[f"logit_position_correlation_{name}"] = round(float(np.corrcoef(logits[sel], pos[idx][sel])[0, 1]), 4)
    return out
