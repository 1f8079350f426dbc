"""Training and the model graph: the cached-backbone path, from-scratch path, calibration."""

import numpy as np
import pytest

from cxr.data.dataset import SplitData
from cxr.model.fitting import platt_scaling
from cxr.model.train_config import Augment, TrainConfig, class_weights, sample_weights
from cxr.model.training import augmenter

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


def test_viral_weight_tilts_pneumonia_only_and_keeps_the_class_total():
    paths = ["NORMAL/a.jpeg", "NORMAL/b.jpeg", "PNEUMONIA/person1_bacteria_1.jpeg",
             "PNEUMONIA/person2_bacteria_2.jpeg", "PNEUMONIA/person3_virus_3.jpeg", "PNEUMONIA/x.jpeg"]
    split = SplitData(np.zeros((6, 8, 8), np.uint8), np.array([0, 0, 1, 1, 1, 1], np.int8), np.array(paths))
    plain, tilted = sample_weights(split), sample_weights(split, viral_weight=3.0)
    assert np.allclose(plain, [1.5, 1.5, 0.75, 0.75, 0.75, 0.75])  # class_weights, film by film
    assert np.allclose(tilted[:2], plain[:2])  # NORMAL untouched
    assert tilted[2:].sum() == pytest.approx(plain[2:].sum())  # PNEUMONIA's total kept
    assert tilted[4] == pytest.approx(3 * tilted[2]) and tilted[5] == pytest.approx(tilted[2])  # unknown: as bacterial


def test_viral_weight_is_range_checked():
    from cxr import UserError

    base = dict(seed=1, batch_size=8, views=2, head_epochs=1, head_learning_rate=1e-3, fine_tune_epochs=1,
                fine_tune_learning_rate=1e-4, fine_tune_from="block_15_expand", label_smoothing=0.0,
                early_stopping_patience=1)
    assert TrainConfig.from_params(base).viral_weight == 1.0
    with pytest.raises(UserError, match="viral_weight"):
        TrainConfig.from_params({**base, "viral_weight": 0.0})


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


def test_from_scratch_training_learns_and_calibrates():
    from sklearn.metrics import roc_auc_score

    from cxr.model.network import Architecture, build, predict
    from cxr.model.from_scratch import FromScratch
    from cxr.model.training import train

    train_set, val_set = blobs(48, 64, 0), blobs(24, 64, 1)
    model = build(64, Architecture(backbone="small_cnn", width=8, downsample=1), weights=None)
    _, history, facts, _ = train(model, train_set, val_set, cfg(from_scratch=FromScratch(epochs=6, learning_rate=3e-3)))
    assert facts["mode"] == "from_scratch" and history and {row["phase"] for row in history} == {"full"}
    assert facts["calibration"]["method"] in ("platt", "none")
    p = predict(model, val_set.images)
    assert p.shape == (24,) and np.all((p >= 0) & (p <= 1))
    assert roc_auc_score(val_set.labels, p) > 0.9


def test_batch_norm_recalibration_sets_the_statistics_of_the_images():
    """A fresh network's moving statistics (0, 1) describe nothing: after recalibration each
    batch norm holds the mean and variance of its input over the images given."""
    import keras

    from cxr.imaging.preprocess import to_model_input
    from cxr.model.network import Architecture, build, recalibrate_batch_norm

    model = build(64, Architecture(backbone="small_cnn", width=8, downsample=1), weights=None)
    images = blobs(40, 64, 3).images
    assert recalibrate_batch_norm(model, images, batch_size=40) == 4
    conv = keras.Model(model.input, model.get_layer("block_0_conv").output)
    acts = np.asarray(conv(to_model_input(images))).reshape(-1, 8)
    bn = model.get_layer("block_0_bn")
    assert np.allclose(np.asarray(bn.moving_mean), acts.mean(0), rtol=1e-3, atol=1e-3)
    assert np.allclose(np.asarray(bn.moving_variance), acts.var(0), rtol=1e-2, atol=1e-3)
    assert bn.momentum == 0.99 and bn.trainable  # what it was before


