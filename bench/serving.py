"""Serving benchmark: the BentoML service vs a seed-style baseline, measured in the same run.

    .venv/bin/python bench/serving.py                       # promoted model in $BENTOML_HOME (~/bentoml)
    .venv/bin/python bench/serving.py --quick               # fewer requests (about 3 min)
    .venv/bin/python bench/serving.py --variants service,service-1worker --rounds 3
    .venv/bin/python bench/serving.py --url http://127.0.0.1:3000 --server-pid 1234   # a running service
    .venv/bin/python bench/serving.py --quick --also-tags cxr-pneumonia:old --rounds 2   # two models, one run

Drives each server in turn (one at a time, on 127.0.0.1, once its process tree is idle) with
the same original-size JPEGs (``../shared/data/originals``, or generated ~1.5k px ones when
absent): closed loop at concurrency 1, 8 and 32 with a bounded number of requests per level,
then an open-loop steady 10 requests/s run (latency counted from each request's scheduled
send time, so a server that falls behind is charged for the queue). The service is driven on
both its routes: ``/predict_raw`` (the file as the body) and ``/predict`` (a multipart form,
as the baseline). Prints one table with images/s, p50/p95/p99 latency, errors, server RSS
(the whole process tree) before and after, server and client CPU per request, and the ratio
to the baseline at the same concurrency; then the targets and whether they are met.

Baseline (``bench/seed_server.py``): one stdlib HTTP handler that fully decodes the JPEG
and calls Keras ``model.predict`` on one image per request -- the seed's way -- on the same
model's ``model.keras``.

Variants of the service are environment settings, not code changes (see VARIANTS); ``--also-tags``
adds the shipped service serving other stored models (``service@TAG``), interleaved in the same run:
e.g. an export from before the subtype head against one with it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.loadgen import ROUTES, build_requests, closed_loop, open_loop  # noqa: E402
from bench.report import (fmt_bytes, fmt_ratio, free_port, load_note, ratio, render_table, tree_cpu_seconds,  # noqa: E402
                          tree_rss, verdict, wait_idle, wait_quiet)

MODEL_NAME = "cxr-pneumonia"
ORIGINALS = REPO.parent / "shared" / "data" / "originals"
VENV_BIN = Path(sys.executable).parent
# name -> (kind, extra environment). "service" is the service as shipped (service.py defaults:
# 2 workers, 4 API threads each, 1 TFLite thread); the others change one setting.
VARIANTS: dict[str, tuple[str, dict]] = {
    "service": ("bentoml", {}),
    "service-1worker": ("bentoml", {"CXR_WORKERS": "1"}),
    "service-3workers": ("bentoml", {"CXR_WORKERS": "3"}),
    "service-tflite2": ("bentoml", {"CXR_TFLITE_THREADS": "2"}),
    "service-api2": ("bentoml", {"CXR_API_THREADS": "2"}),
    "service-api8": ("bentoml", {"CXR_API_THREADS": "8"}),
    "service-blas-default": ("bentoml", {"CXR_BLAS_THREADS": "0"}),  # numpy's BLAS pool as it comes
    # BentoML adaptive batching (bench/batched_service.py; it has /predict only)
    "service-batched": ("bentoml", {"CXR_SERVICE_TARGET": "bench.batched_service:Front"}),
    "baseline": ("seed", {}),
}
TARGET_IMG_S_C32 = 60.0
TARGET_SPEEDUP_C32 = 10.0
TARGET_P99_STEADY_MS = 150.0


# ------------------------------------------------------------------ inputs


def load_payloads(folder: Path, n_generated: int = 16) -> tuple[list[tuple[str, bytes]], str]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg")) if folder.is_dir() else []
    if files:
        return [(p.name, p.read_bytes()) for p in files], f"{len(files)} original JPEGs from {folder}"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n_generated):
        h, w = int(rng.integers(1100, 1800)), int(rng.integers(1300, 2200))
        yy, xx = np.mgrid[0:h, 0:w]
        img = 120 + 60 * np.sin(xx / (37 + i)) * np.cos(yy / 53) + rng.normal(0, 12, (h, w))
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8), "L").save(buf, "JPEG", quality=90)
        out.append((f"generated-{i}.jpeg", buf.getvalue()))
    return out, f"{n_generated} generated {h}x{w}-ish JPEGs ({folder} absent)"


def find_model(bentoml_home: Path, tag: str | None) -> tuple[str, Path]:
    if not tag:
        alias = bentoml_home / "aliases" / f"{MODEL_NAME}.json"
        tag = json.loads(alias.read_text()).get("promoted") if alias.exists() else None
    if not tag:
        raise SystemExit(
            f"no promoted {MODEL_NAME} model in {bentoml_home}. Get one with the pipeline flow "
            f"(`make real` or `python -m pipelines.flow` promotes into $BENTOML_HOME), or build a full-size "
            f"stand-in with `--make-model` (MobileNetV2 224 px alpha 1.0 trained a few steps on blobs: fine for "
            f"speed, not a medical model), or pass --bentoml-home / --model-tag.")
    name, _, version = tag.partition(":")
    path = bentoml_home / "models" / name / version
    if not (path / "model.tflite").is_file():
        raise SystemExit(f"{tag}: {path} lacks model.tflite")
    return tag, path


def describe_model(path: Path) -> str:
    from cxr import UserError
    from cxr.records.model_card import ModelCard

    try:
        card = ModelCard.read(path)
    except UserError as exc:
        return f"no usable model card ({exc})"
    model = card.model
    legacy = {"backbone": "mobilenet_v2", "alpha": (card.params.get("model") or {}).get("alpha")}
    backbone = model.get("backbone") or legacy  # cards from before the architecture was recorded
    weights = model.get("weights_init")
    note = (f"{model.get('architecture', backbone)}, {card.imaging.image_size} px, weights_init {str(weights)[:20]}, "
            f"synthetic data {card.synthetic}")
    if card.imaging.image_size != 224 or backbone.get("backbone") != "mobilenet_v2" or backbone.get("alpha") != 1.0:
        note += "  ** NOT the production model: figures do not stand for the real service **"
    return note


def make_model(out: Path) -> Path:
    """A full-size stand-in (224 px, alpha 1.0) promoted into out/bentoml_home via the test fixture."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "tests.serving_fixtures", str(out / "fixture"), "--size", "224",
                    "--alpha", "1.0", "--steps", "5"], cwd=REPO, check=True)
    return out / "fixture" / "bentoml_home"


