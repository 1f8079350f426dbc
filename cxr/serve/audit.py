"""The service's audit trail and its operational Prometheus metrics.

One JSON line (``cxr-audit/2``) per answered or refused image: for ``/predict``,
``/predict_raw`` and ``/explain`` one line per request, for ``/predict_batch`` one line per
image (``item`` 0, 1, ... under the same ``request_id``). The drift monitor
(:func:`cxr.ops.drift.read_trail`) reads it back. A line says what the service answered and about
what: the model tag, the input's sha256, byte count and sniffed format, the label, probability
and threshold (and a PNEUMONIA answer's subtype with its P(bacterial)), or the refusal's reason
code, the status and the handler's latency. Never the
pixels, the bytes, a URL, a file name or anything else a client sent.

Where the lines go is ``$CXR_AUDIT``: ``stdout`` (the default), ``off``, or
``file:/path/audit.jsonl``, rotated at ``$CXR_AUDIT_MAX_BYTES`` keeping ``$CXR_AUDIT_BACKUPS``
older files (``audit.jsonl.1`` the newest of them, RotatingFileHandler's naming). The service's
worker processes share the file: every line is one ``write`` under an ``fcntl`` lock on
``audit.jsonl.lock``, and a worker whose file was rotated by another reopens it first, so no
line is lost or torn by a rotation.

Metrics (BentoML's ``/metrics``, prometheus_client in multiprocess mode across the workers):
``cxr_answers_total{route,label}``, ``cxr_subtypes_total{route,subtype}`` (PNEUMONIA answers by
the subtype given; ``none`` when the model gives none), ``cxr_refusals_total{route,reason}``,
``cxr_server_errors_total{route}``, ``cxr_probability``, ``cxr_input_bytes`` and
``cxr_latency_seconds{route}``. They are counted whatever ``$CXR_AUDIT`` says.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path

from cxr import POSITIVE_LABEL, UserError
from cxr.records import audit_line
from cxr.serve.decoding import RequestError, sniff

SCHEMA = audit_line.SCHEMA
AUDIT_ENV, MAX_BYTES_ENV, BACKUPS_ENV = "CXR_AUDIT", "CXR_AUDIT_MAX_BYTES", "CXR_AUDIT_BACKUPS"
DEFAULT_MAX_BYTES = 100 * 2**20
DEFAULT_BACKUPS = 10

# ---------------------------------------------------------------- request ids

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Set by cxr.serve.asgi.RequestId for the request being handled. anyio's worker threads (BentoML's
# sync APIs, /predict_raw) run in a copy of the request's context; the explain lane does not,
# so the handlers read it where they start (Audit.begin) and carry it from there.
REQUEST_ID: ContextVar[str | None] = ContextVar("cxr_request_id", default=None)


def request_id_for(incoming: str | bytes | None) -> str:
    """The client's ``X-Request-ID`` when it is a sane token (1-128 of ``[A-Za-z0-9._:-]``),
    else a fresh uuid4 hex: the client's is never echoed or written when it is not."""
    if isinstance(incoming, bytes):
        incoming = incoming.decode("latin-1")
    if incoming is not None and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AuditConfig:
    destination: str  # "stdout", "off" or "file"
    path: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS

    @classmethod
    def from_env(cls, env: dict | None = None) -> "AuditConfig":
        env = os.environ if env is None else env
        raw = env.get(AUDIT_ENV, "").strip()
        if raw in ("", "stdout"):
            return cls("stdout")
        if raw == "off":
            return cls("off")
        if not raw.startswith("file:") or not raw[len("file:"):].strip():
            raise UserError(f"{AUDIT_ENV} must be 'stdout', 'off' or 'file:/path/audit.jsonl', got {raw!r}")
        path = Path(raw[len("file:"):].strip()).expanduser().absolute()
        max_bytes = _count(env, MAX_BYTES_ENV, DEFAULT_MAX_BYTES)
        backups = _count(env, BACKUPS_ENV, DEFAULT_BACKUPS)
        if max_bytes and not backups:
            raise UserError(f"{BACKUPS_ENV}=0 with {MAX_BYTES_ENV}={max_bytes}: rotation needs at least one backup "
                            f"(or set {MAX_BYTES_ENV}=0 never to rotate)")
        if not path.parent.is_dir():
            raise UserError(f"{AUDIT_ENV}: the folder of {path} does not exist (create it, or change {AUDIT_ENV})")
        if path.is_dir():
            raise UserError(f"{AUDIT_ENV}: {path} is a folder; name the trail's file, e.g. {path / 'audit.jsonl'}")
        if not os.access(path if path.exists() else path.parent, os.W_OK):
            raise UserError(f"{AUDIT_ENV}: {path} is not writable by this user")
        return cls("file", path, max_bytes, backups)


