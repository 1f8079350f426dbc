"""Pipeline benchmark: per-stage wall time of a `dvc repro`, the no-op `dvc repro`, and the
training levers as ratios measured in the same run.

    .venv/bin/python bench/pipeline.py --quick    # levers on a sample + a synthetic-data run (~3-4 min)
    .venv/bin/python bench/pipeline.py --full     # levers + a real-data run of this tree and one of the
                                                  # baseline commit, one after the other (~20 min)
    .venv/bin/python bench/pipeline.py --full --baseline none   # this tree only
    .venv/bin/python bench/pipeline.py --levers-only

The run happens in a fresh copy of the working tree (tracked files only, own DVC cache, no git;
``.venv`` linked) under ``--workdir``, so this repository's outputs, dvc.lock and DVC cache are
untouched. With ``--baseline REV`` (default: the commit before the pipeline was made fast) the
same run is made on ``git archive REV`` too, right after, with its own DVC cache, and the two are
printed side by side: each stage, the train stage's own clock (backbone cache, head, fine-tune,
the not-a-chest-X-ray detector fit) and each stage's peak memory (the process tree's RSS, polled). ``--full`` sets ``download.source`` to ``../shared/data/chest_xray_224`` and
``train.weights`` to the ImageNet no-top file in ``../shared/weights`` (absolute paths). Stage
times come from one ``dvc repro`` whose output lines are timestamped as they arrive (stage =
from its "Running stage" line to the next one); then ``dvc repro`` is run again --repeats times
(the no-op). Test-split quality of the run is printed beside the promoted model's (before).

Levers, each against its baseline in the same run, on a sample of real images (``--sample``):
- decode + preprocess every JPEG every epoch vs read the split stage's npz cache;
- draft-mode JPEG decoding vs full decoding, on the original-size X-rays;
- input-pipeline parallelism: preprocess with 1 thread vs the split stage's 4;
- one training pass through the whole (frozen-bottom) network vs on cached bottom activations
  (fine-tune phase), and vs on cached pooled features (head phase).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import fmt_ratio, load_note, promoted_store_dir, render_table, verdict, wait_quiet  # noqa: E402
from cxr import layout  # noqa: E402

SHARED = REPO.parent / "shared"
REAL_DATA = SHARED / "data" / "chest_xray_224"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
ORIGINALS = SHARED / "data" / "originals"
STAGES = ["download", "validate", "split", "train", "evaluate", "export"]
TARGET_FULL_S = 6 * 60
TARGET_TRAIN_S = 4 * 60
TARGET_TRAIN_RSS = 8 * 2**30
DEFAULT_BASELINE = "ab867cf"  # before issue 21: Keras frozen bottom, the detector re-embedding every image
TARGET_NOOP_S = 3.0
RUNNING = re.compile(r"Running stage '([^']+)'")


# ------------------------------------------------------------------ stage timings


def parse_stage_times(events: list[tuple[float, str]], end: float) -> dict[str, float]:
    """(timestamp, line) of a `dvc repro` -> seconds per stage that ran (pure; tested)."""
    starts = [(t, m.group(1)) for t, line in events if (m := RUNNING.search(line))]
    out = {}
    for i, (t, stage) in enumerate(starts):
        nxt = starts[i + 1][0] if i + 1 < len(starts) else end
        out[stage] = out.get(stage, 0.0) + (nxt - t)
    return out


def copy_tree(dest: Path, rev: str | None = None) -> Path:
    """The working tree's tracked files (``rev`` None) or ``git archive rev`` in ``dest``, .venv linked."""
    dest.mkdir(parents=True, exist_ok=True)
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
        for rel in filter(None, files):
            src = REPO / rel.decode()
            if src.is_file():
                (dest / rel.decode()).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel.decode())
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


class PeakMemory:
    """The peak RSS of a process tree, per stage: polled every ``period`` s from a thread; the
    stage is whichever ``Running stage`` line came last."""

    def __init__(self, period: float = 0.5):
        import threading

        self.period, self.stage, self.pid = period, None, None
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        from bench.report import tree_rss

        while not self._stop.wait(self.period):
            if self.pid and self.stage:
                rss = tree_rss(self.pid) or 0
                self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_logged(cmd: list[str], cwd: Path, env: dict, log_path: Path,
               memory: PeakMemory | None = None) -> tuple[list[tuple[float, str]], float, int]:
    t0 = time.perf_counter()
    events = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        if memory is not None:
            memory.pid = proc.pid
        for line in proc.stdout:
            events.append((time.perf_counter() - t0, line.rstrip()))
            if memory is not None and (m := RUNNING.search(line)):
                memory.stage = m.group(1)
            log.write(f"{events[-1][0]:8.1f} {line}")
            log.flush()
        rc = proc.wait()
    return events, time.perf_counter() - t0, rc


