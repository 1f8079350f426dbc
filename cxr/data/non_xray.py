"""Images that are not chest X-rays, offline, as the encoded bytes an upload would be.

They measure the "not a chest X-ray" refusal (:mod:`cxr.model.ood`): every image goes through
:func:`cxr.imaging.preprocess.preprocess_bytes` like any upload, so what is measured is what the service
would see. Families: the photographs, textures, microscopy, retina scans, graphics and scanned
text shipped inside ``skimage.data`` (cropped, rotated, flipped and rescaled to get more than one
image each; a sample missing from this installation is skipped, never downloaded), and drawn
ones: rendered documents, screenshots, uniform and Gaussian noise, blank images and gradients.
Same seed, same bytes.
"""

from __future__ import annotations

import functools
import io
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# skimage.data samples by family; "other_medical" is another body part (the eye's fundus).
SKIMAGE_FAMILIES = {
    "photo": ("astronaut", "camera", "coffee", "chelsea", "rocket", "cat", "coins", "moon", "clock",
              "hubble_deep_field"),
    "texture": ("grass", "gravel", "brick", "checkerboard"),
    "microscopy": ("immunohistochemistry", "cell"),
    "other_medical": ("retina", "microaneurysms"),
    "graphic": ("colorwheel", "logo", "binary_blobs", "horse"),
    "scanned_text": ("page", "text"),
}
DRAWN_FAMILIES = ("document", "screenshot", "noise", "blank", "gradient")
FAMILIES = (*SKIMAGE_FAMILIES, *DRAWN_FAMILIES)

_WORD_LETTERS = string.ascii_lowercase
_MAX_SIDE = 640  # large enough to exercise the resize, small enough to stay quick


def non_xray_images(seed: int, per_family: int, families: tuple[str, ...] | None = None
                    ) -> list[tuple[str, str, bytes]]:
    """``per_family`` images of each family as ``(family, name, encoded bytes)``, in a fixed order;
    names are ``{family}-{source}-{index}.{png|jpeg}``, unique.

    A ``skimage.data`` family whose samples are all missing from this installation yields none."""
    if per_family < 0:
        raise ValueError(f"per_family must be >= 0, got {per_family}")
    chosen = FAMILIES if families is None else tuple(families)
    unknown = set(chosen) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown non-X-ray families {sorted(unknown)}; known: {FAMILIES}")
    out: list[tuple[str, str, bytes]] = []
    for family in chosen:
        code = FAMILIES.index(family)
        if family in SKIMAGE_FAMILIES:
            samples = [(name, img) for name in SKIMAGE_FAMILIES[family]
                       if (img := _skimage_sample(name)) is not None]
            if not samples:
                continue
            for i in range(per_family):
                rng = np.random.default_rng([seed, code, i])
                name, img = samples[i % len(samples)]
                # the first round is each sample as shipped; later rounds are variants of it
                variant = img if i < len(samples) else _variant(rng, img)
                out.append(_encoded(rng, family, f"{family}-{name}-{i:03d}", _fit(variant)))
        else:
            draw = _DRAWERS[family]
            for i in range(per_family):
                rng = np.random.default_rng([seed, code, i])
                kind, img = draw(rng, i)
                out.append(_encoded(rng, family, f"{family}-{kind}-{i:03d}", img))
    return out


@functools.lru_cache(maxsize=None)
def _skimage_sample(name: str) -> Image.Image | None:
    """One ``skimage.data`` sample as a PIL image, or None when it cannot be loaded offline.

    Without ``pooch`` installed scikit-image cannot download; a sample not shipped in the
    package raises, and is skipped. Cached: callers only read it (crop and rotate copy)."""
    try:
        import skimage.data

        # binary_blobs draws its blobs from a random state: fixed, or "same seed, same bytes" fails
        arr = np.asarray(getattr(skimage.data, name)(**({"rng": 0} if name == "binary_blobs" else {})))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 -- under pytest scikit-image skips with a BaseException
        return None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2] if arr.ndim == 3 else 2]
    return Image.fromarray(arr, mode)


