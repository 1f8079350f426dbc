"""Pictures for the Prefect UI: the ROC and precision-recall curves, the confusion matrix and a
few Grad-CAM overlays, as PNGs embedded in one markdown artifact (data URIs: the UI renders
them, no file paths to chase).

Drawn with PIL from the files the stages wrote (matplotlib is not a dependency of the project),
found through :mod:`cxr.layout` (``dvc.yaml`` owns the paths). The overlays are what the service
answers on ``/explain``: the exported ``model.tflite`` on LiteRT
(:meth:`cxr.model.runtime.TFLiteModel.explain`) over the raw test image through THE
preprocessing, drawn by :func:`cxr.serve.explain.heatmap_png`, re-encoded with a 128-colour
palette so that the whole artifact stays within :data:`MAX_BYTES`.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cxr import SCREENING_NOTICE, SYNTHETIC_WARNING, layout

KEY = "cxr-pictures"
MAX_BYTES = 300_000  # the artifact's markdown; overlays that would pass it are left out
OVERLAY_SIZE = 224  # overlays smaller than this (a tiny test model) are scaled up to it
WIDTH, HEIGHT = 440, 430
CURVE = (214, 96, 40)
POINT = (30, 90, 200)
GRID = (225, 225, 225)
DIAGONAL = (170, 170, 170)


@dataclass(frozen=True)
class Frame:
    """Where the unit square of a curve lies on its picture."""

    left: int = 62
    top: int = 40
    side: int = 340

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Pixel of the point (x, y), both in [0, 1]; y grows upwards."""
        return self.left + x * self.side, self.top + (1 - y) * self.side


FRAME = Frame()


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def curve_png(xs: list[float], ys: list[float], title: str, xlabel: str, ylabel: str, *,
              diagonal: bool = False, point: tuple[float, float] | None = None) -> bytes:
    """One curve on the unit square (axes 0 to 1, a grid line every 0.2); ``point``: a marked
    operating point, ``diagonal``: the chance line."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)
    f = FRAME
    for i in range(6):
        v = i / 5
        draw.line([f.at(v, 0), f.at(v, 1)], fill=GRID)
        draw.line([f.at(0, v), f.at(1, v)], fill=GRID)
        draw.text((f.at(v, 0)[0], f.top + f.side + 6), f"{v:.1f}", fill="black", font=small, anchor="mt")
        draw.text((f.left - 6, f.at(0, v)[1]), f"{v:.1f}", fill="black", font=small, anchor="rm")
    if diagonal:
        draw.line([f.at(0, 0), f.at(1, 1)], fill=DIAGONAL, width=1)
    draw.rectangle([f.at(0, 1), f.at(1, 0)], outline="black")
    points = [f.at(min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)) for x, y in zip(xs, ys)]
    if len(points) > 1:
        draw.line(points, fill=CURVE, width=3, joint="curve")
    if point is not None:
        px, py = f.at(*point)
        draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=POINT, outline="white")
    draw.text((f.left + f.side / 2, 12), title, fill="black", font=font, anchor="mt")
    draw.text((f.left + f.side / 2, f.top + f.side + 26), xlabel, fill="black", font=font, anchor="mt")
    label = Image.new("RGB", (f.side, 20), "white")
    ImageDraw.Draw(label).text((f.side / 2, 10), ylabel, fill="black", font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (4, f.top))
    return _png(img)


def confusion_png(confusion: dict, title: str) -> bytes:
    """The 2 x 2 matrix (rows: actual class, columns: predicted), each cell shaded by its share
    of its row: green on the diagonal, red off it."""
    cell, left, top = 120, 170, 72
    img = Image.new("RGB", (left + 2 * cell + 20, top + 2 * cell + 16), "white")
    draw = ImageDraw.Draw(img)
    font, big = _font(14), _font(20)
    rows = (("NORMAL", confusion.get("tn", 0), confusion.get("fp", 0)),
            ("PNEUMONIA", confusion.get("fn", 0), confusion.get("tp", 0)))
    draw.text((img.width / 2, 10), title, fill="black", font=font, anchor="mt")
    draw.text((left + cell, top - 36), "predicted", fill="black", font=font, anchor="mt")
    for j, name in enumerate(("NORMAL", "PNEUMONIA")):
        draw.text((left + j * cell + cell / 2, top - 16), name, fill="black", font=font, anchor="mt")
    for i, (name, *counts) in enumerate(rows):
        total = max(sum(counts), 1)
        draw.text((left - 10, top + i * cell + cell / 2), f"actual {name}", fill="black", font=font, anchor="rm")
        for j, n in enumerate(counts):
            share = n / total
            base = (60, 150, 80) if i == j else (210, 60, 50)
            colour = tuple(int(255 - share * (255 - c)) for c in base)
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 4, top + (i + 1) * cell - 4]
            draw.rectangle(box, fill=colour, outline="black")
            centre = (box[0] + box[2]) / 2
            draw.text((centre, box[1] + cell / 2 - 14), str(n), fill="black", font=big, anchor="mm")
            draw.text((centre, box[1] + cell / 2 + 12), f"{share:.1%} of row", fill="black", font=font, anchor="mm")
    return _png(img)


def _small_png(png: bytes, size: int) -> bytes:
    """The service's overlay PNG at ``size`` px at least, with a 128-colour palette (a third of the bytes)."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.width < size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return _png(img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))


