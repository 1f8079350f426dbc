"""Generated chest-radiograph-like images, so the pipeline runs end to end with no data.

NOT a medical data set: it exists to exercise the code on a fresh clone, offline.
Each image is a grayscale JPEG with a dark background, a body silhouette, two darker
lung fields crossed by curved ribs, a bright spine/mediastinum and a heart shadow.
PNEUMONIA adds consolidation inside the lungs: a dense lobar patch (bacterial) or a
diffuse hazy interstitial pattern (viral), dense enough that a small network learns it
from a few hundred images; :func:`draw` also returns where it was drawn, so explanations
can be tested against the lesion. Brightness, contrast, position and size vary
per patient and per image, and every image is rescaled to a mean/spread drawn from the
same distribution for both classes, so the label is not given away by global intensity.
Files are named like the real set (``IM-0001-0002.jpeg``, ``person12_bacteria_34.jpeg``)
so patient grouping is exercised too. Same seed and params, same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cxr import UserError
from cxr.params import require

_LABEL_CODE = {"NORMAL": 0, "PNEUMONIA": 1}
_SPLIT_CODE = {"train": 0, "test": 1}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: random ``cells x cells`` grid upsampled bicubically."""
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = Image.fromarray(grid, "L").resize((size, size), Image.BICUBIC)
    return np.asarray(up, np.float32) / 127.5 - 1.0


def _ellipse(xx, yy, cx, cy, rx, ry, soft=0.08):
    """Soft-edged ellipse mask in [0, 1]."""
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - d) / soft, 0.0, 1.0)


def _patient_anatomy(rng: np.random.Generator) -> dict:
    return {
        "body_w": rng.uniform(0.72, 0.9),
        "lung_w": rng.uniform(0.25, 0.32),
        "lung_h": rng.uniform(0.55, 0.68),
        "lung_gap": rng.uniform(0.2, 0.28),
        "heart": rng.uniform(0.2, 0.27),
        "rib_step": rng.uniform(0.11, 0.15),
        "rib_curve": rng.uniform(0.25, 0.45),
        "mean": rng.uniform(0.38, 0.56),
        "spread": rng.uniform(0.17, 0.25),
    }


def draw(rng: np.random.Generator, anatomy: dict, size: int, subtype: str = "") -> tuple[Image.Image, np.ndarray]:
    """One radiograph-like image and its lesion mask (bool ``[size, size]``, all False for
    NORMAL); ``subtype`` "bacteria"/"virus" adds pneumonia."""
    a = {k: v * rng.uniform(0.95, 1.05) for k, v in anatomy.items()}
    ax = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    xx, yy = np.meshgrid(ax, ax)
    ox, oy = rng.uniform(-0.06, 0.06, 2)  # patient positioning
    xx, yy = xx - ox, yy - oy

    img = 0.08 + 0.04 * _smooth_noise(rng, size, 4)
    body = _ellipse(xx, yy, 0.0, 0.25, a["body_w"], 1.15, soft=0.15)
    img += 0.5 * body
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        cx = side * (a["lung_gap"] / 2 + a["lung_w"])
        lungs = np.maximum(lungs, _ellipse(xx, yy, cx, -0.08, a["lung_w"], a["lung_h"], soft=0.25))
    lungs *= body
    img -= 0.32 * lungs
    # ribs: curved bright bands, most visible over the lungs
    phase = (yy - a["rib_curve"] * xx**2 + 0.8) / a["rib_step"]
    ribs = np.exp(-(((phase - np.round(phase)) / 0.18) ** 2)) * (np.abs(xx) > 0.05)
    img += 0.1 * ribs * body * (0.4 + 0.6 * lungs)
    # spine / mediastinum column and heart shadow (patient's left = image right)
    img += 0.22 * np.clip((0.1 - np.abs(xx)) / 0.05, 0, 1) * body
    img += 0.17 * _ellipse(xx, yy, 0.14, 0.25, a["heart"] * 1.25, a["heart"], soft=0.4)
    img += 0.2 * np.clip((yy - 0.55) / 0.1, 0, 1) * body  # diaphragm / abdomen

    lesion = np.zeros(img.shape, bool)
    # Exposure is set from the anatomy alone, so a lesion brightens only where it is drawn (set
    # after it, the rescaling would shift every other pixel with it: a global cue to learn).
    anatomy_mean, anatomy_std = float(img.mean()), float(img.std()) + 1e-6
    if subtype == "bacteria":  # lobar consolidation: a dense irregular patch in one lung
        side = rng.choice([-1, 1])
        cx = side * (a["lung_gap"] / 2 + a["lung_w"] * rng.uniform(0.6, 1.3))
        cy = rng.uniform(-0.2, 0.35)
        patch = np.zeros_like(img)
        for _ in range(rng.integers(3, 7)):
            r = rng.uniform(0.1, 0.2)
            px, py = cx + rng.normal(0, 0.07), cy + rng.normal(0, 0.07)
            patch += np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * r**2))
        texture = 0.75 + 0.25 * _smooth_noise(rng, size, 24)
        density = np.clip(patch, 0, 1) * lungs
        img += rng.uniform(0.45, 0.65) * density * texture
        lesion = density > 0.25
    elif subtype == "virus":  # diffuse interstitial haze over both lungs
        haze = 0.5 + 0.5 * _smooth_noise(rng, size, 10)
        reticular = np.abs(_smooth_noise(rng, size, 40))
        img += rng.uniform(0.2, 0.3) * lungs * (0.6 * haze + 0.4 * reticular)
        lesion = lungs > 0.25

    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    # class-independent exposure: the anatomy's mean and spread are drawn, not inherited
    img = (img - anatomy_mean) / anatomy_std * a["spread"] + a["mean"]
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.2)
    pil = Image.fromarray((img * 255).astype(np.uint8), "L")
    return pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0))), lesion


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _counts(cfg: dict, key: str) -> dict[str, int]:
    value = require(cfg, key, dict, "download.synthetic")
    out = {}
    for label in _LABEL_CODE:
        n = value.get(label, 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise UserError(f"params.yaml: 'download.synthetic.{key}.{label}' must be an int >= 0, got {n!r}")
        out[label] = n
    return out


def generate(cfg: dict, out_dir: str | Path) -> Path:
    """Write a Kaggle-layout data set (train/, and test/ if asked) into ``out_dir``."""
    seed, size, span, patients, test_patients = _checked(cfg)
    out_dir = Path(out_dir)
    for split, label, name, image, _ in _images(seed, size, span, patients, test_patients):
        folder = out_dir / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_jpeg(image))
    return out_dir