def test_a_network_that_outputs_a_constant_fails_training():
    from cxr import UserError
    from cxr.model.network import Architecture, build
    from cxr.model.from_scratch import FromScratch
    from cxr.model.training import train

    model = build(64, Architecture(backbone="small_cnn", width=8, downsample=1), weights=None)
    kernel, bias = model.get_layer("logit").get_weights()
    model.get_layer("logit").set_weights([np.zeros_like(kernel), bias])  # and a zero learning rate keeps it so
    with pytest.raises(UserError, match="outputs a constant"):
        train(model, blobs(24, 64, 0), blobs(12, 64, 1), cfg(from_scratch=FromScratch(epochs=1, learning_rate=0.0)))


def test_from_scratch_architecture_comes_from_its_own_params():
    from cxr import UserError
    from cxr.model.network import Architecture

    model = {"alpha": 1.0, "dropout": 0.2, "from_scratch": {"backbone": "small_cnn", "width": 12}}
    assert Architecture.from_params(model, from_scratch=False) == Architecture(alpha=1.0, dropout=0.2)
    scratch = Architecture.from_params(model, from_scratch=True)
    assert scratch.backbone == "small_cnn" and scratch.width == 12 and scratch.dropout == 0.2
    with pytest.raises(UserError, match="model.from_scratch.backbone"):
        Architecture.from_params({**model, "from_scratch": {"backbone": "resnet"}}, from_scratch=True)
    with pytest.raises(UserError, match="unknown 'model.from_scratch' keys"):
        Architecture.from_params({**model, "from_scratch": {"depth": 3}}, from_scratch=True)


@needs_weights
def test_cached_backbone_training_learns_and_full_model_matches_top():
    from cxr.model.network import Architecture, build, predict
    from cxr.model.training import train

    train_set, val_set = blobs(64, 224, 0), blobs(32, 224, 1)
    model = build(224, Architecture(alpha=1.0, dropout=0.1), weights=str(WEIGHTS))
    _, history, facts, _ = train(model, train_set, val_set, cfg(weights=str(WEIGHTS), head_epochs=6, fine_tune_epochs=2))
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


def test_platt_scaling_stays_finite_on_a_separable_validation_split():
    """Perfectly separated logits: the plain fit's slope runs away (probabilities 0 and 1);
    Platt's targets keep the extremes at about 1 / (N + 2) from 0 and 1."""
    logits = np.r_[np.linspace(-3, -1, 20), np.linspace(1, 3, 30)]
    labels = np.r_[np.zeros(20, int), np.ones(30, int)]
    scale, bias = platt_scaling(logits, labels)
    p = 1 / (1 + np.exp(-(scale * logits + bias)))
    assert 0 < scale < 20
    assert 1e-3 < p.min() < 0.1 and 0.9 < p.max() < 1 - 1e-3


def test_the_consistency_weight_makes_the_top_ignore_what_differs_between_views():
    """Two views of each image differ by a feature that says nothing of the label (an
    "acquisition" channel drawn per view); trained on pairs with the consistency weight, the
    logits of a view and its twin end closer than without it."""
    import keras

    from cxr.model.cache import PairBatches, paired_top

    rng = np.random.default_rng(0)
    n = 256
    labels = (np.arange(n) % 2).astype(np.int8)
    acts = np.zeros((n, 2, 4), np.float16)
    acts[:, :, 0] = (labels[:, None] * 2.0 - 1.0) + rng.normal(0, 0.5, (n, 2))  # the finding
    acts[:, 0, 1] = labels * 1.5                                             # view 0: acquisition tracks the label
    acts[:, 1, 1] = rng.normal(0, 1.0, n)                                    # the other view: it does not
    gaps = {}
    for weight in (0.0, 5.0):
        keras.utils.set_random_seed(1)
        inp = keras.Input((4,))
        top = keras.Model(inp, keras.layers.Dense(1, name="logit")(inp))
        model = paired_top(top, weight, 0.05, 0.0)
        model.fit(PairBatches(acts, labels, np.ones(n, np.float32), 32, 0), epochs=30, verbose=0)
        a, b = (np.asarray(top(acts[:, v].astype(np.float32))).ravel() for v in (0, 1))
        gaps[weight] = float(np.mean(np.abs(a - b)))
    assert gaps[5.0] < 0.5 * gaps[0.0], gaps


