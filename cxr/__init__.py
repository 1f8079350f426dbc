"""Core library of the chest X-ray pneumonia screening pipeline.

Stages (``stages/``), the Prefect flows (``pipelines/``) and the BentoML service
(``service.py``) are thin shells over this package, so that training, evaluation,
export and serving share one implementation of everything that matters, above all
the image preprocessing in :mod:`cxr.imaging.preprocess`.
"""

LABELS = ("NORMAL", "PNEUMONIA")
POSITIVE_LABEL = "PNEUMONIA"
SCREENING_NOTICE = (
    "Screening aid only, not a diagnosis: every result must be reviewed by a "
    "qualified clinician."
)
HOW_TO_SERVE_REAL = (
    "To screen chest X-rays, train on real ones and serve that model: make real (or make run "
    "SOURCE=<data> WEIGHTS=<ImageNet .h5>; see the README), then make serve."
)
SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: this model was trained on generated images and is NOT a "
    "medical model. Do not use it on patients. " + HOW_TO_SERVE_REAL
)


class UserError(Exception):
    """A mistake in the user's input (data, params, request): reported without a traceback."""