def model_args(ap: argparse.ArgumentParser, log_dir: str) -> None:
    """The options of the single-service benches (hostile, footprint): which model, where logs go."""
    ap.add_argument("--bentoml-home", type=Path, default=Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")))
    ap.add_argument("--make-model", type=Path, metavar="DIR", help="build + promote a stand-in model under DIR")
    ap.add_argument("--log-dir", type=Path, default=Path(log_dir))


def shipped_service(a: argparse.Namespace) -> tuple[str, "Server"]:
    """(tag, the service as shipped, launched) for the options of :func:`model_args`."""
    a.log_dir.mkdir(parents=True, exist_ok=True)
    home = a.make_model and make_model(a.make_model) or a.bentoml_home
    tag, model_path = find_model(home, None)
    return tag, Server("service", "bentoml", {}, model_path, tag, home, a.log_dir)


# ------------------------------------------------------------------ servers


class Server:
    def __init__(self, name: str, kind: str, env: dict, model_path: Path, tag: str, bentoml_home: Path, log_dir: Path):
        self.name, self.kind = name, kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BENTOML_HOME": str(bentoml_home),
                    "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1", "PYTHONPATH": str(REPO), **env}
        if kind == "bentoml":
            full_env["CXR_MODEL_TAG"] = tag
            target = env.get("CXR_SERVICE_TARGET", "service:CXRScreening")
            cmd = [str(VENV_BIN / "bentoml"), "serve", target, "--host", "127.0.0.1",
                   "--port", str(self.port)]
            self.ready_path = "/readyz"
        else:
            cmd = [sys.executable, str(REPO / "bench" / "seed_server.py"), "--model", str(model_path / "model.keras"),
                   "--port", str(self.port)]
            self.ready_path = "/"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float = 180) -> float:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + self.log_path.read_text(errors="replace")[-2000:])
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s; see {self.log_path}")

    def rss(self) -> int | None:
        return tree_rss(self.proc.pid)

    def cpu(self) -> float | None:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


# ------------------------------------------------------------------ main


def combine(runs: list[dict]) -> dict:
    """Several rounds of one server -> the median of each figure (one round: itself)."""
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def merge(summaries: list[dict]) -> dict:
        out = {k: med([r[k] for r in summaries]) for k in summaries[0] if k not in ("requests", "errors", "ok")}
        for k in ("requests", "errors", "ok"):
            out[k] = sum(r[k] for r in summaries)
        return out

    first = runs[0]
    return {"levels": {c: merge([r["levels"][c] for r in runs]) for c in first["levels"]},
            "steady": merge([r["steady"] for r in runs]),
            "rss_before": med([r["rss_before"] for r in runs]), "rss_after": med([r["rss_after"] for r in runs]),
            "env": first["env"], "ready_s": med([r["ready_s"] for r in runs]), "rounds": len(runs),
            "per_round_images_per_s": {c: [r["levels"][c]["images_per_s"] for r in runs] for c in first["levels"]}}


