"""The seed-style baseline server the serving benchmark compares against.

One stdlib HTTP handler (``ThreadingHTTPServer``): POST /predict with a multipart field
``image`` -> fully decode the JPEG at its original size -> grayscale, resize to S x S,
equalise -> Keras ``model.predict`` on that one image (the seed's way; predict is serialised
by a lock, as Keras models are not meant to be called from many threads at once).

    python bench/seed_server.py --model ~/bentoml/models/cxr-pneumonia/<tag>/model.keras --port 8765

Prints ``READY <port>`` once the model is loaded and warmed up. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def multipart_file(body: bytes, content_type: str, field: str = "image") -> bytes | None:
    """The bytes of the form field ``field`` in a multipart/form-data body (None if absent)."""
    marker = "boundary="
    if marker not in content_type:
        return None
    boundary = content_type.split(marker, 1)[1].split(";")[0].strip().strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if f'name="{field}"'.encode() in head:
            return data[:-2] if data.endswith(b"\r\n") else data
    return None


def full_decode(data: bytes, size: int):
    """The seed's preprocessing: decode every pixel, then reduce (no draft mode)."""
    import numpy as np
    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(data))
    img.load()
    gray = img.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(ImageOps.equalize(gray), dtype=np.float32)[None, ..., None]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a model.keras file (the promoted model's)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()

    import keras
    import numpy as np

    model = keras.saving.load_model(a.model, compile=False)
    model.predict(np.zeros((1, a.size, a.size, 1), np.float32), verbose=0)  # warm up
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            self._send(200, {"ok": True})

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            data = multipart_file(body, self.headers.get("Content-Type", ""))
            if not data:
                return self._send(400, {"error": "no image"})
            try:
                x = full_decode(data, a.size)
            except Exception as exc:  # noqa: BLE001
                return self._send(422, {"error": type(exc).__name__})
            with lock:
                p = float(model.predict(x, verbose=0).reshape(-1)[0])
            self._send(200, {"probability": p, "label": "PNEUMONIA" if p >= 0.5 else "NORMAL"})

    ThreadingHTTPServer.request_queue_size = 128  # the default backlog of 5 drops connections at c=32
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    print(f"READY {a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
