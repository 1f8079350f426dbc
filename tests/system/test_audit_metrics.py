"""The audit trail and the cxr_* metrics of a real ``bentoml serve`` with two workers.

One server for the module, writing ``CXR_AUDIT=file:...`` rotated every few kilobytes: every
image route answered and refused gives its lines (one per batch item), the request id is
honoured, replaced when hostile, and echoed on every response; no line carries image bytes, a
file name or a URL; rotation by both workers keeps every line; the drift monitor reads the
trail back whole; ``/metrics`` counts exactly what the trail says, across both workers.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from cxr.ops.drift import read_trail, trail_files
from tests.conftest import REPO, serving_env, start_server
from tests.serving_fixtures import blob_images, jpeg_bytes, png_bytes

pytestmark = pytest.mark.slow

MAX_BYTES = 4000  # about nine lines a file: rotated many times by the two workers
SECRET_NAME = "smith_john_1961-04-02.png"  # a file name as clinics write them: never in the trail
HEX_ID = re.compile(r"[0-9a-f]{32}")


def xray(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 25, (256, 320))
    img[60:140, 80:200] += 90
    return img.clip(0, 255).astype(np.uint8)


class Audited:
    """The server, its trail, and how many lines the requests sent so far must have left."""

    def __init__(self, server, trail: Path, home: Path):
        self.server, self.trail, self.home, self.expected = server, trail, home, 0

    @property
    def url(self) -> str:
        return self.server.url

    def post(self, route: str, lines: int = 1, **kw) -> requests.Response:
        resp = requests.post(f"{self.url}/{route}", timeout=60, **kw)
        self.expected += lines
        return resp

    def lines(self) -> list[dict]:
        return [json.loads(text) for path in trail_files(self.trail) for text in path.read_text().splitlines()]

    def by_id(self, request_id: str) -> list[dict]:
        return [r for r in self.lines() if r["request_id"] == request_id]


@pytest.fixture(scope="module")
def audited(promoted_model, tmp_path_factory):
    # Its own BENTOML_HOME: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir at start,
    # which would wipe another running server's metrics.
    base = tmp_path_factory.mktemp("audited")
    home = base / "home"
    shutil.copytree(promoted_model["bentoml_home"], home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    trail = base / "trail" / "audit.jsonl"
    trail.parent.mkdir()
    server = start_server(home, base / "serve.log", CXR_WORKERS="2", CXR_AUDIT=f"file:{trail}",
                          CXR_AUDIT_MAX_BYTES=str(MAX_BYTES), CXR_AUDIT_BACKUPS="1000")
    yield Audited(server, trail, home)
    server.stop()


def files(*items: tuple[str, bytes], field: str = "image") -> list:
    return [(field, (name, data)) for name, data in items]


# ----------------------------------------------------------------- one line per image


def test_every_image_route_answered_and_refused(audited, promoted_model):
    png, jpg = png_bytes(xray(1)), jpeg_bytes(xray(2))
    tag, threshold = promoted_model["tag"], promoted_model["threshold"]
    cases = [  # route, request id, request, status, refusal, format
        ("predict", "t-predict-ok", {"files": files((SECRET_NAME, png))}, 200, None, "png"),
        ("predict", "t-predict-gif", {"files": files((SECRET_NAME, b"GIF89a" + b"\0" * 50))}, 415, "unsupported", None),
        ("predict", "t-predict-small", {"files": files(("a.png", png_bytes(xray(3)[:20, :20])))}, 422, "too_small",
         "png"),
        ("predict", "t-predict-url", {"json": {"url": "http://example.org/secret-patient.png"}}, 403, "url_refused",
         None),
        ("predict_raw", "t-raw-ok", {"data": jpg, "headers": {"Content-Type": "image/jpeg"}}, 200, None, "jpeg"),
        ("predict_raw", "t-raw-empty", {"data": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty", None),
        ("predict_raw", "t-raw-form", {"files": files(("x.png", png))}, 415, "unsupported", None),
        ("explain", "t-explain-ok", {"files": files((SECRET_NAME, jpg))}, 200, None, "jpeg"),
        ("explain", "t-explain-empty", {"files": files(("x.png", b""))}, 400, "empty", None),
    ]
    for route, request_id, kw, status, refusal, fmt in cases:
        headers = {**kw.pop("headers", {}), "X-Request-ID": request_id}
        resp = audited.post(route, headers=headers, **kw)
        assert resp.status_code == status, (route, resp.text[:300])
        assert resp.headers["X-Request-ID"] == request_id
        [rec] = audited.by_id(request_id)
        assert (rec["schema"], rec["route"], rec["item"], rec["model"]) == ("cxr-audit/2", f"/{route}", None, tag)
        assert (rec["status"], rec["refusal"], rec["format"]) == (status, refusal, fmt), (route, rec)
        assert isinstance(rec["latency_ms"], float) and rec["latency_ms"] >= 0
        if status == 200:
            body = resp.json()
            assert rec["label"] == body["label"] and rec["probability"] == pytest.approx(body["probability"])
            assert rec["threshold"] == pytest.approx(threshold)
            subtype = body.get("subtype") or {}  # a PNEUMONIA answer's subtype is on its line, a NORMAL one's none
            assert (rec["subtype"], rec["subtype_probability"]) == (subtype.get("label"),
                                                                    subtype.get("probability_bacterial"))
            assert re.fullmatch(r"[0-9a-f]{64}", rec["input_sha256"]) and rec["bytes"] in (len(png), len(jpg))
        else:
            assert rec["label"] is None and rec["probability"] is None

    resp = audited.post("predict_batch", lines=4, headers={"X-Request-ID": "t-batch"},
                        files=files(("a.png", png), (SECRET_NAME, b"junk"), ("c.jpg", jpg), ("d.png", b""),
                                    field="images"))
    assert resp.status_code == 200 and resp.headers["X-Request-ID"] == "t-batch"
    results = resp.json()["results"]
    lines = audited.by_id("t-batch")
    assert [r["item"] for r in lines] == [0, 1, 2, 3] and {r["route"] for r in lines} == {"/predict_batch"}
    assert [(r["status"], r["refusal"]) for r in lines] == [(200, None), (415, "unsupported"), (200, None),
                                                            (400, "empty")]
    assert [r["label"] for r in lines] == [r.get("label") for r in results]
    assert [r["bytes"] for r in lines] == [len(png), 4, len(jpg), 0]
    assert len({r["latency_ms"] for r in lines}) == 1


def test_request_ids_hostile_replaced_and_echoed_everywhere(audited):
    png = png_bytes(xray(4))
    hostile = "x" * 129, "a b", "<script>alert(1)</script>", "id\u00e9", "../../etc/passwd"
    for bad in hostile:
        resp = audited.post("predict", headers={"X-Request-ID": bad.encode("utf-8")}, files=files(("x.png", png)))
        assert resp.status_code == 200
        replaced = resp.headers["X-Request-ID"]
        assert HEX_ID.fullmatch(replaced) and bad not in resp.headers.values()
        [rec] = audited.by_id(replaced)
        assert rec["route"] == "/predict"
    resp = audited.post("predict", files=files(("x.png", png)))  # none sent: one is made up
    assert HEX_ID.fullmatch(resp.headers["X-Request-ID"]) and len(audited.by_id(resp.headers["X-Request-ID"])) == 1
    # two requests never share a made-up id
    a, b = (audited.post("predict_raw", data=png).headers["X-Request-ID"] for _ in range(2))
    assert a != b
    trail_text = "".join(p.read_text() for p in trail_files(audited.trail))
    assert not any(bad in trail_text for bad in hostile)

    # every response carries it, also those no handler wrote: health, metrics, model card, page,
    # BentoML's own validation error, and the body limit's refusal before anything was read
    for method, path in [("GET", "/readyz"), ("GET", "/livez"), ("GET", "/metrics"), ("POST", "/metadata"),
                         ("GET", "/ui/"), ("GET", "/docs.json"), ("GET", "/no/such/page")]:
        resp = requests.request(method, f"{audited.url}{path}", headers={"X-Request-ID": "echo-1"}, timeout=30)
        assert resp.headers.get("X-Request-ID") == "echo-1", (path, resp.status_code)
    resp = requests.post(f"{audited.url}/predict_batch", json={"images": "abc"}, headers={"X-Request-ID": "echo-2"},
                         timeout=30)
    assert 400 <= resp.status_code < 500 and resp.headers["X-Request-ID"] == "echo-2"
    parts = urlsplit(audited.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: echo-3\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 999999999999\r\n\r\n")
        answer = s.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and re.search(r"(?im)^x-request-id: echo-3\r$", answer), answer[:400]


def test_no_image_bytes_file_names_or_urls_in_the_trail(audited):
    text = "".join(p.read_text() for p in trail_files(audited.trail))
    assert SECRET_NAME not in text and "smith" not in text and "example.org" not in text and "http" not in text
    png = png_bytes(xray(1))
    import base64

    for fragment in (png[100:140].hex(), base64.b64encode(png[99:150]).decode()[4:40]):
        assert fragment not in text
    keys = {key for rec in audited.lines() for key in rec}
    assert keys == {"schema", "time", "request_id", "route", "item", "model", "input_sha256", "bytes", "format",
                    "label", "probability", "threshold", "subtype", "subtype_probability", "refusal", "status",
                    "latency_ms"}


# ----------------------------------------------------------------- rotation by both workers


def worker_answers(home: Path) -> dict[str, float]:
    """cxr_answers counted by each worker process, from prometheus_client's multiprocess files."""
    from prometheus_client.mmap_dict import MmapedDict

    out = {}
    for path in (home / "prometheus_multiproc_dir").glob("counter_*.db"):
        total = sum(value for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
                    if json.loads(key)[0] == "cxr_answers")
        out[path.stem.split("_")[-1]] = total
    return out


