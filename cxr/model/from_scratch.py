"""Training with ``weights: none``: no cut of the network makes sense (a freshly initialised
backbone outputs near-zero features), so the whole network is trained in one phase, the learning
rate decayed to zero along a cosine, with the batch-norm statistics re-estimated on the training
images before each validation (:func:`cxr.model.network.recalibrate_batch_norm`).
:func:`cxr.model.training.train` takes this path when ``train.weights`` is none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cxr import UserError, params
from cxr.data.dataset import SplitData
from cxr.model.fitting import batch_logits, compile_binary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FromScratch:
    """The schedule with ``weights: none``: one phase over the whole network, the learning
    rate decayed to zero along a cosine."""

    epochs: int = 30
    learning_rate: float = 0.003
    early_stopping_patience: int = 10
    batch_norm_images: int = 0  # training images the statistics are re-estimated on each epoch (0: all)

    @classmethod
    def from_params(cls, cfg) -> "FromScratch":
        if cfg is None:
            return cls()
        if not isinstance(cfg, dict):
            raise UserError("params.yaml: 'train.from_scratch' must be a mapping")
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise UserError(f"params.yaml: unknown 'train.from_scratch' keys {sorted(unknown)}")
        where = "train.from_scratch"
        out = cls(epochs=params.require(cfg, "epochs", int, where),
                  learning_rate=params.require(cfg, "learning_rate", float, where),
                  early_stopping_patience=params.require(cfg, "early_stopping_patience", int, where),
                  batch_norm_images=int(cfg.get("batch_norm_images", 0)))
        if out.batch_norm_images < 0:
            raise UserError("params.yaml: 'train.from_scratch.batch_norm_images' must be >= 0 (0: every training image)")
        if out.epochs < 1 or out.early_stopping_patience < 1:
            raise UserError("params.yaml: 'train.from_scratch.epochs' and 'early_stopping_patience' must be >= 1")
        return out


def fit_from_scratch(model, train: SplitData, val: SplitData, cfg, augment, sample_w) -> list[dict]:
    """The whole network, an epoch at a time: batch norms re-estimated on the training images,
    then validation AUC (ties broken by validation loss), early stopping on it (best weights
    restored, and their statistics). ``cfg``: the :class:`cxr.model.training.TrainConfig`, whose
    ``from_scratch`` is the schedule."""
    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from cxr.model.network import logit_model, recalibrate_batch_norm

    sched = cfg.from_scratch
    log.warning("train.weights is none: training the whole network from scratch (%d epochs at most)", sched.epochs)
    full = logit_model(model)
    steps = sched.epochs * ((len(train) + cfg.batch_size - 1) // cfg.batch_size)
    # Cosine decay to zero over the whole schedule: the last epochs settle instead of jumping
    # around a small validation split's noise.
    compile_binary(full, keras.optimizers.schedules.CosineDecay(sched.learning_rate, steps), cfg.label_smoothing,
                   cfg.focal_gamma)
    ds = (
        tf.data.Dataset.from_tensor_slices((train.images, train.labels.astype(np.float32), sample_w))
        .shuffle(len(train), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .map(lambda x, y, w: (augment(tf.cast(x, tf.float32)[..., None]), y, w))
        .prefetch(tf.data.AUTOTUNE)
    )
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    # A fixed, seeded sample estimates the statistics as well as every image, for less of each epoch.
    calibration = train.images
    if 0 < sched.batch_norm_images < len(train):
        pick = np.random.default_rng(cfg.seed).choice(len(train), sched.batch_norm_images, replace=False)
        calibration = train.images[np.sort(pick)]
    rows, best, best_key, stale = [], None, (-1.0, 0.0), 0
    for epoch in range(sched.epochs):
        h = full.fit(ds, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False)  # ds is shuffled
        recalibrate_batch_norm(model, calibration, cfg.batch_size)
        val_logits = batch_logits(full, val.images, cfg.batch_size)
        val_auc = float(roc_auc_score(val.labels, val_logits)) if len(set(val.labels.tolist())) == 2 else 0.5
        val_loss = float(loss_fn(val.labels.astype(np.float32), val_logits))
        rows.append({"epoch": epoch + 1, "phase": "full", "loss": round(float(h.history["loss"][-1]), 6),
                     "auc": round(float(h.history["auc"][-1]), 6), "val_loss": round(val_loss, 6),
                     "val_auc": round(val_auc, 6)})
        log.info("epoch %d/%d: loss %.4f, val AUC %.4f", epoch + 1, sched.epochs, rows[-1]["loss"], val_auc)
        key = (val_auc, -val_loss)  # a small validation split reaches AUC 1: then the loss decides
        if key > best_key:
            best, best_key, stale = model.get_weights(), key, 0
        else:
            stale += 1
            if stale >= sched.early_stopping_patience:
                log.info("early stopping: val AUC (then loss) has not improved for %d epochs", stale)
                break
    if best is not None:
        model.set_weights(best)  # batch-norm statistics are weights too: the best epoch's come back
    return rows
