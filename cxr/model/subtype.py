"""The data set's second question: among PNEUMONIA films, bacterial or viral (Kermany et al. 2018).

One logit on the screening model's pooled embedding (the input of its own logit), so the
screening model, its file and every screening figure stay what they were: the head is fitted
after the screening model is trained, calibrated and saved, and kept in its own file
(``subtype.npz``). ``P(bacterial | pneumonia) = sigmoid(embedding . kernel + bias)``, calibrated by
Platt scaling on the validation PNEUMONIA films. Because the embedding is the global average of
``out_relu``, the same kernel applied at every position of that map is the head's class
activation map (its Grad-CAM), as for the screening logit (:mod:`cxr.model.export`).

Fitted by :mod:`cxr.model.subtype_fit`. Scoring, saving and loading here are numpy only, like
:mod:`cxr.model.ood`: evaluate and export read the head without the training code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr import SUBTYPE_POSITIVE, UserError, params
from cxr.io import read_npz_with_header, write_npz_with_header

FORMAT = "cxr-subtype-head"
FILE_NAME = "subtype.npz"  # in an export folder, beside the model whose embedding it reads
FORMAT_VERSION = 1
SCALE_FLOOR = 1e-3  # of the mean spread: a dimension constant on the training films cannot dominate


@dataclass(frozen=True)
class SubtypeConfig:
    """``params.yaml`` ``subtype``, the keys the train stage reads (the head's fit); ``threshold_rule``
    is the evaluate stage's (:func:`cxr.metrics.subtype_threshold`)."""

    fit: bool = True
    step_scale: float = 1.0  # of the safe gradient step 1 / L (cxr.model.subtype_fit)
    l2: float = 0.01
    max_steps: int = 1000
    patience: int = 100
    min_films: int = 3  # of each subtype, in training and in validation, to fit at all

    READ_ELSEWHERE = ("threshold_rule",)

    @classmethod
    def from_params(cls, cfg: dict) -> "SubtypeConfig":
        if not isinstance(cfg, dict):
            raise UserError(f"params.yaml: 'subtype' must be a mapping, got {cfg!r}")
        unknown = set(cfg) - set(cls.__dataclass_fields__) - set(cls.READ_ELSEWHERE)
        if unknown:
            raise UserError(f"params.yaml: unknown 'subtype' keys {sorted(unknown)}")
        out = cls(fit=params.require(cfg, "fit", bool, "subtype"),
                  step_scale=params.in_range(params.require(cfg, "step_scale", float, "subtype"), 1e-3, 1.9,
                                             "subtype.step_scale"),
                  l2=params.in_range(params.require(cfg, "l2", float, "subtype"), 0.0, 100.0, "subtype.l2"),
                  max_steps=params.require(cfg, "max_steps", int, "subtype"),
                  patience=params.require(cfg, "patience", int, "subtype"),
                  min_films=params.require(cfg, "min_films", int, "subtype"))
        if out.max_steps < 1 or out.patience < 1 or out.min_films < 1:
            raise UserError("params.yaml: 'subtype.max_steps', 'patience' and 'min_films' must be >= 1")
        return out

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, eq=False)
class SubtypeHead:
    """A fitted head (``kernel`` [D], ``bias``), or none (``kernel`` None; ``info["reason"]`` says why:
    the data named too few films of a subtype, or ``subtype.fit`` is off). The arrays hold float32
    values (what the file stores), so a loaded head scores exactly as the fitted one did."""

    kernel: np.ndarray | None
    bias: float = 0.0
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kernel is not None:
            kernel = np.asarray(self.kernel, np.float32).astype(np.float64)
            if kernel.ndim != 1 or not len(kernel):
                raise ValueError(f"SubtypeHead.kernel must have shape [D], got {kernel.shape}")
            object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "bias", float(np.float32(self.bias)))

    @classmethod
    def none(cls, reason: str, **info) -> "SubtypeHead":
        return cls(kernel=None, info={"reason": reason, **info})

    @property
    def fitted(self) -> bool:
        return self.kernel is not None

    @property
    def reason(self) -> str | None:
        return None if self.fitted else str(self.info.get("reason"))

    @property
    def embedding_dim(self) -> int | None:
        return None if self.kernel is None else len(self.kernel)

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        if self.kernel is None:
            raise UserError(f"no subtype head was fitted ({self.reason})")
        emb = np.asarray(embedding, np.float64)
        if emb.ndim != 2 or emb.shape[1] != len(self.kernel):
            raise UserError(f"the subtype head reads {len(self.kernel)}-dimensional embeddings, got shape "
                            f"{emb.shape}: refit it with this model")
        return emb @ self.kernel + self.bias

    def probabilities(self, embedding: np.ndarray) -> np.ndarray:
        """P(bacterial | pneumonia) per row of ``embedding`` ``[N, D]``."""
        return 1.0 / (1.0 + np.exp(-self.logits(embedding)))

    def to_dict(self) -> dict:
        """The JSON header of the file: everything but the kernel (also for the model card)."""
        return {**self.info, "format": FORMAT, "version": FORMAT_VERSION, "fitted": self.fitted,
                "positive": SUBTYPE_POSITIVE, "output": "P(bacterial | pneumonia)",
                "embedding_dim": self.embedding_dim, "bias": self.bias if self.fitted else None}

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.npz`` (the float32 kernel and the JSON header), written atomically."""
        kernel = np.zeros(0, np.float32) if self.kernel is None else self.kernel.astype(np.float32)
        return write_npz_with_header(path, self.to_dict(), {"kernel": kernel})


HEADER_KEYS = ("format", "version", "fitted", "positive", "output", "embedding_dim", "bias")


def load(path: str | os.PathLike) -> SubtypeHead:
    """A head saved by :meth:`SubtypeHead.save`; :class:`UserError` when missing, corrupt or of
    another format version."""
    header, arrays = read_npz_with_header(path, ("kernel",), "subtype head", FORMAT)
    kernel = arrays["kernel"]
    if header.get("version") != FORMAT_VERSION:
        raise UserError(f"subtype head {path} has format version {header.get('version')!r}; this code reads "
                        f"version {FORMAT_VERSION}: refit it (dvc repro train)")
    if header.get("positive") != SUBTYPE_POSITIVE:
        raise UserError(f"subtype head {path} gives P({header.get('positive')}), this code reads "
                        f"P({SUBTYPE_POSITIVE}): refit it")
    info = {k: v for k, v in header.items() if k not in HEADER_KEYS}
    if not header.get("fitted"):
        return SubtypeHead(kernel=None, info=info)
    try:
        return SubtypeHead(kernel=kernel, bias=header["bias"], info=info)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"subtype head {path} is corrupt ({exc}): refit it") from None
