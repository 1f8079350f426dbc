"""Pure helpers shared by the benchmarks: statistics, ratios, tables, machine facts.

Everything above ``# ---- machine`` is pure (no I/O) and exercised by tests/code/test_bench.py.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def latency_summary(latencies_s: Sequence[float], errors: int, wall_s: float) -> dict:
    """Throughput and latency percentiles (ms) of one load level."""
    ok = len(latencies_s)
    ms = [1000.0 * x for x in latencies_s]
    return {
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "wall_s": wall_s,
        "images_per_s": ok / wall_s if wall_s > 0 else 0.0,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


def ratio(new: float | None, base: float | None) -> float | None:
    if new is None or base is None or base == 0:
        return None
    return new / base


def fmt_ratio(r: float | None, digits: int = 2) -> str:
    """1.0 -> '1.00x'; None -> 'n/a'. For speed-ups, pass (new throughput / old) or (old time / new)."""
    if r is None or (isinstance(r, float) and (math.isnan(r) or math.isinf(r))):
        return "n/a"
    if r >= 100:
        return f"{r:.0f}x"
    return f"{r:.{digits}f}x"


def fmt_num(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if x != 0 and abs(x) < 10 ** (-digits):
            return f"{x:.1e}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def render_table(rows: Iterable[dict], columns: Sequence[str | tuple[str, str]], digits: int = 1) -> str:
    """A GitHub-markdown table: ``columns`` are keys or (key, header) pairs; values formatted by fmt_num."""
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    body = [[v if isinstance(v := row.get(key), str) else fmt_num(v, digits) for key, _ in cols] for row in rows]
    head = [h for _, h in cols]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in body]
    return "\n".join(out)


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "MET" if ok else "NOT MET"


# ---- machine


def load_note() -> str:
    """One line: load average and core count, for the record (these machines are shared)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load: unknown"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores ({time.strftime('%Y-%m-%d %H:%M:%S')})"


def wait_quiet(max_load: float, timeout_s: float, log=print) -> str:
    """Wait (up to timeout_s) for the 1-minute load to drop under max_load; returns the load note."""
    deadline = time.time() + timeout_s
    while max_load > 0 and os.getloadavg()[0] > max_load and time.time() < deadline:
        log(f"  machine busy ({load_note()}); waiting for load < {max_load} ...")
        time.sleep(15)
    return load_note()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int | None:
    """Resident memory of a process and all its children (bytes), or None if gone."""
    try:
        import psutil

        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total
    except Exception:  # noqa: BLE001 - psutil missing or process gone
        return None


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by a process and all its live children, or None if gone."""
    try:
        import psutil

        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc] + proc.children(recursive=True):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total
    except Exception:  # noqa: BLE001 - psutil missing or process gone
        return None


def wait_idle(pid: int, max_cores: float = 0.15, window_s: float = 1.0, timeout_s: float = 120.0) -> float:
    """Wait until a server's process tree uses under ``max_cores`` CPUs over ``window_s``.

    A service that reports ready while it still loads things in the background (ours warms
    the Grad-CAM model in a thread) would otherwise be measured while it competes with
    itself. Returns the seconds waited (``timeout_s`` if it never settled)."""
    t0 = time.monotonic()
    last = tree_cpu_seconds(pid)
    while last is not None and time.monotonic() - t0 < timeout_s:
        time.sleep(window_s)
        now = tree_cpu_seconds(pid)
        if now is None or (now - last) / window_s < max_cores:
            break
        last = now
    return time.monotonic() - t0


def promoted_store_dir():
    """(folder of the promoted store entry, its tag), or None: read through cxr.ops.registry
    (the alias file under $BENTOML_HOME), without importing BentoML."""
    from cxr.ops.registry import bentoml_home, promoted_tag

    tag = promoted_tag()
    if not tag:
        return None
    name, _, version = tag.partition(":")
    return bentoml_home() / "models" / name / version, tag
