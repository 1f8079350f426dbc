"""Hostile-input benchmark: what concurrent pixel-memory bombs cost a running service.

    .venv/bin/python bench/hostile.py --make-model /tmp/cxr-bench-hostile   # a stand-in model
    .venv/bin/python bench/hostile.py                                       # the promoted model

Starts ``bentoml serve`` (as shipped: 2 workers) on 127.0.0.1 and, once it is idle, sends each
kind of upload ``--concurrency`` times at once to ``/predict``: first honest original-size
X-ray JPEGs (the in-run baseline), then each bomb. While a wave is in flight the server's
process-tree RSS is sampled every 20 ms. One table: statuses, p50 and max latency, peak RSS
growth over the idle RSS, its ratio to the honest wave's growth, and whether every worker is
still alive (same PIDs) after the wave. Targets (issue 10): bombs answered 4xx in under 1 s
each, and 32 at once grow the peak RSS by under 300 MB.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import fmt_bytes, fmt_ratio, ratio, render_table, tree_rss, verdict, wait_idle  # noqa: E402
from bench.serving import model_args, shipped_service  # noqa: E402
from tests.system.test_service import bomb_png  # noqa: E402

TARGET_GROWTH_BYTES = 300 * 10**6
TARGET_BOMB_LATENCY_S = 1.0


def honest_jpeg() -> bytes:
    """An original-size (1.6k x 1.4k) radiograph-like JPEG, as a clinic would send."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1400, 0:1600]
    img = 80 + 100 * np.exp(-(((xx - 800) / 320) ** 2)) + rng.normal(0, 8, (1400, 1600))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


PAYLOADS = {
    "honest 1600x1400 JPEG (baseline)": honest_jpeg,
    "16-bit 6324x6324 PNG of zeros": lambda: bomb_png(6324, 16),
    "RGBA 4000x4000 PNG of zeros": lambda: bomb_png(4000, 8, 6),
    "8-bit 30000x30000 PNG of zeros": lambda: bomb_png(30000),
}


def children(pid: int) -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def wave(url: str, data: bytes, n: int, server_pid: int) -> dict:
    import requests

    peak, stop = [tree_rss(server_pid) or 0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(server_pid) or 0)
            time.sleep(0.02)

    def one(_):
        t0 = time.monotonic()
        resp = requests.post(f"{url}/predict", files={"image": ("x.png", data)}, timeout=120)
        return resp.status_code, time.monotonic() - t0

    idle = tree_rss(server_pid) or 0
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    stop.set()
    sampler.join()
    latencies = sorted(s for _, s in results)
    return {"statuses": sorted({c for c, _ in results}), "p50_s": statistics.median(latencies),
            "max_s": latencies[-1], "idle_rss": idle, "growth": max(peak[0] - idle, 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_args(ap, "/tmp/cxr-bench-hostile")
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    tag, server = shipped_service(a)
    rows, base_growth = [], None
    try:
        server.wait_ready()
        wait_idle(server.proc.pid)
        workers = children(server.proc.pid)
        for name, make in PAYLOADS.items():
            data = make()
            res = wave(server.url, data, a.concurrency, server.proc.pid)
            wait_idle(server.proc.pid)
            alive = children(server.proc.pid) == workers
            base_growth = res["growth"] if base_growth is None else base_growth
            bomb = "baseline" not in name
            rows.append({
                "upload": name, "bytes": fmt_bytes(len(data)), "statuses": ",".join(map(str, res["statuses"])),
                "p50 s": f"{res['p50_s']:.2f}", "max s": f"{res['max_s']:.2f}",
                "idle RSS": fmt_bytes(res["idle_rss"]), "peak RSS growth": fmt_bytes(res["growth"]),
                "growth / baseline": fmt_ratio(ratio(res["growth"], base_growth)) if bomb else "1.00",
                "workers alive": "yes" if alive else "NO",
                "target": (verdict(res["growth"], TARGET_GROWTH_BYTES, higher_is_better=False) + "; "
                           + verdict(res["max_s"], TARGET_BOMB_LATENCY_S, higher_is_better=False)
                           + ("" if all(400 <= s < 500 for s in res["statuses"]) else "; NOT 4xx")) if bomb else "",
            })
    finally:
        server.stop()
    print(f"# Hostile uploads: {a.concurrency} at once to /predict, model {tag}")
    print(render_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
