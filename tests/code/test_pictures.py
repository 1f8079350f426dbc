"""The flow's pictures (pipelines/pictures.py): PNGs that decode, at the expected size, drawn
where the data says, embedded in the markdown artifact within its size budget."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from cxr import SCREENING_NOTICE
from cxr.records.evaluation import Evaluation
from pipelines import pictures
from tests.code.test_model_card import SUMMARY, card, metrics
from tests.serving_fixtures import blob_images, png_bytes

EMBEDDED = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def decode(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG"
    return img.convert("RGB")


def near(rgb, target, tol=40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, target))


def pixel(img: Image.Image, x: float, y: float):
    px, py = pictures.FRAME.at(x, y)
    return img.getpixel((round(px), round(py)))


def test_a_curve_is_drawn_where_its_points_are_and_nowhere_else():
    img = decode(pictures.curve_png([0.0, 0.3, 1.0], [0.0, 0.8, 1.0], "ROC", "fpr", "tpr", point=(0.3, 0.8)))
    assert img.size == (pictures.WIDTH, pictures.HEIGHT)
    assert near(pixel(img, 0.15, 0.4), pictures.CURVE)  # on the first segment
    assert near(pixel(img, 0.65, 0.9), pictures.CURVE)  # on the second
    assert near(pixel(img, 0.3, 0.8), pictures.POINT)  # the operating point
    for off in ((0.5, 0.3), (0.1, 0.7), (0.9, 0.5)):  # above and below the curve: blank
        assert pixel(img, *off) == (255, 255, 255), off


def test_the_roc_diagonal_is_drawn_only_when_asked():
    with_diagonal = decode(pictures.curve_png([0, 1], [1, 1], "t", "x", "y", diagonal=True))
    without = decode(pictures.curve_png([0, 1], [1, 1], "t", "x", "y"))
    assert near(pixel(with_diagonal, 0.5, 0.5), pictures.DIAGONAL, 10)
    assert pixel(without, 0.5, 0.5) != pixel(with_diagonal, 0.5, 0.5)


def test_confusion_cells_are_shaded_by_their_share_of_the_row():
    img = decode(pictures.confusion_png({"tn": 9, "fp": 1, "fn": 0, "tp": 10}, "test"))
    cell, left, top = 120, 170, 72

    def colour(i: int, j: int):  # a corner of the cell, away from its text
        return img.getpixel((left + j * cell + 8, top + i * cell + 8))

    assert colour(1, 0) == (255, 255, 255)  # no missed PNEUMONIA
    assert near(colour(1, 1), (60, 150, 80), 2)  # every PNEUMONIA flagged: full green
    assert near(colour(0, 0), (60 + 0.1 * 195, 150 + 0.1 * 105, 80 + 0.1 * 175), 2)  # 90 % green
    assert colour(0, 1)[0] > colour(0, 1)[1]  # the false alarms: a light red


ROWS = [{"split": "test", "path": f"images/test/{label}/{i}.png", "label": label, "probability": str(p)}
        for i, (label, p) in enumerate([("PNEUMONIA", 0.99), ("PNEUMONIA", 0.95), ("PNEUMONIA", 0.90),
                                        ("PNEUMONIA", 0.10), ("NORMAL", 0.60), ("NORMAL", 0.40),
                                        ("NORMAL", 0.02), ("NORMAL", 0.30)])]


def test_examples_show_flagged_missed_and_false_alarms_by_their_probability():
    picks = [(kind, r["probability"]) for kind, r in pictures.pick_examples(ROWS, threshold=0.5)]
    assert picks == [("PNEUMONIA, flagged", "0.99"), ("PNEUMONIA, flagged", "0.95"),
                     ("NORMAL, flagged (false alarm)", "0.6"), ("PNEUMONIA, missed", "0.1"),
                     ("NORMAL, not flagged", "0.02")]
    # everything flagged: nothing shown as missed or passed, and no picture mislabelled
    kinds = [kind for kind, _ in pictures.pick_examples(ROWS, threshold=0.01)]
    assert kinds == ["PNEUMONIA, flagged", "PNEUMONIA, flagged", "NORMAL, flagged (false alarm)"]


class HalfModel:
    """Stands in for the TFLite model: heat on the image's left half."""

    def explain(self, image):
        heat = np.zeros(image.shape, np.float32)
        heat[:, : image.shape[1] // 2] = 1.0
        return heat, 0.9


@pytest.fixture
def run_files(tmp_path):
    export, raw = tmp_path / "export", tmp_path / "raw"
    card(metrics(), summary={**SUMMARY, "imaging": {"image_size": 64, "intensity": "none"}}).write(export)
    images, _ = blob_images(len(ROWS), 96, seed=3)
    for row, image in zip(ROWS, images):
        (raw / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        (raw / row["path"]).write_bytes(png_bytes(image))
    csv = tmp_path / "predictions.csv"
    csv.write_text("split,path,label,probability\n" + "".join(
        f"{r['split']},{r['path']},{r['label']},{r['probability']}\n" for r in ROWS)
        + "val,images/val/NORMAL/v.png,NORMAL,0.99\n")
    return export, raw, csv


def test_overlays_are_the_services_heatmap_at_a_readable_size(run_files):
    export, raw, csv = run_files
    shown = pictures.overlays(export, raw, csv, model=HalfModel())
    # at the card's threshold (0.3, not 0.5): the PNEUMONIA film at 0.10 is missed
    assert [c.split(":")[0] for c, _ in shown] == ["PNEUMONIA, flagged", "PNEUMONIA, flagged",
                                                  "NORMAL, flagged (false alarm)", "PNEUMONIA, missed",
                                                  "NORMAL, not flagged"]
    assert all("threshold 0.300" in c for c, _ in shown)
    img = decode(shown[0][1])
    assert img.size == (pictures.OVERLAY_SIZE, pictures.OVERLAY_SIZE)  # the 64-px model's view, scaled up
    left, right = np.asarray(img)[:, :100].astype(int), np.asarray(img)[:, -100:].astype(int)
    colour = lambda a: np.abs(a[..., 0] - a[..., 2]).mean()  # noqa: E731 - gray has none
    assert colour(left) > 30 and colour(right) < 2  # the heat where the model put it
    assert max(len(png) for _, png in shown) < 40_000


def test_markdown_embeds_every_picture_as_a_png_that_decodes(run_files):
    export, raw, csv = run_files
    m = metrics(test={"roc_auc": 0.9, "pr_auc": 0.8, "images": 8,
                      "at_threshold": {"recall": 0.75, "specificity": 0.75, "precision": 0.75,
                                       "confusion": {"tp": 3, "fp": 1, "tn": 3, "fn": 1}}})
    m["data"]["synthetic"] = True
    roc = [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.25, "tpr": 0.75}, {"fpr": 1.0, "tpr": 1.0}]
    pr = [{"recall": 0.0, "precision": 1.0}, {"recall": 0.75, "precision": 0.75}, {"recall": 1.0, "precision": 0.5}]
    md = pictures.pictures_markdown(Evaluation.from_dict(m), roc, pr,
                                    pictures.overlays(export, raw, csv, model=HalfModel()))
    embedded = EMBEDDED.findall(md)
    names = [name for name, _ in embedded]
    assert names[:3] == ["ROC", "precision-recall", "confusion matrix"] and len(embedded) == 8
    for _, b64 in embedded:
        decode(base64.b64decode(b64))
    assert "NOT a medical model" in md and SCREENING_NOTICE in md
    assert len(md.encode()) < pictures.MAX_BYTES


def test_markdown_keeps_to_its_budget_by_leaving_overlays_out(run_files):
    export, raw, csv = run_files
    m = Evaluation.from_dict(metrics())
    examples = pictures.overlays(export, raw, csv, model=HalfModel())
    full = pictures.pictures_markdown(m, [], [], examples)
    budget = len(full.encode()) - 1000
    cut = pictures.pictures_markdown(m, [], [], examples, max_bytes=budget)
    assert len(cut.encode()) <= budget
    assert 0 < len(EMBEDDED.findall(cut)) < len(EMBEDDED.findall(full)) and "left out" in cut


def test_a_missing_predictions_file_says_what_to_rerun(tmp_path):
    with pytest.raises(Exception, match="dvc repro evaluate"):
        pictures.split_rows(tmp_path / "predictions.csv")
