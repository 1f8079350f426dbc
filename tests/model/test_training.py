"""Training and the model graph: the cached-backbone path, from-scratch path, calibration."""

import numpy as np
import pytest

from cxr.dataset import SplitData
from cxr.training import Augment, TrainConfig, augmenter, class_weights, platt_scaling

from tests.shared_paths import WEIGHTS, needs_weights


def cfg(**over):
    base = dict(seed=1, weights=None, batch_size=8, views=2, head_epochs=2, head_learning_rate=1e-3,
                fine_tune_epochs=1, fine_tune_learning_rate=1e-4, fine_tune_from="block_15_expand",
                label_smoothing=0.05, early_stopping_patience=2)
    base.update(over)
    return TrainConfig(**base)


def blobs(n, size, seed):
    """Two visibly different classes: PNEUMONIA images carry bright patches."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 != 0).astype(np.int8)
    images = rng.normal(90, 20, (n, size, size)).clip(0, 255)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(size // 4, 3 * size // 4, 2)
        images[i, y - size // 8 : y + size // 8, x - size // 8 : x + size // 8] += 120
    return SplitData(images.clip(0, 255).astype(np.uint8), labels, np.array([f"img{i}.png" for i in range(n)]))


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0] * 25 + [1] * 75))
    assert w[0] * 25 == pytest.approx(w[1] * 75)


def test_augmenter_is_seeded_and_keeps_range():
    import keras

    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    a = np.asarray(augmenter(Augment(), 3)(x))
    keras.utils.set_random_seed(0)
    b = np.asarray(augmenter(Augment(), 3)(x))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert np.allclose(a, b)
    assert not np.allclose(a, x)


def test_platt_scaling_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))).astype(int)
    scale, bias = platt_scaling(logits, labels)
    assert scale == pytest.approx(0.5, abs=0.05) and bias == pytest.approx(-1.0, abs=0.1)


def test_from_scratch_training_runs_and_calibrates():
    from cxr.model import build, predict
    from cxr.training import train

    train_set, val_set = blobs(48, 64, 0), blobs(24, 64, 1)
    model = build(64, alpha=0.35, dropout=0.1, weights=None)
    history, facts = train(model, train_set, val_set, cfg(head_epochs=2, fine_tune_epochs=2))
    assert facts["mode"] == "from_scratch" and history and history[0]["phase"] == "full"
    assert facts["calibration"]["method"] in ("platt", "none")
    p = predict(model, val_set.images)
    assert p.shape == (24,) and np.all((p >= 0) & (p <= 1))


@needs_weights
def test_cached_backbone_training_learns_and_full_model_matches_top():
    from cxr.model import build, predict
    from cxr.training import train

    train_set, val_set = blobs(64, 224, 0), blobs(32, 224, 1)
    model = build(224, alpha=1.0, dropout=0.1, weights=str(WEIGHTS))
    history, facts = train(model, train_set, val_set, cfg(weights=str(WEIGHTS), head_epochs=6, fine_tune_epochs=2))
    assert facts["mode"] == "cached_backbone"
    assert facts["cached_activation_shape"][:2] == [64, 2]
    assert {row["phase"] for row in history} == {"head", "fine_tune"}
    p = predict(model, val_set.images)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(val_set.labels, p) > 0.9
    # Calibration folded into the logit layer: mean probability close to the positive rate.
    assert abs(p.mean() - val_set.labels.mean()) < 0.2


def test_bad_train_params_are_reported():
    from cxr import UserError

    good = dict(seed=1, weights="none", batch_size=8, views=2, head_epochs=1, head_learning_rate=1e-3,
                fine_tune_epochs=1, fine_tune_learning_rate=1e-4, fine_tune_from="block_15_expand",
                label_smoothing=0.05, early_stopping_patience=2, augment={"zoom": 0.1})
    assert TrainConfig.from_params(good).weights is None
    with pytest.raises(UserError, match="train.batch_size"):
        TrainConfig.from_params({**good, "batch_size": "big"})
    with pytest.raises(UserError, match="unknown 'train.augment'"):
        TrainConfig.from_params({**good, "augment": {"flip": True}})
    with pytest.raises(UserError, match="head_epochs"):
        TrainConfig.from_params({**good, "head_epochs": 0, "fine_tune_epochs": 0})
