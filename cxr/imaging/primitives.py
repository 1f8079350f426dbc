"""What the image decoders share, below both: the reason an image is refused
(:class:`ImageError`), the decode limits, and the window from more than 8 bits to 8-bit gray.

Both :mod:`cxr.imaging.preprocess` and :mod:`cxr.imaging.dicom` import this module; the DICOM
decoder needs nothing else of the preprocessing, so THE preprocessing can open a DICOM through it
without an import cycle.
"""

from __future__ import annotations

import numpy as np

from cxr import UserError

MIN_SIDE = 32
MAX_PIXELS = 40_000_000  # 40 MP: larger than any real chest radiograph, far below a bomb
MAX_BYTES = 30 * 1024 * 1024
# Peak memory one decode may take (PIL's pixels plus the grayscale reduction), judged from the
# header before any pixel is decoded: a 15 MP 16-bit detector image fits, a 40 MP one does not.
MAX_DECODE_BYTES = 100 * 1024 * 1024
MAX_JPEG_SCANS = 100  # a progressive JPEG has ~10; thousands make the decoder crawl


class ImageError(UserError):
    """The bytes are not a usable X-ray image; the message says why, for an API answer.

    ``kind`` names the reason for callers that map it to a status code (serving):
    empty, too_large, unsupported, too_many_pixels, too_small, corrupt; for DICOM also
    not_a_radiograph, not_a_chest, multi_frame, no_pixels.
    """

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


def percentile_window(arr: np.ndarray) -> tuple[float, float]:
    """The intensity window of an image with more than 8 bits: its 0.5 and 99.5 percentiles
    (a few hot or dead detector pixels do not set the contrast)."""
    return tuple(np.percentile(arr, [0.5, 99.5])) if arr.size else (0.0, 1.0)


def window_to_8bit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` mapped linearly from ``[lo, hi]`` to 0..255 (clipped), as uint8."""
    return (np.clip((values - lo) / max(hi - lo, 1e-9), 0, 1) * 255.0).astype(np.uint8)


def sixteen_bit_to_8bit(arr: np.ndarray) -> np.ndarray:
    """uint16 pixels -> uint8 over their :func:`percentile_window`, shared by 16-bit PNGs and
    DICOMs shown without a window of their own, so that both give the same bytes.

    Through a 65,536-entry table: the same values as the float formula, in 1/10 of its memory
    (no float copy of the image)."""
    lo, hi = percentile_window(arr)
    return window_to_8bit(np.arange(65536, dtype=np.float64), lo, hi)[arr]
