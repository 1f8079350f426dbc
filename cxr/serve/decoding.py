"""What a request may send and how it becomes model input, shared by ``service.py`` and the
Lambda handler: the request limits, uploaded bytes -> uint8 ``[S, S]`` with THE training
preprocessing (:func:`cxr.imaging.preprocess.preprocess_bytes`) within a decode-memory budget,
and an image URL fetched only when an operator allowlisted its host (size- and time-limited;
local paths never).

Every refusal is a :class:`RequestError` with an HTTP status (400/403/413/415/422) and a
specific message, cut of local details (:func:`without_local_details`) before a client sees
it; the service turns it into a JSON error, never a traceback. Image bytes are never logged.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from cxr import UserError
from cxr.imaging.preprocess import ImagingConfig, is_dicom, preprocess_bytes
from cxr.imaging.primitives import MAX_BYTES, MAX_DECODE_BYTES, ImageError

log = logging.getLogger(__name__)

MAX_BATCH_IMAGES = 32
# A request body may carry one image of MAX_BYTES plus multipart framing; a batch is
# limited by the same total (the middleware in service.py refuses larger bodies unread).
MAX_REQUEST_BYTES = MAX_BYTES + 2 * 1024 * 1024
URL_ALLOWLIST_ENV = "CXR_URL_ALLOWLIST"      # comma-separated hosts; '*.example.org' for subdomains
URL_MAX_BYTES_ENV = "CXR_URL_MAX_BYTES"
URL_TIMEOUT_ENV = "CXR_URL_TIMEOUT_S"
DEFAULT_URL_TIMEOUT_S = 10.0
DECODE_BUDGET_ENV = "CXR_DECODE_BUDGET_MIB"  # decode memory shared by one process's requests
DEFAULT_DECODE_BUDGET_MIB = 256

STATUS_BY_KIND = {
    "empty": 400,
    "too_large": 413,
    "too_many_pixels": 413,
    "unsupported": 415,
    "too_small": 422,
    "corrupt": 422,
    # DICOM whose header says it is not what the model screens: readable, but not scorable
    "not_a_radiograph": 422,
    "not_a_chest": 422,
    "multi_frame": 422,
    "no_pixels": 422,
}


# A refusal's reason code (the audit trail's ``refusal``) when the raiser names none.
REASON_BY_STATUS = {400: "bad_request", 403: "url_refused", 408: "too_slow", 413: "too_large", 415: "unsupported",
                    422: "unprocessable", 429: "busy", 503: "busy"}


class RequestError(UserError):
    """A refused request: ``status`` is the HTTP status, ``str(exc)`` the message for the caller,
    ``reason`` a short code for the audit trail (an ImageError's kind, else from the status)."""

    def __init__(self, message: str, status: int = 400, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason or REASON_BY_STATUS.get(status, "bad_request" if status < 500 else "server_error")

    def to_dict(self) -> dict:
        return {"error": without_local_details(str(self)), "status": self.status}


# ---------------------------------------------------------------- image bytes -> model input

def sniff(data: bytes) -> str | None:
    """The container format from magic bytes (the client's content type is not trusted)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if is_dicom(data):
        return "dicom"
    return None


class DecodeBudget:
    """Bytes of decode memory shared by the requests of one process: a decode holds its
    :func:`cxr.imaging.preprocess.decode_cost` while it runs, so many large uploads at once queue instead
    of multiplying the peak; one that waits longer than ``wait_s`` is answered 503 (retry)."""

    def __init__(self, capacity: int, wait_s: float = 10.0):
        self.capacity, self.wait_s, self.in_use = capacity, wait_s, 0
        self._cond = threading.Condition()

    @classmethod
    def from_env(cls, env: dict | None = None) -> "DecodeBudget":
        env = os.environ if env is None else env
        raw = env.get(DECODE_BUDGET_ENV, "")
        try:
            mib = float(raw) if raw.strip() else DEFAULT_DECODE_BUDGET_MIB
        except ValueError:
            raise UserError(f"{DECODE_BUDGET_ENV} must be a number of MiB, got {raw!r}") from None
        if mib * 2**20 < MAX_DECODE_BYTES:
            raise UserError(f"{DECODE_BUDGET_ENV}={raw} is below one decode's limit "
                            f"({MAX_DECODE_BYTES / 2**20:.0f} MiB)")
        return cls(int(mib * 2**20))

    @contextmanager
    def reserve(self, cost: int):
        cost = min(cost, self.capacity)
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + cost <= self.capacity, timeout=self.wait_s):
                raise RequestError("the server is busy decoding other large images: retry shortly", 503)
            self.in_use += cost
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= cost
                self._cond.notify_all()


DECODE_BUDGET = DecodeBudget.from_env()


def decode(data: bytes | None, cfg: ImagingConfig, *, what: str = "image") -> np.ndarray:
    """Uploaded bytes -> uint8 ``[S, S]`` via :func:`cxr.imaging.preprocess.preprocess_bytes`, or RequestError."""
    if data is None or len(data) == 0:
        raise RequestError(f"empty {what}: no image bytes received (send a JPEG, PNG or DICOM file)", 400, "empty")
    if len(data) > MAX_BYTES:
        raise RequestError(f"{what} too large: {len(data)} bytes (limit {MAX_BYTES})", 413)
    if sniff(data) is None:
        raise RequestError(f"{what} is not a JPEG or PNG file, nor DICOM ('DICM' at byte 128): "
                           "unrecognised leading bytes", 415)
    try:
        return preprocess_bytes(data, cfg, DECODE_BUDGET.reserve)
    except RequestError:
        raise
    except ImageError as exc:
        raise RequestError(f"{what}: {exc}", STATUS_BY_KIND.get(exc.kind, 422),
                           exc.kind if exc.kind in STATUS_BY_KIND else "corrupt") from None
    except (MemoryError, Image.DecompressionBombError) as exc:  # belt and braces
        raise RequestError(f"{what} refused: too large to decode ({type(exc).__name__})", 413,
                           "too_many_pixels") from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug must be a 4xx about this input, not a 500
        log.warning("decoder failed on an upload: %s", type(exc).__name__)
        raise RequestError(f"{what} could not be decoded: {type(exc).__name__}", 422, "corrupt") from None


# ---------------------------------------------------------------- safe URL fetching


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts may be fetched, how many bytes, how long. Empty allowlist: fetching off."""

    allowlist: tuple[str, ...] = ()
    max_bytes: int = MAX_BYTES
    timeout_s: float = DEFAULT_URL_TIMEOUT_S

    @classmethod
    def from_env(cls, env: dict | None = None) -> "UrlPolicy":
        env = os.environ if env is None else env
        hosts = tuple(h.strip().lower() for h in env.get(URL_ALLOWLIST_ENV, "").split(",") if h.strip())
        try:
            max_bytes = int(env.get(URL_MAX_BYTES_ENV, MAX_BYTES))
            timeout = float(env.get(URL_TIMEOUT_ENV, DEFAULT_URL_TIMEOUT_S))
        except ValueError:
            raise UserError(f"{URL_MAX_BYTES_ENV} must be an int and {URL_TIMEOUT_ENV} a number") from None
        return cls(hosts, min(max_bytes, MAX_BYTES), timeout)

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.allowlist:
            if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
                return True
            if host == entry:
                return True
        return False


def fetch_url(url: str, policy: UrlPolicy) -> bytes:
    """GET an image from an allowlisted http(s) host; no redirects, bounded size and time."""
    import httpx

    if not isinstance(url, str) or not url.strip():
        raise RequestError("'url' must be a non-empty string", 400)
    try:
        parts = urlsplit(url.strip())
        host, _ = parts.hostname or "", parts.port  # .port validates the port
    except ValueError as exc:
        raise RequestError(f"'url' is not a valid URL: {exc}", 400) from None
    if parts.scheme not in ("http", "https"):
        raise RequestError(
            f"'url' must be an http(s) URL; scheme {parts.scheme or '(none)'!r} refused "
            "(local paths are never read)", 400)
    if not policy.allowlist:
        raise RequestError(
            f"fetching images by URL is disabled on this server (the operator enables it per host with "
            f"{URL_ALLOWLIST_ENV}); upload the file instead", 403)
    if parts.username or parts.password:
        raise RequestError("'url' must not carry credentials", 400)
    if not policy.allows(host):
        raise RequestError(f"host {host!r} is not in this server's URL allowlist", 403)
    deadline = time.monotonic() + policy.timeout_s
    chunks, total = [], 0
    try:
        with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
            with client.stream("GET", url.strip(), headers={"Accept": "image/jpeg, image/png"}) as resp:
                if resp.is_redirect:
                    raise RequestError(
                        f"{url} answered a redirect ({resp.status_code}); redirects are not followed", 422)
                if resp.status_code != 200:
                    raise RequestError(f"could not fetch {url}: HTTP {resp.status_code}", 422)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise RequestError(f"{url} is {declared} bytes (limit {policy.max_bytes})", 413)
                for chunk in resp.iter_bytes(64 * 1024):
                    total += len(chunk)
                    if total > policy.max_bytes:
                        raise RequestError(f"{url} exceeds {policy.max_bytes} bytes", 413)
                    if time.monotonic() > deadline:
                        raise RequestError(f"fetching {url} took longer than {policy.timeout_s:g} s", 422)
                    chunks.append(chunk)
    except httpx.TimeoutException:
        raise RequestError(f"fetching {url} timed out after {policy.timeout_s:g} s", 422) from None
    except httpx.HTTPError as exc:
        raise RequestError(f"could not fetch {url}: {type(exc).__name__}", 422) from None
    return b"".join(chunks)


# An absolute POSIX or Windows path of two or more parts inside a string (not the path part of
# an http URL), a file:// URL, and a URL's user:password@ part.
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])(?:file://)?(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"`|),;]+){2,}")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def without_local_details(value):
    """``value`` (card, error, any JSON) with local paths cut to ``<local>/name`` and URL
    credentials dropped: what a client may see of a model trained on someone's machine."""
    if isinstance(value, dict):
        return {k: without_local_details(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_details(v) for v in value]
    if isinstance(value, str):
        value = _URL_CREDENTIALS.sub(r"\1", value)
        return _LOCAL_PATH.sub(lambda m: "<local>/" + re.split(r"[/\\]", m.group(0))[-1], value)
    return value