def test_members_share_the_bottom_and_member_zero_is_the_single_model(tmp_path):
    """train.members: the model averages its members' logits on one bottom, is one saved file, and
    its first member is, weight for weight, what the same seed trains alone (so members: 1 changes
    nothing). A randomly initialised MobileNetV2 stands in for the ImageNet one: the cached path
    only needs ``weights`` set, not what they are."""
    import keras

    from cxr.model.network import Architecture, build, embeddings, predict, recalibrate_batch_norm
    from cxr.model.training import train

    train_set, val_set = blobs(24, 96, 0), blobs(12, 96, 1)

    def stand_in():  # random weights, batch norms set on the images so the features are not all zero
        keras.utils.set_random_seed(1)
        model = build(96, Architecture(alpha=0.35, dropout=0.1))
        recalibrate_batch_norm(model, train_set.images)
        return model

    single, _, alone, _ = train(stand_in(), train_set, val_set, cfg(weights="stand-in", members=1))
    model, history, facts, cache = train(stand_in(), train_set, val_set, cfg(weights="stand-in", members=2))

    assert facts["members"] == 2 and "members" not in alone
    assert {row["phase"] for row in history} == {"head", "fine_tune", "head (member 1)", "fine_tune (member 1)"}
    first = model.get_layer("member_0")
    for layer in first.layers:
        if layer.weights:
            for a, b in zip(layer.get_weights(), single.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    second = model.get_layer("member_1")
    assert not np.array_equal(second.get_layer("Conv_1").get_weights()[0], first.get_layer("Conv_1").get_weights()[0])

    # One embedding per member side by side; the cache maps its activations to the same embedding.
    emb = embeddings(model, val_set.images)
    assert emb.shape == (12, 2 * single.get_layer("pooled").output.shape[-1])
    np.testing.assert_allclose(cache.embed_activations(cache.val), emb, atol=2e-3)  # the cache holds float16

    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(predict(again, val_set.images), predict(model, val_set.images), atol=1e-6)


def test_ensemble_logit_is_the_mean_of_the_members_logits():
    import keras

    from cxr.model.network import Architecture, build, ensemble, split_at

    model = build(96, Architecture(alpha=0.35))
    _, top = split_at(model, "block_15_expand")
    logit = keras.Model(model.input, model.get_layer("logit").output)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (3, 96, 96, 1)).astype(np.float32)
    members, alone = [], []
    for _ in range(3):
        weights = {layer.name: [w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in layer.get_weights()]
                   for layer in top.layers if layer.weights}
        for layer in top.layers:
            if layer.name in weights:
                layer.set_weights(weights[layer.name])
        members.append(weights)
        alone.append(np.asarray(logit(x)).ravel())
    joint = ensemble(model, "block_15_expand", members)
    got = np.asarray(keras.Model(joint.input, joint.get_layer("logit").output)(x)).ravel()
    np.testing.assert_allclose(got, np.mean(alone, axis=0), rtol=1e-4, atol=1e-4)
    assert joint.get_layer("pooled").output.shape[-1] == 3 * model.get_layer("pooled").output.shape[-1]


def test_weight_average_keeps_the_mean_of_the_steps_up_to_the_best_epoch():
    """The averaged weights are the mean over every step from the first averaged epoch to the best
    validation epoch: steps after it (here forced worse) are left out, and so are steps before the window."""
    import keras

    from cxr.model.fitting import weight_average

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.steps, self.epoch = [], 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append((self.epoch, [np.array(v) for v in self.model.trainable_variables]))

    class Score(keras.callbacks.Callback):  # a validation score that peaks at epoch 3 of 4
        def on_epoch_end(self, epoch, logs=None):
            logs["val_auc"] = [0.5, 0.7, 0.9, 0.8][epoch]

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    record, average = Record(), weight_average(2)
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[record, Score(), average])

    window = [w for epoch, w in record.steps if 2 <= epoch <= 3]
    assert len(window) == 8 and average.summary["to_epoch"] == 3 and average.summary["steps"] == 8
    for got, *steps in zip(model.trainable_variables, *window):
        np.testing.assert_allclose(np.array(got), np.mean(steps, axis=0), rtol=1e-6)
    assert not np.allclose(np.array(model.trainable_variables[0]), record.steps[-1][1][0])


