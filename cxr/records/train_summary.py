"""``reports/train/summary.json``: what the train stage decided and measured.

It is the record of the imaging config the model was trained with (evaluate and export read
it from here, never from params.yaml again) and of the architecture, the initial weights and
the calibration, which the model card repeats to whoever serves the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxr import UserError
from cxr.imaging.preprocess import ImagingConfig
from cxr.records import Fields, Format

FORMAT = Format("cxr-train-summary", 1, "the train stage's summary", "rerun the train stage (dvc repro train)")
_TYPED = ("imaging", "architecture", "weights", "calibration", "wall_time_s", "selected_on", "reacquire",
          "acquisition", "shortcut_audit_views")


@dataclass(frozen=True)
class TrainSummary:
    imaging: ImagingConfig
    architecture: dict  # cxr.model.network.Architecture.to_dict() and its "description"
    weights: str | None  # cxr.model.network.weights_fingerprint: None (from scratch), or the file's sha256
    calibration: dict
    wall_time_s: float
    selected_on: str
    reacquire: dict | None = None
    acquisition: dict | None = None
    shortcut_audit_views: dict | None = None
    training: dict = field(default_factory=dict)  # cxr.model.training.train's facts: mode, counts, timings

    def __post_init__(self):
        for key in ("backbone", "description"):
            if key not in self.architecture:
                raise UserError(f"the train summary's architecture lacks {key!r}: {FORMAT.remedy}")

    @property
    def backbone(self) -> str:
        return str(self.architecture["backbone"])

    def to_dict(self) -> dict:
        return {**self.training, "reacquire": self.reacquire, "acquisition": self.acquisition,
                "selected_on": self.selected_on, "shortcut_audit_views": self.shortcut_audit_views,
                "wall_time_s": self.wall_time_s, "weights": self.weights, "architecture": self.architecture,
                "imaging": self.imaging.to_dict(), "calibration": self.calibration}

    def write(self, path: str | Path) -> None:
        FORMAT.write(path, self.to_dict())

    @classmethod
    def from_dict(cls, body: dict, origin: str = "summary.json") -> "TrainSummary":
        f = Fields(body, origin, FORMAT)
        try:
            imaging = ImagingConfig.from_params(f.mapping("imaging"))
        except UserError as exc:
            if "'imaging'" in str(exc):
                raise
            raise UserError(f"{origin}: its imaging record is invalid ({exc}): {FORMAT.remedy}") from None
        return cls(imaging=imaging, architecture=f.mapping("architecture"), weights=f.text("weights", optional=True),
                   calibration=f.mapping("calibration"), wall_time_s=f.number("wall_time_s"),
                   selected_on=f.text("selected_on", optional=True) or "val",
                   reacquire=f.mapping("reacquire", optional=True), acquisition=f.mapping("acquisition", optional=True),
                   shortcut_audit_views=f.mapping("shortcut_audit_views", optional=True),
                   training={k: v for k, v in body.items() if k not in _TYPED})

    @classmethod
    def read(cls, path: str | Path) -> "TrainSummary":
        return cls.from_dict(FORMAT.load(path), str(path))
