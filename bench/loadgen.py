"""Load generator for the service: pre-built HTTP requests from one asyncio process (aiohttp).

    python bench/loadgen.py http://127.0.0.1:3000 --images ../shared/data/originals \
        --concurrency 32 --seconds 30 [--route predict_raw]

Prints one JSON line: requests, errors, images/s, latency p50/p95/p99 (ms), client CPU per
request. Every request body is built once up front (a multipart form for ``/predict`` and the
seed-style baseline, the file itself for ``/predict_raw``), because the client shares the
2 cores with the server it measures: aiohttp with ready bodies costs about 0.5 ms of CPU per
request here, httpx building each form about 1.6 ms (measured, bench/serving.py prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import latency_summary  # noqa: E402

ROUTES = ("predict", "predict_raw")
Request = tuple[str, bytes, dict]  # (path, body, headers)


def multipart_body(filename: str, data: bytes, field: str = "image",
                   content_type: str = "image/jpeg") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type header value."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def build_requests(payloads: list[tuple[str, bytes]], route: str) -> list[Request]:
    """One ready request per image: ``predict`` sends a form (field ``image``), ``predict_raw`` the file."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    out = []
    for name, data in payloads:
        ctype = "image/png" if name.lower().endswith(".png") else "image/jpeg"
        if route == "predict":
            body, header = multipart_body(name, data, content_type=ctype)
            out.append(("/predict", body, {"Content-Type": header}))
        else:
            out.append(("/predict_raw", data, {"Content-Type": ctype}))
    return out


def answered(status: int, body: bytes) -> bool:
    return status == 200 and b'"probability"' in body


async def closed_loop(url: str, requests: list[Request], concurrency: int, n_requests: int, warmup: int = 0) -> dict:
    """``concurrency`` clients, each sending its next request when the previous one is answered.

    ``warmup`` requests go first and are not counted. Adds ``client_cpu_ms`` (per request)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        async def run(count: int, offset: int):
            latencies, errors, counter = [], 0, iter(range(count))

            async def client():
                nonlocal errors
                for i in counter:
                    path, body, headers = requests[(offset + i) % len(requests)]
                    t0 = time.perf_counter()
                    try:
                        async with session.post(path, data=body, headers=headers) as resp:
                            ok = answered(resp.status, await resp.read())
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - t0, time.process_time() - cpu0

        if warmup:
            await run(warmup, 10_000)
        latencies, errors, wall, cpu = await run(n_requests, 0)
    out = latency_summary(latencies, errors, wall)
    out["client_cpu_ms"] = 1000 * cpu / max(n_requests, 1)
    return out


async def open_loop(url: str, requests: list[Request], rate: float, n_requests: int) -> dict:
    """Requests sent on a fixed schedule (``rate`` per second) whatever the answers; latency is
    counted from the scheduled time, so a server that falls behind is charged for the queue."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.2

        async def one(i: int):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            path, body, headers = requests[i % len(requests)]
            try:
                async with session.post(path, data=body, headers=headers) as resp:
                    ok = answered(resp.status, await resp.read())
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            return ok, time.perf_counter() - due

        results = await asyncio.gather(*(one(i) for i in range(n_requests)))
        wall = time.perf_counter() - start
    out = latency_summary([dt for ok, dt in results if ok], sum(1 for ok, _ in results if not ok), wall)
    out["offered_per_s"] = rate
    return out


def read_images(folder: Path) -> list[tuple[str, bytes]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return [(p.name, p.read_bytes()) for p in files]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--images", type=Path, required=True, help="folder of JPEG/PNG files (searched recursively)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30, help="about how long to measure (sets the request count)")
    ap.add_argument("--route", choices=ROUTES, default="predict")
    a = ap.parse_args()
    payloads = read_images(a.images)
    if not payloads:
        ap.error(f"no .jpeg/.jpg/.png files under {a.images}")
    requests = build_requests(payloads, a.route)
    # Size the run from a short probe, so --seconds means about that long at any speed.
    probe = asyncio.run(closed_loop(a.url.rstrip("/"), requests, a.concurrency, 2 * a.concurrency))
    n = max(a.concurrency, int(probe["images_per_s"] * a.seconds))
    result = asyncio.run(closed_loop(a.url.rstrip("/"), requests, a.concurrency, n))
    result.update(images=len(payloads), route=a.route, concurrency=a.concurrency)
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