def test_weight_average_must_name_a_fine_tuning_epoch():
    from cxr import UserError

    good = dict(seed=1, weights="none", batch_size=8, views=2, head_epochs=1, head_learning_rate=1e-3,
                fine_tune_epochs=3, fine_tune_learning_rate=1e-4, fine_tune_from="block_15_expand",
                label_smoothing=0.05, early_stopping_patience=2)
    assert TrainConfig.from_params({**good, "weight_average_from": 3}).weight_average_from == 3
    with pytest.raises(UserError, match="weight_average_from' must be 0 .off. or a fine-tuning epoch, 1..3, got 4"):
        TrainConfig.from_params({**good, "weight_average_from": 4})
    with pytest.raises(UserError, match="weight_average_from' must be int"):
        TrainConfig.from_params({**good, "weight_average_from": "late"})


def test_the_cached_path_keeps_the_averaged_top_and_says_which_window():
    """train.weight_average_from on the cached path: the summary names the window, and the model's
    validation AUC recorded beside it is the one of the weights it keeps. A randomly initialised
    MobileNetV2 stands in for the ImageNet one."""
    import keras
    from sklearn.metrics import roc_auc_score

    from cxr.model.network import Architecture, build, logit_model, recalibrate_batch_norm
    from cxr.model.fitting import batch_logits
    from cxr.model.training import train

    train_set, val_set = blobs(24, 96, 0), blobs(12, 96, 1)
    keras.utils.set_random_seed(1)
    model = build(96, Architecture(alpha=0.35, dropout=0.1))
    recalibrate_batch_norm(model, train_set.images)
    model, _, facts, _ = train(model, train_set, val_set, cfg(weights="stand-in", fine_tune_epochs=2,
                                                              weight_average_from=1))
    (window,) = facts["weight_average"]["members"]
    assert window["from_epoch"] == 1 and window["to_epoch"] in (1, 2) and window["steps"] >= 3
    auc = roc_auc_score(val_set.labels, batch_logits(logit_model(model), val_set.images, 8))
    assert auc == pytest.approx(facts["weight_average"]["val_auc"], abs=1e-3)


def test_the_decorrelation_takes_the_aspect_out_of_the_embedding_and_keeps_the_finding():
    """Views whose "acquisition" channel is their moved position, independent of the label; a
    two-unit embedding can keep it or drop it. Trained with the penalty, the embedding no longer
    tells the position (a linear probe's R^2 falls) and the logit still tells the label. Views
    that were not moved (NaN) do not count."""
    import keras
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import roc_auc_score

    from cxr.model.cache import PositionBatches, decorrelated_top

    rng = np.random.default_rng(0)
    n = 256
    labels = (np.arange(n) % 2).astype(np.int8)
    positions = rng.uniform(-0.25, 1.25, (n, 2))
    positions[:, 0] = np.nan                                           # view 0: as acquired, not moved
    acts = np.zeros((n, 2, 4), np.float16)
    acts[:, :, 0] = (labels[:, None] * 2.0 - 1.0) + rng.normal(0, 0.7, (n, 2))  # the finding
    acts[:, 0, 1] = labels                                             # as acquired: acquisition tracks the label
    acts[:, 1, 1] = positions[:, 1]                                    # moved: it does not
    acts[:, :, 2:] = rng.normal(0, 1, (n, 2, 2))
    batch = PositionBatches(acts, labels, np.ones(n, np.float32), positions, 32, 0)
    x, (y, target), _ = batch[0]
    drawn = batch.view[batch.order[:32]]
    assert np.array_equal(target[:, 1], (drawn == 1).astype(np.float32)) and np.all(target[drawn == 0, 0] == 0)
    assert np.array_equal(target[:, 2], y)
    probe, auc, follows = {}, {}, {}
    for weights in ((0.0, 0.0), (3.0, 0.0), (0.0, 3.0)):  # (the embedding's, the logit's)
        keras.utils.set_random_seed(1)
        inp = keras.Input((4,))
        pooled = keras.layers.Dense(2, name="pooled")(inp)
        logit = keras.layers.Dense(1, name="logit")(pooled)
        top = decorrelated_top(inp, logit, pooled, *weights[:1], 0.02, 0.0, logit_weight=weights[1])
        top.fit(PositionBatches(acts, labels, np.ones(n, np.float32), positions, 32, 0, len(top.outputs) - 1),
                epochs=40, verbose=0)
        moved = acts[:, 1].astype(np.float32)
        emb = np.asarray(keras.Model(inp, pooled)(moved))
        scores = np.asarray(keras.Model(inp, logit)(moved)).ravel()
        probe[weights] = LinearRegression().fit(emb, positions[:, 1]).score(emb, positions[:, 1])
        auc[weights] = roc_auc_score(labels, scores)
        follows[weights] = max(abs(np.corrcoef(scores[labels == c], positions[labels == c, 1])[0, 1]) for c in (0, 1))
    assert probe[3.0, 0.0] < 0.3 * probe[0.0, 0.0], probe
    assert follows[0.0, 3.0] < 0.3 * follows[0.0, 0.0], follows  # the logit's penalty: the score stops following
    assert all(a > 0.95 for a in auc.values()), auc