def _checked(cfg: dict) -> tuple[int, int, list, dict, dict]:
    seed = require(cfg, "seed", int, "download.synthetic")
    size = require(cfg, "size", int, "download.synthetic")
    span = require(cfg, "images_per_patient", list, "download.synthetic")
    if len(span) != 2 or not all(isinstance(v, int) for v in span) or not 1 <= span[0] <= span[1]:
        raise UserError("params.yaml: 'download.synthetic.images_per_patient' must be [lo, hi] "
                        f"with 1 <= lo <= hi, got {span!r}")
    if not 32 <= size <= 2048:
        raise UserError(f"params.yaml: 'download.synthetic.size' must be within [32, 2048], got {size}")
    patients = _counts(cfg, "patients")
    if min(patients.values()) < 1:
        raise UserError("params.yaml: 'download.synthetic.patients' needs at least 1 patient per class")
    test_patients = _counts(cfg, "test_patients")
    if sum(test_patients.values()) and min(test_patients.values()) < 1:
        raise UserError("params.yaml: 'download.synthetic.test_patients' needs both classes or none")
    return seed, size, span, patients, test_patients


def lesions(cfg: dict, split: str = "test") -> dict[str, np.ndarray]:
    """``{file name: lesion mask}`` for the PNEUMONIA images :func:`generate` writes into
    ``split`` with the same params (the same draws, replayed)."""
    return {name: mask for s, label, name, _, mask in _images(*_checked(cfg))
            if s == split and label == "PNEUMONIA"}


def _images(seed: int, size: int, span: list, patients: dict, test_patients: dict):
    """(split, label, file name, image, lesion mask) in the order they are drawn."""
    image_no = 0  # Kermany's PNEUMONIA names carry a running image number
    for split, counts in (("train", patients), ("test", test_patients)):
        for label, n in counts.items():
            first = 1 if split == "train" else patients[label] + 1  # test patients are disjoint
            for pid in range(first, first + n):
                rng = np.random.default_rng([seed, _LABEL_CODE[label], _SPLIT_CODE[split], pid])
                anatomy = _patient_anatomy(rng)
                subtype = "" if label == "NORMAL" else ("bacteria" if rng.random() < 0.65 else "virus")
                for k in range(1, int(rng.integers(span[0], span[1] + 1)) + 1):
                    image_no += 1
                    if label == "NORMAL":
                        name = f"IM-{pid:04d}-{k:04d}.jpeg"
                    else:
                        name = f"person{pid}_{subtype}_{image_no}.jpeg"
                    image, lesion = draw(rng, anatomy, size, subtype)
                    yield split, label, name, image, lesion