def measure_route(url: str, requests, levels: list[int], n: int, steady_rate: float, steady_n: int, cpu, rss) -> dict:
    """Closed loop at each concurrency, then the open-loop steady run, for one server and route."""
    asyncio.run(closed_loop(url, requests, 2, 8))  # warm every code path once
    rss_before, per_level = rss(), {}
    for c in levels:
        cpu0 = cpu()
        r = asyncio.run(closed_loop(url, requests, c, n, warmup=min(c, 8)))
        cpu1 = cpu()
        # server CPU per request sent (the warm-up ones included: they ran inside the window)
        r["server_cpu_ms"] = None if cpu0 is None or cpu1 is None else 1000 * (cpu1 - cpu0) / (n + min(c, 8))
        per_level[c] = r
        print(f"  c={c:<3} {r['images_per_s']:.1f} img/s  p50 {r['p50_ms']:.0f} ms  p99 {r['p99_ms']:.0f} ms  "
              f"errors {r['errors']}  CPU/request: server {r['server_cpu_ms'] or 0:.1f} ms, client "
              f"{r['client_cpu_ms']:.1f} ms", flush=True)
    steady = asyncio.run(open_loop(url, requests, steady_rate, steady_n))
    print(f"  steady {steady_rate:g}/s x {steady_n}: p50 {steady['p50_ms']:.0f} ms  p99 {steady['p99_ms']:.0f} ms  "
          f"errors {steady['errors']}", flush=True)
    return {"levels": per_level, "steady": steady, "rss_before": rss_before, "rss_after": rss()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bentoml-home", type=Path, default=Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")))
    ap.add_argument("--model-tag", help="default: the promoted model")
    ap.add_argument("--make-model", type=Path, metavar="DIR",
                    help="build + promote a full-size stand-in model (224 px, alpha 1.0) under DIR and use it")
    ap.add_argument("--images", type=Path, default=ORIGINALS)
    ap.add_argument("--url", help="benchmark an already running service instead of starting one")
    ap.add_argument("--server-pid", type=int, help="with --url: its pid, for RSS and CPU")
    ap.add_argument("--variants", default="service,baseline",
                    help=f"comma-separated, from {sorted(VARIANTS)}; 'baseline' is always measured")
    ap.add_argument("--routes", default="predict_raw,predict",
                    help=f"the service's routes to drive, from {ROUTES} (the baseline only has a form route)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=320, help="measured requests per level (service)")
    ap.add_argument("--baseline-requests", type=int, default=160, help="measured requests per level (baseline)")
    ap.add_argument("--steady-rate", type=float, default=10.0)
    ap.add_argument("--steady-seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every server this many times, interleaved; the tables show the medians")
    ap.add_argument("--also-tags", default="",
                    help="comma-separated tags of other stored models, each served as the shipped service too")
    ap.add_argument("--quick", action="store_true", help="160/64 requests per level, 15 s steady")
    ap.add_argument("--max-load", type=float, default=0.0,
                    help="wait (up to 10 min) for the 1-min load average to fall below this first (0: don't)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/cxr-bench-serving"))
    a = ap.parse_args()
    if a.quick:
        a.requests, a.baseline_requests, a.steady_seconds = 160, 64, 15.0
    levels = [int(c) for c in a.concurrency.split(",")]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    routes = [r.strip() for r in a.routes.split(",") if r.strip()]
    if "baseline" not in variants:
        variants.append("baseline")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if not routes or any(r not in ROUTES for r in routes):
        ap.error(f"--routes must name some of {ROUTES}")
    if a.url:
        variants = ["service"] + [v for v in variants if v == "baseline"]
    a.log_dir.mkdir(parents=True, exist_ok=True)

    home = a.make_model and make_model(a.make_model) or a.bentoml_home
    tag, model_path = find_model(home, a.model_tag)
    payloads, what = load_payloads(a.images)
    requests = {route: build_requests(payloads, route) for route in ROUTES}
    print("# Serving benchmark")
    print(f"model {tag} ({describe_model(model_path)})")
    print(f"inputs: {what}, {sum(len(d) for _, d in payloads) / len(payloads) / 1024:.0f} KiB on average")
    print(f"load before: {wait_quiet(a.max_load, 600)}")
    print(f"python {sys.version.split()[0]}; every server on 127.0.0.1, one at a time, measured once it is idle; "
          f"client: one asyncio process (aiohttp, bodies built up front)")

    models = {name: (tag, model_path) for name in variants}
    for other in (t.strip() for t in a.also_tags.split(",") if t.strip()):
        name = f"service@{other}"
        VARIANTS[name] = VARIANTS["service"]
        models[name] = find_model(home, other)
        variants.insert(0, name)
        print(f"also: {name} ({describe_model(models[name][1])})")
    order = [v for v in variants if v != "baseline"] + ["baseline"]
    rounds: dict[str, list[dict]] = {}
    for round_no in range(a.rounds):
        for name in order:
            kind, env = VARIANTS[name]
            server = None
            n = a.baseline_requests if kind == "seed" else a.requests
            try:
                if a.url and name == "service":
                    url = a.url.rstrip("/")
                    rss = (lambda: tree_rss(a.server_pid) if a.server_pid else None)
                    cpu = (lambda: tree_cpu_seconds(a.server_pid) if a.server_pid else None)
                    started, settled = None, 0.0
                else:
                    server = Server(name.replace(":", "_"), kind, env, models[name][1], models[name][0], home,
                                    a.log_dir)
                    started = server.wait_ready()
                    settled = wait_idle(server.proc.pid)  # background warm-up (Grad-CAM model) done
                    url, rss, cpu = server.url, server.rss, server.cpu
                served_routes = ["predict"] if kind == "seed" or "CXR_SERVICE_TARGET" in env else routes
                for route in served_routes:
                    label = name if kind == "seed" else f"{name} /{route}"
                    print(f"\n{label} (round {round_no + 1}/{a.rounds}): ready in {started or 0:.1f} s, idle after "
                          f"{settled:.1f} s more; {n} requests per level; {load_note()}", flush=True)
                    result = measure_route(url, requests[route], levels, n, a.steady_rate,
                                           int(a.steady_rate * a.steady_seconds), cpu, rss)
                    rounds.setdefault(label, []).append({**result, "env": env, "ready_s": started})
            finally:
                if server:
                    server.stop()

    results = {label: combine(runs) for label, runs in rounds.items()}
    base = results["baseline"]
    rows, steady_rows = [], []
    for label, res in results.items():
        for c, r in res["levels"].items():
            rows.append({"server": label, "c": c, "requests": r["requests"], "errors": r["errors"],
                         "img/s": r["images_per_s"], "p50 ms": r["p50_ms"], "p95 ms": r["p95_ms"], "p99 ms": r["p99_ms"],
                         "RSS before": fmt_bytes(res["rss_before"]), "RSS after": fmt_bytes(res["rss_after"]),
                         "server CPU ms/req": r.get("server_cpu_ms"), "client CPU ms/req": r.get("client_cpu_ms"),
                         "vs baseline": fmt_ratio(ratio(r["images_per_s"], base["levels"][c]["images_per_s"])),
                         "img/s per round": " ".join(f"{x:.0f}" for x in res["per_round_images_per_s"][c])})
        s = res["steady"]
        steady_rows.append({"server": label, "offered/s": s["offered_per_s"], "requests": s["requests"],
                            "errors": s["errors"], "done/s": s["images_per_s"], "p50 ms": s["p50_ms"],
                            "p95 ms": s["p95_ms"], "p99 ms": s["p99_ms"], "max ms": s["max_ms"],
                            "p99 vs baseline": fmt_ratio(ratio(s["p99_ms"], base["steady"]["p99_ms"]))})
    cols = ["server", "c", "requests", "errors", "img/s", "p50 ms", "p95 ms", "p99 ms", "RSS before", "RSS after",
            "server CPU ms/req", "client CPU ms/req", "vs baseline"] + (["img/s per round"] if a.rounds > 1 else [])
    print(f"\n## Closed loop (same run; {a.rounds} interleaved round(s), medians; ratio = images/s over the "
          f"baseline's at the same concurrency)\n")
    print(render_table(rows, cols, digits=1))
    print(f"\n## Steady {a.steady_rate:g} requests/s, open loop (latency from the scheduled send time)\n")
    print(render_table(steady_rows, ["server", "offered/s", "requests", "errors", "done/s", "p50 ms", "p95 ms", "p99 ms",
                                     "max ms", "p99 vs baseline"], digits=1))
    print(f"\nload after: {load_note()}")

    print("\n## Targets (this 2-core machine)\n")
    top = max(levels)
    for label, res in results.items():
        if label == "baseline" or top not in res["levels"]:
            continue
        r = res["levels"][top]
        sp = ratio(r["images_per_s"], base["levels"][top]["images_per_s"])
        p99 = res["steady"]["p99_ms"]
        print(f"- {label}: c={top} {r['images_per_s']:.1f} img/s (target >= {TARGET_IMG_S_C32:g}): "
              f"{verdict(r['images_per_s'], TARGET_IMG_S_C32)}; {fmt_ratio(sp)} the baseline (target >= "
              f"{TARGET_SPEEDUP_C32:g}x): {verdict(sp, TARGET_SPEEDUP_C32)}; steady p99 {p99:.0f} ms (target <= "
              f"{TARGET_P99_STEADY_MS:g}): {verdict(p99, TARGET_P99_STEADY_MS, higher_is_better=False)}")
    if a.json:
        a.json.write_text(json.dumps({"model": tag, "inputs": what, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