def test_the_focal_loss_leaves_the_easy_films_little_and_is_wired_into_every_top():
    """gamma 0 is plain cross-entropy; gamma 2 shrinks a confidently right film's loss far more
    than a wrong one's, so the hard tails carry the fit. Every compiled top uses it."""
    import keras

    from cxr.model.cache import decorrelated_top, paired_top
    from cxr.model.fitting import compile_binary, screening_loss

    y = np.array([[1.0], [1.0]], np.float32)
    logits = np.array([[4.0], [-2.0]], np.float32)  # an easy PNEUMONIA film, a missed one
    per_film = lambda loss: [float(loss(y[i : i + 1], logits[i : i + 1])) for i in range(2)]  # noqa: E731
    bce, plain, focal = (per_film(keras.losses.BinaryCrossentropy(from_logits=True)), per_film(screening_loss(0.0)),
                         per_film(screening_loss(0.0, focal_gamma=2.0)))
    assert plain == pytest.approx(bce)
    assert focal[0] / focal[1] < 0.01 * bce[0] / bce[1]
    inp = keras.Input((4,))
    pooled = keras.layers.Dense(2, name="pooled")(inp)
    logit = keras.layers.Dense(1, name="logit")(pooled)
    top = keras.Model(inp, logit)
    compile_binary(top, 1e-3, 0.0, focal_gamma=2.0)
    assert isinstance(top.loss, keras.losses.BinaryFocalCrossentropy)
    decorrelated = decorrelated_top(inp, logit, pooled, 1.0, 1e-3, 0.0, focal_gamma=2.0)
    assert isinstance(decorrelated.loss[0], keras.losses.BinaryFocalCrossentropy)
    paired = paired_top(top, 1.0, 1e-3, 0.0, focal_gamma=2.0)
    assert all(isinstance(loss, keras.losses.BinaryFocalCrossentropy) for loss in paired.loss[:2])


def test_the_aspect_correlation_is_within_class_and_only_on_moved_views():
    """The penalty reads within the classes: a unit that tracks the label (and so, across both
    classes, the clean views' acquisition) costs next to nothing; one that tracks the position
    costs its squared correlation; unmoved views are left out."""
    from cxr.model.cache import aspect_correlation

    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 1, 40)
    label = (np.arange(40) % 2).astype(float)
    target = np.stack([pos, np.ones(40), label], axis=1).astype(np.float32)
    tracks_label = np.stack([label, rng.normal(size=40)], axis=1).astype(np.float32)
    tracks_position = np.stack([pos, pos], axis=1).astype(np.float32)
    assert float(aspect_correlation(target, tracks_label)) < 0.3
    assert float(aspect_correlation(target, tracks_position)) == pytest.approx(1.0, abs=1e-3)
    unmoved = target.copy()
    unmoved[:, 1] = 0.0
    assert float(aspect_correlation(unmoved, tracks_position)) == 0.0


