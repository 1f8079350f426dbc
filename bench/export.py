"""Export benchmark: size, per-image latency and agreement with Keras of every exported format.

    .venv/bin/python bench/export.py                          # the promoted model, else models/export
    .venv/bin/python bench/export.py --export-dir /path/to/export --repeats 5
    PYTHONPATH=/tmp/cxr-ort .venv/bin/python bench/export.py  # + ONNX Runtime when importable

Formats: Keras (``model.keras``, called directly and through ``model.predict`` -- the seed's
way), SavedModel (``tf.saved_model.load`` serving signature; exported from the Keras file into
a temp dir when the export has none, as in a store entry), TFLite float through LiteRT
(``cxr.model.runtime.TFLiteModel``, 2 and 1 threads), and ONNX Runtime (tf2onnx from the SavedModel)
only when ``onnxruntime`` and ``tf2onnx`` import (they are not project requirements). Inputs:
the original-size JPEGs (``../shared/data/originals``) through THE preprocessing
(``cxr.imaging.preprocess.preprocess_bytes``); generated images when absent. Latency: median over
``--repeats`` of batch 1 (each image) and of batch 32; ratio = speed over Keras ``model.predict``
(the seed's way) in the same run. Agreement: max |p - p_keras| over the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.report import fmt_bytes, fmt_ratio, load_note, promoted_store_dir, render_table, wait_quiet  # noqa: E402
from cxr import layout  # noqa: E402

ORIGINALS = REPO.parent / "shared" / "data" / "originals"
BASELINE = "keras model.predict (seed)"  # the speed ratios' 1.00x


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def input_images(folder: Path, size: int) -> tuple[np.ndarray, str]:
    from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes

    cfg = ImagingConfig(size, "equalize")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")) if folder.is_dir() else []
    if files:
        return np.stack([preprocess_bytes(p.read_bytes(), cfg) for p in files]), f"{len(files)} images from {folder}"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = [(120 + 60 * np.sin(xx / (7 + i)) * np.cos(yy / 11) + rng.normal(0, 12, (size, size))).clip(0, 255)
            for i in range(40)]
    return np.stack(imgs).astype(np.uint8), "40 generated images"


def timed(fn, x: np.ndarray, repeats: int) -> float:
    """Median seconds of fn(x) over ``repeats`` (after one warm-up call)."""
    fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def promoted_dir() -> tuple[Path, str] | None:
    found = promoted_store_dir()
    return (found[0], f"promoted {found[1]}") if found else None


def locate(a) -> tuple[Path, str]:
    """--export-dir; else the promoted model (what is served); else models/export."""
    if a.export_dir:
        return a.export_dir, str(a.export_dir)
    found = None if a.local else promoted_dir()
    if found:
        return found
    export_dir = layout.path("export", "out", REPO)
    if (export_dir / "model.tflite").is_file():
        return export_dir, str(export_dir.relative_to(REPO))
    raise SystemExit("no export: promote a model (make real), run the pipeline (dvc repro export) or pass --export-dir")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export-dir", type=Path)
    ap.add_argument("--promoted", action="store_true", help="the promoted store entry (the default when there is one)")
    ap.add_argument("--local", action="store_true", help="this checkout's models/export, not the promoted model")
    ap.add_argument("--images", type=Path, default=ORIGINALS)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (batch 32) / passes over the images (batch 1)")
    ap.add_argument("--max-load", type=float, default=0.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    export_dir, where = locate(a)
    from cxr.imaging.preprocess import to_model_input
    from cxr.records.model_card import ModelCard

    card = ModelCard.read(export_dir)
    size = card.imaging.image_size
    images, what = input_images(a.images, size)

    print("# Export benchmark")
    print(f"export: {where} ({export_dir}); synthetic data: {card.synthetic}; "
          f"weights init: {str(card.model.get('weights_init'))[:24]}")
    print(f"inputs: {what} through cxr.imaging.preprocess.preprocess_bytes ({size} px)")
    print(f"load before: {wait_quiet(a.max_load, 600)}")

    import keras
    import tensorflow as tf

    from cxr.model.runtime import TFLiteModel

    keras_model = keras.saving.load_model(export_dir / "model.keras", compile=False)
    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-export-"))
    saved_dir = export_dir / "saved_model"
    saved_note = ""
    if not saved_dir.is_dir():
        saved_dir = tmp / "saved_model"
        keras_model.export(str(saved_dir), format="tf_saved_model", verbose=False)
        saved_note = "exported from model.keras for this run"

    runners: dict[str, tuple] = {}  # name -> (fn over uint8 [N,S,S] -> probs, path, note)
    runners["keras (model(x))"] = (lambda x: np.asarray(keras_model(to_model_input(x), training=False)).reshape(-1),
                                   export_dir / "model.keras", "")
    runners["keras model.predict (seed)"] = (
        lambda x: np.asarray(keras_model.predict(to_model_input(x), verbose=0)).reshape(-1), export_dir / "model.keras", "")
    compiled = tf.function(lambda t: keras_model(t, training=False), reduce_retracing=True)
    runners["keras (tf.function)"] = (lambda x: np.asarray(compiled(tf.constant(to_model_input(x)))).reshape(-1),
                                      export_dir / "model.keras", "as cxr.model.network.predict (since 67b1e10)")
    loaded = tf.saved_model.load(str(saved_dir))
    sig = loaded.signatures["serving_default"]
    in_name = list(sig.structured_input_signature[1].keys())[0]
    runners["savedmodel (signature)"] = (
        lambda x: np.asarray(list(sig(**{in_name: tf.constant(to_model_input(x))}).values())[0]).reshape(-1),
        saved_dir, saved_note)
    for threads in (2, 1):
        lite = TFLiteModel(export_dir / "model.tflite", num_threads=threads)
        runners[f"tflite LiteRT {threads} thr"] = (lite.predict, export_dir / "model.tflite", "")
    try:
        import onnxruntime as ort
        import tf2onnx  # noqa: F401

        onnx_path = tmp / "model.onnx"
        import subprocess

        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_dir), "--output",
                        str(onnx_path), "--opset", "17"], check=True, capture_output=True, env=os.environ.copy())
        for threads in (2, 1):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            runners[f"onnxruntime {threads} thr"] = (
                lambda x, s=sess, n=name: np.asarray(s.run(None, {n: to_model_input(x)})[0]).reshape(-1),
                onnx_path, f"tf2onnx from SavedModel, ort {ort.__version__}")
    except ImportError:
        print("onnxruntime/tf2onnx not importable: ONNX Runtime skipped (PYTHONPATH=<dir with them> to include)")
    except Exception as exc:  # noqa: BLE001
        print(f"ONNX conversion failed, skipped: {type(exc).__name__}: {str(exc)[-300:]}")

    reference = runners["keras (model(x))"][0](images)
    batch32 = images[:32] if len(images) >= 32 else np.resize(images, (32,) + images.shape[1:])
    rows, results = [], {}
    for name, (fn, path, note) in runners.items():
        probs = np.concatenate([fn(images[i:i + 1]) for i in range(len(images))])
        one = statistics.median(
            [timed(fn, images[i:i + 1], 1) for _ in range(max(1, a.repeats // 2)) for i in range(len(images))])
        b32 = timed(fn, batch32, a.repeats) / 32
        results[name] = {"bytes": size_of(path), "ms_batch1": 1000 * one, "ms_per_image_batch32": 1000 * b32,
                         "max_abs_diff": float(np.max(np.abs(probs - reference))), "note": note}
        print(f"  {name}: batch 1 {1000 * one:.1f} ms, batch 32 {1000 * b32:.1f} ms/image", flush=True)
    base = results[BASELINE]
    for name, r in results.items():
        rows.append({"format": name, "size": fmt_bytes(r["bytes"]), "batch 1 ms": r["ms_batch1"],
                     "b1 vs predict": fmt_ratio(base["ms_batch1"] / r["ms_batch1"]),
                     "batch 32 ms/img": r["ms_per_image_batch32"], "img/s b32": 1000 / r["ms_per_image_batch32"],
                     "b32 vs predict": fmt_ratio(base["ms_per_image_batch32"] / r["ms_per_image_batch32"]),
                     "max |dp| vs keras": f"{r['max_abs_diff']:.1e}", "note": r["note"]})
    print(f"\n## Exported formats ({len(images)} images; medians; ratio = speed over Keras model.predict, same run)\n")
    print(render_table(rows, ["format", "size", "batch 1 ms", "b1 vs predict", "batch 32 ms/img", "img/s b32",
                              "b32 vs predict", "max |dp| vs keras", "note"], digits=1))
    print(f"\nprobability range over the images (Keras): {reference.min():.3f} .. {reference.max():.3f}")
    print(f"load after: {load_note()}")
    if a.json:
        a.json.write_text(json.dumps({"export": str(export_dir), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
