"""The audit trail's line, ``cxr-audit/2``: one JSON object per answered or refused image.

Written by the service (:mod:`cxr.serve.audit`), read by the drift monitor (:mod:`cxr.ops.drift`): both
through this module. What a line may hold is fixed here: times, ids, the route, the model, the
input's sha256, size and format, the answer (with a PNEUMONIA answer's subtype and its
P(bacterial)) or the refusal reason, the latency. Never pixels, file names, URLs or patient data.
Version 1 lines (before the subtype) still parse: their subtype is None.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from cxr import UserError

SCHEMA = "cxr-audit/2"
READS = ("cxr-audit/1", SCHEMA)  # what parse() reads: the line before the subtype, and this one
INPUT_FIELDS = ("input_sha256", "bytes", "format")
FIELDS = ("schema", "time", "request_id", "route", "item", "model", *INPUT_FIELDS, "label", "probability",
          "threshold", "subtype", "subtype_probability", "refusal", "status", "latency_ms")


def build(*, route: str, request_id: str, model: str, described: dict, answer: dict | None = None,
          error=None, status: int | None = None, item: int | None = None, latency_ms: float = 0.0,
          time_text: str | None = None) -> dict:
    """One line: an ``answer`` (label, probability, decision_threshold), a refusal (``error``, with
    ``status`` and ``reason``), or, with neither, a server error (``status`` 500 unless given).
    ``described``: the input's ``input_sha256``, ``bytes`` and ``format`` (never the bytes)."""
    if answer is not None:
        status, refusal = 200, None
    elif error is not None:
        status, refusal = error.status, error.reason
    else:
        status, refusal = status or 500, None
    subtype = (answer or {}).get("subtype") or {}
    return {
        "schema": SCHEMA, "time": time_text or datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "request_id": request_id, "route": route, "item": item,
        "model": model, **{k: described.get(k) for k in INPUT_FIELDS},
        "label": answer["label"] if answer else None,
        "probability": answer["probability"] if answer else None,
        "threshold": answer["decision_threshold"] if answer else None,
        "subtype": subtype.get("label"), "subtype_probability": subtype.get("probability_bacterial"),
        "refusal": refusal, "status": status, "latency_ms": round(latency_ms, 1),
    }


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC (the trail writes UTC)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        raise UserError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-01T19:30:00+00:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def parse(line: str) -> tuple[dict | None, str | None]:
    """One trail line as the fields the monitor reads, or why it is skipped. A line from stdout may
    carry a logger's prefix before the object: the object is taken from its first brace."""
    text = line.strip()
    if not text:
        return None, "blank"
    start = text.find("{")
    if start < 0:
        return None, "not JSON"
    try:
        obj = json.loads(text[start:])
    except ValueError:
        return None, "not JSON"
    if obj.get("schema") not in READS:
        return None, "other schema"
    when = obj.get("time")
    if when is not None:
        if not isinstance(when, str):
            return None, "bad time"
        try:
            when = parse_time(when)
        except UserError:
            return None, "bad time"
    prob = obj.get("probability")
    if prob is not None and not is_probability(prob):
        return None, "bad probability"
    threshold = obj.get("threshold")
    status = obj.get("status")
    refusal = obj.get("refusal")
    if refusal is not None and not isinstance(refusal, str):
        return None, "bad refusal"
    subtype = obj.get("subtype")
    if subtype is not None and not isinstance(subtype, str):
        return None, "bad subtype"
    if prob is not None and refusal is None:
        kind = "answer"
    elif refusal is not None or (isinstance(status, int) and 400 <= status < 500):
        kind = "refusal"
    else:
        kind = "error"  # neither answered nor refused (a server error): not the images' doing
    return {"time": when, "kind": kind, "probability": None if prob is None else float(prob),
            "label": obj.get("label"), "refusal": refusal or ("unknown" if kind == "refusal" else None),
            "threshold": float(threshold) if is_probability(threshold) else None,
            "model": obj.get("model"), "route": obj.get("route"), "subtype": subtype}, None


def is_probability(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
