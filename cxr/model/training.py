"""Transfer learning for MobileNetV2 on a 2-core CPU, in minutes rather than hours.

The expensive part of MobileNetV2 is the frozen bottom of the backbone. It is run once
over ``views`` copies of every training image (view 0 clean, the others augmented) and
once over the validation images; its activations are cached (float16). Then:

1. head phase: pooled features of the frozen network -> Dense, trained on cached features;
2. fine-tune phase: the top of the backbone (from ``fine_tune_from``, batch norms kept
   frozen) plus the head, trained on the cached activations, one random view of each
   image per epoch;

with class weights for the ~2.9:1 imbalance, label smoothing, early stopping on
validation AUC (best weights restored), then Platt scaling fitted on validation logits
and folded into the logit layer. With ``weights: none`` no cut makes sense (a freshly
initialised backbone outputs near-zero features), so the whole network is trained, on
the ``from_scratch`` schedule (:mod:`cxr.model.from_scratch`), with the batch-norm statistics
re-estimated on the training images before each validation
(:func:`cxr.model.network.recalibrate_batch_norm`). The not-a-chest-X-ray detector is fitted
after training, by :mod:`cxr.model.ood_fit`.

Whatever the path, a network whose validation outputs are constant fails training with a
clear message instead of being calibrated, scored and promoted.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from cxr import UserError
from cxr.data.dataset import SplitData
from cxr.model.cache import (BackboneCache, PairBatches, PositionBatches, ViewBatches, aspect_response, aspect_slope,
                             decorrelated_top, paired_top, run_in_batches)
from cxr.model.fitting import batch_logits, compile_binary, platt_scaling, separable, weight_average
from cxr.model.from_scratch import fit_from_scratch
from cxr.model.train_config import Augment, TrainConfig, class_weights, sample_weights, subtype_targets

log = logging.getLogger(__name__)


# Validation logits spanning less than this are one constant (float noise aside).
CONSTANT_LOGIT_SPAN = 1e-4


def augmenter(aug: Augment, seed: int):
    """Batch augmentation for float ``[B, S, S, 1]`` 0..255 X-rays.

    Geometry stays plausible for a chest film: small rotation, shift and zoom, no flips
    (the heart is on the left); intensity jitter (gamma, contrast, brightness) stands in
    for differences between acquisition chains that equalisation leaves behind.
    """
    import keras
    import tensorflow as tf

    geometry = keras.Sequential(
        [
            keras.layers.RandomRotation(aug.rotation_degrees / 360.0, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(aug.shift, aug.shift, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(aug.zoom, fill_mode="constant", seed=seed + 2),
        ],
        name="augment_geometry",
    )
    gen = tf.random.Generator.from_seed(seed + 3)

    def apply(x):
        x = geometry(x, training=True)
        batch = tf.shape(x)[0]
        unit = tf.clip_by_value(x / 255.0, 0.0, 1.0)
        gamma = tf.exp(gen.uniform((batch, 1, 1, 1), -aug.gamma, aug.gamma))
        unit = tf.pow(unit + 1e-6, gamma)
        mean = tf.reduce_mean(unit, axis=(1, 2, 3), keepdims=True)
        contrast = gen.uniform((batch, 1, 1, 1), 1.0 - aug.contrast, 1.0 + aug.contrast)
        brightness = gen.uniform((batch, 1, 1, 1), -aug.brightness, aug.brightness)
        unit = (unit - mean) * contrast + mean + brightness
        return tf.clip_by_value(unit, 0.0, 1.0) * 255.0

    return apply


HISTORY_COLUMNS = ("epoch", "phase", "loss", "auc", "val_loss", "val_auc")
# per-epoch figures of the optional losses: a row has those its training had
HISTORY_OPTIONAL = ("aspect_correlation", "logit_aspect_correlation", "aspect_slope",
                    "subtype_loss", "val_subtype_loss")


def history_columns(history: list[dict]) -> list[str]:
    """The columns of ``reports/train/history.csv``: the fixed ones, then the optional losses trained."""
    return list(HISTORY_COLUMNS) + [c for c in HISTORY_OPTIONAL if any(c in row for row in history)]


def _history_rows(history, phase: str, start_epoch: int, gap_column: str | None = None) -> list[dict]:
    h = {k.replace("clean_", ""): v for k, v in history.history.items()}  # the paired model's clean output
    decorrelated = "screening_loss" in h  # the screening output's own figures; the penalty beside them
    if decorrelated:
        h = {**h, **{k.replace("screening_", ""): v for k, v in h.items() if "screening_" in k}}
    n = len(h.get("loss", []))
    rows = []
    for i in range(n):
        row = {"epoch": start_epoch + i + 1, "phase": phase}
        row.update({k: round(float(h[k][i]), 6) for k in ("loss", "auc", "val_loss", "val_auc")})
        if gap_column:
            row[gap_column] = round(float(h["gap_loss"][i]), 6)
        for output, column in (("embedding", "aspect_correlation"), ("logit_position", "logit_aspect_correlation"),
                               ("subtype_auxiliary", "subtype_loss"), ("val_subtype_auxiliary", "val_subtype_loss")):
            if f"{output}_loss" in h:
                row[column] = round(float(h[f"{output}_loss"][i]), 6)
        rows.append(row)
    return rows


def _early_stopping(patience: int, monitor: str = "val_auc"):
    import keras

    return keras.callbacks.EarlyStopping(
        monitor=monitor, mode="max", patience=patience, restore_best_weights=True, verbose=1
    )


def _layer_weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def _set_layer_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])


def _member_seed(seed: int, member: int) -> int:
    """Member 0 draws exactly what a single model draws."""
    return seed + 1000 * member


def fit_member(model, top, cfg: TrainConfig, train_feats, val_feats, train_acts, val_acts, labels, sample_w,
               y_val, seed: int, member: int, epochs_before: int, timings: dict, averaged: list,
               positions: np.ndarray | None = None, subtype: tuple | None = None) -> list[dict]:
    """One member: the head on the frozen network's pooled features, then the top of the backbone
    (batch norms frozen) on the cached activations, its weights averaged over steps with
    ``weight_average_from`` (the window appended to ``averaged``). ``top`` holds the result.
    ``subtype``: the training and validation films' subtype targets and weights
    (:func:`subtype_targets`), for ``subtype_loss``. Public because ``bench/subtype_top.py`` trains
    a top for the subtype on this very schedule."""
    import keras

    suffix = f" (member {member})" if member else ""
    history: list[dict] = []
    t0 = time.time()
    feat_in = keras.Input(train_feats.shape[-1:], name="pooled_features")
    head = keras.Model(feat_in, model.get_layer("logit")(model.get_layer("dropout")(feat_in)), name="head")
    for layer in model.layers:
        layer.trainable = False
    model.get_layer("logit").trainable = True
    if cfg.head_epochs:
        compile_binary(head, cfg.head_learning_rate, cfg.label_smoothing, cfg.focal_gamma)
        h = head.fit(ViewBatches(train_feats, labels, sample_w, cfg.batch_size, seed),
                     validation_data=(val_feats, y_val), epochs=cfg.head_epochs, verbose=2,
                     callbacks=[_early_stopping(cfg.early_stopping_patience)])
        history += _history_rows(h, "head" + suffix, epochs_before)
    timings["head_fit_s"] += time.time() - t0

    t0 = time.time()
    if cfg.fine_tune_epochs:
        cut_index = [layer.name for layer in model.layers].index(cfg.fine_tune_from)
        for layer in model.layers[cut_index:]:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        sloped = cfg.aspect_slope > 0 and positions is not None
        on_pairs = (cfg.consistency > 0 or sloped) and train_acts.shape[1] > 1
        decorrelated = (cfg.decorrelation > 0 or cfg.logit_decorrelation > 0) and positions is not None
        auxiliary = cfg.subtype_loss > 0 and subtype is not None
        monitor = "val_clean_auc" if on_pairs else "val_screening_auc" if decorrelated or auxiliary else "val_auc"
        callbacks = [_early_stopping(cfg.early_stopping_patience, monitor)]
        if cfg.weight_average_from:
            callbacks.append(weight_average(cfg.weight_average_from, monitor))
        if on_pairs:
            paired = paired_top(top, cfg.aspect_slope if sloped else cfg.consistency, cfg.fine_tune_learning_rate,
                                cfg.label_smoothing, aspect_slope if sloped else "mse", cfg.focal_gamma)
            v32 = val_acts.astype(np.float32)
            gap_val = np.zeros((len(y_val), 3) if sloped else len(y_val), np.float32)  # validation: no penalty
            h = paired.fit(PairBatches(train_acts, labels, sample_w, cfg.batch_size, seed + 1,
                                       positions if sloped else None),
                           validation_data=((v32, v32), (y_val, y_val, gap_val)),
                           epochs=cfg.fine_tune_epochs, verbose=2, callbacks=callbacks)
        elif decorrelated or auxiliary:
            cut = model.get_layer(cfg.fine_tune_from).input
            # without positions (or with both penalties at 0) the penalties are off: the subtype loss alone
            pair = decorrelated_top(cut, model.get_layer("logit").output, model.get_layer("pooled").output,
                                    cfg.decorrelation * decorrelated, cfg.fine_tune_learning_rate,
                                    cfg.label_smoothing, cfg.logit_decorrelation * decorrelated, cfg.focal_gamma,
                                    cfg.subtype_loss if auxiliary else 0.0)
            v32 = val_acts.astype(np.float32)
            unmoved = np.stack([np.zeros_like(y_val), np.zeros_like(y_val), y_val], axis=1)  # validation: no penalty
            penalties = len(pair.outputs) - 1 - auxiliary
            validation = (v32, (y_val,) + (unmoved,) * penalties)
            if auxiliary:  # the subtype's target and weight (0 but on validation's PNEUMONIA films)
                weights = (np.ones_like(y_val),) * (1 + penalties) + (subtype[3],)
                validation = (v32, validation[1] + (subtype[2],), weights)
            h = pair.fit(PositionBatches(train_acts, labels, sample_w, positions if decorrelated else None,
                                         cfg.batch_size, seed + 1, penalties, subtype[:2] if auxiliary else None),
                         validation_data=validation, epochs=cfg.fine_tune_epochs, verbose=2, callbacks=callbacks)
        else:
            compile_binary(top, cfg.fine_tune_learning_rate, cfg.label_smoothing, cfg.focal_gamma)
            h = top.fit(ViewBatches(train_acts, labels, sample_w, cfg.batch_size, seed + 1),
                        validation_data=(val_acts.astype(np.float32), y_val), epochs=cfg.fine_tune_epochs,
                        verbose=2, callbacks=callbacks)
        history += _history_rows(h, "fine_tune" + suffix, epochs_before + len(history),
                                 "aspect_slope" if on_pairs and sloped else None)
        if cfg.weight_average_from:
            averaged.append(callbacks[-1].summary)
    timings["fine_tune_fit_s"] += time.time() - t0
    return history


def train(model, train: SplitData, val: SplitData, cfg: TrainConfig, view_sources: list[np.ndarray] | None = None,
          view_positions: np.ndarray | None = None) -> tuple[object, list[dict], dict, BackboneCache | None]:
    """Train ``model``. Returns (the trained model: ``model`` itself, or with ``members`` > 1 one
    model averaging the members' tops on its bottom; per-epoch history rows; summary facts; the
    backbone cache of the cached path, or None from scratch).

    ``view_sources`` (optional, uint8 ``[N, S, S]`` arrays) are the images the views start
    from instead of ``train.images``: randomly re-acquired copies
    (:func:`cxr.shift.robustness.acquisition_view`), one per view after the clean view 0, or one per
    view with ``clean_view: false``. ``val`` is the split that early stopping and calibration
    are measured on (with ``select_on: val+counterfactual``, validation and its counterfactual
    copies). ``view_positions`` (``[N, V]``, :func:`cxr.shift.robustness.aspect_positions` of each
    cached view, NaN where it was not moved) is what ``train.decorrelation`` reads; with them the
    summary says how the trained top's score follows the moved views' shape."""
    import keras

    from cxr.imaging.preprocess import to_model_input
    from cxr.model.inference import runner
    from cxr.model.network import fold_calibration, logit_model, split_at

    keras.utils.set_random_seed(cfg.seed)
    weights = class_weights(train.labels)
    sample_w = sample_weights(train, cfg.viral_weight)
    y_val = val.labels.astype(np.float32)
    augment = augmenter(cfg.augment, cfg.seed)
    facts: dict = {"class_weights": weights, "train_images": len(train), "val_images": len(val)}
    facts.update({k: getattr(cfg, k) for k, off in (("viral_weight", 1.0), ("focal_gamma", 0.0))
                  if getattr(cfg, k) != off})
    history: list[dict] = []
    timings: dict[str, float] = {}
    cache = None

    if cfg.weights is None:
        t0 = time.time()
        history += fit_from_scratch(model, train, val, cfg, augment, sample_w)
        timings["full_fit_s"] = time.time() - t0
        val_logits = batch_logits(logit_model(model), val.images, cfg.batch_size)
        facts["mode"] = "from_scratch"
    else:
        bottom, top = split_at(model, cfg.fine_tune_from)
        t0 = time.time()
        frozen = runner(bottom, cfg.frozen_runtime, probe=to_model_input(train.images[:8]))
        facts["frozen_runtime"] = cfg.frozen_runtime
        sources = list(view_sources or [])
        if cfg.clean_view or not sources:
            sources.insert(0, train.images)
        sources += [train.images] * (cfg.views - len(sources))
        # View 0 is never augmented by the augmenter (with clean_view: the image as acquired).
        views = [run_in_batches(frozen, sources[0], cfg.batch_size, None, "backbone view 0")]
        for v in range(1, cfg.views):
            views.append(run_in_batches(frozen, sources[v], cfg.batch_size, augment, f"backbone view {v} (augmented)"))
        train_acts = np.stack(views, axis=1)  # [N, V, h, w, c]
        val_acts = run_in_batches(frozen, val.images, cfg.batch_size, None, "backbone val")
        timings["backbone_cache_s"] = time.time() - t0
        facts["cached_activation_shape"] = list(train_acts.shape)

        # Pooled features of the frozen network (the top as loaded: the same for every member).
        t0 = time.time()
        cut = model.get_layer(cfg.fine_tune_from).input
        pooled = keras.Model(cut, model.get_layer("pooled").output)
        pool_call = lambda a: np.concatenate(  # noqa: E731
            [np.asarray(pooled(a[i : i + 256].astype(np.float32), training=False)) for i in range(0, len(a), 256)]
        )
        n, v = train_acts.shape[:2]
        train_feats = pool_call(train_acts.reshape((n * v,) + train_acts.shape[2:])).reshape(n, v, -1)
        val_feats = pool_call(val_acts)
        timings["head_fit_s"] = time.time() - t0
        timings["fine_tune_fit_s"] = 0.0
        initial = _layer_weights(top)
        subtype = subtype_targets(train) + subtype_targets(val) if cfg.subtype_loss > 0 else None
        members, averaged = [], []
        for k in range(cfg.members):
            if k:  # another member: the top as loaded, a fresh logit layer, its own seeds
                _set_layer_weights(top, initial)
                logit_layer = model.get_layer("logit")
                kernel, bias = logit_layer.get_weights()
                init = keras.initializers.GlorotUniform(seed=_member_seed(cfg.seed, k))
                logit_layer.set_weights([np.asarray(init(kernel.shape)), np.zeros_like(bias)])
                keras.utils.set_random_seed(_member_seed(cfg.seed, k))
            history += fit_member(model, top, cfg, train_feats, val_feats, train_acts, val_acts, train.labels,
                                  sample_w, y_val, _member_seed(cfg.seed, k), k, len(history), timings, averaged,
                                  view_positions, subtype)
            members.append(_layer_weights(top))
        if cfg.fine_tune_epochs and cfg.consistency > 0 and train_acts.shape[1] > 1:
            facts["consistency"] = cfg.consistency
        if cfg.members > 1:  # one model: the bottom once, the members' tops side by side
            from cxr.model.network import ensemble

            model = ensemble(model, cfg.fine_tune_from, members)
            top = keras.Model(cut, model.get_layer("logit").output, name="top")
            pooled = keras.Model(cut, model.get_layer("pooled").output)
            facts["members"] = cfg.members
        val_logits = np.concatenate(
            [np.asarray(top(val_acts[i : i + 256].astype(np.float32), training=False)).reshape(-1)
             for i in range(0, len(val_acts), 256)]
        )
        if view_positions is not None:
            facts["aspect_response"] = aspect_response(top, train_acts, view_positions, train.labels)
        if cfg.fine_tune_epochs and view_positions is not None:
            facts.update({k: getattr(cfg, k) for k in ("decorrelation", "logit_decorrelation", "aspect_slope")
                          if getattr(cfg, k) > 0})
        if cfg.fine_tune_epochs and cfg.subtype_loss > 0:
            facts["subtype_loss"] = cfg.subtype_loss
        if averaged:  # the window(s) averaged, and what the averaged model scores on validation
            from sklearn.metrics import roc_auc_score

            facts["weight_average"] = {"members": averaged,
                                       "val_auc": round(float(roc_auc_score(val.labels, val_logits)), 6)}
        facts["mode"] = "cached_backbone"
        facts["fine_tune_from"] = cfg.fine_tune_from
        clean = cfg.clean_view or not view_sources
        cache = BackboneCache(frozen=frozen, pooled=pooled, train_clean=train_acts[:, 0] if clean else None,
                              val=val_acts, train_views=train_acts)

    for layer in model.layers:
        layer.trainable = True
    check_not_constant(val_logits)
    scale, bias = platt_scaling(val_logits, val.labels)
    if scale > 0:
        fold_calibration(model, scale, bias)
        facts["calibration"] = {"method": "platt", "scale": scale, "bias": bias, "fitted_on": "val",
                                "targets": "platt-1999 (validation separable)" if separable(val_logits, val.labels)
                                else "labels"}
    else:
        log.warning("Platt scaling gave a non-positive slope (%.3f): calibration skipped", scale)
        facts["calibration"] = {"method": "none", "reason": f"non-positive slope {scale:.3f}"}
    facts["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return model, history, facts, cache


def check_not_constant(val_logits: np.ndarray) -> None:
    span = float(np.ptp(val_logits)) if len(val_logits) else 0.0
    if span < CONSTANT_LOGIT_SPAN:
        raise UserError(
            f"train: the trained network outputs a constant (validation logits span {span:.2g} over "
            f"{len(val_logits)} images): it learnt nothing a threshold could use. Not saved. Check the data "
            "(labels, both classes present and distinguishable) and the schedule (train.*epochs, learning rates)"
        )
