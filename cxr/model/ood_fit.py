"""Fitting the not-a-chest-X-ray detector (:mod:`cxr.model.ood`) on the trained model's
embedding: the training X-rays and one re-acquired copy of each, its threshold chosen on the
validation X-rays and theirs. Apart from :mod:`cxr.model.ood`, which the server loads (numpy
only), because the copies need the acquisition transforms of :mod:`cxr.shift.robustness`.
"""

from __future__ import annotations

import numpy as np

from cxr.model import ood


def reacquired(images: np.ndarray, imaging, seed: int) -> np.ndarray:
    """One randomly re-acquired copy of each preprocessed image (border, compression, blur,
    resolution, exposure: :func:`cxr.shift.robustness.random_acquisition`), preprocessed again: the
    X-rays' ordinary variation the detector must let through."""
    from PIL import Image

    from cxr.imaging.preprocess import preprocess_bytes
    from cxr.shift.robustness import map_images, random_acquisition

    def one(i: int) -> np.ndarray:  # seeded per image: the same copies in any order, on any thread
        return preprocess_bytes(random_acquisition(Image.fromarray(images[i]), np.random.default_rng([seed, i])),
                                imaging)

    return map_images(one, list(range(len(images))), imaging.image_size)


def fit_on_views(embed, train_images: np.ndarray, val_images: np.ndarray, imaging, cfg: ood.OodConfig,
                 seed: int, train_embedding: np.ndarray | None = None,
                 val_embedding: np.ndarray | None = None) -> ood.OodDetector:
    """Fit on the training X-rays and one re-acquired copy of each; choose the threshold on the
    validation X-rays and theirs. ``embed``: uint8 ``[N, S, S]`` -> ``[N, D]`` (the model's),
    called only for images whose embedding is not given (training's cache has the originals')."""
    def features(images: np.ndarray, known: np.ndarray | None, view_seed: int) -> ood.Features:
        copies = reacquired(images, imaging, view_seed)
        both = np.concatenate([images, copies])
        if known is None:
            return ood.Features.of(embed(both), both)
        return ood.Features.of(np.concatenate([known, embed(copies)]), both)

    return ood.fit(features(train_images, train_embedding, seed), features(val_images, val_embedding, seed + 1), cfg)
