"""The frozen bottom on LiteRT (cxr/model/inference.py): the same activations as Keras, and the cache
training hands to the not-a-chest-X-ray detector gives the embedding the model gives."""

import numpy as np
import pytest

from tests.model.test_training import blobs, cfg
from tests.shared_paths import WEIGHTS, needs_weights


def small_bottom():
    from cxr.model.network import Architecture, build, split_at

    model = build(64, Architecture(backbone="small_cnn", width=8, downsample=1), weights=None)
    return model, split_at(model, "block_2_pool")[0]


def test_litert_runs_the_frozen_layers_as_keras_does():
    from cxr.imaging.preprocess import to_model_input
    from cxr.model.inference import runner

    _, bottom = small_bottom()
    x = to_model_input(blobs(20, 64, 0).images)
    keras_out = runner(bottom, "keras")(x)
    lite = runner(bottom, "litert", probe=x[:4])
    for batch in (x[:7], x[7:], x[:1]):  # batch size changes resize the interpreter's input
        want = runner(bottom, "keras")(batch)
        assert np.abs(lite(batch) - want).max() <= 1e-4 * np.abs(want).max()
    assert keras_out.shape == lite(x).shape and np.abs(keras_out).max() > 0


def test_unknown_runtime_is_a_user_error():
    from cxr import UserError
    from cxr.model.inference import runner
    from cxr.model.train_config import TrainConfig

    _, bottom = small_bottom()
    with pytest.raises(UserError, match="frozen_runtime"):
        runner(bottom, "onnx")
    good = dict(seed=1, weights="none", batch_size=8, views=2, head_epochs=1, head_learning_rate=1e-3,
                fine_tune_epochs=1, fine_tune_learning_rate=1e-4, fine_tune_from="block_15_expand",
                label_smoothing=0.05, early_stopping_patience=2)
    assert TrainConfig.from_params(good).frozen_runtime == "litert"
    with pytest.raises(UserError, match="frozen_runtime"):
        TrainConfig.from_params({**good, "frozen_runtime": "gpu"})


@needs_weights
@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_the_cache_embeds_as_the_trained_model_does(runtime):
    """The detector reads training's cached activations for the images training saw: their
    embedding must be the model's own, to the float16 rounding of the cache."""
    from cxr.model.network import Architecture, build, embeddings
    from cxr.model.training import train

    train_set, val_set = blobs(48, 224, 0), blobs(16, 224, 1)
    model = build(224, Architecture(alpha=1.0, dropout=0.1), weights=str(WEIGHTS))
    _, _, facts, cache = train(model, train_set, val_set, cfg(weights=str(WEIGHTS), head_epochs=2, fine_tune_epochs=1,
                                                           frozen_runtime=runtime))
    assert facts["frozen_runtime"] == runtime
    want = embeddings(model, val_set.images)
    for got in (cache.embed_activations(cache.val), cache.embed_images(val_set.images)):
        assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    assert np.abs(cache.embed_activations(cache.train_clean) - embeddings(model, train_set.images)).max() \
        <= 0.02 * np.abs(want).max()
