"""Stage ``validate``: check ``data/raw`` with a Great Expectations suite before splitting.

Reads ``data/raw/manifest.csv`` and the images, decodes every file fully and checks
hashes, labels, sizes, modes, duplicates and class balance against ``params.yaml``'s
``validate`` section. Writes ``reports/validation/`` (``result.json``, ``facts.csv``,
``data_docs/index.html``) and ``reports/validation_summary.json``. A failed critical
expectation exits 2 with the failing expectations and files named, so DVC stops.
"""

from __future__ import annotations

from cxr import cli, params
from cxr.data.validation import validate_dataset


def main(argv: list[str] | None = None) -> None:
    p = cli.paths(argv, "validate", raw="the downloaded data set (data/raw)",
                  reports="the reports folder to write", summary="the summary JSON to write")
    validate_dataset(p.raw, params.section("validate"), p.reports, summary_path=p.summary)


if __name__ == "__main__":
    cli.run(main, "validate")