def pipeline_run(workdir: Path, real: bool, repeats: int, rev: str | None = None) -> dict:
    repo = copy_tree(workdir / "repo", rev)
    venv_bin = REPO / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONPATH": str(repo),
           "TF_CPP_MIN_LOG_LEVEL": "2", "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PYTHONUNBUFFERED": "1"}  # lines arrive (and are timestamped) as they are printed
    dvc = str(venv_bin / "dvc")
    subprocess.run([dvc, "config", "--local", "core.no_scm", "true"], cwd=repo, env=env, check=True)
    if real:
        subprocess.run([str(venv_bin / "python"), "-m", "cxr.params", "set", f"download.source={REAL_DATA.resolve()}",
                        f"train.weights={WEIGHTS.resolve()}"], cwd=repo, env=env, check=True, capture_output=True)
    print(f"  dvc repro of {rev or 'this tree'} in {repo} ({'real data' if real else 'synthetic default'}); "
          f"log {workdir / 'repro.log'}", flush=True)
    with PeakMemory() as memory:
        events, total, rc = run_logged([dvc, "repro"], repo, env, workdir / "repro.log", memory)
    if rc != 0:
        raise SystemExit(f"dvc repro failed ({rc}); see {workdir / 'repro.log'}:\n" + "\n".join(l for _, l in events[-30:]))
    stages = parse_stage_times(events, total)
    noops = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
        noops.append(time.perf_counter() - t0)
        if RUNNING.search(out.stdout):
            print("  warning: the second dvc repro ran a stage: not a no-op:\n" + out.stdout[-500:])
    from cxr.records.evaluation import Evaluation
    from cxr.records.train_summary import TrainSummary

    metrics = Evaluation.read(layout.path("evaluate", "metrics", repo)).to_dict()
    train_summary = TrainSummary.read(layout.path("evaluate", "train_summary", repo))
    split = json.loads(layout.path("split", "summary", repo).read_text())
    return {"stages": stages, "total_s": total, "noop_s": noops, "metrics": metrics, "peak_rss": memory.peaks,
            "train_timings": train_summary.training.get("timings_s"), "split": split, "rev": rev or "this tree"}


def champion_metrics() -> dict | None:
    found = promoted_store_dir()
    if not found:
        return None
    from cxr.records.model_card import JSON_NAME, ModelCard

    folder, tag = found
    if not (folder / JSON_NAME).exists():
        return None
    card = ModelCard.read(folder)
    return {"tag": tag, "test": card.test_figures, "test_split_hash": card.test_split_hash,
            "synthetic": card.synthetic}


