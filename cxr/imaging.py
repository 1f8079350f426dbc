"""THE image preprocessing: bytes -> model input.

Training (via the split stage's cache), evaluation, export checks, the BentoML service
and the Lambda handler all call :func:`preprocess_bytes`; nothing else decodes images
for the model. That is how train/serve skew is ruled out by construction.

Why these steps:
- grayscale: radiographs are single-channel; RGB/CMYK/RGBA/16-bit inputs from other
  acquisition chains are reduced to one channel the same way;
- JPEG draft decoding straight to >= the target size: full-size X-rays (1-2.5k px) decode
  several times faster, with no quality cost after the final resize;
- squash to a square, as the published 224-px copy of the data set was made;
- per-image histogram equalisation: the official test split was acquired differently from
  train; equalisation removes most global brightness/contrast differences between chains.

The model receives float32 ``[N, S, S, 1]`` in 0..255 and rescales internally, so the
exported models (Keras, SavedModel, TFLite) take exactly what this module returns.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from cxr import UserError

INTENSITY_MODES = ("equalize", "autocontrast", "none")
MIN_SIDE = 32
MAX_PIXELS = 40_000_000  # 40 MP: larger than any real chest radiograph, far below a bomb
MAX_BYTES = 30 * 1024 * 1024


class ImageError(UserError):
    """The bytes are not a usable X-ray image; the message says why, for an API answer.

    ``kind`` names the reason for callers that map it to a status code (serving):
    empty, too_large, unsupported, too_many_pixels, too_small, corrupt.
    """

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImagingConfig:
    image_size: int = 224
    intensity: str = "equalize"

    @classmethod
    def from_params(cls, cfg: dict) -> "ImagingConfig":
        size = cfg.get("image_size", 224)
        intensity = cfg.get("intensity", "equalize")
        if not isinstance(size, int) or not 32 <= size <= 1024:
            raise UserError(f"params.yaml: 'imaging.image_size' must be an int in [32, 1024], got {size!r}")
        if intensity not in INTENSITY_MODES:
            raise UserError(f"params.yaml: 'imaging.intensity' must be one of {INTENSITY_MODES}, got {intensity!r}")
        return cls(image_size=size, intensity=intensity)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "intensity": self.intensity}


def open_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Open and check an image without decoding its pixels yet (bombs are refused from the header)."""
    if not data:
        raise ImageError("empty upload: no image bytes received", "empty")
    if len(data) > max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (limit {max_bytes})", "too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image refused: too many pixels ({exc})", "too_many_pixels") from None
    except Image.DecompressionBombWarning:
        raise ImageError("image refused: too many pixels (decompression bomb guard)", "too_many_pixels") from None
    except Exception:  # PIL raises several types for unknown formats
        raise ImageError("not a supported image: expected JPEG or PNG bytes", "unsupported") from None
    if img.format not in ("JPEG", "PNG", "MPO"):
        raise ImageError(f"unsupported image format {img.format}: expected JPEG or PNG", "unsupported")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"image refused: {width}x{height} pixels exceeds the {max_pixels} pixel limit", "too_many_pixels")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height} (minimum {MIN_SIDE}x{MIN_SIDE})", "too_small")
    return img


def _to_grayscale(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(arr, [0.5, 99.5]) if arr.size else (0.0, 1.0)
        scaled = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1) * 255.0
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if img.mode == "L":
        return img
    return img.convert("L")  # RGB, CMYK, YCbCr, P, 1


def preprocess_image(img: Image.Image, cfg: ImagingConfig) -> np.ndarray:
    """Decoded PIL image -> uint8 ``[S, S]`` (the cached and served representation)."""
    size = cfg.image_size
    try:
        if img.format == "JPEG":
            img.draft("L", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when large
        img = ImageOps.exif_transpose(img)
        img.load()
        gray = _to_grayscale(img)
        if gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}", "corrupt") from None
    if cfg.intensity == "equalize":
        gray = ImageOps.equalize(gray)
    elif cfg.intensity == "autocontrast":
        gray = ImageOps.autocontrast(gray, cutoff=1)
    return np.asarray(gray, dtype=np.uint8)


def preprocess_bytes(data: bytes, cfg: ImagingConfig) -> np.ndarray:
    """Image file bytes -> uint8 ``[S, S]``. Raises :class:`ImageError` with a specific reason."""
    return preprocess_image(open_image(data), cfg)


def to_model_input(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """uint8 ``[S, S]`` arrays -> float32 ``[N, S, S, 1]`` in 0..255, what every exported model takes."""
    batch = np.asarray(images if isinstance(images, np.ndarray) else np.stack(images))
    if batch.ndim == 2:
        batch = batch[None]
    return batch.astype(np.float32)[..., None]
