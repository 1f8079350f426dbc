"""A tiny promoted model for the serving tests (and a full-size one for benchmarks).

``make_promoted_model`` builds a small MobileNetV2, trains it a few steps on synthetic
blobs (so its outputs are not the constant 0.5 of a fresh network), fits a subtype head on its
embedding (:func:`cxr.model.subtype_fit.fit`: "bacterial" blobs sit in the left half of the image,
"viral" ones in the right), exports it with :func:`cxr.model.export.export_all`, writes a model
card and promotes it into ``bentoml_home`` with :func:`cxr.ops.registry.promote` -- exactly the
store entry the pipeline would produce, only smaller. Nothing here is mocked. Beside it, the same
network exported as the code before the subtype head exported it (no subtype outputs, a
``cxr-model-card/1`` card) is stored too (``legacy_tag``), not promoted: an old export to serve.

CLI (what the test fixture runs, in a fresh process so that BentoML sees the right
BENTOML_HOME): ``python -m tests.serving_fixtures OUT_DIR [--size 224 --alpha 1.0 --steps 0]``
promotes into ``OUT_DIR/bentoml_home`` and prints the facts as JSON on the last line.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def blob_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two visibly different classes: label 1 images carry a bright square."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int8)
    images = rng.normal(90, 20, (n, size, size)).clip(0, 255)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(size // 4, 3 * size // 4, 2)
        images[i, y - size // 6 : y + size // 6, x - size // 6 : x + size // 6] += 120
    return images.clip(0, 255).astype(np.uint8), labels


def subtype_blobs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blob images with a "subtype", drawn like the synthetic generator's: 1 ("bacterial") a dense
    bright square (what the tiny model calls PNEUMONIA), 0 ("viral") a fainter haze over most of the
    image."""
    rng = np.random.default_rng(seed)
    kinds = (np.arange(n) % 2).astype(np.int8)
    images = rng.normal(90, 20, (n, size, size))
    half = size // 6
    for i, kind in enumerate(kinds):
        if kind:
            y, x = rng.integers(size // 4, 3 * size // 4, 2)
            images[i, y - half: y + half, x - half: x + half] += 120
        else:
            images[i, size // 8: -size // 8, size // 8: -size // 8] += rng.uniform(40, 60)
    return images.clip(0, 255).astype(np.uint8), kinds


def fit_subtype_head(model, size: int):
    """The subtype head on ``model``'s embedding of :func:`subtype_blobs` (as serving preprocesses them)."""
    from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
    from cxr.model.network import embeddings
    from cxr.model.subtype import SubtypeConfig
    from cxr.model.subtype_fit import fit

    def embedded(seed):
        raw, kinds = subtype_blobs(48, 2 * size, seed)
        images = np.stack([preprocess_bytes(png_bytes(img), ImagingConfig(size, "equalize")) for img in raw])
        return embeddings(model, images), kinds

    (x, y), (vx, vy) = embedded(21), embedded(22)
    return fit(x, y, vx, vy, SubtypeConfig())


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def train_tiny(size: int = 64, alpha: float = 0.35, steps: int = 30, seed: int = 0):
    """A small MobileNetV2 trained on blobs for a few steps (about 10-20 s on 2 cores)."""
    import keras

    from cxr.imaging.preprocess import to_model_input
    from cxr.model.network import Architecture, build

    keras.utils.set_random_seed(seed)
    model = build(size, Architecture(alpha=alpha, dropout=0.0), weights=None)
    # A fresh network's batch-norm moving statistics (0, 1) make inference activations
    # vanish (constant outputs). Let them follow the training batches quickly instead.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5
    if steps:
        from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes

        raw, labels = blob_images(64, 2 * size, seed)
        # Train on what serving feeds the model: THE preprocessing of encoded images.
        images = np.stack([preprocess_bytes(png_bytes(img), ImagingConfig(size, "equalize")) for img in raw])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        x = to_model_input(images)
        for step in range(steps):
            idx = np.random.default_rng(step).choice(len(x), 16, replace=False)
            model.train_on_batch(x[idx], labels[idx].astype("float32"))
    return model


def make_promoted_model(out_dir: Path, bentoml_home: Path, *, size: int = 64, alpha: float = 0.35,
                        steps: int = 30, threshold: float = 0.5, subtype_threshold: float = 0.5) -> dict:
    """Export + model card + promotion into ``bentoml_home`` (and the old-format export of the same
    network, stored first and not promoted). Returns facts for the tests."""
    out_dir = Path(out_dir)
    export_dir, legacy_dir = out_dir / "export", out_dir / "legacy_export"
    export_dir.mkdir(parents=True)
    legacy_dir.mkdir(parents=True)
    model = train_tiny(size, alpha, steps)
    head = fit_subtype_head(model, size)

    import dataclasses

    from cxr.imaging.preprocess import ImagingConfig
    from cxr.model.export import export_all
    from cxr.model.network import Architecture, predict
    from cxr.model.subtype import FILE_NAME as SUBTYPE_FILE
    from cxr.records.evaluation import DataFacts, Evaluation, SplitFigures, SubtypeFigures
    from cxr.records.model_card import JSON_NAME, ModelCard
    from cxr.records.train_summary import TrainSummary

    files = export_all(model, export_dir, head)
    head.save(export_dir / SUBTYPE_FILE)
    legacy_files = export_all(model, legacy_dir)  # as the code before the subtype head exported it
    # Params as a real run records them, local paths and a credentialed URL included: the service
    # must not show them (tests/system/test_service.py).
    params = {"imaging": {"image_size": size, "intensity": "equalize"}, "model": {"alpha": alpha},
              "download": {"source": "https://bob:s3cret@data.example.org/cxr.zip"},
              "train": {"weights": "/home/alice/weights/mobilenet_v2.h5"},
              "evaluate": {"originals": "/srv/radiology/originals"}}
    at = {"accuracy": 0.5, "precision": 0.5, "recall": 0.99, "specificity": 0.5, "f1": 0.5}
    evaluation = Evaluation(
        threshold=threshold, target_recall=0.99, threshold_chosen_on="val",
        test=SplitFigures(roc_auc=0.5, pr_auc=0.5, images=64, at_threshold=at, at_half=at),
        val=SplitFigures(roc_auc=0.5, pr_auc=0.5, images=64, at_threshold=at),
        data=DataFacts(synthetic=True, dataset_hash="test" * 16, test_split="synthetic-test",
                       test_split_hash="0" * 64),
        subtype=SubtypeFigures(available=True, threshold=subtype_threshold,
                               threshold_rule={"value": subtype_threshold, "rule": "half", "statement": "0.5"},
                               test={"films": 48, "bacterial": 24, "viral": 24, "roc_auc": head.info["val_auc"],
                                     "accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5}))
    arch = Architecture(alpha=alpha)
    summary = TrainSummary(imaging=ImagingConfig.from_params(params["imaging"]),
                           architecture={**arch.to_dict(), "description": arch.describe()}, weights=None,
                           calibration={"method": "none"}, wall_time_s=0.0, selected_on="val")
    val_images, _ = blob_images(64, size, seed=7)
    card = ModelCard.build(evaluation=evaluation, summary=summary, params=params,
                           source={"source": "synthetic", "synthetic": True, "dataset_hash": "test" * 16},
                           parity_checks=[], files=files,
                           val_probabilities=predict(model, val_images).tolist(), subtype_head=head.to_dict())
    # BentoML refuses None anywhere in a store entry's metadata.
    card = dataclasses.replace(card, git={"commit": card.git.get("commit") or "0" * 40,
                                          "dirty": bool(card.git.get("dirty"))})
    card.write(export_dir)
    # The old export's card: version 1, no subtype section (what the code before the head wrote).
    dataclasses.replace(card, subtype=None, files={k: str(v) for k, v in legacy_files.items()}).write(legacy_dir)
    legacy_card = json.loads((legacy_dir / JSON_NAME).read_text())
    (legacy_dir / JSON_NAME).write_text(json.dumps({**legacy_card, "schema": "cxr-model-card/1"}))

    # BentoML reads BENTOML_HOME once per process: run this in a fresh process (see the CLI).
    os.environ["BENTOML_HOME"] = str(bentoml_home)
    from cxr.ops.registry import add, promote

    legacy_tag = str(add(legacy_dir, verdict={"passed": True, "reason": "test fixture (old export)"}).tag)
    tag = promote(export_dir, verdict={"passed": True, "reason": "test fixture"})
    return {"tag": tag, "export_dir": export_dir, "bentoml_home": Path(bentoml_home), "image_size": size,
            "threshold": threshold, "subtype_threshold": subtype_threshold, "legacy_tag": legacy_tag,
            "legacy_dir": legacy_dir, "model": model}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    facts = make_promoted_model(a.out, a.out / "bentoml_home", size=a.size, alpha=a.alpha, steps=a.steps)
    print(json.dumps({k: str(v) for k, v in facts.items() if k != "model"}))
    sys.exit(0)
