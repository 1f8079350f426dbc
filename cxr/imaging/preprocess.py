"""THE image preprocessing: bytes -> model input.

Training (via the split stage's cache), evaluation, export checks, the BentoML service
and the Lambda handler all call :func:`preprocess_bytes`; nothing else decodes images
for the model. That is how train/serve skew is ruled out by construction.

Why these steps:
- grayscale: radiographs are single-channel; RGB/CMYK/RGBA/16-bit inputs from other
  acquisition chains are reduced to one channel the same way; DICOM (:mod:`cxr.imaging.dicom`) is
  brought to 8-bit gray as a viewer would show it, then takes the same steps as a PNG;
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
from cxr.imaging.primitives import (MAX_BYTES, MAX_DECODE_BYTES, MAX_JPEG_SCANS, MAX_PIXELS, MIN_SIDE, ImageError,
                                    percentile_window, sixteen_bit_to_8bit, window_to_8bit)

INTENSITY_MODES = ("equalize", "autocontrast", "none")

# Peak bytes per pixel of decoding to 8-bit gray, by PIL mode: PIL's storage (multi-band modes
# take 4 bytes a pixel) plus what _to_grayscale allocates (16-bit: a copy for the percentiles and
# the 8-bit result; 32-bit int/float: float64 arrays; alpha: two RGBA images and the result).
_DECODE_BYTES_PER_PIXEL = {"1": 2, "L": 2, "P": 2, "I;16": 5, "I;16B": 5, "I;16L": 5, "I;16N": 5,
                           "I": 28, "F": 28, "RGB": 5, "YCbCr": 5, "LAB": 5, "HSV": 5, "CMYK": 5,
                           "RGBX": 5}
_ALPHA_BYTES_PER_PIXEL = 13


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


DICOM_MAGIC_OFFSET = 128  # a DICOM file: a 128-byte preamble, then b"DICM"


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def open_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES):
    """Open and check an image without decoding its pixels yet (bombs are refused from the header).

    A PIL image, or for DICOM a header-checked :class:`cxr.imaging.dicom.DicomImage` that
    :func:`preprocess_image` decodes within the same budget."""
    if not data:
        raise ImageError("empty upload: no image bytes received", "empty")
    if len(data) > max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (limit {max_bytes})", "too_large")
    if is_dicom(data):
        from cxr.imaging.dicom import open_dicom  # pydicom is imported only for DICOM uploads

        return open_dicom(data, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image refused: too many pixels ({exc})", "too_many_pixels") from None
    except Image.DecompressionBombWarning:
        raise ImageError("image refused: too many pixels (decompression bomb guard)", "too_many_pixels") from None
    except Exception:  # PIL raises several types for unknown formats
        raise ImageError("not a supported image: expected JPEG, PNG or DICOM bytes", "unsupported") from None
    if img.format not in ("JPEG", "PNG", "MPO"):
        raise ImageError(f"unsupported image format {img.format}: expected JPEG, PNG or DICOM", "unsupported")
    # Start-of-scan markers: entropy-coded data stuffs every 0xFF, so each b"\xff\xda" is a scan.
    if img.format in ("JPEG", "MPO") and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise ImageError(f"image refused: a JPEG of {scans} scans (limit {MAX_JPEG_SCANS})", "too_many_pixels")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"image refused: {width}x{height} pixels exceeds the {max_pixels} pixel limit", "too_many_pixels")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height} (minimum {MIN_SIDE}x{MIN_SIDE})", "too_small")
    return img


def decode_cost(img) -> int:
    """Peak bytes that decoding ``img`` to 8-bit gray will take, from its header (and any JPEG
    draft scale already set): what the decode budget is checked against."""
    if not isinstance(img, Image.Image):  # a DICOM: its decoders and bit depths have their own costs
        return img.decode_cost
    width, height = img.size
    alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)
    per_pixel = _ALPHA_BYTES_PER_PIXEL if alpha else _DECODE_BYTES_PER_PIXEL.get(img.mode, _ALPHA_BYTES_PER_PIXEL)
    return width * height * per_pixel


def check_decode_budget(img) -> int:
    """:func:`decode_cost` of ``img``, or an :class:`ImageError` when it is over ``MAX_DECODE_BYTES``."""
    cost = decode_cost(img)
    if cost > MAX_DECODE_BYTES:
        raise ImageError(f"image refused: decoding {img.size[0]}x{img.size[1]} {img.mode} pixels would take "
                         f"{cost / 2**20:.0f} MiB (limit {MAX_DECODE_BYTES / 2**20:.0f} MiB)", "too_many_pixels")
    return cost


def _to_grayscale(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray(sixteen_bit_to_8bit(np.asarray(img)), mode="L")
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(window_to_8bit(arr, *percentile_window(arr)), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if img.mode == "L":
        return img
    return img.convert("L")  # RGB, CMYK, YCbCr, P, 1


def preprocess_image(img, cfg: ImagingConfig, reserve=None) -> np.ndarray:
    """Opened image (:func:`open_image`) -> uint8 ``[S, S]`` (the cached and served representation).

    The pixels are decoded only if :func:`decode_cost` fits ``MAX_DECODE_BYTES``; ``reserve``
    (optional: bytes -> context manager) lets a server hold that much of a shared memory budget
    while decoding."""
    size = cfg.image_size
    if img.format in ("JPEG", "MPO"):
        img.draft("L", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when large
    cost = check_decode_budget(img)
    if reserve is None:
        return _decode(img, cfg)
    with reserve(cost):
        return _decode(img, cfg)


def _decode(img, cfg: ImagingConfig) -> np.ndarray:
    size = cfg.image_size
    try:
        if not isinstance(img, Image.Image):
            img = img.decode()  # a DICOM's pixels, as 8-bit gray: from here on, as a PNG's
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


def preprocess_bytes(data: bytes, cfg: ImagingConfig, reserve=None) -> np.ndarray:
    """Image file bytes -> uint8 ``[S, S]``. Raises :class:`ImageError` with a specific reason."""
    return preprocess_image(open_image(data), cfg, reserve)


def to_model_input(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """uint8 ``[S, S]`` arrays -> float32 ``[N, S, S, 1]`` in 0..255, what every exported model takes."""
    batch = np.asarray(images if isinstance(images, np.ndarray) else np.stack(images))
    if batch.ndim == 2:
        batch = batch[None]
    return batch.astype(np.float32)[..., None]
