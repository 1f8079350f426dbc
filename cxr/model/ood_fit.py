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


def copies(train_images: np.ndarray, val_images: np.ndarray, imaging, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The re-acquired copy of each training and of each validation X-ray that :func:`fit_on_views`
    fits with ``seed``. Nothing here depends on the trained model: a caller may make them (and run
    them through the frozen part of the network) while the model trains."""
    return reacquired(train_images, imaging, seed), reacquired(val_images, imaging, seed + 1)


def fit_on_views(embed, train_images: np.ndarray, val_images: np.ndarray, imaging, cfg: ood.OodConfig,
                 seed: int, train_embedding: np.ndarray | None = None,
                 val_embedding: np.ndarray | None = None, embedded_copies=None) -> ood.OodDetector:
    """Fit on the training X-rays and one re-acquired copy of each; choose the threshold on the
    validation X-rays and theirs. ``embed``: uint8 ``[N, S, S]`` -> ``[N, D]`` (the model's),
    called only for images whose embedding is not given (training's cache has the originals').
    ``embedded_copies``: ``((train copies, their embedding), (val copies, theirs))``, the
    :func:`copies` of this ``seed``, when the caller has embedded them already."""
    def features(images: np.ndarray, known: np.ndarray | None, copy: np.ndarray,
                 copy_known: np.ndarray | None) -> ood.Features:
        both = np.concatenate([images, copy])
        if known is None and copy_known is None:
            return ood.Features.of(embed(both), both)
        known = embed(images) if known is None else known
        copy_known = embed(copy) if copy_known is None else copy_known
        return ood.Features.of(np.concatenate([known, copy_known]), both)

    if embedded_copies is None:
        embedded_copies = [(copy, None) for copy in copies(train_images, val_images, imaging, seed)]
    (train_copies, train_copies_known), (val_copies, val_copies_known) = embedded_copies
    return ood.fit(features(train_images, train_embedding, train_copies, train_copies_known),
                   features(val_images, val_embedding, val_copies, val_copies_known), cfg)
