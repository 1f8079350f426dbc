"""The BentoML service over real HTTP: ``bentoml serve`` on 127.0.0.1, a tiny promoted model.

Every bad input gets a specific 4xx and the server stays up; valid-but-unusual X-ray
encodings (16-bit PNG, CMYK JPEG, RGBA PNG) are real images and are answered with 200.
"""

from __future__ import annotations

import base64
import shutil
import io
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from cxr import SCREENING_NOTICE
from tests.conftest import REPO, serving_env, start_server
from tests.serving_fixtures import blob_images, jpeg_bytes, png_bytes
from tests.shared_paths import ORIGINALS, needs_originals

pytestmark = pytest.mark.slow


def xray(seed: int = 0, size=(320, 256)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 25, size[::-1])
    img[60:140, 80:200] += 90
    return img.clip(0, 255).astype(np.uint8)


def post_file(service, route: str, data: bytes, name: str = "x.png", field: str = "image", **kw):
    return requests.post(f"{service.url}/{route}", files={field: (name, data)}, timeout=60, **kw)


def error_of(resp) -> str:
    body = resp.json()
    if isinstance(body, list):  # BentoML wraps its own BadInput messages in a list
        body = body[0]
    return body["error"]


def assert_prediction(body: dict, service_model: dict) -> None:
    assert body["label"] in ("NORMAL", "PNEUMONIA")
    assert 0.0 <= body["probability"] <= 1.0
    assert body["label"] == ("PNEUMONIA" if body["probability"] >= body["decision_threshold"] else "NORMAL")
    assert body["decision_threshold"] == pytest.approx(service_model["threshold"])
    assert body["model_tag"] == service_model["tag"]
    assert body["notice"] == SCREENING_NOTICE


# ----------------------------------------------------------------- inputs