def test_rotation_by_both_workers_keeps_every_line(audited):
    images = [png_bytes(xray(10 + i)) if i % 2 else jpeg_bytes(xray(10 + i)) for i in range(8)]

    def one(i: int) -> int:
        return requests.post(f"{audited.url}/predict_raw", data=images[i % 8], headers={"X-Request-ID": f"rot-{i}"},
                             timeout=60).status_code

    sent = 0
    for _ in range(4):  # until both workers have answered (the kernel spreads connections between them)
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(sent, sent + 60))) == {200}
        sent += 60
        audited.expected += 60
        if sum(1 for n in worker_answers(audited.home).values() if n > 0) >= 2:
            break
    assert sum(1 for n in worker_answers(audited.home).values() if n > 0) == 2, worker_answers(audited.home)

    rotated = [p for p in trail_files(audited.trail) if p != audited.trail]
    assert len(rotated) >= 5 and all(p.stat().st_size <= MAX_BYTES for p in rotated)
    lines = audited.lines()
    assert len(lines) == audited.expected  # one line per image sent by this module: none lost, none doubled
    assert sorted(r["request_id"] for r in lines if r["request_id"].startswith("rot-")) == \
        sorted(f"rot-{i}" for i in range(sent))
    back = read_trail(audited.trail)
    assert back.lines == audited.expected and sum(back.malformed.values()) == 0
    assert {r["kind"] for r in back.records} == {"answer", "refusal"}


