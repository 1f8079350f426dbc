"""Served predictions on original-size X-rays against the evaluate stage's, image by image.

``../shared/data/originals`` holds full-size JPEGs whose 224-px re-encodings are in the
data set. For each original: the service's probability (multipart ``/predict`` of the
full-size file, over HTTP) against what the pipeline computes for the same image -- the
evaluate stage's ``reports/predictions.csv`` row when the image fell in val/test, else the
same model (``models/model.keras``) on the prepared copy, as evaluate would. They differ
only by the two resize chains (original -> service vs original -> 224-px JPEG -> pipeline).

    python bench/served_vs_evaluate.py --project /path/to/run --url http://127.0.0.1:3000
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pipeline_probabilities(project: Path, names: list[str]) -> dict[str, tuple[float, str]]:
    """name -> (probability, where it came from) for every original found in the run."""
    from cxr import layout

    rows = {}
    preds = layout.path("evaluate", "predictions", project)
    if preds.exists():
        with open(preds, newline="") as fh:
            for r in csv.DictReader(fh):
                rows[Path(r["path"]).name] = (float(r["probability"]), f"predictions.csv ({r['split']})")
    missing = [n for n in names if n not in rows]
    if missing:
        import keras

        from cxr.data.dataset import load_split
        from cxr.model.network import predict

        model = keras.saving.load_model(layout.path("evaluate", "model", project))
        for split in ("train", "val", "test"):
            data = load_split(layout.path("evaluate", "prepared", project), split)
            index = {Path(str(p)).name: i for i, p in enumerate(data.paths)}
            hits = [n for n in missing if n in index]
            if hits:
                probs = predict(model, data.images[[index[n] for n in hits]])
                rows.update({n: (float(p), f"model.keras on prepared {split}") for n, p in zip(hits, probs)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a repo where the pipeline ran")
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--originals", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/originals")
    args = parser.parse_args()
    import httpx

    files = sorted(args.originals.glob("*/*.jp*g"))
    if not files:
        print(f"no JPEGs under {args.originals}", file=sys.stderr)
        return 2
    ref = pipeline_probabilities(args.project, [f.name for f in files])
    rows, refused = [], []
    with httpx.Client(timeout=60) as client:
        for f in files:
            r = client.post(f"{args.url}/predict", files={"image": (f.name, f.read_bytes(), "image/jpeg")})
            if r.status_code == 422:  # refused (not a chest X-ray, says the detector): no label to compare
                refused.append((f.parent.name, f.name, r.json().get("error", r.text)))
                continue
            r.raise_for_status()
            served = r.json()
            if f.name in ref:
                p, where = ref[f.name]
                rows.append((f.parent.name, f.name, served["probability"], p, where, served["label"],
                             "PNEUMONIA" if p >= served["decision_threshold"] else "NORMAL"))
    diffs = np.array([abs(a - b) for _, _, a, b, *_ in rows])
    agree = sum(r[5] == r[6] for r in rows)
    print("| truth | file | served p | pipeline p | pipeline source | served label | pipeline label |")
    print("|---|---|---|---|---|---|---|")
    for truth, name, a, b, where, la, lb in rows:
        print(f"| {truth} | {name} | {a:.4f} | {b:.4f} | {where} | {la} | {lb} |")
    print(f"\n{len(rows)} of {len(files)} originals found in the run; |served - pipeline|: median "
          f"{np.median(diffs):.4f}, mean {diffs.mean():.4f}, max {diffs.max():.4f}; labels agree on {agree}/{len(rows)}; "
          f"served label correct on {sum(r[5] == r[0] for r in rows)}/{len(rows)}")
    for truth, name, why in refused:
        print(f"refused by the service (422): {truth} {name}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