def _variant(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """A crop, a rotation and maybe a mirror image of ``img``."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.55, 1.0)), int(h * rng.uniform(0.55, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    img = img.rotate(int(rng.choice([0, 90, 180, 270])) + float(rng.uniform(-15, 15)),
                     resample=Image.Resampling.BILINEAR, expand=bool(rng.random() < 0.5))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _fit(img: Image.Image) -> Image.Image:
    scale = _MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(32, round(img.size[0] * scale)), max(32, round(img.size[1] * scale))),
                         Image.Resampling.BILINEAR)
    return img


def _encoded(rng: np.random.Generator, family: str, name: str, img: Image.Image) -> tuple[str, str, bytes]:
    buf = io.BytesIO()
    if img.mode in ("RGBA", "LA") or rng.random() < 0.5:
        img.save(buf, "PNG")
        ext = "png"
    else:
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(
            buf, "JPEG", quality=int(rng.integers(70, 96)))
        ext = "jpeg"
    return family, f"{name}.{ext}", buf.getvalue()


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except (TypeError, OSError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join("".join(rng.choice(list(_WORD_LETTERS), int(rng.integers(1, 11)))) for _ in range(n))


def _document(rng: np.random.Generator, i: int) -> tuple[str, Image.Image]:
    """A page of text: a title, paragraphs in one or two columns, sometimes a ruled table."""
    w = int(rng.integers(420, 640))
    h = int(w * rng.uniform(1.25, 1.45))
    paper = int(rng.integers(235, 256))
    img = Image.new("RGB", (w, h), (paper, paper, paper - int(rng.integers(0, 12))))
    draw = ImageDraw.Draw(img)
    ink = _colour(rng, 0, 70)
    margin = int(w * rng.uniform(0.07, 0.12))
    size = int(rng.integers(9, 15))
    y = margin
    draw.text((margin, y), _words(rng, int(rng.integers(2, 6))).title(), fill=ink, font=_font(size * 2))
    y += size * 3
    columns = 2 if rng.random() < 0.3 else 1
    col_w = (w - 2 * margin) // columns
    chars_per_line = max(8, int(col_w / (size * 0.55)))
    body = _font(size)
    table_at = int(rng.integers(3, 12)) if rng.random() < 0.4 else -1
    line = 0
    for col in range(columns):
        yy = y
        x = margin + col * col_w
        while yy < h - margin - size:
            if line == table_at and columns == 1:
                rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
                cell_h = size * 2
                for r in range(rows + 1):
                    draw.line((x, yy + r * cell_h, w - margin, yy + r * cell_h), fill=ink)
                for c in range(cols + 1):
                    cx = x + c * (w - 2 * margin) // cols
                    draw.line((cx, yy, cx, yy + rows * cell_h), fill=ink)
                for r in range(rows):
                    for c in range(cols):
                        draw.text((x + c * (w - 2 * margin) // cols + 4, yy + r * cell_h + size // 3),
                                  _words(rng, 1)[:10], fill=ink, font=body)
                yy += rows * cell_h + size
            elif rng.random() < 0.12:  # paragraph break
                yy += size
            else:
                text = _words(rng, chars_per_line // 5)[:chars_per_line]
                draw.text((x, yy), text, fill=ink, font=body)
                yy += int(size * 1.5)
            line += 1
    return "page", img


def _screenshot(rng: np.random.Generator, i: int) -> tuple[str, Image.Image]:
    """An application window: flat panels, a title bar, a menu, cards, buttons and text."""
    w, h = [(640, 400), (600, 480), (640, 360), (480, 640), (400, 640)][int(rng.integers(0, 5))]
    dark = rng.random() < 0.4
    bg = _colour(rng, 10, 50) if dark else _colour(rng, 225, 256)
    fg = _colour(rng, 200, 256) if dark else _colour(rng, 0, 60)
    accent = _colour(rng)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    small, big = _font(int(rng.integers(9, 13))), _font(int(rng.integers(14, 20)))
    bar = int(rng.integers(24, 40))
    draw.rectangle((0, 0, w, bar), fill=_colour(rng, 40, 90) if dark else _colour(rng, 190, 230))
    draw.text((10, bar // 4), _words(rng, 3), fill=fg, font=small)
    for k in range(3):
        draw.ellipse((w - 20 - 18 * k, bar // 3, w - 10 - 18 * k, bar // 3 + 10), fill=_colour(rng))
    side = int(w * rng.uniform(0.15, 0.3)) if rng.random() < 0.7 else 0
    if side:
        draw.rectangle((0, bar, side, h), fill=_colour(rng, 25, 70) if dark else _colour(rng, 205, 240))
        for k in range(int(rng.integers(4, 12))):
            draw.text((10, bar + 12 + k * 24), _words(rng, 2)[:14], fill=fg, font=small)
    draw.text((side + 16, bar + 12), _words(rng, 3), fill=fg, font=big)
    y = bar + 48
    while y < h - 60:
        card_h = int(rng.integers(40, 110))
        x0 = side + 16
        draw.rounded_rectangle((x0, y, w - 16, min(y + card_h, h - 10)), radius=int(rng.integers(0, 12)),
                               fill=_colour(rng, 30, 80) if dark else _colour(rng, 240, 256),
                               outline=_colour(rng, 100, 180))
        draw.text((x0 + 10, y + 8), _words(rng, int(rng.integers(3, 9))), fill=fg, font=small)
        if rng.random() < 0.6:  # a button
            bw = int(rng.integers(60, 120))
            draw.rounded_rectangle((w - 26 - bw, y + card_h - 34, w - 26, y + card_h - 10), radius=6, fill=accent)
            draw.text((w - 20 - bw, y + card_h - 30), _words(rng, 1)[:8], fill=(255, 255, 255), font=small)
        elif rng.random() < 0.5:  # a bar chart
            n = int(rng.integers(4, 12))
            for b in range(n):
                bh = int(rng.integers(5, max(6, card_h - 30)))
                bx = x0 + 20 + b * 18
                draw.rectangle((bx, y + card_h - 6 - bh, bx + 12, y + card_h - 6), fill=accent)
        y += card_h + int(rng.integers(8, 20))
    return "window", img


def _noise(rng: np.random.Generator, i: int) -> tuple[str, Image.Image]:
    w, h = (int(v) for v in rng.integers(64, 512, 2))
    channels = 3 if rng.random() < 0.5 else 1
    shape = (h, w, channels) if channels == 3 else (h, w)
    if i % 2 == 0:
        kind, arr = "uniform", rng.integers(0, 256, shape)
    else:
        kind, arr = "gaussian", rng.normal(rng.uniform(60, 200), rng.uniform(10, 80), shape)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    return kind, Image.fromarray(arr, "RGB" if channels == 3 else "L")


def _blank(rng: np.random.Generator, i: int) -> tuple[str, Image.Image]:
    w, h = (int(v) for v in rng.integers(32, 1024, 2))
    kind = ("black", "white", "grey", "colour")[i % 4]
    if kind == "colour":
        return kind, Image.new("RGB", (w, h), _colour(rng))
    level = {"black": 0, "white": 255}.get(kind, int(rng.integers(1, 255)))
    return kind, Image.new("L", (w, h), level)


def _gradient(rng: np.random.Generator, i: int) -> tuple[str, Image.Image]:
    w, h = (int(v) for v in rng.integers(64, 640, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / max(w - 1, 1), yy / max(h - 1, 1)
    if i % 2 == 0:
        kind = "linear"
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
    else:
        kind = "radial"
        cx, cy = rng.uniform(0, 1, 2)
        t = np.hypot(xx - cx, yy - cy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    if rng.random() < 0.5:  # grey
        a[:], b[:] = a[0], b[0]
    arr = a + (b - a) * t[..., None]
    return kind, Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


_DRAWERS = {"document": _document, "screenshot": _screenshot, "noise": _noise, "blank": _blank,
            "gradient": _gradient}