# ----------------------------------------------------------------- /metrics


def scrape(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_the_trail_says_across_both_workers(audited):
    png = png_bytes(xray(5))
    flagged = png_bytes(blob_images(2, 128, seed=3)[0][1])  # a bright square: what the tiny model calls PNEUMONIA
    for route, kw in [("predict", {"files": files(("x.png", png))}), ("predict", {"files": files(("x.png", b"?"))}),
                      ("predict", {"files": files(("f.png", flagged))}), ("predict_raw", {"data": flagged}),
                      ("explain", {"files": files(("x.png", png))}), ("predict_raw", {"data": b"\xff\xd8\xff"}),
                      ("predict_batch", {"files": files(("x.png", png), ("y.png", b""), field="images")})]:
        assert audited.post(route, lines=2 if route == "predict_batch" else 1, **kw).status_code in (200, 400, 415, 422)
    samples = scrape(audited.url)
    lines = audited.lines()

    def got(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0)

    answers = Counter((r["route"], r["label"]) for r in lines if r["probability"] is not None)
    refusals = Counter((r["route"], r["refusal"]) for r in lines if r["refusal"] is not None)
    requests_by_route = Counter(route for route, _ in {(r["route"], r["request_id"]) for r in lines})
    assert answers and refusals and len(requests_by_route) == 4
    subtypes = Counter((r["route"], r["subtype"] or "none") for r in lines if r["label"] == "PNEUMONIA")
    assert subtypes and all(kind != "none" for _, kind in subtypes)  # this model gives one with every PNEUMONIA
    for (route, kind), n in subtypes.items():
        assert got("cxr_subtypes_total", route=route, subtype=kind) == n, (route, kind)
    assert sum(v for (name, _), v in samples.items() if name == "cxr_subtypes_total") == sum(subtypes.values())
    for (route, label), n in answers.items():
        assert got("cxr_answers_total", route=route, label=label) == n, (route, label)
    for (route, reason), n in refusals.items():
        assert got("cxr_refusals_total", route=route, reason=reason) == n, (route, reason)
    assert sum(v for (name, _), v in samples.items() if name == "cxr_answers_total") == sum(answers.values())
    assert sum(v for (name, _), v in samples.items() if name == "cxr_refusals_total") == sum(refusals.values())
    # every histogram is collected (BentoML #5056 reported only the last declared one), with its buckets
    assert got("cxr_probability_count") == sum(answers.values())
    assert got("cxr_probability_bucket", le="+Inf") == sum(answers.values())
    assert got("cxr_probability_bucket", le="0.05") <= got("cxr_probability_bucket", le="0.5") \
        <= got("cxr_probability_bucket", le="1.0") == sum(answers.values())
    assert got("cxr_probability_sum") == pytest.approx(sum(r["probability"] for r in lines if r["probability"]
                                                           is not None), abs=1e-3)
    assert got("cxr_input_bytes_count") == sum(1 for r in lines if r["bytes"] is not None)
    assert got("cxr_input_bytes_sum") == sum(r["bytes"] for r in lines if r["bytes"] is not None)
    for route, n in requests_by_route.items():
        assert got("cxr_latency_seconds_count", route=route) == n, route
    assert not any(name == "cxr_server_errors_total" and v for (name, _), v in samples.items())
    assert "cxr_probability_bucket" in {name for name, _ in samples}


def test_a_bad_audit_setting_refuses_to_start(promoted_model, tmp_path):
    home = tmp_path / "home"  # a copy: a starting `bentoml serve` empties the home's metrics folder
    shutil.copytree(promoted_model["bentoml_home"], home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    proc = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "serve", "service:CXRScreening", "--host",
                           "127.0.0.1", "--port", "1"], cwd=REPO,
                          env=serving_env(home, CXR_AUDIT="syslog://x"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "CXR_AUDIT must be 'stdout', 'off' or 'file:/path/audit.jsonl', got 'syslog://x'" in proc.stderr
    assert "Traceback" not in proc.stderr
