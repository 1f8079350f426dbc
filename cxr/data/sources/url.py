"""Download a data set archive (``.zip`` / ``.tar.gz``) from an http(s):// or file:// URL.

The official source is Mendeley Data (Kermany et al., doi:10.17632/rscbjbr9sj.2,
CC BY 4.0), archive ``ChestXRay2017.zip`` (~1.2 GB, ``chest_xray/{train,test}/...``)::

    download:
      source: https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded
      sha256: <fill in>   # sha256sum ChestXRay2017.zip once you have a trusted copy

Its sha256 is not recorded here: this project was built without internet access, so
we could not fetch the file to hash it. Fill it in to make the download verified.

Large downloads get cut: the archive streams into ``cache_dir/<name>.part`` and an
interruption resumes with an HTTP ``Range`` request (a server answering 200 instead of
206 restarts cleanly); only a complete, verified file is renamed to its final name, so
a cached archive is always whole. A hash mismatch deletes the download and extracts
nothing. Extraction is atomic (see :mod:`cxr.data.sources.folder`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cxr import UserError
from cxr.data.sources import folder
from cxr.io import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

RETRIES = 4  # consecutive failures without progress before giving up
MAX_ATTEMPTS = 100  # overall cap, even when every attempt makes some progress
BACKOFF_S = 1.0
TIMEOUT_S = (15, 60)  # connect, read


class _Incomplete(Exception):
    pass


def is_url(source: str) -> bool:
    return source.split("://", 1)[0].lower() in ("http", "https", "file") and "://" in source


def check_sha256(value) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise UserError(f"params.yaml: 'download.sha256' must be 64 hex digits or null, got {value!r}")
    return value.strip().lower()


def cache_name(url: str) -> str:
    """A file name for ``url`` in the cache: its last path segment plus a hash of the URL."""
    base = Path(urllib.parse.urlparse(url).path).name or "download"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:80]
    return f"{sha256_bytes(url.encode())[:10]}-{base}"


def _verify(path: Path, expected: str | None, url: str) -> str:
    actual = sha256_file(path)
    if expected and actual != expected:
        path.unlink()
        raise UserError(
            f"sha256 mismatch for {url}: expected {expected}, got {actual}; "
            "the download was deleted and nothing was extracted"
        )
    return actual


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    if not m:
        return None, None
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def _stream(url: str, part: Path, session, backoff: float) -> None:
    """Fill ``part`` with the whole body of ``url``, resuming after cuts."""
    import requests
    from tqdm import tqdm

    failures = 0
    for _attempt in range(MAX_ATTEMPTS):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # byte offsets must mean file offsets
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as r:
                if r.status_code == 416 and offset:  # our partial is bad or complete-but-unknown
                    log.warning("server refused to resume at %d bytes; restarting", offset)
                    part.unlink()
                    failures += 1
                    continue
                if r.status_code >= 500:
                    raise _Incomplete(f"HTTP {r.status_code} {r.reason}")
                if r.status_code >= 400:
                    raise UserError(f"download failed: HTTP {r.status_code} {r.reason} for {url}")
                total = None
                mode = "wb"
                if r.status_code == 206 and offset:
                    start, total = _content_range(r.headers.get("Content-Range"))
                    if start != offset:
                        log.warning("server resumed at offset %s, not %d; restarting", start, offset)
                        part.unlink()
                        failures += 1
                        continue
                    mode = "ab"
                else:
                    if offset:
                        log.warning("server does not support resuming (HTTP %d); restarting", r.status_code)
                    offset = 0
                    length = r.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                # keep what arrived before a cut (urllib3 would drop its buffer and raise);
                # the size check below notices the cut instead
                r.raw.enforce_content_length = False
                with open(part, mode) as fh, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=part.name[:-5], file=sys.stderr, disable=None, mininterval=0.5,
                ) as bar:
                    for chunk in r.iter_content(1 << 16):
                        fh.write(chunk)
                        bar.update(len(chunk))
                size = part.stat().st_size
                if total is not None and size < total:
                    raise _Incomplete(f"got {size} of {total} bytes")
                if total is not None and size > total:
                    part.unlink()
                    raise UserError(f"download of {url} is larger than announced ({size} > {total} bytes)")
                return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                _Incomplete) as exc:
            now = part.stat().st_size if part.exists() else 0
            failures = 0 if now > offset else failures + 1
            if failures > RETRIES:
                raise UserError(
                    f"download of {url} failed after {RETRIES} retries ({exc}); "
                    f"rerun to resume from {now} bytes"
                ) from None
            log.warning("download interrupted at %d bytes (%s); retrying", now, exc)
            time.sleep(backoff * failures)
        except requests.RequestException as exc:
            raise UserError(f"download of {url} failed: {exc}") from None
    raise UserError(f"download of {url} did not complete after {MAX_ATTEMPTS} attempts; rerun to resume")


def download(url: str, cache_dir: str | Path, sha256: str | None = None, *,
             backoff: float | None = None) -> tuple[Path, str]:
    """The complete archive behind ``url`` in ``cache_dir`` and its sha256."""
    expected = check_sha256(sha256)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme.lower() == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise UserError(f"download.source: {url} does not exist")
        actual = sha256_file(path)
        if expected and actual != expected:
            raise UserError(f"sha256 mismatch for {url}: expected {expected}, got {actual}; nothing was extracted")
        return path, actual

    import requests

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / cache_name(url)
    part = final.with_name(final.name + ".part")
    if final.exists():
        actual = sha256_file(final)
        if not expected or actual == expected:
            log.info("using cached download %s", final)
            return final, actual
        log.warning("cached %s does not match download.sha256; downloading again", final)
        final.unlink()
    log.info("downloading %s -> %s", url, final)
    with requests.Session() as session:
        _stream(url, part, session, BACKOFF_S if backoff is None else backoff)
    actual = _verify(part, expected, url)
    os.replace(part, final)
    if not expected:
        log.warning("download.sha256 is not set: %s is not verified (its sha256 is %s)", url, actual)
    return final, actual


def open_url(url: str, cache_dir: str | Path, sha256: str | None = None,
             limits: "folder.ArchiveLimits | None" = None) -> tuple[Path, str]:
    """Download, extract and locate the layout root; returns (root, archive sha256)."""
    archive, digest = download(url, cache_dir, sha256)
    try:
        extracted = folder.extract(archive, Path(cache_dir), key=digest, limits=limits)
    except UserError:
        if not url.lower().startswith("file:"):
            archive.unlink(missing_ok=True)  # a bad cached archive would fail every rerun
        raise
    return folder.find_root(extracted), digest
