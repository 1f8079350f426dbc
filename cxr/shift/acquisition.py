"""How an image was acquired, apart from what it shows: the class-conditional shortcut.

In the Kermany train split the two classes come from different acquisition chains. Full-size
NORMAL films are squarer than PNEUMONIA films, so the square 224-px copy squashes a PNEUMONIA
chest more across; and NORMAL images carry more fine detail (edge enhancement, compression,
resolution of their chain). A model can separate the classes by these alone (the shortcut
audit in :mod:`cxr.shift.shortcuts`), and the official test split's NORMAL images were acquired like
the train PNEUMONIA ones, so such a model fails there. The facts (each class's median aspect
of the originals, and the detail gain that gives one class the other's detail level) are in
``params.yaml`` ``acquisition``, measured by ``python -m cxr.shift.acquisition measure``.

Two transforms, on a decoded image at its own resolution (a 224-px copy or a full-size
original alike), before THE preprocessing (:func:`cxr.imaging.preprocess.preprocess_image`):

- ``squash``: extra horizontal compression by a factor (> 1: the anatomy narrower, as a wider
  film squashed to a square), made so that it leaves the same traces in either direction.
- ``detail``: a gain on structure finer than about 1/25 of the image (unsharp-mask style):
  < 1 softer, > 1 crisper. Coarse anatomy (lung fields, consolidation) is left alone.

A *shift* moves an image a fraction ``t`` of the way from its own class's acquisition to the
other class's (geometric interpolation; ``t = 1`` is the full counterfactual). Training draws
``t`` per image and per cue from a range symmetric about 0.5, so both classes cover the same
acquisitions (:func:`class_mixed`); evaluation uses ``t = 1`` (:func:`counterfactual`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from cxr import LABELS, UserError

CUES = ("aspect", "detail")
DETAIL_SCALE = 0.04  # blur sigma, as a fraction of the longer side, that separates "detail"


@dataclass(frozen=True)
class ClassAcquisition:
    """Per class (0 NORMAL, 1 PNEUMONIA): median width/height of its full-size films, and the
    detail gain that, after the aspect change, gives its images the other class's detail."""

    aspect: tuple[float, float] = (1.0, 1.0)
    detail_gain: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def from_params(cls, cfg: dict) -> "ClassAcquisition":
        def pair(key: str) -> tuple[float, float]:
            value = cfg.get(key)
            if not isinstance(value, dict) or set(value) != set(LABELS):
                raise UserError(f"params.yaml: 'acquisition.{key}' must map {' and '.join(LABELS)} to numbers")
            out = []
            for label in LABELS:
                v = value[label]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.2 <= v <= 5.0:
                    raise UserError(f"params.yaml: 'acquisition.{key}.{label}' must be a number in [0.2, 5], got {v!r}")
                out.append(float(v))
            return out[0], out[1]

        return cls(aspect=pair("aspect"), detail_gain=pair("detail_gain"))

    def to_dict(self) -> dict:
        return {"aspect": dict(zip(LABELS, self.aspect)), "detail_gain": dict(zip(LABELS, self.detail_gain))}

    def squash_towards_other(self, label: int) -> float:
        return self.aspect[1 - label] / self.aspect[label]


def squash(img: Image.Image, factor: float) -> Image.Image:
    """Compress the anatomy across by ``factor`` (same image size; the centre is kept).

    The copy has nothing beyond its edges, so the narrower anatomy comes with a smaller field of
    view: one side is shrunk by ``factor``, the other side cropped to match, and the result
    resized *isotropically* back. Whichever the direction, the image is softened the same way
    in both axes, so the transform leaves no directional trace that would tell a squashed
    NORMAL from a widened PNEUMONIA (a class-conditional fingerprint a network can learn)."""
    if abs(factor - 1.0) < 1e-3:
        return img
    w, h = img.size
    lanczos = Image.Resampling.LANCZOS
    if factor > 1:
        narrow = img.resize((max(1, round(w / factor)), h), lanczos)
        keep = max(1, round(h / factor))
        top = (h - keep) // 2
        return narrow.crop((0, top, narrow.width, top + keep)).resize((w, h), lanczos)
    low = img.resize((w, max(1, round(h * factor))), lanczos)
    keep = max(1, round(w * factor))
    left = (w - keep) // 2
    return low.crop((left, 0, left + keep, low.height)).resize((w, h), lanczos)