def _count(env, name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise UserError(f"{name} must be a whole number >= 0, got {raw!r}")
    return int(raw)


# ---------------------------------------------------------------- writing lines


class LockedRotatingFileHandler(RotatingFileHandler):
    """RotatingFileHandler that several processes may share: each line is checked for rollover
    and written (one ``os.write`` on an ``O_APPEND`` descriptor) under an exclusive ``flock`` on
    ``<file>.lock``; a process whose open file is no longer the one at the path (another rotated
    it) reopens it first. Threads of one process are serialised by the handler's own lock
    (``handle()``), processes by the flock."""

    def __init__(self, filename: str | Path, max_bytes: int, backups: int):
        super().__init__(filename, mode="a", maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.lock_path = self.baseFilename + ".lock"
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def _locked(self):
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _reopen_if_moved(self) -> None:
        try:
            at_path = os.stat(self.baseFilename).st_ino
        except FileNotFoundError:
            at_path = None
        if self.stream is None or at_path != os.fstat(self.stream.fileno()).st_ino:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + self.terminator).encode("utf-8")
            with self._locked():
                self._reopen_if_moved()
                size = os.fstat(self.stream.fileno()).st_size
                if self.maxBytes > 0 and size > 0 and size + len(data) > self.maxBytes:
                    self.doRollover()  # renames under the lock; the others reopen on their next line
                _write_all(self.stream.fileno(), data)
        except Exception:  # noqa: BLE001 - logging's way: report on stderr, never fail the request
            self.handleError(record)

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class StdoutHandler(logging.Handler):
    """Each line in one ``write`` to standard output: plain JSON, no logger prefix."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8")
            try:
                fd = sys.stdout.fileno()
            except (AttributeError, OSError, ValueError):  # a replaced stdout (tests): its own write
                sys.stdout.write(data.decode("utf-8"))
                sys.stdout.flush()
                return
            sys.stdout.flush()
            _write_all(fd, data)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # one call for a regular file or a pipe; the loop only for a short write
        view = view[os.write(fd, view):]


def make_handler(config: AuditConfig) -> logging.Handler | None:
    if config.destination == "off":
        return None
    if config.destination == "stdout":
        return StdoutHandler()
    try:
        return LockedRotatingFileHandler(config.path, config.max_bytes, config.backups)
    except OSError as exc:
        raise UserError(f"{AUDIT_ENV}: cannot open {config.path}: {exc.strerror}") from None


# ---------------------------------------------------------------- metrics


class Metrics:
    """The service's own Prometheus metrics. Created in the worker process that uses them (after
    BentoML set PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads when first imported), so
    their values go to the multiprocess files BentoML's /metrics collects from every worker."""

    PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 ... 1.0
    BYTES_BUCKETS = tuple(2**k for k in range(10, 26, 2)) + (30 * 2**20,)  # 1 KiB ... 16 MiB, the 30 MiB limit
    LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self, registry=None):
        import prometheus_client as prom

        kw = {} if registry is None else {"registry": registry}
        self.answers = prom.Counter("cxr_answers", "Images answered, by route and label", ["route", "label"], **kw)
        self.subtypes = prom.Counter("cxr_subtypes", "PNEUMONIA answers by the subtype given (none: the model gives "
                                     "none)", ["route", "subtype"], **kw)
        self.refusals = prom.Counter("cxr_refusals", "Images refused, by route and reason code",
                                     ["route", "reason"], **kw)
        self.server_errors = prom.Counter("cxr_server_errors", "Images neither answered nor refused (server errors)",
                                          ["route"], **kw)
        self.probability = prom.Histogram("cxr_probability", "Probability of PNEUMONIA of the answered images",
                                          buckets=self.PROBABILITY_BUCKETS, **kw)
        self.input_bytes = prom.Histogram("cxr_input_bytes", "Size of the images received (answered or refused)",
                                          buckets=self.BYTES_BUCKETS, **kw)
        self.latency = prom.Histogram("cxr_latency_seconds", "Handler time per request, by route", ["route"],
                                      buckets=self.LATENCY_BUCKETS, **kw)

    def count(self, line: dict) -> None:
        route = line["route"]
        if line["probability"] is not None:
            self.answers.labels(route, line["label"]).inc()
            self.probability.observe(line["probability"])
            if line["label"] == POSITIVE_LABEL:
                self.subtypes.labels(route, line.get("subtype") or "none").inc()
        elif line["refusal"] is not None:
            self.refusals.labels(route, line["refusal"]).inc()
        else:
            self.server_errors.labels(route).inc()
        if line["bytes"] is not None:
            self.input_bytes.observe(line["bytes"])


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