def png16() -> bytes:
    arr = (xray(1).astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    return data


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(xray(2)).convert("CMYK").save(buf, "JPEG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "CMYK"
    return buf.getvalue()


def rgba_png() -> bytes:
    rgba = Image.fromarray(xray(3)).convert("RGBA")
    rgba.putalpha(200)
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 30000, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A real side x side PNG of zeros, built row by row (never held as pixels): a 30000x30000
    grayscale one (900 MP) is under 1 MB on the wire."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    comp = zlib.compressobj(9)
    row = b"\x00" * (side * channels * bit_depth // 8 + 1)
    idat = b"".join(comp.compress(row * min(1000, side - start)) for start in range(0, side, 1000)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, bit_depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# ----------------------------------------------------------------- happy paths


def test_health_endpoints(service):
    assert requests.get(f"{service.url}/livez", timeout=10).status_code == 200
    assert requests.get(f"{service.url}/readyz", timeout=10).status_code == 200
    assert "bentoml" in requests.get(f"{service.url}/metrics", timeout=10).text


def test_predict_matches_training_preprocessing_and_tflite(service, promoted_model):
    """The served probability is the exported TFLite model's on cxr.imaging.preprocess.preprocess_bytes
    output at the model card's image size (64 here, not params.yaml's 224)."""
    from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
    from cxr.model.runtime import TFLiteModel

    tflite = TFLiteModel(promoted_model["export_dir"] / "model.tflite")
    cfg = ImagingConfig(image_size=promoted_model["image_size"], intensity="equalize")
    images, _ = blob_images(6, 200, seed=11)
    probs = []
    for img in images:
        data = jpeg_bytes(img)
        resp = post_file(service, "predict", data, "x.jpeg")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert_prediction(body, promoted_model)
        expected = float(tflite.predict(preprocess_bytes(data, cfg)[None])[0])
        assert body["probability"] == pytest.approx(expected, abs=1e-5)
        probs.append(body["probability"])
    assert np.ptp(probs) > 0.01, f"the tiny model answers a constant: {probs}"


def test_predict_batch_scores_each_image_and_reports_bad_ones(service, promoted_model):
    good = [png_bytes(xray(s)) for s in range(3)]
    files = [("images", ("a.png", good[0])), ("images", ("junk.txt", b"not an image at all")),
             ("images", ("b.png", good[1])), ("images", ("c.png", good[2]))]
    resp = requests.post(f"{service.url}/predict_batch", files=files, timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == 4 and body["failed"] == 1
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert body["results"][1]["status"] == 415 and "not a JPEG or PNG" in body["results"][1]["error"]
    singles = [post_file(service, "predict", g).json()["probability"] for g in good]
    batch = [body["results"][i]["probability"] for i in (0, 2, 3)]
    for r in (body["results"][i] for i in (0, 2, 3)):
        assert_prediction(r, promoted_model)
    assert batch == pytest.approx(singles, abs=1e-5)


def test_predict_batch_limits(service):
    resp = requests.post(f"{service.url}/predict_batch", files=[("images", ("a.png", png_bytes(xray(0))))] * 33,
                         timeout=60)
    assert resp.status_code == 413 and "too many images" in error_of(resp)


def test_explain_returns_heatmap_png_and_the_same_prediction(service, promoted_model):
    """A heatmap with mass is blended in colour over the gray image; an empty one (no region
    pushed the score up) leaves the image gray. Both kinds occur among these few films."""
    seen = set()
    for seed in range(12):
        data = png_bytes(xray(seed))
        resp = post_file(service, "explain", data)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert_prediction(body, promoted_model)
        png = base64.b64decode(body["heatmap_png_base64"])
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (promoted_model["image_size"],) * 2
        rgb = np.asarray(img).astype(int)
        colour = np.abs(rgb[..., 0] - rgb[..., 2]).max()
        if body["heatmap"]["empty"]:
            assert colour <= 2, "an empty heatmap was drawn in colour"
        else:
            assert colour > 30, "no colour heatmap blended over the gray image"
        assert body["probability"] == pytest.approx(post_file(service, "predict", data).json()["probability"],
                                                    abs=1e-6)
        assert body["heatmap"]["method"].startswith("Grad-CAM") and body["heatmap"]["layer"] == "out_relu"
        seen.add(body["heatmap"]["empty"])
        if seen == {True, False}:
            break
    assert False in seen, "no film among 12 got a heatmap with mass"


def test_no_worker_loads_tensorflow(service):
    """Every route, /explain included, runs on LiteRT: no worker maps TensorFlow's library."""
    import psutil

    post_file(service, "explain", png_bytes(xray(3)))
    workers = psutil.Process(service.proc.pid).children(recursive=True)
    assert workers
    for proc in workers:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtensorflow" not in maps and "_pywrap_tensorflow" not in maps, proc.cmdline()


def test_metadata_is_the_model_card(service, promoted_model):
    resp = requests.post(f"{service.url}/metadata", json={}, timeout=30)
    assert resp.status_code == 200
    body = resp.json()
    assert body["model_tag"] == promoted_model["tag"]
    assert body["imaging"] == {"image_size": promoted_model["image_size"], "intensity": "equalize"}
    assert body["card"]["name"] == "cxr-pneumonia-mobilenetv2" and "files" not in body["card"]
    assert "Model card" in body["card_markdown"] and body["notice"] == SCREENING_NOTICE
    assert body["warning"].startswith("SYNTHETIC")
    # Recorded with full paths in the card on disk, but no local detail reaches a client.
    assert body["card"]["params"]["train"]["weights"] == "<local>/mobilenet_v2.h5"
    for secret in ("/home/alice", "/srv/radiology", "s3cret", "bob:", str(promoted_model["bentoml_home"])):
        assert secret not in resp.text, secret


@pytest.mark.parametrize("name,make", [("16-bit PNG", png16), ("CMYK JPEG", cmyk_jpeg), ("RGBA PNG", rgba_png)])
def test_unusual_but_valid_xray_encodings_are_answered(service, promoted_model, name, make):
    """Valid encodings from other acquisition chains: reduced to grayscale like in training, 200."""
    resp = post_file(service, "predict", make())
    assert resp.status_code == 200, f"{name}: {resp.text}"
    assert_prediction(resp.json(), promoted_model)


@needs_originals
def test_original_size_jpeg(service, promoted_model):
    path = sorted(ORIGINALS.glob("*/*.jpeg"))[0]
    resp = post_file(service, "predict", path.read_bytes(), path.name)
    assert resp.status_code == 200 and resp.json()["model_tag"] == promoted_model["tag"]


# ----------------------------------------------------------------- bad input: 4xx, never 5xx


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes(xray(4, (600, 500)))
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("empty file", lambda: b"", 400, "empty image"),
    ("non-image bytes", lambda: b"%PDF-1.4 definitely not an x-ray" * 10, 415, "not a JPEG or PNG"),
    ("truncated JPEG", _truncated_jpeg, 422, "truncated"),
    ("1x1 PNG", lambda: png_bytes(np.zeros((1, 1), np.uint8)), 422, "too small"),
    ("decompression bomb 30000x30000 PNG", bomb_png, 413, "too many pixels"),
    # Under the pixel cap, but 16-bit or with alpha: refused by the decode budget, from the header.
    ("pixel-memory bomb 6324x6324 16-bit PNG", lambda: bomb_png(6324, 16), 413, "I;16 pixels would take"),
    ("pixel-memory bomb 4000x4000 RGBA PNG", lambda: bomb_png(4000, 8, 6), 413, "RGBA pixels would take"),
    ("DICOM file", lambda: b"\x00" * 128 + b"DICM" + b"\x00" * 64, 415, "DICOM"),
    ("GIF image", lambda: b"GIF89a" + b"\x00" * 100, 415, "not a JPEG or PNG"),
]


@pytest.mark.parametrize("name,make,status,message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
@pytest.mark.parametrize("route", ["predict", "explain"])
def test_bad_upload_gets_specific_4xx(service, route, name, make, status, message):
    start = time.monotonic()
    resp = post_file(service, route, make())
    assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
    assert message in error_of(resp)
    assert "Traceback" not in resp.text
    assert time.monotonic() - start < 20


def post_raw(service, data: bytes, content_type: str | None = "image/jpeg", **kw):
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(f"{service.url}/predict_raw", data=data, headers=headers, timeout=60, **kw)


def test_predict_raw_answers_as_predict(service, promoted_model):
    """The file itself as the body: the same answer as the multipart form, whatever type the client claims."""
    for seed, (encode, ctype) in enumerate([(jpeg_bytes, "image/jpeg"), (png_bytes, "image/png"),
                                            (jpeg_bytes, "application/octet-stream"), (png_bytes, None),
                                            (jpeg_bytes, "image/png")]):
        data = encode(xray(20 + seed))
        raw = post_raw(service, data, ctype)
        assert raw.status_code == 200, raw.text
        assert_prediction(raw.json(), promoted_model)
        assert raw.json() == post_file(service, "predict", data).json()


@pytest.mark.parametrize("name,make,status,message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_raw_body_gets_specific_4xx(service, name, make, status, message):
    resp = post_raw(service, make())
    assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
    assert message in error_of(resp) and "Traceback" not in resp.text


def test_predict_raw_refuses_forms_paths_and_oversized_bodies(service):
    image = png_bytes(xray(3))
    resp = requests.post(f"{service.url}/predict_raw", files={"image": ("x.png", image)}, timeout=30)
    assert resp.status_code == 415 and "send forms and JSON to /predict" in error_of(resp)
    resp = requests.post(f"{service.url}/predict_raw", json={"url": "http://198.51.100.7/x.png"}, timeout=30)
    assert resp.status_code == 415
    for text in (b"/etc/passwd", b"http://198.51.100.7/x.png", b"file:///etc/passwd"):  # never read or fetched
        resp = post_raw(service, text, "text/plain")
        assert resp.status_code == 415 and "not a JPEG or PNG" in error_of(resp) and "root:" not in resp.text
    resp = post_raw(service, np.random.default_rng(1).bytes(40 * 1024 * 1024))
    assert resp.status_code == 413 and "byte limit" in error_of(resp)
    assert requests.get(f"{service.url}/predict_raw", timeout=10).status_code == 405


def test_empty_body_and_missing_field(service):
    resp = requests.post(f"{service.url}/predict", timeout=30)
    assert resp.status_code == 400 and "no image" in error_of(resp)
    resp = requests.post(f"{service.url}/predict", files={"other": ("x.png", png_bytes(xray(0)))}, timeout=30)
    assert resp.status_code == 400 and "malformed multipart form" in error_of(resp)
    resp = requests.post(f"{service.url}/predict", files={"other": ("x.txt", b"hello")}, timeout=30)
    assert resp.status_code == 400 and "no image" in error_of(resp)
    resp = requests.post(f"{service.url}/predict", data=b"--xyz\r\nContent-Disposition: garbage\r\n\r\nabc",
                         headers={"Content-Type": "multipart/form-data; boundary=xyz"}, timeout=30)
    assert 400 <= resp.status_code < 500, resp.text
    resp = requests.post(f"{service.url}/predict_batch", json={"images": []}, timeout=30)
    assert resp.status_code == 400 and "no images" in error_of(resp)


def test_50_mb_upload_is_refused_unread(service):
    big = np.random.default_rng(0).bytes(50 * 1024 * 1024)
    start = time.monotonic()
    resp = post_file(service, "predict", big, "big.png")
    assert resp.status_code == 413 and "byte limit" in error_of(resp)

    def chunks():  # no Content-Length: counted while streaming
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    resp = requests.post(f"{service.url}/predict", data=chunks(), timeout=60,
                         headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert resp.status_code == 413 and "byte limit" in error_of(resp)
    assert time.monotonic() - start < 30


def test_paths_and_urls_are_never_read_or_fetched(service):
    # A path where a file belongs: never opened.
    resp = requests.post(f"{service.url}/predict", json={"image": "/etc/passwd"}, timeout=30)
    assert resp.status_code == 400 and "root:" not in resp.text
    # A URL in a multipart file field: BentoML would fetch it; this service refuses.
    resp = requests.post(f"{service.url}/predict", files={"image": (None, "http://198.51.100.7/x.png")}, timeout=30)
    assert resp.status_code == 400 and "never fetches a URL" in error_of(resp)
    # JSON url: fetching is off by default.
    resp = requests.post(f"{service.url}/predict", json={"url": "http://198.51.100.7/x.png"}, timeout=30)
    assert resp.status_code == 403 and "disabled" in error_of(resp)
    for url in ("file:///etc/passwd", "/etc/passwd", "ftp://host/x.png"):
        resp = requests.post(f"{service.url}/predict", json={"url": url}, timeout=30)
        assert resp.status_code == 400 and "http(s)" in error_of(resp), url
    # Unparsable URLs and ports are the client's mistake (they used to answer 500).
    for url in ("http://[x", "http://127.0.0.1:99999/x.png", "http://host:port/x.png"):
        resp = requests.post(f"{service.url}/predict", json={"url": url}, timeout=30)
        assert resp.status_code == 400 and "not a valid URL" in error_of(resp), url
    for odd in ({"url": 5}, {"url": ["http://a/x.png"]}, {"url": None}, {"url": {"u": 1}}, [1, 2], "x"):
        resp = requests.post(f"{service.url}/predict", json=odd, timeout=30)
        assert 400 <= resp.status_code < 500, (odd, resp.status_code, resp.text[:200])
    resp = requests.post(f"{service.url}/predict", files={"image": ("x.png", png_bytes(xray(0)))},
                         data={"url": "http://198.51.100.7/x.png"}, timeout=30)
    assert resp.status_code == 400 and "not both" in error_of(resp)


def test_pickle_and_unknown_media_types_are_refused(service):
    resp = requests.post(f"{service.url}/predict", data=b"\x80\x04K\x01.", timeout=30,
                         headers={"Content-Type": "application/vnd.bentoml+pickle"})
    assert resp.status_code == 415
    resp = requests.post(f"{service.url}/predict", data=png_bytes(xray(0)), timeout=30,
                         headers={"Content-Type": "image/png"})
    assert resp.status_code == 400


def test_server_survives_bad_input_and_logs_no_image_bytes(service):
    marker = b"SECRET-PIXELS-0123456789"
    post_file(service, "predict", marker * 100)
    assert requests.get(f"{service.url}/livez", timeout=10).status_code == 200
    assert post_file(service, "predict", png_bytes(xray(9))).status_code == 200
    assert service.proc.poll() is None
    assert marker.decode() not in service.log_text()


def test_sync_http_client(service, promoted_model, tmp_path):
    import bentoml

    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(xray(7)))
    with bentoml.SyncHTTPClient(service.url, timeout=60) as client:
        body = client.predict(image=path)
        assert_prediction(body, promoted_model)
        batch = client.predict_batch(images=[path, path])
        assert [r["probability"] for r in batch["results"]] == [body["probability"]] * 2
        assert client.metadata()["model_tag"] == promoted_model["tag"]


def test_no_promoted_model_fails_fast_with_a_clear_message(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "serve", "service:CXRScreening",
                           "--host", "127.0.0.1", "--port", "1"], cwd=REPO, env=serving_env(tmp_path / "empty_home"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no promoted cxr-pneumonia model" in proc.stderr + proc.stdout
    assert time.monotonic() - start < 90


def test_a_tampered_or_missing_model_is_refused_at_start(promoted_model, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(promoted_model["bentoml_home"], home)
    name, version = promoted_model["tag"].split(":")
    tflite = home / "models" / name / version / "model.tflite"
    data = bytearray(tflite.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, as a bad copy or an attacker would leave it
    tflite.write_bytes(bytes(data))

    def serve(env_home):
        return subprocess.run([str(Path(sys.executable).parent / "bentoml"), "serve", "service:CXRScreening",
                               "--host", "127.0.0.1", "--port", "1"], cwd=REPO, env=serving_env(env_home),
                              capture_output=True, text=True, timeout=120)

    proc = serve(home)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.tflite is missing or differs from what was promoted" in proc.stderr
    assert "Traceback" not in proc.stderr
    shutil.rmtree(home / "models" / name / version)  # the alias names a model that is gone
    proc = serve(home)
    assert proc.returncode == 2 and "is not in the BentoML store" in proc.stderr, proc.stderr[-2000:]


def test_url_allowlist_serves_allowed_hosts(promoted_model, tmp_path):
    """A second server with fetching enabled for 127.0.0.1 only: an allowed URL is scored."""
    import http.server
    import threading

    data = png_bytes(xray(8))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = start_server(promoted_model["bentoml_home"], tmp_path / "serve.log", CXR_URL_ALLOWLIST="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/x.png"
        resp = requests.post(f"{server.url}/predict", json={"url": url}, timeout=60)
        assert resp.status_code == 200, resp.text
        direct = post_file(server, "predict", data).json()
        assert resp.json()["probability"] == pytest.approx(direct["probability"], abs=1e-6)
        resp = requests.post(f"{server.url}/predict", json={"url": url.replace("127.0.0.1", "localhost")}, timeout=60)
        assert resp.status_code == 403 and "allowlist" in error_of(resp)
    finally:
        server.stop()
        httpd.shutdown()


def test_a_stalled_upload_does_not_block_other_requests(service):
    """A client that announces a body and stops sending (slowloris) holds no worker thread."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(service.url)
    stalled = []
    for _ in range(8):
        s = socket.create_connection((parts.hostname, parts.port), timeout=10)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 100000\r\n\r\n--b\r\n")
        stalled.append(s)
    try:
        start = time.monotonic()
        resp = post_file(service, "predict", png_bytes(xray(10)))
        assert resp.status_code == 200 and time.monotonic() - start < 10
    finally:
        for s in stalled:
            s.close()
    assert requests.get(f"{service.url}/livez", timeout=10).status_code == 200


def test_140_dripping_uploads_do_not_stop_an_honest_request(service):
    """Slow clients cost connections, not work slots: 140 bodies dripped at 1 byte/s (more than
    BentoML's old 128-request cap) while an honest /predict is answered; the drips get a 408."""
    import socket
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(service.url)
    socks, stop = [], threading.Event()
    for _ in range(140):
        s = socket.create_connection((parts.hostname, parts.port), timeout=30)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 10000000\r\n\r\n--b\r\n")
        socks.append(s)

    def drip():
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"x")
                except OSError:
                    pass
            time.sleep(1)

    threading.Thread(target=drip, daemon=True).start()
    try:
        time.sleep(1)
        start = time.monotonic()
        resp = post_file(service, "predict", png_bytes(xray(11)))
        assert resp.status_code == 200, resp.text[:300]
        assert time.monotonic() - start < 10
        # The drips are cut once the grace is over, with the reason.
        socks[0].settimeout(30)
        chunks = []
        while chunk := socks[0].recv(4096):  # the server closes the connection after its answer
            chunks.append(chunk)
        answer = b"".join(chunks).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408") and "too slowly" in answer, answer[:300]
    finally:
        stop.set()
        for s in socks:
            s.close()
    assert requests.get(f"{service.url}/livez", timeout=10).status_code == 200


# Malformed requests of every shape, on every route: each must be the client's 4xx, never a 5xx.
MALFORMED = [
    ("json: url unparsable", {"json": {"url": "http://[x"}}),
    ("json: url bad port", {"json": {"url": "http://127.0.0.1:70000/x.png"}}),
    ("json: url a number", {"json": {"url": 7}}),
    ("json: image a number", {"json": {"image": 7}}),
    ("json: images a string", {"json": {"images": "abc"}}),
    ("json: images of numbers", {"json": {"images": [1, 2]}}),
    ("json: a list", {"json": [1, 2, 3]}),
    ("json: a string", {"json": "image"}),
    ("json: null", {"data": b"null", "headers": {"Content-Type": "application/json"}}),
    ("json: broken", {"data": b'{"url": ', "headers": {"Content-Type": "application/json"}}),
    ("json: not utf-8", {"data": b'{"url": "\xff\xfe"}', "headers": {"Content-Type": "application/json"}}),
    ("json: deeply nested", {"data": b"[" * 5000 + b"]" * 5000, "headers": {"Content-Type": "application/json"}}),
    ("form: url unparsable", {"data": {"url": "http://[x"}}),
    ("multipart: no boundary", {"data": b"abc", "headers": {"Content-Type": "multipart/form-data"}}),
    ("content-type: nonsense", {"data": b"abc", "headers": {"Content-Type": "no/such; =;"}}),
    ("content-type: text", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}),
    ("content-type: xml", {"data": b"<a/>", "headers": {"Content-Type": "application/xml"}}),
    ("empty body, json type", {"data": b"", "headers": {"Content-Type": "application/json"}}),
]


@pytest.mark.parametrize("route", ["predict", "explain", "predict_batch", "predict_raw", "metadata"])
def test_malformed_requests_are_4xx_on_every_route(service, route):
    failures = []
    for name, kw in MALFORMED:
        resp = requests.post(f"{service.url}/{route}", timeout=30, **kw)
        if not (400 <= resp.status_code < 500) and not (route == "metadata" and resp.status_code == 200):
            failures.append(f"{name}: {resp.status_code} {resp.text[:120]}")
    assert requests.get(f"{service.url}/livez", timeout=10).status_code == 200
    assert not failures, "\n".join(failures)
