"""Closed-loop load generator for the service: N concurrent clients POST images to /predict.

    python bench/loadgen.py http://127.0.0.1:3000 --images ../shared/data/originals \
        --concurrency 32 --seconds 30

Prints one JSON line: requests, errors, images/s, latency p50/p90/p99 (ms). Uses one
asyncio process (httpx), so the generator itself costs little CPU on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx


async def run(url: str, payloads: list[tuple[str, bytes]], concurrency: int, seconds: float, warmup: float,
              route: str) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + warmup + seconds
    measure_from = time.monotonic() + warmup
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker(k: int):
            nonlocal errors
            i = k
            while time.monotonic() < stop_at:
                name, data = payloads[i % len(payloads)]
                i += concurrency
                t0 = time.monotonic()
                resp = await client.post(f"/{route}", files={"image": (name, data)})
                t1 = time.monotonic()
                if t0 >= measure_from:
                    if resp.status_code == 200:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1

        t_start = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.monotonic() - max(t_start + warmup, t_start)
    latencies.sort()

    def pct(p):
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else None

    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "images_per_s": round(len(latencies) / elapsed, 1), "p50_ms": pct(0.5), "p90_ms": pct(0.9),
            "p99_ms": pct(0.99)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--images", type=Path, required=True, help="folder of JPEG/PNG files (searched recursively)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--route", default="predict")
    a = ap.parse_args()
    files = sorted(p for p in a.images.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    payloads = [(p.name, p.read_bytes()) for p in files]
    result = asyncio.run(run(a.url.rstrip("/"), payloads, a.concurrency, a.seconds, a.warmup, a.route))
    result["images"] = len(payloads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
