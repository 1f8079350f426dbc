"""Acquisition-shift stress test: the test split again, as other X-ray chains would send it.

A validation split carved from train flatters a model: the official test split was
acquired differently, and a threshold picked on validation for recall 0.99 was measured to
lose half its specificity there. This cannot be measured without the other chain's images,
but its usual differences can be simulated on the test images we have -- exposure (gamma),
sharpness (blur), resolution, compression, collimation borders -- and a model whose recall
and specificity hold under them is more likely to hold on a new chain. Each perturbation
acts on the decoded original, is re-encoded as a JPEG, and then goes through the one
preprocessing function (:func:`cxr.imaging.preprocess.preprocess_bytes`), like any upload.

Reported in ``metrics.json`` (``stress``), so ``dvc metrics diff`` shows robustness moving
between commits; informational, not gated.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from cxr import LABELS, UserError
from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes, preprocess_image
from cxr.metrics import at_threshold, ranking
from cxr.shift.acquisition import (CUES, MIX_MODES, ClassAcquisition, class_mixed, counterfactual, decode_gray,
                                   mix_fractions)


def _gamma(g: float) -> Callable[[Image.Image], Image.Image]:
    lut = [round(255 * (i / 255) ** g) for i in range(256)]
    return lambda img: img.point(lut * len(img.getbands()))


def _blur(fraction: float) -> Callable[[Image.Image], Image.Image]:
    return lambda img: img.filter(ImageFilter.GaussianBlur(radius=max(img.size) * fraction))


def _downscale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        w, h = img.size
        small = img.resize((max(8, int(w * factor)), max(8, int(h * factor))), Image.Resampling.BILINEAR)
        return small.resize((w, h), Image.Resampling.BILINEAR)
    return apply


def _border_colour(fraction: float, colour: int) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        w, h = img.size
        inner = img.resize((int(w * (1 - 2 * fraction)), int(h * (1 - 2 * fraction))), Image.Resampling.BILINEAR)
        canvas = Image.new(img.mode, (w, h), colour)
        canvas.paste(inner, ((w - inner.width) // 2, (h - inner.height) // 2))
        return canvas
    return apply


def _border(fraction: float) -> Callable[[Image.Image], Image.Image]:
    return _border_colour(fraction, 0)


PERTURBATIONS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    # name: (what it does to the decoded image, JPEG quality it is sent at)
    "clean": (lambda img: img, 95),
    "darker_gamma_1.5": (_gamma(1.5), 95),
    "brighter_gamma_0.67": (_gamma(1 / 1.5), 95),
    "blur_0.5pct": (_blur(0.005), 95),
    "half_resolution": (_downscale(0.5), 95),
    "jpeg_quality_25": (lambda img: img, 25),
    "black_border_6pct": (_border(0.06), 95),
    # Held out: never used by training's re-acquisition (random_acquisition).
    "sharpened": (lambda img: img.filter(ImageFilter.UnsharpMask(radius=max(img.size) / 200, percent=150)), 95),
    "low_contrast_haze": (lambda img: img.point(lambda v: int(0.6 * v + 60)), 95),
}
HELD_OUT = ("sharpened", "low_contrast_haze")


def random_acquisition(img: Image.Image, rng: np.random.Generator) -> bytes:
    """A randomly re-acquired copy of a decoded grayscale image, for training: the same family
    of changes as :data:`PERTURBATIONS` (exposure, sharpness, resolution, compression,
    collimation borders) at random strengths, both classes alike, applied *before* the
    preprocessing -- equalisation reacts to a border or to blocking artefacts in ways no
    augmentation of the preprocessed image shows."""
    if rng.random() < 0.5:
        img = _gamma(float(np.exp(rng.uniform(-0.5, 0.5))))(img)
    if rng.random() < 0.3:
        img = _blur(float(rng.uniform(0.001, 0.006)))(img)
    if rng.random() < 0.3:
        img = _downscale(float(rng.uniform(0.35, 0.8)))(img)
    if rng.random() < 0.4:
        img = _border_colour(float(rng.uniform(0.01, 0.1)), int(rng.choice([0, 255])))(img)
    quality = int(rng.integers(15, 96)) if rng.random() < 0.6 else 95
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class Reacquire:
    """How the augmented training views are re-acquired from the raw images (``train.reacquire``).

    ``class_mix``: each image is moved a random fraction of the way towards the other class's
    acquisition (:func:`cxr.shift.acquisition.class_mixed`), ``t`` drawn from this range, once for
    both cues or once per cue (``mix_mode``), for the cues ``mix_cues`` and the classes
    ``mix_classes`` only (moving PNEUMONIA towards NORMAL's squarer film can only be emulated by
    cropping the sides, which changes the framing as no real film does; moving NORMAL towards
    PNEUMONIA's crops top and bottom, as the tighter PNEUMONIA films do); ``None`` leaves the
    class-conditional cues alone. ``to_other``: the share of moved images taken all the way, to the
    other class's acquisition. ``generic``: then a random exposure,
    blur, resolution, border and JPEG quality, both classes alike (:func:`random_acquisition`).
    """

    class_mix: tuple[float, float] | None = None
    mix_mode: str = "joint"
    mix_cues: tuple[str, ...] = CUES
    mix_classes: tuple[int, ...] = (0, 1)
    to_other: float = 0.0
    generic: bool = False

    @classmethod
    def from_params(cls, cfg: dict | None) -> "Reacquire":
        cfg = cfg or {}
        keys = {"class_mix", "mix_mode", "mix_cues", "mix_classes", "to_other", "generic"}
        if not isinstance(cfg, dict) or set(cfg) - keys:
            raise UserError(f"params.yaml: 'train.reacquire' must be a mapping with keys {sorted(keys)}")
        mix = cfg.get("class_mix")
        if mix is not None:
            if (not isinstance(mix, (list, tuple)) or len(mix) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mix)
                    or not -1.0 <= mix[0] <= mix[1] <= 2.0):
                raise UserError(f"params.yaml: 'train.reacquire.class_mix' must be null or [lo, hi] with "
                                f"-1 <= lo <= hi <= 2, got {mix!r}")
            mix = (float(mix[0]), float(mix[1]))
        generic = cfg.get("generic", False)
        if not isinstance(generic, bool):
            raise UserError(f"params.yaml: 'train.reacquire.generic' must be true or false, got {generic!r}")
        mix_mode = cfg.get("mix_mode", "joint")
        if mix_mode not in MIX_MODES:
            raise UserError(f"params.yaml: 'train.reacquire.mix_mode' must be one of {MIX_MODES}, got {mix_mode!r}")
        cues = cfg.get("mix_cues", list(CUES))
        if not isinstance(cues, list) or not cues or not set(cues) <= set(CUES):
            raise UserError(f"params.yaml: 'train.reacquire.mix_cues' must be a non-empty list of {CUES}, got {cues!r}")
        classes = cfg.get("mix_classes", list(LABELS))
        if not isinstance(classes, list) or not classes or not set(classes) <= set(LABELS):
            raise UserError(f"params.yaml: 'train.reacquire.mix_classes' must be a non-empty list of {LABELS}, "
                            f"got {classes!r}")
        to_other = cfg.get("to_other", 0.0)
        if isinstance(to_other, bool) or not isinstance(to_other, (int, float)) or not 0.0 <= to_other <= 1.0:
            raise UserError(f"params.yaml: 'train.reacquire.to_other' must be a share in [0, 1], got {to_other!r}")
        return cls(class_mix=mix, mix_mode=mix_mode, mix_cues=tuple(c for c in CUES if c in cues),
                   mix_classes=tuple(i for i, label in enumerate(LABELS) if label in classes),
                   to_other=float(to_other), generic=generic)

    @property
    def active(self) -> bool:
        return self.class_mix is not None or self.generic

    @property
    def moves_aspect(self) -> bool:
        """Class mixing moves the aspect: the views have positions (:func:`aspect_positions`)."""
        return self.class_mix is not None and "aspect" in self.mix_cues

    def to_dict(self) -> dict:
        return {"class_mix": list(self.class_mix) if self.class_mix else None, "mix_mode": self.mix_mode,
                "mix_cues": list(self.mix_cues), "mix_classes": [LABELS[i] for i in self.mix_classes],
                "to_other": self.to_other, "generic": self.generic}


def reacquired(data: bytes, label: int, how: Reacquire, facts: ClassAcquisition, imaging: ImagingConfig,
               rng: np.random.Generator) -> np.ndarray:
    """One re-acquired, preprocessed copy (uint8 ``[S, S]``) of an image of class ``label``."""
    img = decode_gray(data)
    if how.class_mix is not None and label in how.mix_classes:
        img = class_mixed(img, label, facts, how.class_mix, rng, how.mix_mode, how.mix_cues, how.to_other)
    if how.generic:
        return preprocess_bytes(random_acquisition(img, rng), imaging)
    return preprocess_image(img, imaging)


def map_images(fn, items: list, size: int, workers: int = 4) -> np.ndarray:
    """uint8 ``[N, size, size]``: ``fn`` over ``items`` in threads (PIL and numpy release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.zeros((len(items), size, size), np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, arr in enumerate(pool.map(fn, items, chunksize=32)):
            out[i] = arr
    return out


def acquisition_view(raw_dir, rel_paths, labels, how: Reacquire, facts: ClassAcquisition,
                     imaging: ImagingConfig, seed: int, workers: int = 4) -> np.ndarray:
    """uint8 ``[N, S, S]``: every image re-acquired (seeded per image), then preprocessed."""
    def one(i: int) -> np.ndarray:
        data = (Path(raw_dir) / str(rel_paths[i])).read_bytes()
        return reacquired(data, int(labels[i]), how, facts, imaging, np.random.default_rng([seed, i]))

    return map_images(one, list(range(len(rel_paths))), imaging.image_size, workers)


def aspect_positions(labels, how: Reacquire, seed: int) -> np.ndarray:
    """Where :func:`acquisition_view` with the same ``seed`` put each image's aspect, on the line
    from NORMAL's acquisition (0) to PNEUMONIA's (1); NaN for images it did not move. Drawn again
    from the per-image generators, not recorded, so a cached view's position costs nothing to know."""
    out = np.full(len(labels), np.nan)
    if not how.moves_aspect:
        return out
    for i, label in enumerate(int(v) for v in labels):
        if label in how.mix_classes:
            t, _ = mix_fractions(np.random.default_rng([seed, i]), how.class_mix, how.mix_mode, how.mix_cues,
                                 how.to_other)
            out[i] = t if label == 0 else 1.0 - t
    return out


def counterfactual_view(raw_dir, rel_paths, labels, facts: ClassAcquisition, imaging: ImagingConfig,
                        cues=CUES, held_out: bool = False, workers: int = 4) -> np.ndarray:
    """uint8 ``[N, S, S]``: every image as the other class's chain would have acquired it."""
    def one(i: int) -> np.ndarray:
        data = (Path(raw_dir) / str(rel_paths[i])).read_bytes()
        return preprocess_image(counterfactual(data, int(labels[i]), facts, cues, held_out), imaging)

    return map_images(one, list(range(len(rel_paths))), imaging.image_size, workers)


def perturb_bytes(data: bytes, name: str) -> bytes:
    transform, quality = PERTURBATIONS[name]
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img).convert("L")
        out = transform(img)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of up to ``n`` images keeping the class ratio (seeded, sorted)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        take = max(1, round(n * len(idx) / len(labels))) if len(idx) else 0
        picked.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def perturbed_views(raw_bytes: list[bytes], imaging: ImagingConfig) -> dict[str, np.ndarray]:
    """Every image as each chain of :data:`PERTURBATIONS` would send it, through THE
    preprocessing: uint8 ``[N, S, S]`` per perturbation, decoded once for every test that reads them."""
    return {name: np.stack([preprocess_bytes(perturb_bytes(data, name), imaging) for data in raw_bytes])
            for name in PERTURBATIONS}


def stress_test(views: dict[str, np.ndarray], labels: np.ndarray, threshold: float,
                predict: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Per perturbation (:func:`perturbed_views`): ROC AUC, recall and specificity at
    ``threshold``, and the change in specificity from the clean images (the figure a new chain costs)."""
    out: dict[str, dict] = {}
    for name, images in views.items():
        scores = predict(images)
        m = at_threshold(labels, scores, threshold)
        out[name] = {"roc_auc": ranking(labels, scores)["roc_auc"], "recall": m["recall"],
                     "specificity": m["specificity"]}
    clean = out["clean"]
    for name, m in out.items():
        m["specificity_change"] = round(m["specificity"] - clean["specificity"], 4)
        m["recall_change"] = round(m["recall"] - clean["recall"], 4)
    worst = min((m for n, m in out.items() if n != "clean"), key=lambda m: m["specificity"], default=clean)
    return {"images": int(len(labels)), "threshold": round(float(threshold), 6), "perturbations": out,
            "held_out": list(HELD_OUT),
            "worst_specificity": worst["specificity"],
            "worst_recall": min(m["recall"] for m in out.values())}


# The counterfactual proxy of a class-conditional shift (cxr/shift/acquisition.py): which classes are
# given the other class's acquisition, which cues, and whether the aspect is changed by the
# held-out implementation (the plain stretch) or the way training changes it. A model trained on
# re-acquired views can learn the traces of the training transform (a class-conditional
# fingerprint: measured, it then passes the proxy made with that transform and fails the
# held-out one), so the headline variants use the held-out implementation.
# "normal_as_pneumonia" is the known shape of the official test split: its NORMAL films were
# acquired like the train PNEUMONIA ones.
PROXY_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[str, ...], bool]] = {
    "normal_as_pneumonia": ((0,), CUES, True),
    "normal_aspect_only": ((0,), ("aspect",), True),
    "normal_detail_only": ((0,), ("detail",), True),
    "swapped": ((0, 1), CUES, True),  # every image given the other's acquisition: the shortcut reversed
    "normal_as_pneumonia_training_transform": ((0,), CUES, False),
}
PROXY = "normal_as_pneumonia"


def counterfactual_scores(raw_dir, paths, labels: np.ndarray, clean_scores: np.ndarray, facts: ClassAcquisition,
                          imaging: ImagingConfig, predict: Callable[[np.ndarray], np.ndarray],
                          views: dict | None = None) -> dict[str, np.ndarray]:
    """Per :data:`PROXY_VARIANTS`: the scores with the chosen classes' images re-acquired as the
    other class's chain would have, the rest as they were (``clean_scores``). ``views``, if given,
    receives each re-acquired set of images under ``(class, cues, held_out)`` (the images of that
    class, in split order), for whoever scores them again (the subtype's counterfactual)."""
    paths, labels = np.asarray(paths), np.asarray(labels)
    shifted: dict[tuple, np.ndarray] = {}
    views = {} if views is None else views
    out = {}
    for name, (classes, cues, held_out) in PROXY_VARIANTS.items():
        scores = np.array(clean_scores, dtype=np.float64, copy=True)
        for cls in classes:
            key = (cls, cues, held_out)
            idx = np.flatnonzero(labels == cls)
            if key not in shifted:
                views[key] = counterfactual_view(raw_dir, paths[idx], labels[idx], facts, imaging, cues, held_out)
                shifted[key] = predict(views[key])
            scores[idx] = shifted[key]
        out[name] = scores
    return out


# The subtype's counterfactual: the PNEUMONIA films given NORMAL's acquisition (both cues, held-out
# implementation; the PNEUMONIA half of "swapped"). Bacterial and viral films were acquired alike as
# far as we know, so a subtype head that reads the lungs keeps its ranking here.
SUBTYPE_VARIANT = "pneumonia_as_normal"
SUBTYPE_VIEW = (1, CUES, True)


def subtype_counterfactual(views: dict, labels: np.ndarray, films: np.ndarray, subtypes: np.ndarray,
                           clean: np.ndarray, predict_subtype: Callable[[np.ndarray], np.ndarray],
                           threshold: float) -> dict:
    """The subtype head (``predict_subtype``: images -> P(bacterial)) on the test PNEUMONIA films of
    a known subtype (``films``: their indices in the split; ``subtypes``: 1 bacterial, 0 viral;
    ``clean``: their P(bacterial) as acquired) as acquired and given NORMAL's acquisition (``views``
    filled by :func:`counterfactual_scores`), at the subtype ``threshold``."""
    from cxr.metrics import subtype_figures

    pneumonia = np.flatnonzero(np.asarray(labels) == 1)
    shifted = predict_subtype(views[SUBTYPE_VIEW])[np.searchsorted(pneumonia, films)]
    out = {"films": int(len(films)), "threshold": round(float(threshold), 6),
           "clean": subtype_figures(subtypes, clean, threshold),
           SUBTYPE_VARIANT: {**subtype_figures(subtypes, shifted, threshold), "classes_shifted": [LABELS[1]],
                             "cues": list(SUBTYPE_VIEW[1]), "held_out_implementation": True,
                             "mean_abs_change": round(float(np.mean(np.abs(shifted - clean))), 4) if len(films) else None}}
    for key in ("roc_auc", "accuracy"):
        a, b = out["clean"][key], out[SUBTYPE_VARIANT][key]
        out[SUBTYPE_VARIANT][f"{key}_change"] = None if a is None or b is None else round(b - a, 4)
    return out


def counterfactual_report(variant_scores: dict[str, np.ndarray], labels: np.ndarray, clean_scores: np.ndarray,
                          threshold: float, facts: ClassAcquisition) -> dict:
    """ROC AUC, recall and specificity at ``threshold`` and the mean probability per class, for
    the clean test split and each variant. A model that reads the lungs keeps its figures; one
    that reads the acquisition loses specificity (NORMAL scored up) or recall (PNEUMONIA down)."""
    labels = np.asarray(labels)

    def figures(scores: np.ndarray) -> dict:
        m = at_threshold(labels, scores, threshold)
        return {"roc_auc": ranking(labels, scores)["roc_auc"], "recall": m["recall"], "specificity": m["specificity"],
                "mean_probability": {"NORMAL": round(float(scores[labels == 0].mean()), 4) if (labels == 0).any() else None,
                                     "PNEUMONIA": round(float(scores[labels == 1].mean()), 4) if (labels == 1).any() else None}}

    clean = figures(clean_scores)
    out = {"images": int(len(labels)), "threshold": round(float(threshold), 6), "facts": facts.to_dict(),
           "clean": clean}
    for name, scores in variant_scores.items():
        classes, cues, held_out = PROXY_VARIANTS[name]
        out[name] = {**figures(scores), "classes_shifted": [LABELS[c] for c in classes], "cues": list(cues),
                     "held_out_implementation": held_out}
        out[name]["specificity_change"] = round(out[name]["specificity"] - clean["specificity"], 4)
    return out


def counterfactual_test(raw_dir, paths, labels: np.ndarray, clean_scores: np.ndarray, threshold: float,
                        facts: ClassAcquisition, imaging: ImagingConfig,
                        predict: Callable[[np.ndarray], np.ndarray]) -> dict:
    """The counterfactual proxy at one threshold (:func:`counterfactual_scores`, then the report)."""
    scores = counterfactual_scores(raw_dir, paths, labels, clean_scores, facts, imaging, predict)
    return counterfactual_report(scores, labels, clean_scores, threshold, facts)


def served_gap(pairs: list[tuple[int, bytes, bytes]], threshold: float, imaging: ImagingConfig,
               predict: Callable[[np.ndarray], np.ndarray]) -> dict:
    """What the service answers for a full-size original against what evaluation measured on
    the data set's 224-px copy of the same film, made by another resize chain.

    ``pairs``: (label, original bytes, copy bytes). Both go through THE preprocessing; any
    difference is the model reacting to the chain, which evaluation cannot see."""
    if not pairs:
        return {"images": 0}
    labels = np.array([p[0] for p in pairs])
    served = predict(np.stack([preprocess_bytes(p[1], imaging) for p in pairs]))
    copy = predict(np.stack([preprocess_bytes(p[2], imaging) for p in pairs]))
    gap = np.abs(served - copy)

    def mean(scores, cls):
        return round(float(scores[labels == cls].mean()), 4) if (labels == cls).any() else None

    return {
        "images": int(len(pairs)),
        "abs_change": {"median": round(float(np.median(gap)), 4), "p90": round(float(np.percentile(gap, 90)), 4),
                       "max": round(float(gap.max()), 4)},
        "label_agreement": round(float(np.mean((served >= threshold) == (copy >= threshold))), 4),
        "mean_probability": {"served": {"NORMAL": mean(served, 0), "PNEUMONIA": mean(served, 1)},
                             "copy": {"NORMAL": mean(copy, 0), "PNEUMONIA": mean(copy, 1)}},
    }
