"""Data validation: per-image facts checked by a Great Expectations (1.x) suite.

Two steps, so that the expensive one can fan out:

* :func:`facts_for` reads, hashes and fully decodes a list of files (one shard or all
  of them) and returns one row per file. It needs no manifest and no GX, so the Prefect
  flow can run it per shard on Dask workers and concatenate the frames.
* :func:`validate_dataset` joins those file facts with the manifest, derives the
  cross-file facts (duplicates, labels in conflict, patient ids), runs the expectation
  suites, writes the reports and returns a small summary. A failed *critical*
  expectation raises :class:`ValidationFailed` (a :class:`cxr.UserError`), after the
  reports are written, so that ``python -m stages.validate`` exits 2 and DVC stops.

Outputs under ``out_dir`` (``reports/validation/``): ``facts.csv`` (one row per image),
``result.json`` (our per-expectation summary and GX's raw validation results),
``data_docs/index.html`` (GX Data Docs). The stage also writes the small, git-tracked
``reports/validation_summary.json``.

One module per job: :mod:`.config` (params and columns), :mod:`.facts` (per-file and joined
facts), :mod:`.checks` (the expectation catalogue), :mod:`.gx` (running it with GX),
:mod:`.run` (the stage's work and its reports).
"""

from cxr.data.validation.config import FACT_COLUMNS, FILE_FACT_COLUMNS, ValidateConfig
from cxr.data.validation.facts import build_facts, dataset_table, facts_for
from cxr.data.validation.run import ValidationFailed, failure_message, summarise, validate_dataset

__all__ = ["FACT_COLUMNS", "FILE_FACT_COLUMNS", "ValidateConfig", "ValidationFailed", "build_facts", "dataset_table",
           "facts_for", "failure_message", "summarise", "validate_dataset"]