def pick_examples(rows: list[dict], threshold: float) -> list[tuple[str, dict]]:
    """Test images worth a look, each with what it shows: the two most confident PNEUMONIA films
    flagged, the most confident false alarm, the PNEUMONIA film scored lowest if it was missed,
    and the NORMAL film scored lowest. ``rows``: predictions.csv rows of the test split."""
    by_p = sorted(rows, key=lambda r: float(r["probability"]), reverse=True)
    flagged = [r for r in by_p if float(r["probability"]) >= threshold]
    passed = [r for r in reversed(by_p) if float(r["probability"]) < threshold]
    picks = [("PNEUMONIA, flagged", r) for r in flagged if r["label"] == "PNEUMONIA"][:2]
    picks += [("NORMAL, flagged (false alarm)", r) for r in flagged if r["label"] == "NORMAL"][:1]
    picks += [("PNEUMONIA, missed", r) for r in passed if r["label"] == "PNEUMONIA"][:1]
    picks += [("NORMAL, not flagged", r) for r in passed if r["label"] == "NORMAL"][:1]
    return picks


def split_rows(predictions_csv: Path, split: str = "test") -> list[dict]:
    """One split's rows of the evaluate stage's predictions.csv (split, path, label, probability)."""
    from cxr.records import predictions

    return predictions.rows(predictions_csv, split)


def overlays(export_dir: Path, raw_dir: Path, predictions_csv: Path, model=None) -> list[tuple[str, bytes]]:
    """(caption, PNG) Grad-CAM overlays of a few test images (:func:`pick_examples`), as the
    service explains them. ``model``: anything with ``explain(image) -> (heatmap, probability)``;
    by default the export's ``model.tflite`` on LiteRT."""
    from cxr.imaging.preprocess import preprocess_bytes
    from cxr.records.model_card import ModelCard
    from cxr.serve.explain import heatmap_png

    card = ModelCard.read(export_dir)
    if model is None:
        from cxr.model.runtime import TFLiteModel

        model = TFLiteModel(export_dir / "model.tflite")
    out = []
    for kind, row in pick_examples(split_rows(predictions_csv), card.decision_threshold):
        path = raw_dir / row["path"]
        if not path.is_file():
            continue
        image = preprocess_bytes(path.read_bytes(), card.imaging)
        heat, probability = model.explain(image)
        caption = f"{kind}: p = {probability:.3f}, threshold {card.decision_threshold:.3f} ({Path(row['path']).name})"
        out.append((caption, _small_png(heatmap_png(image, heat), OVERLAY_SIZE)))
    return out


def pictures_markdown(metrics, roc: list[dict], pr: list[dict], examples: list[tuple[str, bytes]],
                      max_bytes: int = MAX_BYTES) -> str:
    """The run's pictures as one markdown document: curves and matrix first, then as many of the
    ``examples`` as fit in ``max_bytes``."""
    test = metrics.test
    at = test.at_threshold
    lines = ["# Pictures of this run", ""]
    if metrics.data.synthetic:
        lines += [f"> **{SYNTHETIC_WARNING}**", ""]
    lines += [f"Test split: {test.images} images ({metrics.data.test_split}); decision threshold "
              f"{metrics.threshold}, chosen on {metrics.threshold_chosen_on} for recall {metrics.target_recall}.", ""]
    curves = []
    has = lambda *keys: all(at.get(k) is not None for k in keys)  # noqa: E731
    if roc:
        curves.append(("ROC", curve_png(
            [r["fpr"] for r in roc], [r["tpr"] for r in roc], f"ROC, test split (AUC {test.roc_auc})",
            "false positive rate (1 - specificity)", "recall (true positive rate)", diagonal=True,
            point=(1 - at["specificity"], at["recall"]) if has("specificity", "recall") else None)))
    if pr:
        curves.append(("precision-recall", curve_png(
            [r["recall"] for r in pr], [r["precision"] for r in pr], f"Precision-recall, test split (AP {test.pr_auc})",
            "recall", "precision", point=(at["recall"], at["precision"]) if has("recall", "precision") else None)))
    if curves:
        lines += ["## ROC and precision-recall (test split)", "",
                  " ".join(f"![{name}]({data_uri(png)})" for name, png in curves), "",
                  "The blue dot is the decision threshold's operating point.", ""]
    if at.get("confusion"):
        png = confusion_png(at["confusion"], f"Test split at the threshold {metrics.threshold}")
        lines += ["## Confusion matrix (test split, decision threshold)", "",
                  f"![confusion matrix]({data_uri(png)})", ""]
    footer = ["", f"_{SCREENING_NOTICE}_", ""]
    if examples:
        section = ["## Grad-CAM, as the service explains (model.tflite)", ""]
        shown = 0
        note = f"({len(examples)} more left out to keep this artifact under {max_bytes // 1000} kB.)"
        for caption, png in examples:
            block = [f"**{caption}**", "", f"![{caption}]({data_uri(png)})", ""]
            if len("\n".join(lines + section + block + [note, ""] + footer).encode()) > max_bytes:
                break
            section += block
            shown += 1
        if shown < len(examples):
            section += [note.replace(f"({len(examples)} ", f"({len(examples) - shown} ", 1), ""]
        lines += section
    return "\n".join(lines + footer)


def read_curve(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def project_pictures(project: str | Path, model=None) -> str:
    """:func:`pictures_markdown` of the run in ``project``, from the files its stages wrote."""
    from cxr.records.evaluation import Evaluation

    project = Path(project)
    metrics = Evaluation.read(layout.path("evaluate", "metrics", project))
    plots = layout.path("evaluate", "plots", project)
    examples = overlays(layout.path("export", "out", project), layout.path("download", "out", project),
                        layout.path("evaluate", "predictions", project), model=model)
    return pictures_markdown(metrics, read_curve(plots / "roc.json"), read_curve(plots / "pr.json"), examples)
