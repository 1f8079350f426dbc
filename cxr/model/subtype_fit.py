"""Fitting the subtype head (:mod:`cxr.model.subtype`) on the trained screening model's embedding:
the PNEUMONIA training films whose names give their subtype, every view of each (the cached
path's views: as acquired, re-acquired and augmented; from scratch: as acquired and
``train.views - 1`` augmented copies), early-stopped and calibrated on the validation PNEUMONIA
films. Run after the screening model is saved and its detector fitted, and drawing no shared
random state, so nothing screening-related can move.

The fit itself: class-weighted logistic loss with an L2 penalty on standardised embeddings, full-batch
gradient descent from zero with Nesterov momentum at a step that cannot diverge (1 / L, L the
loss's largest curvature: a quarter of the weighted features' largest eigenvalue, plus the
penalty), early-stopped on the validation films' ROC AUC (ties: their loss), the best step kept,
then Platt scaling on the validation films (:func:`cxr.model.fitting.platt_scaling`). Gradient
descent from zero stopped early walks the ridge path from the prior (all films alike) outwards;
deterministic, and no random state is drawn.
"""

from __future__ import annotations

import numpy as np

from cxr.data.dataset import SplitData, known_subtype
from cxr.model.subtype import SCALE_FLOOR, SubtypeConfig, SubtypeHead


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged): scikit-learn's figure, cheap enough for every step."""
    from scipy.stats import rankdata

    pos = labels == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _loss(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean logistic loss of logits ``z``."""
    return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) / np.sum(w))


def _balanced(y: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights (n / 2 n_c): both subtypes weigh the same in the loss."""
    n, pos = len(y), float(y.sum())
    return np.where(y == 1, n / (2.0 * pos), n / (2.0 * (n - pos)))


def _counts(y: np.ndarray) -> dict:
    return {"bacterial": int((y == 1).sum()), "viral": int((y == 0).sum())}


def too_few(films: dict, cfg: SubtypeConfig) -> SubtypeHead | None:
    """No head, and why, when a side has fewer than ``min_films`` films of a subtype."""
    short = [f"{n} {kind} in {side}" for side, c in films.items() for kind, n in c.items() if n < cfg.min_films]
    if not short:
        return None
    return SubtypeHead.none(f"too few films of a known subtype to fit (subtype.min_films: {cfg.min_films} of each "
                            f"in train and validation; have {', '.join(short)})", films=films, config=cfg.to_dict())


def fit(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
        cfg: SubtypeConfig, films: dict | None = None) -> SubtypeHead:
    """The head on training embeddings ``[M, D]`` (every view of each film) with labels 1 bacterial /
    0 viral, early-stopped and Platt-calibrated on the validation films' embeddings. ``films``: how
    many films each side has (views counted once), for the record."""
    from cxr.model.fitting import platt_scaling, separable

    train_y, val_y = np.asarray(train_y).astype(int), np.asarray(val_y).astype(int)
    films = films or {"train": _counts(train_y), "val": _counts(val_y)}
    refused = too_few(films, cfg)
    if refused is not None:
        return refused
    x, vx = np.asarray(train_x, np.float64), np.asarray(val_x, np.float64)
    mean, spread = x.mean(axis=0), x.std(axis=0)
    spread = np.sqrt(spread ** 2 + SCALE_FLOOR * max(float(np.mean(spread ** 2)), 1e-12))
    z, vz = (x - mean) / spread, (vx - mean) / spread
    weights, val_weights = _balanced(train_y), _balanced(val_y)
    z1 = np.concatenate([z, np.ones((len(z), 1))], axis=1)  # the bias as a last, unpenalised column
    gram = (z1 * (weights / weights.sum())[:, None]).T @ z1
    step_size = cfg.step_scale / (0.25 * float(np.linalg.eigvalsh(gram)[-1]) + cfg.l2)
    penalty = np.r_[np.full(z.shape[1], cfg.l2), 0.0]
    theta = previous = np.zeros(z1.shape[1])
    best, best_key, stale, steps = theta, (-1.0, -np.inf), 0, 0
    for step in range(1, cfg.max_steps + 1):
        look = theta + (step - 1) / (step + 2) * (theta - previous)  # Nesterov's look-ahead
        residual = weights * (1.0 / (1.0 + np.exp(-(z1 @ look))) - train_y) / weights.sum()
        previous, theta = theta, look - step_size * (z1.T @ residual + penalty * look)
        steps = step
        val_logit = vz @ theta[:-1] + theta[-1]
        key = (round(_auc(val_y, val_logit), 12), -_loss(val_logit, val_y, val_weights))
        if key > best_key:
            best, best_key, stale = theta, key, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    w, b = best[:-1], float(best[-1])
    kernel, bias = w / spread, b - float(np.dot(mean / spread, w))  # the standardisation folded in
    val_logits = vx @ kernel + bias
    scale, shift = platt_scaling(val_logits, val_y)
    if scale > 0:
        calibration = {"method": "platt", "scale": scale, "bias": shift, "fitted_on": "validation PNEUMONIA films",
                       "targets": "platt-1999 (validation separable)" if separable(val_logits, val_y) else "labels"}
        kernel, bias = kernel * scale, bias * scale + shift
    else:
        calibration = {"method": "none", "reason": f"non-positive slope {scale:.3f}"}
    return SubtypeHead(kernel=kernel, bias=bias, info={
        "films": films, "train_rows": int(len(train_y)), "steps": steps, "best_step": steps - stale,
        "step_size": round(step_size, 6),
        "val_auc": round(best_key[0], 4), "val_loss": round(-best_key[1], 4), "calibration": calibration,
        "config": cfg.to_dict()})


def fit_on_model(model, cache, train: SplitData, val: SplitData, train_cfg, cfg: SubtypeConfig,
                 val_embedding: np.ndarray | None = None) -> SubtypeHead:
    """The head for a trained model. ``cache``: training's :class:`cxr.model.cache.BackboneCache`
    (None from scratch). ``val_embedding``: the validation films' embeddings when already computed
    (in ``val``'s order)."""
    if not cfg.fit:
        return SubtypeHead.none("subtype.fit is false in params.yaml: no subtype head was fitted",
                                config=cfg.to_dict())
    ti, ty = known_subtype(train)
    vi, vy = known_subtype(val)
    films = {"train": _counts(ty), "val": _counts(vy)}
    refused = too_few(films, cfg)
    if refused is not None:
        return refused
    if cache is not None and cache.train_views is not None:
        acts = cache.train_views[ti]
        views = acts.shape[1]
        x = cache.embed_activations(acts.reshape((-1,) + acts.shape[2:])).reshape(len(ti), views, -1)
    else:
        x = _from_scratch_views(model, train.images[ti], train_cfg)
    if val_embedding is None:
        from cxr.model.network import embeddings

        val_embedding = embeddings(model, val.images[vi], train_cfg.batch_size)
    else:
        val_embedding = val_embedding[vi]
    views = x.shape[1]
    head = fit(x.reshape(len(ti) * views, -1), np.repeat(ty, views), val_embedding, vy, cfg, films)
    head.info["views_per_film"] = views
    return head


def _from_scratch_views(model, images: np.ndarray, train_cfg) -> np.ndarray:
    """``[N, V, D]``: the embedding of each image as acquired and of ``train.views - 1`` copies
    augmented as training augments (:func:`cxr.model.training.augmenter`, its own seeded state)."""
    import keras

    from cxr.model.network import POOLED, embeddings
    from cxr.model.cache import run_in_batches
    from cxr.model.training import augmenter

    out = [embeddings(model, images, train_cfg.batch_size)]
    if train_cfg.views > 1:
        sub = keras.Model(model.input, model.get_layer(POOLED).output)
        augment = augmenter(train_cfg.augment, train_cfg.seed + 17)
        for v in range(1, train_cfg.views):
            out.append(run_in_batches(lambda x: np.asarray(sub(x, training=False)), images, train_cfg.batch_size,
                                      augment, f"subtype view {v} (augmented)", dtype=np.float32))
    return np.stack(out, axis=1)
