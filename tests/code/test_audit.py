"""The audit trail (cxr/serve/audit.py): $CXR_AUDIT parsing, the cxr-audit/1 lines for answers and
refusals (read back by the drift monitor), request ids, metrics, and rotation shared by processes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import re

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cxr import UserError
from cxr.serve.audit import (SCHEMA, Audit, AuditConfig, LockedRotatingFileHandler, StdoutHandler, line, request_id_for,
                       url_refusal)
from cxr.ops.drift import read_trail, trail_files
from cxr.serve.decoding import RequestError
from tests.serving_fixtures import jpeg_bytes, png_bytes

TAG = "cxr-pneumonia:abc123"
ANSWER = {"label": "PNEUMONIA", "probability": 0.931234, "decision_threshold": 0.3931, "model_tag": TAG,
          "notice": "..."}


# ----------------------------------------------------------------- configuration


def test_config_destinations(tmp_path):
    assert AuditConfig.from_env({}).destination == "stdout"
    assert AuditConfig.from_env({"CXR_AUDIT": "stdout"}).destination == "stdout"
    assert AuditConfig.from_env({"CXR_AUDIT": " off "}).destination == "off"
    cfg = AuditConfig.from_env({"CXR_AUDIT": f"file:{tmp_path}/audit.jsonl", "CXR_AUDIT_MAX_BYTES": "5000",
                                "CXR_AUDIT_BACKUPS": "3"})
    assert (cfg.destination, cfg.path, cfg.max_bytes, cfg.backups) == ("file", tmp_path / "audit.jsonl", 5000, 3)
    assert AuditConfig.from_env({"CXR_AUDIT": f"file:{tmp_path}/a.jsonl", "CXR_AUDIT_MAX_BYTES": "0",
                                 "CXR_AUDIT_BACKUPS": "0"}).max_bytes == 0  # never rotated


@pytest.mark.parametrize("env, message", [
    ({"CXR_AUDIT": "syslog"}, "must be 'stdout', 'off' or 'file:/path/audit.jsonl', got 'syslog'"),
    ({"CXR_AUDIT": "file:"}, "must be 'stdout', 'off'"),
    ({"CXR_AUDIT": "FILE"}, "got 'FILE'"),
    ({"CXR_AUDIT": "file:{tmp}/audit.jsonl", "CXR_AUDIT_MAX_BYTES": "10MB"}, "CXR_AUDIT_MAX_BYTES must be a whole"),
    ({"CXR_AUDIT": "file:{tmp}/audit.jsonl", "CXR_AUDIT_BACKUPS": "-1"}, "CXR_AUDIT_BACKUPS must be a whole"),
    ({"CXR_AUDIT": "file:{tmp}/audit.jsonl", "CXR_AUDIT_BACKUPS": "0"}, "rotation needs at least one backup"),
    ({"CXR_AUDIT": "file:{tmp}/missing/audit.jsonl"}, "does not exist"),
    ({"CXR_AUDIT": "file:{tmp}"}, "is a folder"),
])
def test_config_errors_are_one_clear_line(tmp_path, env, message):
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    with pytest.raises(UserError) as err:
        AuditConfig.from_env(env)
    assert message in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------- lines


def test_answer_line_has_the_schema_and_no_image_bytes():
    data = png_bytes(np.full((40, 40), 7, "uint8"))
    rec = line(route="/predict", request_id="abc-1", model=TAG, data=data, answer=ANSWER, latency_ms=12.345)
    assert list(rec) == ["schema", "time", "request_id", "route", "item", "model", "input_sha256", "bytes", "format",
                         "label", "probability", "threshold", "subtype", "subtype_probability", "refusal", "status",
                         "latency_ms"]
    assert rec["schema"] == SCHEMA and rec["request_id"] == "abc-1" and rec["item"] is None
    assert rec["input_sha256"] == hashlib.sha256(data).hexdigest() and rec["bytes"] == len(data)
    assert rec["format"] == "png" and rec["status"] == 200 and rec["refusal"] is None
    assert (rec["label"], rec["probability"], rec["threshold"], rec["latency_ms"]) == ("PNEUMONIA", 0.931234,
                                                                                      0.3931, 12.3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", rec["time"])
    assert "notice" not in json.dumps(rec) and "model_tag" not in rec
    assert (rec["subtype"], rec["subtype_probability"]) == (None, None)  # an answer without a subtype


def test_a_pneumonia_answers_subtype_is_on_its_line_and_counted_by_subtype():
    import prometheus_client

    from cxr.records.audit_line import parse
    from cxr.serve.audit import Metrics

    sub = {"label": "viral", "probability": 0.8, "probability_bacterial": 0.2, "threshold": 0.55, "notice": "..."}
    rec = line(route="/predict", request_id="s", model=TAG, data=b"x" * 10, answer={**ANSWER, "subtype": sub})
    assert rec["schema"] == "cxr-audit/2" and (rec["subtype"], rec["subtype_probability"]) == ("viral", 0.2)
    assert "notice" not in json.dumps(rec)
    parsed, why = parse(json.dumps(rec))
    assert why is None and parsed["subtype"] == "viral"
    old = {k: v for k, v in rec.items() if not k.startswith("subtype")} | {"schema": "cxr-audit/1"}
    assert parse(json.dumps(old)) == ({**parsed, "subtype": None}, None)  # a line from before still reads
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    metrics.count(rec)
    metrics.count(line(route="/predict", request_id="t", model=TAG, answer=ANSWER))  # a model without a subtype
    metrics.count(line(route="/predict", request_id="u", model=TAG, answer={**ANSWER, "label": "NORMAL"}))
    value = lambda kind: registry.get_sample_value("cxr_subtypes_total", {"route": "/predict", "subtype": kind})  # noqa: E731
    assert (value("viral"), value("none"), value("bacterial")) == (1.0, 1.0, None)


def test_refusal_line():
    rec = line(route="/predict_batch", request_id="r", model=TAG, data=b"GIF89a....", item=2,
               error=RequestError("image 2 is not a JPEG or PNG file", 415))
    assert (rec["label"], rec["probability"], rec["threshold"]) == (None, None, None)
    assert (rec["refusal"], rec["status"], rec["item"], rec["format"], rec["bytes"]) == ("unsupported", 415, 2,
                                                                                        None, 10)
    server_error = line(route="/predict", request_id="r", model=TAG)
    assert (server_error["status"], server_error["refusal"], server_error["bytes"]) == (500, None, None)


def test_reason_codes():
    assert RequestError("x", 400).reason == "bad_request"
    assert RequestError("x", 503).reason == "busy"
    assert RequestError("x", 422, "not_a_chest_xray").reason == "not_a_chest_xray"
    assert RequestError("x", 500).reason == "server_error"
    assert url_refusal(RequestError("host not allowed", 403)).reason == "url_refused"
    assert url_refusal(RequestError("HTTP 404", 422)).reason == "url_refused"
    assert url_refusal(RequestError("too big", 413)).reason == "too_large"


def test_decode_refusals_carry_the_image_error_kind():
    from cxr.imaging.preprocess import ImagingConfig
    from cxr.serve.decoding import decode

    cfg = ImagingConfig(64, "equalize")
    truncated = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))[:2000]
    for data, reason in [(b"", "empty"), (b"hello world" * 10, "unsupported"), (truncated, "corrupt"),
                         (png_bytes(np.zeros((8, 8), "uint8")), "too_small")]:
        with pytest.raises(RequestError) as err:
            decode(data, cfg)
        assert err.value.reason == reason, (reason, str(err.value))


@pytest.mark.parametrize("incoming, kept", [
    ("abc-123", True), ("a" * 128, True), ("trace:1.2_3-x", True), (b"req-9", True),
    ("a" * 129, False), ("", False), (None, False), ("id with space", False), ("x\r\nSet-Cookie: y", False),
    ("<script>", False), ("é", False), ("../../etc/passwd", False),
])
def test_request_id_is_honoured_only_when_sane(incoming, kept):
    rid = request_id_for(incoming)
    if kept:
        assert rid == (incoming.decode() if isinstance(incoming, bytes) else incoming)
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)


# ----------------------------------------------------------------- records, metrics, the drift reader


def sample(registry, name, **labels):
    value = registry.get_sample_value(name, labels)
    return 0 if value is None else value


def test_records_write_lines_the_drift_monitor_reads_and_count_metrics(tmp_path):
    registry = CollectorRegistry()
    path = tmp_path / "audit.jsonl"
    trail = Audit(AuditConfig("file", path, 0, 1), registry=registry)
    data = png_bytes(np.full((40, 40), 9, "uint8"))
    with trail.begin("/predict", TAG, request_id="one") as rec:
        rec.input(data)
        rec.answer(ANSWER)
    with trail.begin("/predict", TAG, request_id="two") as rec:
        rec.input(b"")
        rec.refuse(RequestError("empty image", 400, "empty"))
    with trail.begin("/predict_batch", TAG, request_id="three") as rec:
        rec.inputs([data, b"junk", data])
        result = {"results": [{"index": 0, **ANSWER}, {"index": 1, "error": "image 1 ...", "status": 415},
                              {"index": 2, "error": "not a chest X-ray", "status": 422}]}
        rec.batch(result, {2: RequestError("not a chest X-ray", 422, "not_a_chest_xray")})
    with pytest.raises(ZeroDivisionError):
        with trail.begin("/explain", TAG, request_id="four") as rec:
            rec.input(data)
            1 / 0
    trail.close()
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    assert [(r["request_id"], r["item"], r["status"], r["refusal"]) for r in lines] == [
        ("one", None, 200, None), ("two", None, 400, "empty"), ("three", 0, 200, None),
        ("three", 1, 415, "unsupported"), ("three", 2, 422, "not_a_chest_xray"), ("four", None, 500, None)]
    assert lines[1]["bytes"] == 0 and lines[1]["input_sha256"] == hashlib.sha256(b"").hexdigest()
    assert lines[3]["bytes"] == 4 and lines[3]["format"] is None
    assert len({r["time"] for r in lines[2:5]}) == 1 and len({r["latency_ms"] for r in lines[2:5]}) == 1
    back = read_trail(path)
    assert back.lines == 6 and not back.malformed
    assert [r["kind"] for r in back.records] == ["answer", "refusal", "answer", "refusal", "refusal", "error"]

    assert sample(registry, "cxr_answers_total", route="/predict", label="PNEUMONIA") == 1
    assert sample(registry, "cxr_answers_total", route="/predict_batch", label="PNEUMONIA") == 1
    assert sample(registry, "cxr_refusals_total", route="/predict", reason="empty") == 1
    assert sample(registry, "cxr_refusals_total", route="/predict_batch", reason="not_a_chest_xray") == 1
    assert sample(registry, "cxr_server_errors_total", route="/explain") == 1
    assert sample(registry, "cxr_probability_count") == 2
    assert sample(registry, "cxr_probability_bucket", le="0.9") == 0
    assert sample(registry, "cxr_probability_bucket", le="0.95") == 2
    assert sample(registry, "cxr_input_bytes_count") == 6  # every line that had bytes
    assert sample(registry, "cxr_latency_seconds_count", route="/predict_batch") == 1  # per request, not image


def test_off_writes_nothing_but_counts(tmp_path, capsys):
    registry = CollectorRegistry()
    trail = Audit(AuditConfig("off"), registry=registry)
    with trail.begin("/predict", TAG) as rec:
        rec.input(b"abc")
        rec.answer(ANSWER)
    assert capsys.readouterr().out == ""
    assert sample(registry, "cxr_answers_total", route="/predict", label="PNEUMONIA") == 1


def test_stdout_lines_are_plain_json(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    trail = Audit(AuditConfig("stdout"), registry=CollectorRegistry())
    assert isinstance(trail.handler, StdoutHandler)
    with trail.begin("/predict_raw", TAG, request_id="x1") as rec:
        rec.input(b"\xff\xd8\xff" + b"1" * 50)
        rec.answer(ANSWER)
    text = out.getvalue()
    assert text.endswith("\n") and json.loads(text)["format"] == "jpeg"
    back = read_trail(io.StringIO(text))
    assert back.lines == 1 and not back.malformed and back.records[0]["route"] == "/predict_raw"


# ----------------------------------------------------------------- rotation shared by processes


def _writer(path: str, worker: int, n: int, max_bytes: int, backups: int) -> None:
    handler = LockedRotatingFileHandler(path, max_bytes, backups)
    for i in range(n):
        rec = line(route="/predict", request_id=f"w{worker}-{i}", model=TAG, data=b"x" * (i + 1), answer=ANSWER)
        handler.handle(logging.makeLogRecord({"msg": json.dumps(rec)}))
    handler.close()


def test_rotation_by_several_processes_keeps_every_line_whole(tmp_path):
    path = tmp_path / "audit.jsonl"
    workers, n = 4, 150
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, n, 6000, 1000)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    files = sorted(tmp_path.glob("audit.jsonl*"))
    rotated = [f for f in files if re.fullmatch(r"audit\.jsonl\.\d+", f.name)]
    assert len(rotated) >= 10  # rotated many times while four processes wrote
    assert all(f.stat().st_size <= 6000 for f in rotated)
    ids = [json.loads(text)["request_id"] for f in files if not f.name.endswith(".lock")
           for text in f.read_text().splitlines()]
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(n))  # none lost, none twice
    back = read_trail(path)
    assert back.lines == workers * n and not back.malformed
    # oldest file first: each worker's own lines come back in the order it wrote them
    in_order = [json.loads(t)["request_id"] for f in trail_files(path) for t in f.read_text().splitlines()]
    for w in range(workers):
        mine = [int(r.split("-")[1]) for r in in_order if r.startswith(f"w{w}-")]
        assert mine == list(range(n))


def test_a_handler_reopens_the_file_another_rotated(tmp_path):
    path = tmp_path / "audit.jsonl"
    first, second = (LockedRotatingFileHandler(path, 300, 5) for _ in range(2))

    def write(handler, text):
        handler.handle(logging.makeLogRecord({"msg": json.dumps({"n": text, "pad": "x" * 100})}))

    write(first, "a")
    write(second, "b")
    write(first, "c")  # over 300 bytes: first rotates, second still holds the old file open
    write(second, "d")  # must go to the new audit.jsonl, not the renamed audit.jsonl.1
    first.close()
    second.close()
    assert [json.loads(t)["n"] for t in (tmp_path / "audit.jsonl.1").read_text().splitlines()] == ["a", "b"]
    assert [json.loads(t)["n"] for t in path.read_text().splitlines()] == ["c", "d"]