# ---------------------------------------------------------------- lines


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def describe(data: bytes | None, digest: bool = True) -> dict:
    """What a line may say about an input: its sha256, size and sniffed format; never the bytes."""
    if data is None:
        return {"input_sha256": None, "bytes": None, "format": None}
    return {"input_sha256": hashlib.sha256(data).hexdigest() if digest else None, "bytes": len(data),
            "format": sniff(data) if data else None}


def line(*, data: bytes | None = None, digest: bool = True, described: dict | None = None, **fields) -> dict:
    """One :mod:`cxr.records.audit_line` line; the input is ``data``, or ``described`` already."""
    return audit_line.build(described=described or describe(data, digest), **fields)


class Audit:
    """Where one worker's lines go, and its metrics. ``begin`` one :class:`Record` per request."""

    def __init__(self, config: AuditConfig | None = None, *, handler: logging.Handler | None = None,
                 registry=None, metrics_: Metrics | None = None):
        self.config = config or AuditConfig("stdout")
        self.handler = handler if handler is not None else make_handler(self.config)
        self.metrics = metrics_ or (Metrics(registry) if registry is not None else metrics())

    @classmethod
    def from_env(cls) -> "Audit":
        return cls(AuditConfig.from_env())

    @property
    def enabled(self) -> bool:
        return self.handler is not None

    def begin(self, route: str, model: str, request_id: str | None = None) -> "Record":
        return Record(self, route, model, request_id or REQUEST_ID.get() or uuid.uuid4().hex)

    def write(self, record: dict) -> None:
        self.metrics.count(record)
        if self.handler is not None:
            self.handler.handle(logging.makeLogRecord({"msg": json.dumps(record), "levelno": logging.INFO,
                                                       "levelname": "INFO", "name": "cxr.audit"}))

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()


class Record:
    """One request's lines. ``input``/``inputs`` note what arrived (its digest, size and format,
    computed there: call them in a worker thread, not the event loop) and return it; ``answer``,
    ``batch`` or ``refuse`` write the lines (and return what they were given); leaving the
    ``with`` block on an unexpected exception writes status-500 lines for what was not written."""

    def __init__(self, audit: Audit, route: str, model: str, request_id: str):
        self.audit, self.route, self.model, self.request_id = audit, route, model, request_id
        self.start = time.perf_counter()
        self.described: dict | None = None
        self.items: list[dict] | None = None  # a batch's inputs, described
        self.written = False

    def __enter__(self) -> "Record":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None and not self.written:
            if isinstance(exc, RequestError):
                self.refuse(exc)
            else:
                self._finish(self._count(), lambda index: {"status": 500})

    def input(self, data: bytes | None) -> bytes | None:
        self.described = describe(data, self.audit.enabled)
        return data

    def inputs(self, items: list) -> list:
        self.items = [describe(data, self.audit.enabled) for data in items]
        return items

    def answer(self, answer: dict) -> dict:
        self._finish(1, lambda index: {"answer": answer})
        return answer

    def refuse(self, error: RequestError) -> RequestError:
        """The whole request refused: one line, or one per image of a batch."""
        self._finish(self._count(), lambda index: {"error": error})
        return error

    def batch(self, result: dict, refusals: dict[int, RequestError]) -> dict:
        """A batch answer (:func:`cxr.serve.serving.predict_many`): one line per item, answered or refused
        (``refusals`` maps a refused item's index to its error)."""
        def outcome(index):
            item = result["results"][index]
            if "error" not in item:
                return {"answer": item}
            return {"error": refusals.get(index) or RequestError(item["error"], item["status"])}

        self._finish(len(result["results"]), outcome)
        return result

    def _count(self) -> int:
        return max(len(self.items or ()), 1)

    def _finish(self, count: int, outcome) -> None:
        self.written = True
        latency = time.perf_counter() - self.start
        stamp, batch = now(), bool(self.items)
        nothing = describe(None)
        for index in range(count):
            described = (self.items[index] if index < len(self.items) else nothing) if batch else self.described
            self.audit.write(line(route=self.route, request_id=self.request_id, model=self.model,
                                  described=described or nothing, item=index if batch else None,
                                  latency_ms=latency * 1000, time_text=stamp, **outcome(index)))
        self.audit.metrics.latency.labels(self.route).observe(latency)


def url_refusal(exc: RequestError) -> RequestError:
    """A refused URL fetch keeps its size refusal ("too_large"); the rest say "url_refused"."""
    if exc.status != 413:
        exc.reason = "url_refused"
    return exc