def test_the_logit_penalty_is_per_class_where_the_pooled_one_cancels():
    """A score that rises with the position on healthy films and falls with it on sick ones: one
    pooled within-class covariance cancels to nothing; the logit's penalty sees both classes follow
    the shape. A class with fewer than 4 moved views in the batch adds nothing."""
    from cxr.model.cache import aspect_correlation, logit_aspect_correlation

    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 1, 40)
    label = (np.arange(40) % 2).astype(float)
    target = np.stack([pos, np.ones(40), label], axis=1).astype(np.float32)
    opposite = np.where(label == 0, pos, -pos)[:, None].astype(np.float32)
    assert float(aspect_correlation(target, opposite)) < 0.05
    assert float(logit_aspect_correlation(target, opposite)) == pytest.approx(1.0, abs=1e-3)
    healthy_only = np.where(label == 0, pos, rng.normal(size=40))[:, None].astype(np.float32)
    assert 0.5 <= float(logit_aspect_correlation(target, healthy_only)) < 0.6
    few = target.copy()
    few[(label == 0) & (np.arange(40) > 5), 1] = 0.0  # 3 healthy moved views left
    assert float(logit_aspect_correlation(few, opposite)) == pytest.approx(0.5, abs=1e-3)


def test_the_aspect_slope_counts_the_logit_following_the_move_not_the_augmentation():
    """Paired within films: a gap that is the same for every film (what augmentation shifts) costs
    nothing; a gap growing with the move costs its slope squared, per class, opposite slopes adding
    up; films whose view was not moved do not count."""
    from cxr.model.cache import aspect_slope

    rng = np.random.default_rng(0)
    shift = rng.uniform(-0.25, 1.25, 40)
    label = (np.arange(40) % 2).astype(float)
    signed = np.where(label == 1, -shift, shift)  # PNEUMONIA films move towards 0
    target = np.stack([signed, np.ones(40), label], axis=1).astype(np.float32)
    assert float(aspect_slope(target, np.full((40, 1), 0.7, np.float32))) == pytest.approx(0.0, abs=1e-5)
    follows = (2.0 * signed + 0.3)[:, None].astype(np.float32)
    assert float(aspect_slope(target, follows)) == pytest.approx(4.0, rel=1e-3)
    opposite = np.where(label == 0, 2.0 * signed, -2.0 * signed)[:, None].astype(np.float32)
    assert float(aspect_slope(target, opposite)) == pytest.approx(4.0, rel=1e-3)
    unmoved = target.copy()
    unmoved[:, 1] = 0.0
    assert float(aspect_slope(unmoved, follows)) == 0.0


