"""cxr.serve.serving, cxr.serve.decoding and cxr.serve.explain units: decoding with specific
statuses, URL policy and a real (local) HTTP fetch with its limits, the answer and the heatmap
picture. No model needed except where marked."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from cxr import SCREENING_NOTICE, UserError
from cxr.imaging.preprocess import ImagingConfig
from cxr.imaging.primitives import MAX_BYTES
from cxr.records import model_card
from cxr.serve.decoding import RequestError, UrlPolicy, decode, fetch_url, sniff
from cxr.serve.explain import heatmap_png
from cxr.serve.serving import ServedModel, prediction

CFG = ImagingConfig(64, "equalize")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def image(h=120, w=100, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def status_of(fn, *args, **kw) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        fn(*args, **kw)
    return info.value.status, str(info.value)


def test_sniff_trusts_magic_bytes_only():
    assert sniff(png(image())) == "png"
    buf = io.BytesIO()
    Image.fromarray(image()).save(buf, "JPEG")
    assert sniff(buf.getvalue()) == "jpeg"
    assert sniff(b"\x00" * 128 + b"DICM") == "dicom"
    assert sniff(b"GIF89a....") is None


def test_decode_gives_the_training_preprocessing():
    from cxr.imaging.preprocess import preprocess_bytes

    data = png(image())
    assert np.array_equal(decode(data, CFG), preprocess_bytes(data, CFG))
    assert decode(data, CFG).shape == (64, 64)


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty"),
    (None, 400, "empty"),
    (b"\xff\xd8\xff" + b"\x00" * (MAX_BYTES + 1), 413, "too large"),
    (b"hello world", 415, "not a JPEG or PNG"),
    (b"\x00" * 128 + b"DICM" + b"\x00" * 10, 415, "DICOM"),
    (png(np.zeros((1, 1), np.uint8)), 422, "too small"),
    (png(image(400, 400))[:300], 422, "truncated"),
])
def test_decode_refusals_have_specific_statuses(data, status, words):
    got, message = status_of(decode, data, CFG)
    assert got == status and words in message


def test_decode_refuses_a_pixel_bomb_from_its_header():
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    start = time.monotonic()
    got, message = status_of(decode, header + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""), CFG)
    assert got == 413 and "too many pixels" in message and time.monotonic() - start < 2


def test_prediction_answer():
    a = prediction(0.3, 0.3, "cxr-pneumonia:abc")
    assert a["label"] == "PNEUMONIA"  # >= threshold is positive, as in cxr.metrics
    b = prediction(0.2999, 0.3, "cxr-pneumonia:abc", synthetic=True)
    assert b["label"] == "NORMAL" and b["notice"] == SCREENING_NOTICE and "SYNTHETIC" in b["warning"]
    assert "warning" not in a


def test_heatmap_png_blends_colour_where_the_map_is_hot():
    img = np.full((64, 64), 128, np.uint8)
    cam = np.zeros((64, 64))
    cam[:, 32:] = 1.0
    out = np.asarray(Image.open(io.BytesIO(heatmap_png(img, cam))))
    assert out.shape == (64, 64, 3)  # the model's resolution: the page scales it
    assert np.asarray(Image.open(io.BytesIO(heatmap_png(img, cam, display_size=448)))).shape == (448, 448, 3)
    left, right = out[:, :28].astype(int), out[:, 36:].astype(int)
    assert np.ptp(left, axis=-1).max() == 0  # cold: stays gray
    assert (right[..., 0] - right[..., 2]).mean() > 40  # hot: red


# ----------------------------------------------------------------- URL policy and fetching


def test_url_policy_from_env_and_matching():
    assert UrlPolicy.from_env({}).allowlist == ()
    p = UrlPolicy.from_env({"CXR_URL_ALLOWLIST": " pacs.example.org, *.images.example.net ",
                            "CXR_URL_MAX_BYTES": "1000"})
    assert p.max_bytes == 1000
    assert p.allows("PACS.example.org") and p.allows("a.images.example.net")
    assert not p.allows("images.example.net") and not p.allows("evil-pacs.example.org")
    assert not p.allows("pacs.example.org.evil.com")
    with pytest.raises(UserError):
        UrlPolicy.from_env({"CXR_URL_MAX_BYTES": "lots"})


@pytest.fixture(scope="module")
def http_server():
    body = png(image(80, 80))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/ok.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/big-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10_000_000))
                self.end_headers()
            elif self.path == "/big-streamed":
                self.send_response(200)
                self.end_headers()  # no length: HTTP/1.0 body until close
                try:
                    for _ in range(200):
                        self.wfile.write(b"\x00" * 10_000)
                except OSError:
                    pass
            elif self.path == "/slow":
                time.sleep(3)
                self.send_response(200)
                self.end_headers()
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.end_headers()
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", body
    httpd.shutdown()


def test_fetch_url_allowed_host(http_server):
    base, body = http_server
    assert fetch_url(f"{base}/ok.png", UrlPolicy(("127.0.0.1",))) == body


@pytest.mark.parametrize("path,policy,status,words", [
    ("/ok.png", UrlPolicy(()), 403, "disabled"),
    ("/ok.png", UrlPolicy(("example.org",)), 403, "allowlist"),
    ("/big-declared", UrlPolicy(("127.0.0.1",), max_bytes=100_000), 413, "10000000 bytes"),
    ("/big-streamed", UrlPolicy(("127.0.0.1",), max_bytes=100_000), 413, "exceeds"),
    ("/slow", UrlPolicy(("127.0.0.1",), timeout_s=0.5), 422, "timed out"),
    ("/redirect", UrlPolicy(("127.0.0.1",)), 422, "redirect"),
    ("/missing", UrlPolicy(("127.0.0.1",)), 422, "HTTP 404"),
])
def test_fetch_url_refusals(http_server, path, policy, status, words):
    base, _ = http_server
    start = time.monotonic()
    got, message = status_of(fetch_url, f"{base}{path}", policy)
    assert got == status and words in message
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("url,words", [
    ("file:///etc/passwd", "http(s)"), ("/etc/passwd", "http(s)"), ("", "non-empty"),
    ("http://user:pw@127.0.0.1/x.png", "credentials"), ("http://[x", "not a valid URL"),
    ("http://127.0.0.1:99999/x.png", "not a valid URL"), ("http://host:port/x.png", "not a valid URL"),
])
def test_fetch_url_never_reads_local_paths(url, words):
    got, message = status_of(fetch_url, url, UrlPolicy(("127.0.0.1",)))
    assert got == 400 and words in message


# ----------------------------------------------------------------- loading an exported model


def test_load_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(UserError, match="lacks model.tflite"):
        ServedModel.load(tmp_path)


@pytest.mark.slow
def test_load_takes_imaging_and_threshold_from_the_card(promoted_model):
    model = ServedModel.load(promoted_model["export_dir"])  # no store metadata: the card decides
    assert model.imaging == ImagingConfig(promoted_model["image_size"], "equalize")
    assert model.threshold == promoted_model["threshold"]
    card = json.loads((promoted_model["export_dir"] / "model_card.json").read_text())  # the file as written
    assert model.model_card()["card"]["name"] == card["name"] and card["schema"] == model_card.FORMAT.tag
    probs = model.probabilities(np.stack([decode(png(image(seed=s)), model.imaging) for s in range(3)]))
    assert probs.shape == (3,) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("text,shown", [
    ("/home/alice/weights/m.h5", "<local>/m.h5"),
    ("C:\\Users\\a\\w.h5", "<local>/w.h5"),
    ("~/models/a.h5", "<local>/a.h5"),
    ("file:///srv/data/x.zip", "<local>/x.zip"),
    ("see /tmp/pytest/run/y.png, then", "see <local>/y.png, then"),
    ("https://bob:s3cret@data.example.org/cxr.zip", "https://data.example.org/cxr.zip"),
    # not local details: kept as they are
    ("http://example.org/a/b.zip", "http://example.org/a/b.zip"), ("s3://bucket/key/x", "s3://bucket/key/x"),
    ("data/downloads", "data/downloads"), ("recall / specificity", "recall / specificity"),
    ("aspect 1.204/1.485", "aspect 1.204/1.485"), ("../shared/data", "../shared/data"),
])
def test_local_details_are_cut_from_what_clients_see(text, shown):
    from cxr.serve.decoding import without_local_details

    assert without_local_details({"a": [text, 3, None]}) == {"a": [shown, 3, None]}


def test_background_lane_runs_work_at_the_lowest_priority_and_passes_errors_back():
    """/explain's lane: one thread, nice 19 on Linux, results and exceptions awaited by the caller."""
    import asyncio
    import os
    import sys
    import threading

    from cxr.serve import decoding, explain

    lane = explain.BackgroundLane("test-lane")

    def niceness():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), threading.current_thread().name

    def fails():
        raise decoding.RequestError("bad image", 415)

    async def main():
        got = await lane.run(niceness)
        with pytest.raises(decoding.RequestError, match="bad image"):
            await lane.run(fails)
        return got

    nice, name = asyncio.run(main())
    assert name.startswith("test-lane")
    if sys.platform.startswith("linux"):
        assert nice == explain.BackgroundLane.NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != explain.BackgroundLane.NICE  # caller untouched