# ------------------------------------------------------------------ levers


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sample_files(n: int) -> list[Path]:
    files = sorted(REAL_DATA.rglob("*.jpeg")) if REAL_DATA.is_dir() else []
    if not files:
        return []
    step = max(1, len(files) // n)
    return files[::step][:n]


def generated_jpegs(n: int, size: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.normal(120, 40, (size, size)).clip(0, 255).astype(np.uint8), "L").save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def levers(n_sample: int, epochs: int, repeats: int) -> list[dict]:
    import numpy as np

    from bench.seed_server import full_decode
    from cxr.data.dataset import preprocess_files
    from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes

    cfg = ImagingConfig(224, "equalize")
    rows = []
    files = sample_files(n_sample)
    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-levers-"))
    if files:
        blobs = [p.read_bytes() for p in files]
        src = f"{len(files)} images of {REAL_DATA.name}"
        root = REAL_DATA
        rel = [str(p.relative_to(REAL_DATA)) for p in files]
    else:
        blobs = generated_jpegs(n_sample, 224)
        src = f"{n_sample} generated 224-px JPEGs"
        for i, b in enumerate(blobs):
            (tmp / f"{i}.jpeg").write_bytes(b)
        root, rel = tmp, [f"{i}.jpeg" for i in range(n_sample)]

    # 1. decode+preprocess every epoch vs the npz cache
    images = np.stack([preprocess_bytes(b, cfg) for b in blobs])
    npz = tmp / "train.npz"
    np.savez(npz, images=images, labels=np.zeros(len(images), np.int8))
    decode_all = timed(lambda: [preprocess_bytes((root / r).read_bytes(), cfg) for r in rel], repeats)
    read_cache = timed(lambda: np.load(npz)["images"], repeats)
    rows.append({"lever": "prepared npz cache (split stage)", "sample": src,
                 "baseline": f"decode+preprocess every JPEG, {epochs} epochs", "baseline s": decode_all * epochs,
                 "lever s": read_cache * epochs + decode_all, "speed-up": fmt_ratio(decode_all * epochs / (read_cache * epochs + decode_all)),
                 "note": "lever = decode once + read the cache each epoch"})

    # 2. input-pipeline parallelism
    one = timed(lambda: preprocess_files(root, rel, cfg, workers=1), repeats)
    four = timed(lambda: preprocess_files(root, rel, cfg, workers=4), repeats)
    rows.append({"lever": "preprocess in 4 threads (split stage)", "sample": src, "baseline": "1 thread",
                 "baseline s": one, "lever s": four, "speed-up": fmt_ratio(one / four), "note": f"{os.cpu_count()} cores"})

    # 3. draft-mode decode of original-size X-rays
    originals = sorted(p for p in ORIGINALS.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg")) if ORIGINALS.is_dir() else []
    big = [p.read_bytes() for p in originals] or generated_jpegs(16, 1600)
    full = timed(lambda: [full_decode(b, 224) for b in big], repeats)
    draft = timed(lambda: [preprocess_bytes(b, cfg) for b in big], repeats)
    rows.append({"lever": "JPEG draft decode to ~224 px", "sample": f"{len(big)} original-size JPEGs",
                 "baseline": "full decode, then resize", "baseline s": full, "lever s": draft,
                 "speed-up": fmt_ratio(full / draft), "note": f"{1000 * draft / len(big):.1f} vs {1000 * full / len(big):.1f} ms/image"})

    # 4. training on cached activations vs through the frozen backbone
    rows += training_levers(images, repeats)
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def training_levers(images, repeats: int) -> list[dict]:
    import keras
    import numpy as np

    from cxr.imaging.preprocess import to_model_input
    from cxr.model.network import Architecture, build, split_at

    weights = str(WEIGHTS) if WEIGHTS.is_file() else None
    keras.utils.set_random_seed(0)
    model = build(224, Architecture(alpha=1.0, dropout=0.2), weights=weights)
    cut = "block_15_expand"
    bottom, top = split_at(model, cut)
    n = len(images)
    labels = (np.arange(n) % 2).astype(np.float32)
    x = to_model_input(images)
    cut_index = [layer.name for layer in model.layers].index(cut)
    for layer in model.layers:
        layer.trainable = False
    for layer in model.layers[cut_index:]:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    logits = keras.Model(model.input, model.get_layer("logit").output)

    def epoch(m, data):
        m.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
        m.fit(data, labels, batch_size=32, epochs=1, verbose=0)  # compile + first trace
        return timed(lambda: m.fit(data, labels, batch_size=32, epochs=1, verbose=0), repeats)

    through = epoch(logits, x)
    acts = np.asarray(bottom.predict(x, batch_size=32, verbose=0)).astype(np.float16)
    cached = epoch(top, acts.astype(np.float32))
    pooled = keras.Model(model.get_layer(cut).input, model.get_layer("pooled").output)
    feats = np.asarray(pooled.predict(acts.astype(np.float32), verbose=0))
    feat_in = keras.Input(feats.shape[-1:])
    head = keras.Model(feat_in, model.get_layer("logit")(model.get_layer("dropout")(feat_in)))
    for layer in model.layers:
        layer.trainable = False
    model.get_layer("logit").trainable = True
    through_head = epoch(logits, x)
    on_feats = epoch(head, feats)
    w = "ImageNet" if weights else "random"
    return [
        {"lever": "fine-tune on cached bottom activations", "sample": f"{n} images, 1 epoch, batch 32, {w} weights",
         "baseline": f"through the whole network (bottom frozen at {cut})", "baseline s": through, "lever s": cached,
         "speed-up": fmt_ratio(through / cached), "note": f"cache costs one bottom pass per view; {acts.nbytes / n / 1024:.0f} KiB/image fp16"},
        {"lever": "head on cached pooled features", "sample": f"{n} images, 1 epoch, batch 32, {w} weights",
         "baseline": "through the whole frozen network", "baseline s": through_head, "lever s": on_feats,
         "speed-up": fmt_ratio(through_head / on_feats), "note": ""},
    ]


TRAIN_PARTS = (("backbone_cache_s", "  train: backbone cache (frozen bottom, every view)"),
               ("head_fit_s", "  train: head fit"), ("fine_tune_fit_s", "  train: fine-tune fit"),
               ("full_fit_s", "  train: whole network (from scratch)"),
               ("ood_fit_s", "  train: not-a-chest-X-ray detector fit"),
               ("subtype_fit_s", "  train: subtype head fit"))


def report_pair(run: dict, base: dict, real: bool) -> None:
    """This tree against the baseline, measured one after the other on this machine."""
    def ratio_row(name: str, new, old, digits: int = 1, scale: float = 1.0) -> dict:
        return {"part": name, base["rev"]: None if old is None else round(old / scale, digits),
                "this tree": None if new is None else round(new / scale, digits),
                "this / baseline": fmt_ratio(new / old) if new and old else ""}

    rows = [ratio_row(stage, run["stages"].get(stage), base["stages"].get(stage)) for stage in STAGES]
    nt, bt = run.get("train_timings") or {}, base.get("train_timings") or {}
    stage_rows = []
    for stage_row in rows:
        stage_rows.append(stage_row)
        if stage_row["part"] == "train":
            stage_rows += [ratio_row(label, nt.get(key), bt.get(key)) for key, label in TRAIN_PARTS
                           if nt.get(key) is not None or bt.get(key) is not None]
    stage_rows.append(ratio_row("total (dvc repro)", run["total_s"], base["total_s"]))
    what = "real data" if real else "synthetic default"
    print(f"\n## One `dvc repro` ({what}), seconds: the baseline {base['rev']} and this tree, one after the other "
          f"({load_note()})\n")
    print(render_table(stage_rows, ["part", base["rev"], "this tree", "this / baseline"], digits=1))
    mem = [ratio_row(stage, run["peak_rss"].get(stage), base["peak_rss"].get(stage), 2, 2**30) for stage in STAGES]
    print("\n## Peak memory per stage (GiB, the stage's process tree, polled every 0.5 s)\n")
    print(render_table(mem, ["part", base["rev"], "this tree", "this / baseline"], digits=2))
    quality = []
    for r in (base, run):
        t, proxy = r["metrics"]["test"], r["metrics"].get("proxy") or {}
        quality.append({"code": r["rev"], "ROC AUC": t["roc_auc"], "recall": t["at_threshold"]["recall"],
                        "specificity": t["at_threshold"]["specificity"], "proxy AUC": proxy.get("roc_auc"),
                        "proxy specificity": proxy.get("specificity"),
                        "detector: test X-rays pass": ((r["metrics"].get("ood") or {}).get("xray") or {}).get("pass_rate")})
    print("\n## The trained model (test split at the threshold chosen on validation)\n")
    print(render_table(quality, list(quality[0]), digits=4))
    if real:
        train_s, train_rss = run["stages"].get("train"), run["peak_rss"].get("train")
        print(f"\n- full run {run['total_s'] / 60:.1f} min (target <= {TARGET_FULL_S // 60} min): "
              f"{verdict(run['total_s'], TARGET_FULL_S, higher_is_better=False)}")
        if train_s:
            print(f"- train stage {train_s / 60:.1f} min (target <= {TARGET_TRAIN_S // 60} min): "
                  f"{verdict(train_s, TARGET_TRAIN_S, higher_is_better=False)}")
        if train_rss:
            print(f"- train stage peak RSS {train_rss / 2**30:.2f} GiB (target <= {TARGET_TRAIN_RSS / 2**30:.0f} GiB): "
                  f"{verdict(train_rss, TARGET_TRAIN_RSS, higher_is_better=False)}")


def report_run(run: dict, real: bool) -> None:
    total = run["total_s"]
    rows = [{"stage": s, "wall s": run["stages"].get(s), "share": f"{100 * run['stages'].get(s, 0) / total:.0f}%"}
            for s in STAGES]
    rows.append({"stage": "total (dvc repro)", "wall s": total, "share": "100%"})
    noop = statistics.median(run["noop_s"])
    rows.append({"stage": f"no-op dvc repro (median of {len(run['noop_s'])})", "wall s": noop, "share": ""})
    n_images = sum((run["split"].get(k) or {}).get("images", 0) for k in ("train", "val", "test"))
    what = f"real data, {n_images} images" if real else f"synthetic default, {n_images} images"
    print(f"\n## Stages of one `dvc repro` ({what}; {load_note()})\n")
    print(render_table(rows, ["stage", "wall s", "share"], digits=1))
    if run.get("train_timings"):
        print(f"\ntrain stage inside: {run['train_timings']}")
    t = run["metrics"]["test"]
    new_q = {"roc_auc": t["roc_auc"], "recall": t["at_threshold"]["recall"],
             "specificity": t["at_threshold"]["specificity"]}
    q = [{"model": "this run", **new_q, "test split": run["metrics"]["data"]["test_split_hash"][:12]}]
    before = champion_metrics() if real else None  # a synthetic run's figures compare to nothing
    old_q = None
    if before:
        bt = before["test"]
        old_q = {"roc_auc": bt.get("roc_auc"), "recall": (bt.get("at_threshold") or {}).get("recall"),
                 "specificity": (bt.get("at_threshold") or {}).get("specificity")}
        q.append({"model": f"promoted {before['tag']}", **old_q, "test split": str(before["test_split_hash"])[:12]})
    print("\n## Test-split quality (at the threshold chosen on validation)\n")
    print(render_table(q, ["model", ("roc_auc", "ROC AUC"), "recall", "specificity", "test split"], digits=4))
    print()
    if real:
        print(f"- full run {total / 60:.1f} min (target <= {TARGET_FULL_S // 60} min): "
              f"{verdict(total, TARGET_FULL_S, higher_is_better=False)}")
    print(f"- no-op dvc repro {noop:.2f} s (target <= {TARGET_NOOP_S:g} s): "
          f"{verdict(noop, TARGET_NOOP_S, higher_is_better=False)}")
    if old_q and real:
        same = before["test_split_hash"] == run["metrics"]["data"]["test_split_hash"]
        worse = [k for k in new_q if old_q[k] is not None and new_q[k] < old_q[k] - 0.01]
        print(f"- quality vs the promoted model ({'same test split' if same else 'DIFFERENT test split'}): "
              f"{'no worse (within 0.01)' if not worse else 'worse on ' + ', '.join(worse)}")


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="full real-data run (needs ../shared)")
    mode.add_argument("--quick", action="store_true", help="synthetic-data run (default)")
    mode.add_argument("--levers-only", action="store_true")
    ap.add_argument("--sample", type=int, default=256, help="images for the lever measurements")
    ap.add_argument("--epochs", type=int, default=14, help="epochs assumed for the cache lever (head 8 + fine-tune 6)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, help="default: a new temp dir (kept, for the logs)")
    ap.add_argument("--baseline", default=None,
                    help=f"with --full: also run this git revision, right after (default {DEFAULT_BASELINE}; "
                         "'none': this tree only)")
    ap.add_argument("--max-load", type=float, default=0.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.full and not (REAL_DATA.is_dir() and WEIGHTS.is_file()):
        raise SystemExit(f"--full needs {REAL_DATA} and {WEIGHTS}")

    print("# Pipeline benchmark")
    print(f"load before: {wait_quiet(a.max_load, 600)}")
    results: dict = {}
    print("\nlevers (sample) ...", flush=True)
    lever_rows = levers(a.sample, a.epochs, a.repeats)
    results["levers"] = lever_rows
    print(f"\n## Levers ({load_note()}; same run, medians of {a.repeats})\n")
    print(render_table(lever_rows, ["lever", "sample", "baseline", "baseline s", "lever s", "speed-up", "note"], digits=2))

    if not a.levers_only:
        workdir = a.workdir or Path(tempfile.mkdtemp(prefix="cxr-bench-pipeline-"))
        workdir.mkdir(parents=True, exist_ok=True)
        real = bool(a.full)
        print(f"\nrun ({'real data' if real else 'synthetic'}) ... {load_note()}", flush=True)
        run = pipeline_run(workdir, real, a.repeats)
        results["run"] = run
        report_run(run, real)
        baseline = a.baseline or (DEFAULT_BASELINE if real else "none")
        if baseline != "none":
            print(f"\nbaseline run ({baseline}) ... {load_note()}", flush=True)
            base = pipeline_run(workdir / "baseline", real, 1, rev=baseline)
            results["baseline"] = base
            report_pair(run, base, real)
        print(f"\nlogs: {workdir}")
    print(f"load after: {load_note()}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