def squash_stretched(img: Image.Image, factor: float) -> Image.Image:
    """The same change of aspect made the plain way, stretching one axis (bilinear) and
    cropping: the held-out implementation for the proxy. Training never uses it, so a model
    cannot pass it by having learnt the traces of :func:`squash`."""
    if abs(factor - 1.0) < 1e-3:
        return img
    w, h = img.size
    if factor > 1:
        tall = img.resize((w, max(h, round(h * factor))), Image.Resampling.BILINEAR)
        top = (tall.height - h) // 2
        return tall.crop((0, top, w, top + h))
    wide = img.resize((max(w, round(w / factor)), h), Image.Resampling.BILINEAR)
    left = (wide.width - w) // 2
    return wide.crop((left, 0, left + w, h))


def detail(img: Image.Image, gain: float) -> Image.Image:
    """Scale structure finer than ``DETAIL_SCALE`` of the image by ``gain`` (L mode image)."""
    if abs(gain - 1.0) < 1e-3:
        return img
    low = img.filter(ImageFilter.GaussianBlur(radius=max(img.size) * DETAIL_SCALE))
    a = np.asarray(img, np.float32)
    base = np.asarray(low, np.float32)
    return Image.fromarray(np.clip(base + gain * (a - base), 0, 255).round().astype(np.uint8), "L")


def _fine_detail(img: Image.Image) -> float:
    """Mean |Laplacian|: the fine-detail level the gains are calibrated on."""
    a = np.asarray(img, np.float32)
    return float(np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).mean())


def detail_held_out(img: Image.Image, gain: float) -> Image.Image:
    """The same change of fine detail made another way, for the held-out proxy: a plain Gaussian
    blur (gain < 1) or an unsharp mask at a finer radius (gain > 1), with its strength found by
    bisection so that the image reaches the fine-detail level :func:`detail` would give it."""
    if abs(gain - 1.0) < 1e-3:
        return img
    target = _fine_detail(detail(img, gain))
    scale = max(img.size) / 224.0
    if gain < 1:
        make = lambda k: img.filter(ImageFilter.GaussianBlur(radius=k * scale))  # noqa: E731
        lo, hi = 0.0, 4.0  # more blur, less detail
    else:
        make = lambda k: img.filter(ImageFilter.UnsharpMask(radius=1.0 * scale, percent=int(k), threshold=0))  # noqa: E731
        lo, hi = 0.0, 800.0
    for _ in range(12):
        mid = (lo + hi) / 2
        if (_fine_detail(make(mid)) > target) == (gain < 1):
            lo = mid
        else:
            hi = mid
    return make((lo + hi) / 2)


def shift(img: Image.Image, label: int, facts: ClassAcquisition, t_aspect: float, t_detail: float) -> Image.Image:
    """Move a grayscale image ``t`` of the way from class ``label``'s acquisition to the other's."""
    out = squash(img, facts.squash_towards_other(label) ** t_aspect)
    return detail(out, facts.detail_gain[label] ** t_detail)


