"""Core library of the chest X-ray pneumonia screening pipeline.

Stages (``stages/``), the Prefect flows (``pipelines/``) and the BentoML service
(``service.py``) are thin shells over this package, so that training, evaluation,
export and serving share one implementation of everything that matters, above all
the image preprocessing in :mod:`cxr.imaging.preprocess`.

Layers, bottom to top: the foundation at the top of this package (this module, ``cli``, ``io``,
``params``, ``layout``, ``metrics``), then :mod:`cxr.imaging`, :mod:`cxr.records`,
:mod:`cxr.data`, :mod:`cxr.shift`, :mod:`cxr.model`, :mod:`cxr.ops`, :mod:`cxr.serve`. A module
imports its own layer and those below, never one above, and no import cycle exists
(``tests/code/test_layering.py`` keeps it so).
"""

LABELS = ("NORMAL", "PNEUMONIA")
POSITIVE_LABEL = "PNEUMONIA"
SCREENING_NOTICE = (
    "Screening aid only, not a diagnosis: every result must be reviewed by a "
    "qualified clinician."
)
# The second question of the data set: among PNEUMONIA films, bacterial or viral. The subtype head
# gives P(bacterial | pneumonia); "positive" in its figures is bacterial (as Kermany et al. report it).
SUBTYPES = ("bacterial", "viral")
SUBTYPE_POSITIVE = "bacterial"
SUBTYPE_NOTICE = (
    "The subtype (bacterial or viral) is a screening aid too, not a diagnosis: it is given only with a "
    "PNEUMONIA answer, and it does not replace clinical and laboratory assessment."
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
