"""URL source against a local HTTP server: resume, retries, hashes, bad archives, 404."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from cxr import UserError
from cxr.data.sources import fetch, url


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((32, 32), 40 + seed).save(buf, "JPEG")
    return buf.getvalue()


def layout_files() -> dict[str, bytes]:
    files = {}
    for split in ("train", "test"):
        for i in range(3):
            files[f"chest_xray/{split}/NORMAL/IM-{i:04d}-0001.jpeg"] = jpeg(i)
            files[f"chest_xray/{split}/PNEUMONIA/person{i}_bacteria_{i}.jpeg"] = jpeg(10 + i)
    return files


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        st = self.server.state
        st["requests"].append((self.path, self.headers.get("Range")))
        body = st["files"].get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and st["ranges"]:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes" if st["ranges"] else "none")
        self.end_headers()
        payload = body[start:]
        if st["cuts"] > 0:  # cut the connection after N bytes
            st["cuts"] -= 1
            self.wfile.write(payload[: st["cut_after"]])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = {"files": {}, "requests": [], "ranges": True, "cuts": 0, "cut_after": 0}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(url, "BACKOFF_S", 0.0)


def cache_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) if cache.exists() else []


def test_cut_download_resumes_with_range(server, tmp_path):
    files = layout_files()
    body = make_zip(files)
    server.state.update(files={"/ChestXRay2017.zip": body}, cuts=1, cut_after=len(body) // 2)
    cfg = {"cache_dir": str(tmp_path / "cache"), "sha256": hashlib.sha256(body).hexdigest()}
    got = fetch(server.base + "/ChestXRay2017.zip", cfg, tmp_path)
    reqs = server.state["requests"]
    assert reqs[0][1] is None and reqs[1][1] == f"bytes={len(body) // 2}-"
    assert got.kind == "url" and got.facts["archive_sha256"] == cfg["sha256"]
    assert got.root.name == "chest_xray"
    for name, data in files.items():
        assert (got.root.parent / name).read_bytes() == data
    assert not list((tmp_path / "cache").glob("*.part"))
    # a second run reuses the verified download and the extraction: no request
    fetch(server.base + "/ChestXRay2017.zip", cfg, tmp_path)
    assert len(server.state["requests"]) == 2


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    files = layout_files()
    body = make_zip(files)
    server.state.update(files={"/d.zip": body}, cuts=1, cut_after=1000, ranges=False)
    archive, digest = url.download(server.base + "/d.zip", tmp_path / "cache")
    assert archive.read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    assert server.state["requests"][1][1] == "bytes=1000-"  # asked to resume, got 200, restarted


def test_wrong_sha256_deletes_the_download_and_extracts_nothing(server, tmp_path):
    body = make_zip(layout_files())
    server.state["files"]["/d.zip"] = body
    wrong = "0" * 64
    with pytest.raises(UserError) as err:
        fetch(server.base + "/d.zip", {"cache_dir": str(tmp_path / "cache"), "sha256": wrong}, tmp_path)
    msg = str(err.value)
    assert wrong in msg and hashlib.sha256(body).hexdigest() in msg and "sha256 mismatch" in msg
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_archive_is_a_clear_error_and_nothing_half_extracted(server, tmp_path, damage):
    body = bytearray(make_zip(layout_files()))
    if damage == "truncate":
        body = body[: len(body) * 2 // 3]  # the server believes this is the whole file
    else:
        body[len(body) // 2] ^= 0xFF  # central directory intact, a member's CRC fails mid-extraction
    server.state["files"]["/d.zip"] = bytes(body)
    with pytest.raises(UserError, match="corrupt"):
        fetch(server.base + "/d.zip", {"cache_dir": str(tmp_path / "cache")}, tmp_path)
    left = cache_files(tmp_path / "cache")
    assert not [p for p in left if p.endswith((".jpeg", ".zip", ".part")) or "extracted/" in p], left


def test_tar_gz_without_a_suffix_is_recognised(server, tmp_path):
    files = layout_files()
    server.state["files"]["/file_downloaded"] = make_tgz(files)  # like the Mendeley URL
    got = fetch(server.base + "/file_downloaded", {"cache_dir": str(tmp_path / "cache")}, tmp_path)
    assert sorted(p.name for p in got.root.rglob("*.jpeg")) == sorted(Path(n).name for n in files)


def test_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(UserError, match=r"HTTP 404 .*missing\.zip"):
        fetch(server.base + "/missing.zip", {"cache_dir": str(tmp_path / "cache")}, tmp_path)
    assert not list((tmp_path / "cache").glob("*.part"))


def test_gives_up_after_retries_without_progress(server, tmp_path):
    server.state.update(files={"/d.zip": make_zip(layout_files())}, cuts=100, cut_after=0)
    with pytest.raises(UserError, match="failed after .* retries"):
        url.download(server.base + "/d.zip", tmp_path / "cache")
    assert len(server.state["requests"]) == url.RETRIES + 1


def test_file_url_and_sha256_param_check(tmp_path):
    body = make_zip(layout_files())
    (tmp_path / "local.zip").write_bytes(body)
    got = fetch((tmp_path / "local.zip").as_uri(), {"cache_dir": str(tmp_path / "cache")}, tmp_path)
    assert len(list(got.root.rglob("*.jpeg"))) == 12
    assert (tmp_path / "local.zip").exists()  # never deleted: it is the user's file
    with pytest.raises(UserError, match="64 hex digits"):
        url.download((tmp_path / "local.zip").as_uri(), tmp_path / "cache", sha256="abc")
