"""What the validate stage checks against: ``params.yaml`` ``validate`` and the columns of its facts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cxr import UserError
from cxr.params import require


PILLOW_DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default for Image.MAX_IMAGE_PIXELS
OFFENDING_KEPT = 20  # offending files kept per expectation in result.json / the summary
OFFENDING_SHOWN = 10  # ... and named in the error message
DOCS_SITE = "cxr_validation"

FILE_FACT_COLUMNS = [
    "path", "exists", "bytes", "sha256", "decodes", "error", "width", "height", "mode", "format",
]
FACT_COLUMNS = [
    "path", "label", "split", "patient_id", "subtype",
    "exists", "bytes", "bytes_manifest", "sha256", "sha256_manifest",
    "decodes", "error", "width", "height", "mode", "format",
    "label_conflict", "is_duplicate", "duplicate_of", "patient_id_fallback",
]


@dataclass(frozen=True)
class ValidateConfig:
    min_side: int
    max_side: int
    min_bytes: int
    max_bytes: int
    allowed_modes: tuple[str, ...]
    min_per_class: int
    ratio_bounds: tuple[float, float]
    max_pixels: int
    workers: int

    @classmethod
    def from_params(cls, cfg: dict) -> "ValidateConfig":
        where = "validate"
        ints = {k: require(cfg, k, int, where) for k in
                ("min_side", "max_side", "min_bytes", "max_bytes", "min_per_class")}
        for key, value in ints.items():
            if value < 0:
                raise UserError(f"params.yaml: '{where}.{key}' must be >= 0, got {value}")
        if ints["min_side"] > ints["max_side"]:
            raise UserError("params.yaml: 'validate.min_side' must be <= 'validate.max_side'")
        if ints["min_bytes"] > ints["max_bytes"]:
            raise UserError("params.yaml: 'validate.min_bytes' must be <= 'validate.max_bytes'")
        modes = require(cfg, "allowed_modes", list, where)
        if not modes or not all(isinstance(m, str) for m in modes):
            raise UserError("params.yaml: 'validate.allowed_modes' must be a non-empty list of "
                            "Pillow modes (e.g. [L, RGB])")
        bounds = require(cfg, "ratio_bounds", list, where)
        if (len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                        for b in bounds) or not 0 <= bounds[0] <= bounds[1]):
            raise UserError("params.yaml: 'validate.ratio_bounds' must be [low, high] with "
                            f"0 <= low <= high, got {bounds!r}")
        max_pixels = cfg.get("max_pixels")
        if max_pixels is None:
            max_pixels = min(ints["max_side"] ** 2, PILLOW_DEFAULT_MAX_PIXELS)
        elif isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise UserError(f"params.yaml: 'validate.max_pixels' must be a positive int, "
                            f"got {max_pixels!r}")
        workers = cfg.get("workers")
        if workers is None:
            workers = default_workers()
        elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UserError(f"params.yaml: 'validate.workers' must be a positive int, got {workers!r}")
        return cls(allowed_modes=tuple(modes), ratio_bounds=(float(bounds[0]), float(bounds[1])),
                   max_pixels=max_pixels, workers=workers, **ints)


def default_workers() -> int:
    """Threads for decoding: Pillow and hashlib release the GIL, so ~2x cores helps I/O."""
    return max(1, min(16, 2 * (os.cpu_count() or 1)))