def test_decorrelation_params_are_checked():
    from cxr import UserError

    good = dict(seed=1, weights="imagenet", batch_size=8, views=3, head_epochs=1, head_learning_rate=1e-3,
                fine_tune_epochs=1, fine_tune_learning_rate=1e-4, fine_tune_from="block_15_expand",
                label_smoothing=0.05, early_stopping_patience=2,
                reacquire={"class_mix": [-0.25, 1.25], "mix_cues": ["aspect"]})
    assert TrainConfig.from_params(good).decorrelation == 0.0
    assert TrainConfig.from_params({**good, "decorrelation": 0.5}).decorrelation == 0.5
    with pytest.raises(UserError, match="'train.decorrelation' and 'train.consistency'"):
        TrainConfig.from_params({**good, "decorrelation": 0.5, "consistency": 0.1})
    for lacking in ({"reacquire": {"class_mix": None}}, {"reacquire": {"class_mix": [0, 1], "mix_cues": ["detail"]}}):
        with pytest.raises(UserError, match="needs train.reacquire.class_mix with 'aspect'"):
            TrainConfig.from_params({**good, **lacking, "decorrelation": 0.5})
    # From scratch caches no views: the knob is left for the real data, not an error on the offline default.
    assert TrainConfig.from_params({**good, "weights": "none", "decorrelation": 0.5}).decorrelation == 0.5
    with pytest.raises(UserError, match="train.decorrelation"):
        TrainConfig.from_params({**good, "decorrelation": -1.0})
    assert TrainConfig.from_params({**good, "logit_decorrelation": 0.5}).logit_decorrelation == 0.5
    with pytest.raises(UserError, match="'train.logit_decorrelation' and 'train.consistency'"):
        TrainConfig.from_params({**good, "logit_decorrelation": 0.5, "consistency": 0.1})
    assert TrainConfig.from_params({**good, "aspect_slope": 0.5}).aspect_slope == 0.5
    with pytest.raises(UserError, match="'train.aspect_slope' trains the top on pairs"):
        TrainConfig.from_params({**good, "aspect_slope": 0.5, "decorrelation": 1.0})
    with pytest.raises(UserError, match="needs train.reacquire.class_mix with 'aspect'"):
        TrainConfig.from_params({**good, "reacquire": {"class_mix": None}, "aspect_slope": 0.5})
    assert TrainConfig.from_params({**good, "subtype_loss": 0.5}).subtype_loss == 0.5
    for other in ({"consistency": 0.1}, {"aspect_slope": 0.5}):
        with pytest.raises(UserError, match="'train.subtype_loss' is trained on single views"):
            TrainConfig.from_params({**good, **other, "subtype_loss": 0.5})
    with pytest.raises(UserError, match="train.subtype_loss"):
        TrainConfig.from_params({**good, "subtype_loss": -1.0})


@pytest.mark.parametrize("knobs", [{"decorrelation": 1.0}, {"decorrelation": 1.0, "logit_decorrelation": 0.5},
                                   {"logit_decorrelation": 0.5}, {"aspect_slope": 0.5},
                                   {"decorrelation": 1.0, "subtype_loss": 1.0}, {"subtype_loss": 1.0}])
def test_the_cached_path_trains_with_the_decorrelation_and_keeps_only_the_screening_model(knobs, tmp_path):
    """train.decorrelation / train.logit_decorrelation on the cached path: the history has each
    penalty asked for (and no other), the summary how the top's score follows the moved views' shape,
    and the model is the plain network. A randomly initialised MobileNetV2 stands in for the ImageNet one."""
    import keras

    from cxr.io import write_csv
    from cxr.model.network import Architecture, build, recalibrate_batch_norm
    from cxr.model.training import history_columns, train

    train_set, val_set = blobs(24, 96, 0), blobs(12, 96, 1)
    def named(split):  # PNEUMONIA films named as the real set names them, so the subtype loss has films to read
        return SplitData(split.images, split.labels, np.array(
            [f"person{i}_{('virus', 'bacteria')[i % 2]}_{i}.jpeg" if y else f"IM-{i}.jpeg"
             for i, y in enumerate(split.labels)]))

    if "subtype_loss" in knobs:
        train_set, val_set = named(train_set), named(val_set)
    keras.utils.set_random_seed(1)
    model = build(96, Architecture(alpha=0.35, dropout=0.1))
    layers_before = [layer.name for layer in model.layers]
    recalibrate_batch_norm(model, train_set.images)
    positions = np.random.default_rng(0).uniform(-0.25, 1.25, (24, 2))
    positions[:, 0] = np.nan
    model, history, facts, _ = train(model, train_set, val_set, cfg(weights="stand-in", **knobs),
                                     view_positions=positions)
    assert [layer.name for layer in model.layers] == layers_before
    tuned = [row for row in history if row["phase"] == "fine_tune"]
    columns = {"decorrelation": "aspect_correlation", "logit_decorrelation": "logit_aspect_correlation",
               "aspect_slope": "aspect_slope"}
    assert tuned and all(0 <= row["val_auc"] <= 1 for row in tuned)
    for knob, column in columns.items():
        assert all((row[column] >= 0) if knob in knobs else column not in row for row in tuned)
        assert facts.get(knob) == knobs.get(knob)
    assert facts.get("subtype_loss") == knobs.get("subtype_loss")
    assert all(("subtype_loss" in row and "val_subtype_loss" in row) == ("subtype_loss" in knobs) for row in tuned)
    write_csv(tmp_path / "history.csv", history, history_columns(history))  # as the train stage writes it
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert set(header) == set().union(*history) and header[:2] == ["epoch", "phase"]
    response = facts["aspect_response"]
    assert response["views_scored"] == 24
    assert all(-1 <= response[f"logit_position_correlation_{c}"] <= 1 for c in ("NORMAL", "PNEUMONIA"))


