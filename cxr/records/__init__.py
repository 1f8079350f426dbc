"""The artefact formats the pipeline hands from stage to stage, one owner each.

``metrics.json`` (:mod:`cxr.records.evaluation`), the train summary
(:mod:`cxr.records.train_summary`), the model card (:mod:`cxr.records.model_card`) and the
predictions CSV (:mod:`cxr.records.predictions`) are each defined once, as a typed record,
and written and read only through their module: no other code builds or parses their JSON.
So is the service's audit-trail line (:mod:`cxr.records.audit_line`), which the drift monitor reads.

Every JSON record carries ``"schema": "<name>/<version>"``. Reading checks it, so a file from
another format, a newer checkout or a corrupt run is refused with one line that says what to
rerun, and a file from before records were versioned (no ``schema``) is still read when it
has every field the current version needs: promoted models outlive the code that made them.
A format that gained a section reads its older versions too (``oldest``): the section is then
absent, and its reader says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from cxr import UserError
from cxr.io import write_json

log = logging.getLogger(__name__)
SCHEMA_KEY = "schema"


@dataclass(frozen=True)
class Format:
    """One record format: its name, the version this code writes, and what to do about a bad file."""

    name: str
    version: int
    what: str  # what the file is, for messages: "the evaluate stage's metrics.json"
    remedy: str  # how to make a good one: "rerun the evaluate stage (dvc repro evaluate)"
    oldest: int | None = None  # the oldest version still read (None: this version only)

    @property
    def tag(self) -> str:
        return f"{self.name}/{self.version}"

    def write(self, path: str | Path, body: dict) -> None:
        """``body`` stamped with this format's tag, written atomically."""
        write_json(path, {SCHEMA_KEY: self.tag, **body})

    def load(self, path: str | Path) -> dict:
        """The body of a file of this format (the schema tag removed), or one clear UserError."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} not found ({self.what}): {self.remedy}")
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path} is not valid JSON ({self.what}; {exc.msg if hasattr(exc, 'msg') else exc}): "
                            f"{self.remedy}") from None
        return self.parse(raw, str(path))

    def parse(self, raw, origin: str) -> dict:
        if not isinstance(raw, dict):
            raise UserError(f"{origin} is not a JSON object ({self.what}): {self.remedy}")
        body = dict(raw)
        tag = body.pop(SCHEMA_KEY, None)
        if tag is None:
            log.warning("%s has no schema tag (written before records were versioned): read as %s", origin, self.tag)
            return body
        name, _, version = str(tag).rpartition("/")
        if name != self.name or not version.isdigit():
            raise UserError(f"{origin} is a {tag!r} record, not {self.what} ({self.tag})")
        if int(version) > self.version:
            raise UserError(f"{origin} was written as {tag}, newer than this checkout reads ({self.tag}): "
                            "update the code, or " + self.remedy)
        if int(version) < (self.oldest or self.version):
            raise UserError(f"{origin} was written as {tag}, an older format that this checkout no longer "
                            f"reads ({self.tag}): {self.remedy}")
        return body


class Fields:
    """Typed reads from a record's body: a missing or mistyped field is one clear UserError
    naming the file, the field and the remedy."""

    def __init__(self, body: dict, origin: str, fmt: Format):
        self.body, self.origin, self.fmt = body, origin, fmt

    def _fail(self, key: str, expected: str, value) -> UserError:
        got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:80]
        return UserError(f"{self.origin}: {key!r} must be {expected}, got {got} ({self.fmt.what}): {self.fmt.remedy}")

    def number(self, key: str, optional: bool = False) -> float | None:
        value = self.body.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, "a number", value)
        return float(value)

    def integer(self, key: str) -> int:
        value = self.body.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer", value)
        return value

    def text(self, key: str, optional: bool = False) -> str | None:
        value = self.body.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def flag(self, key: str) -> bool:
        value = self.body.get(key)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def mapping(self, key: str, optional: bool = False) -> dict | None:
        value = self.body.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise self._fail(key, "an object", value)
        return value

    def sub(self, key: str) -> "Fields":
        return Fields(self.mapping(key), f"{self.origin} {key}", self.fmt)
