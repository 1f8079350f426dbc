"""Stage ``validate``: check ``data/raw`` with a Great Expectations suite before splitting.

Reads ``data/raw/manifest.csv`` and the images, decodes every file fully and checks
hashes, labels, sizes, modes, duplicates and class balance against ``params.yaml``'s
``validate`` section. Writes ``reports/validation/`` (``result.json``, ``facts.csv``,
``data_docs/index.html``) and ``reports/validation_summary.json``. A failed critical
expectation exits 2 with the failing expectations and files named, so DVC stops.
"""

from __future__ import annotations

from pathlib import Path

from cxr import cli, params
from cxr.validation import validate_dataset

RAW_DIR = Path("data/raw")
OUT_DIR = Path("reports/validation")
SUMMARY = Path("reports/validation_summary.json")


def main() -> None:
    validate_dataset(RAW_DIR, params.section("validate"), OUT_DIR, summary_path=SUMMARY)


if __name__ == "__main__":
    cli.run(main, "validate")