def test_the_subtype_loss_puts_the_subtype_into_the_embedding_and_keeps_the_finding():
    """A one-unit embedding over a finding channel (the label) and a subtype channel (bacterial or
    viral among PNEUMONIA films, noise in NORMAL ones): screening alone leaves the subtype out of it;
    with the auxiliary subtype loss the embedding tells the subtypes apart, and the logit still tells
    the label. NORMAL films carry weight 0 in that loss; the subtype target is the batch's last."""
    import keras
    from sklearn.metrics import roc_auc_score

    from cxr.model.cache import PositionBatches, decorrelated_top
    from cxr.model.train_config import subtype_targets

    rng = np.random.default_rng(0)
    n = 320
    labels = (np.arange(n) % 2).astype(np.int8)
    kinds = rng.integers(0, 2, n)
    paths = np.array([f"PNEUMONIA/person{i}_{'bacteria' if k else 'virus'}_{i}.jpeg" if y else f"NORMAL/IM-{i}.jpeg"
                      for i, (y, k) in enumerate(zip(labels, kinds))])
    split = SplitData(np.zeros((n, 4, 4), np.uint8), labels, paths)
    target, weight = subtype_targets(split)
    assert np.all(weight[labels == 0] == 0) and np.array_equal(target[labels == 1], kinds[labels == 1])
    bacterial = (labels == 1) & (kinds == 1)
    assert weight[bacterial].sum() == pytest.approx(weight[(labels == 1) & (kinds == 0)].sum())  # balanced

    acts = np.zeros((n, 1, 3), np.float16)
    acts[:, 0, 0] = (labels * 2.0 - 1.0) + rng.normal(0, 0.5, n)          # the finding
    acts[:, 0, 1] = np.where(labels == 1, kinds * 2.0 - 1.0, 0.0) + rng.normal(0, 0.5, n)  # the subtype
    acts[:, 0, 2] = rng.normal(0, 1, n)
    batch = PositionBatches(acts, labels, np.ones(n, np.float32), None, 32, 0, 0, (target, weight))
    _, (y, sub), (_, w) = batch[0]
    assert np.array_equal(sub, target[batch.order[:32]]) and np.array_equal(w, weight[batch.order[:32]])
    sick = labels == 1
    reads, screens = {}, {}
    for aux in (0.0, 2.0):
        keras.utils.set_random_seed(1)
        inp = keras.Input((3,))
        pooled = keras.layers.Dense(1, name="pooled")(inp)
        logit = keras.layers.Dense(1, name="logit")(pooled)
        top = decorrelated_top(inp, logit, pooled, 0.0, 0.02, 0.0, subtype_weight=aux)
        assert len(top.outputs) == 1 + (aux > 0)
        top.fit(PositionBatches(acts, labels, np.ones(n, np.float32), None, 32, 0, 0,
                                (target, weight) if aux else None), epochs=40, verbose=0)
        emb = np.asarray(keras.Model(inp, pooled)(acts[:, 0].astype(np.float32))).ravel()
        scores = np.asarray(keras.Model(inp, logit)(acts[:, 0].astype(np.float32))).ravel()
        reads[aux] = max(roc_auc_score(kinds[sick], emb[sick]), roc_auc_score(kinds[sick], -emb[sick]))
        screens[aux] = roc_auc_score(labels, scores)
    assert reads[0.0] < 0.7 < 0.8 < reads[2.0], reads
    assert all(a > 0.9 for a in screens.values()), screens
