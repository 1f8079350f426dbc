"""What both training schedules share (the cached path of :mod:`cxr.model.training` and
:mod:`cxr.model.from_scratch`): compiling a logit model with the loss and metric they train
with, and logits over images in batches."""

from __future__ import annotations

import numpy as np


def compile_binary(model, learning_rate, label_smoothing: float):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
    )


def batch_logits(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    from cxr.imaging.preprocess import to_model_input

    return np.concatenate([np.asarray(fn(to_model_input(images[i : i + batch_size]), training=False)).reshape(-1)
                           for i in range(0, len(images), batch_size)]) if len(images) else np.zeros(0)