def decode_gray(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return ImageOps.exif_transpose(img).convert("L")


def counterfactual(data: bytes, label: int, facts: ClassAcquisition, cues: Iterable[str] = CUES,
                   held_out: bool = False) -> Image.Image:
    """The image as the other class's chain would have acquired it (the chosen cues only);
    ``held_out``: made by :func:`squash_stretched` and :func:`detail_held_out`, which training
    never uses."""
    cues = set(cues)
    unknown = cues - set(CUES)
    if unknown:
        raise UserError(f"unknown acquisition cues {sorted(unknown)}: expected some of {CUES}")
    img = decode_gray(data)
    if held_out:
        img = squash_stretched(img, facts.squash_towards_other(label)) if "aspect" in cues else img
        return detail_held_out(img, facts.detail_gain[label]) if "detail" in cues else img
    return shift(img, label, facts, 1.0 if "aspect" in cues else 0.0, 1.0 if "detail" in cues else 0.0)


MIX_MODES = ("joint", "independent")


def class_mixed(img: Image.Image, label: int, facts: ClassAcquisition, mix: tuple[float, float],
                rng: np.random.Generator, mode: str = "joint", cues: Iterable[str] = CUES,
                to_other: float = 0.0) -> Image.Image:
    """A random shift of the chosen ``cues`` with ``t`` drawn from ``mix``: one ``t`` for both
    cues (``joint``: along the line between the two classes' acquisitions, which is how the
    detail gains were measured, after the aspect change) or one per cue (``independent``: also
    the mixed combinations). With ``mix`` symmetric about 0.5 (e.g. [-0.25, 1.25]) both
    classes' shifted images cover the same acquisitions. With probability ``to_other`` the image
    goes all the way instead (``t = 1`` for every cue), to the other class's own acquisition: a
    counterweight to views left as acquired, which show each class at its own only."""
    t_aspect, t_detail = mix_fractions(rng, mix, mode, cues, to_other)
    return shift(img, label, facts, t_aspect, t_detail)


def mix_fractions(rng: np.random.Generator, mix: tuple[float, float], mode: str = "joint",
                  cues: Iterable[str] = CUES, to_other: float = 0.0) -> tuple[float, float]:
    """The ``(t_aspect, t_detail)`` that :func:`class_mixed` applies, drawn from ``rng`` in its
    order, so that whoever needs to know how far a view was moved can draw it again."""
    if mode not in MIX_MODES:
        raise UserError(f"class mixing mode must be one of {MIX_MODES}, got {mode!r}")
    t_aspect, t_detail = rng.uniform(mix[0], mix[1], size=2)
    if mode == "joint":
        t_detail = t_aspect
    if to_other and rng.random() < to_other:
        t_aspect = t_detail = 1.0
    cues = set(cues)
    return (float(t_aspect) if "aspect" in cues else 0.0, float(t_detail) if "detail" in cues else 0.0)


def _laplacian_level(images: list[Image.Image]) -> float:
    """Median fine-detail level of a set of images."""
    return float(np.median([_fine_detail(i) for i in images]))


def measure(originals_dir, images: dict[int, list[Image.Image]]) -> ClassAcquisition:
    """The facts, measured: aspects from full-size originals in ``originals_dir/{NORMAL,PNEUMONIA}``,
    detail gains from ``images`` (the training images, by class) by bisection, so that the
    squashed-and-gained images of one class reach the other's median detail level."""
    from pathlib import Path

    aspects = []
    for label in LABELS:
        files = sorted(p for p in (Path(originals_dir) / label).glob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if not files:
            raise UserError(f"{originals_dir}/{label}: no full-size originals to measure the aspect on")
        sizes = [Image.open(p).size for p in files]
        aspects.append(float(np.median([w / h for w, h in sizes])))
    base = ClassAcquisition(aspect=(aspects[0], aspects[1]))
    gains = []
    for label in (0, 1):
        target = _laplacian_level(images[1 - label])
        squashed = [squash(i, base.squash_towards_other(label)) for i in images[label]]
        lo, hi = 0.2, 5.0
        for _ in range(18):
            mid = (lo * hi) ** 0.5
            if _laplacian_level([detail(i, mid) for i in squashed]) < target:
                lo = mid
            else:
                hi = mid
        gains.append(round((lo * hi) ** 0.5, 3))
    return ClassAcquisition(aspect=(round(aspects[0], 3), round(aspects[1], 3)), detail_gain=(gains[0], gains[1]))


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr.shift.acquisition measure ORIGINALS_DIR DATA_DIR [--sample N]``: prints the
    ``acquisition`` section for params.yaml. DATA_DIR is a Kaggle-layout folder (its ``train``)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m cxr.shift.acquisition")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="measure the class acquisition facts")
    m.add_argument("originals", help="folder with NORMAL/ and PNEUMONIA/ full-size originals")
    m.add_argument("data", help="Kaggle-layout folder whose train/{NORMAL,PNEUMONIA} images training sees")
    m.add_argument("--sample", type=int, default=300, help="images per class for the detail gain")
    m.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rng = np.random.default_rng(args.seed)
        images = {}
        for label_i, label in enumerate(LABELS):
            files = sorted((Path(args.data) / "train" / label).glob("*"))
            if not files:
                raise UserError(f"{args.data}/train/{label}: no images")
            pick = rng.choice(len(files), size=min(args.sample, len(files)), replace=False)
            images[label_i] = [decode_gray(files[i].read_bytes()) for i in sorted(pick)]
        facts = measure(args.originals, images)
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    import yaml

    print(yaml.safe_dump({"acquisition": facts.to_dict()}, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
