"""What both training schedules share (the cached path of :mod:`cxr.model.training` and
:mod:`cxr.model.from_scratch`): compiling a logit model with the loss and metric they train
with, logits over images in batches, and the Platt scaling that calibrates what they trained
(the subtype head's too)."""

from __future__ import annotations

import numpy as np


def screening_loss(label_smoothing: float, focal_gamma: float = 0.0):
    """Cross-entropy on the logit; with ``focal_gamma`` > 0 the focal loss (Lin et al. 2017), whose
    factor (1 - p_true)^gamma leaves the films the model already ranks far from the threshold
    almost nothing to say, so the hard tails of both classes carry the fit."""
    import keras

    if focal_gamma > 0:
        return keras.losses.BinaryFocalCrossentropy(gamma=focal_gamma, from_logits=True,
                                                    label_smoothing=label_smoothing)
    return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)


def compile_binary(model, learning_rate, label_smoothing: float, focal_gamma: float = 0.0):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=screening_loss(label_smoothing, focal_gamma),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
    )


def batch_logits(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    from cxr.imaging.preprocess import to_model_input

    return np.concatenate([np.asarray(fn(to_model_input(images[i : i + batch_size]), training=False)).reshape(-1)
                           for i in range(0, len(images), batch_size)]) if len(images) else np.zeros(0)


def weight_average(from_epoch: int, monitor: str = "val_auc"):
    """A callback that leaves the model with the mean of its trainable weights over every step from
    epoch ``from_epoch`` (1-based) to the best epoch on ``monitor`` among those: dense weight averaging
    (Izmailov et al. 2018; Cha et al. 2021, SWAD): in domain generalisation a flat point of weight
    space transfers under a shift of the input as an ensemble does, at one model's serving cost
    (measured here: it did not, docs/model.md). Put it after early stopping in the callbacks (its end
    of training runs last). ``summary`` holds the window it averaged."""
    import keras

    class WeightAverage(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.sum, self.steps, self.epoch = None, 0, 0
            self.best, self.kept, self.summary = -np.inf, None, {}

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch < from_epoch:
                return
            weights = [np.array(v) for v in self.model.trainable_variables]
            self.sum = weights if self.sum is None else [s + w for s, w in zip(self.sum, weights)]
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            score = (logs or {}).get(monitor)
            if self.epoch >= from_epoch and self.steps and score is not None and score > self.best:
                self.best = float(score)
                self.kept = ([s / self.steps for s in self.sum],
                             {"from_epoch": from_epoch, "to_epoch": self.epoch, "steps": self.steps,
                              f"best_{monitor}_in_window": round(self.best, 6)})

        def on_train_end(self, logs=None):
            if self.kept is None:  # training stopped before the window, or no score: the weights stay
                self.summary = {"from_epoch": from_epoch, "steps": 0}
                return
            mean, self.summary = self.kept
            for variable, value in zip(self.model.trainable_variables, mean):
                variable.assign(value.astype(variable.dtype))

    return WeightAverage()


def separable(logits: np.ndarray, labels: np.ndarray) -> bool:
    """Every PNEUMONIA logit above every NORMAL one: the maximum-likelihood Platt slope is infinite."""
    labels = np.asarray(labels)
    return bool(labels.any() and (~labels.astype(bool)).any()
                and logits[labels == 1].min() > logits[labels == 0].max())


def platt_scaling(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(scale, bias) with ``sigmoid(scale * logit + bias)`` calibrated on validation.

    On a separable validation split the fit uses Platt's (1999) targets, (N+ + 1) / (N+ + 2)
    and 1 / (N- + 2) instead of 1 and 0: the plain fit's slope grows without bound and every
    probability would read 0 or 1."""
    from sklearn.linear_model import LogisticRegression

    x = logits.reshape(-1, 1).astype(np.float64)
    labels = np.asarray(labels).astype(int)
    lr = LogisticRegression(C=1e4, max_iter=1000)
    if separable(logits, labels):
        pos, neg = int(labels.sum()), int(len(labels) - labels.sum())
        target = np.where(labels == 1, (pos + 1) / (pos + 2), 1 / (neg + 2))
        # soft targets as two weighted copies of each point
        lr.fit(np.concatenate([x, x]), np.r_[np.ones(len(x)), np.zeros(len(x))],
               sample_weight=np.r_[target, 1 - target])
    else:
        lr.fit(x, labels)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])
