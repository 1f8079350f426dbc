"""Service footprint: start-up, idle memory, and /explain against /predict, in one run.

    .venv/bin/python bench/footprint.py --make-model /tmp/cxr-bench-footprint   # a stand-in model
    .venv/bin/python bench/footprint.py                                          # the promoted model

Starts ``bentoml serve`` (as shipped: 2 workers) on 127.0.0.1 and measures: seconds from launch
to ``/readyz`` 200; the process tree's RSS once idle; p50 of 40 sequential ``/predict`` and
``/explain`` calls on the same original-size JPEG (their ratio); and ``/predict`` p95 over 40
calls alone and while 16 ``/explain`` calls are kept in flight (their ratio). Targets (issue 10):
idle RSS <= 700 MiB, start-up <= 3 s, /explain p50 <= 2x /predict, /predict p95 unchanged under
/explain load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.hostile import honest_jpeg  # noqa: E402
from bench.report import fmt_bytes, percentile, render_table, verdict, wait_idle  # noqa: E402
from bench.serving import model_args, shipped_service  # noqa: E402


def timed(session, url: str, data: bytes) -> float:
    t0 = time.monotonic()
    resp = session.post(url, files={"image": ("x.jpeg", data)}, timeout=120)
    resp.raise_for_status()
    return time.monotonic() - t0


def main() -> int:
    import requests

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_args(ap, "/tmp/cxr-bench-footprint")
    ap.add_argument("--calls", type=int, default=40)
    a = ap.parse_args()
    data = honest_jpeg()
    tag, server = shipped_service(a)
    try:
        started = server.wait_ready()  # from just after the launch
        wait_idle(server.proc.pid)
        idle = server.rss()
        s = requests.Session()
        timed(s, f"{server.url}/predict", data), timed(s, f"{server.url}/explain", data)  # first calls
        predict = [timed(s, f"{server.url}/predict", data) for _ in range(a.calls)]
        explain = [timed(s, f"{server.url}/explain", data) for _ in range(a.calls)]
        stop = threading.Event()

        def keep_explaining():
            with requests.Session() as own:
                while not stop.is_set():
                    timed(own, f"{server.url}/explain", data)

        load = [threading.Thread(target=keep_explaining, daemon=True) for _ in range(16)]
        for t in load:
            t.start()
        time.sleep(1)
        loaded = [timed(s, f"{server.url}/predict", data) for _ in range(a.calls)]
        stop.set()
        for t in load:
            t.join(60)
    finally:
        server.stop()
    p50_p, p50_e = statistics.median(predict), statistics.median(explain)
    p95_alone, p95_loaded = percentile(predict, 95), percentile(loaded, 95)
    rows = [
        {"figure": "start-up to /readyz", "value": f"{started:.1f} s", "target": "<= 3 s",
         "verdict": verdict(started, 3.0, higher_is_better=False)},
        {"figure": "idle RSS, process tree", "value": fmt_bytes(idle), "target": "<= 700 MiB",
         "verdict": verdict(idle, 700 * 2**20, higher_is_better=False)},
        {"figure": "/predict p50 | /explain p50", "value": f"{p50_p * 1000:.0f} ms | {p50_e * 1000:.0f} ms "
         f"({p50_e / p50_p:.2f}x)", "target": "<= 2x", "verdict": verdict(p50_e / p50_p, 2.0, higher_is_better=False)},
        {"figure": "/predict p95 alone | with 16 /explain in flight", "value": f"{p95_alone * 1000:.0f} ms | "
         f"{p95_loaded * 1000:.0f} ms ({p95_loaded / p95_alone:.2f}x)", "target": "unchanged", "verdict": "see ratio"},
    ]
    print(f"# Service footprint, model {tag}, {a.calls} calls each, one 1600x1400 JPEG")
    print(render_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
