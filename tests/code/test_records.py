"""Each artefact format has one owner that writes and reads it: round trips, versions, and one
clear line for every way a file can be wrong."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from cxr import UserError
from cxr.records import predictions
from cxr.records.evaluation import Evaluation
from cxr.records.model_card import ModelCard
from cxr.records.train_summary import TrainSummary
from tests.code.test_model_card import SUMMARY, card, metrics

REPO = Path(__file__).resolve().parents[2]


def test_metrics_round_trip_keeps_the_layout_dvc_metrics_reads(tmp_path):
    record = Evaluation.from_dict(metrics())
    record.write(tmp_path / "metrics.json")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["schema"] == "cxr-metrics/2"
    assert {k: v for k, v in written.items() if k != "schema"} == metrics()  # same keys and nesting as before
    assert Evaluation.read(tmp_path / "metrics.json") == record
    assert record.gated().specificity == 0.8 and record.gated().test_split_hash == "s" * 64


def test_train_summary_round_trip_keeps_the_training_facts(tmp_path):
    body = {**SUMMARY, "mode": "from_scratch", "timings_s": {"full_fit_s": 3.0}, "train_images": 10}
    record = TrainSummary.from_dict(body)
    assert record.imaging.intensity == "none" and record.training["mode"] == "from_scratch"
    record.write(tmp_path / "summary.json")
    assert TrainSummary.read(tmp_path / "summary.json") == record


def test_a_file_from_before_versions_still_reads_with_a_warning(tmp_path, caplog):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics()))
    with caplog.at_level(logging.WARNING):
        record = Evaluation.read(tmp_path / "metrics.json")
    assert record.threshold == 0.3
    assert "no schema tag" in caplog.text and "read as cxr-metrics/2" in caplog.text
    c = card(metrics()).to_dict()  # a model promoted before versions: its store entry must still serve
    (tmp_path / "model_card.json").write_text(json.dumps(c))
    assert ModelCard.read(tmp_path).imaging.intensity == "none"


@pytest.mark.parametrize("content,message", [
    (None, r"not found \(the evaluate stage's metrics.json\): rerun the evaluate stage \(dvc repro evaluate\)"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not a JSON object"),
    ('{"schema": "cxr-metrics/3"}', "written as cxr-metrics/3, newer than this checkout reads \\(cxr-metrics/2\\)"),
    ('{"schema": "cxr-metrics/0"}', "an older format that this checkout no longer reads"),
    ('{"schema": "cxr-model-card/1"}', "is a 'cxr-model-card/1' record, not the evaluate stage's metrics.json"),
])
def test_a_bad_metrics_file_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        Evaluation.read(path)


@pytest.mark.parametrize("drop,field", [(("threshold",), "'threshold' must be a number, got missing"),
                                        (("test",), "'test' must be an object"),
                                        (("data", "synthetic"), "data: 'synthetic' must be true or false")])
def test_a_missing_field_names_the_field_and_the_remedy(tmp_path, drop, field):
    body = metrics()
    if len(drop) == 1:
        del body[drop[0]]
    else:
        del body[drop[0]][drop[1]]
    (tmp_path / "metrics.json").write_text(json.dumps(body))
    with pytest.raises(UserError, match=re.escape(field) + r".*rerun the evaluate stage"):
        Evaluation.read(tmp_path / "metrics.json")


def test_a_version_1_metrics_file_reads_without_a_subtype_and_gates_on_screening_alone(tmp_path):
    """metrics.json from before the subtype head (cxr-metrics/1): read, no subtype section, and
    the gated figures carry none (the gate then judges the screening figures alone)."""
    (tmp_path / "metrics.json").write_text(json.dumps({"schema": "cxr-metrics/1", **metrics()}))
    record = Evaluation.read(tmp_path / "metrics.json")
    assert record.subtype is None and not record.gated().has_subtype
    assert record.gated().roc_auc == 0.99


def test_the_subtype_section_round_trips_and_is_gated(tmp_path):
    from tests.code.test_model_card import subtype_metrics

    record = Evaluation.from_dict(metrics(subtype=subtype_metrics()))
    record.write(tmp_path / "metrics.json")
    back = Evaluation.read(tmp_path / "metrics.json")
    assert back == record and back.subtype.available and back.subtype.threshold == 0.6
    gated = back.gated()
    assert (gated.subtype_roc_auc, gated.subtype_accuracy, gated.subtype_films) == (0.91, 0.85, 40)
    none = Evaluation.from_dict(metrics(subtype={"available": False, "reason": "no names"}))
    assert not none.subtype.available and none.gated().subtype_roc_auc is None
    broken = metrics(subtype={**subtype_metrics(), "test": {"roc_auc": 0.9}})
    with pytest.raises(UserError, match="subtype test: 'films' must be an integer"):
        Evaluation.from_dict(broken)


def test_a_version_1_card_reads_and_says_it_has_no_subtype(tmp_path):
    c = card(metrics()).to_dict()
    del c["subtype"]
    (tmp_path / "model_card.json").write_text(json.dumps({"schema": "cxr-model-card/1", **c}))
    back = ModelCard.read(tmp_path)
    assert back.subtype is None and back.subtype_threshold is None
    assert "exported before the bacterial/viral subtype" in back.no_subtype_reason
    assert "exported before the bacterial/viral subtype" in back.markdown()


def test_a_card_without_its_imaging_record_is_refused(tmp_path):
    c = card(metrics()).to_dict()
    del c["model"]["imaging"]
    (tmp_path / "model_card.json").write_text(json.dumps({"schema": "cxr-model-card/1", **c}))
    with pytest.raises(UserError, match=r"imaging record is missing.*re-export the model"):
        ModelCard.read(tmp_path)


def test_predictions_round_trip_and_a_missing_file(tmp_path):
    path = tmp_path / "predictions.csv"
    predictions.write(path, {"val": (["a.png", "b.png"], np.array([0, 1]), np.array([0.25, 0.75])),
                             "test": (["c.png"], np.array([1]), np.array([0.5]), ["viral"], np.array([0.125]))})
    assert predictions.probabilities(path, "val").tolist() == [0.25, 0.75]
    rows = path.read_text().splitlines()
    assert rows[0] == "split,path,label,probability,subtype,p_bacterial" and rows[-1].endswith(",viral,0.125000")
    old = tmp_path / "old.csv"  # from before the subtype columns
    old.write_text("split,path,label,probability\nval,a.png,NORMAL,0.25\n")
    assert predictions.probabilities(old, "val").tolist() == [0.25]
    with pytest.raises(UserError, match="rerun the evaluate stage"):
        predictions.probabilities(tmp_path / "gone.csv", "val")


def test_no_code_outside_the_owners_names_the_card_files():
    """The card's file names live in cxr.records.model_card: anything else that spelled them
    out would be a second reader or writer."""
    offenders = []
    for path in [*REPO.glob("cxr/**/*.py"), *REPO.glob("stages/*.py"), *REPO.glob("pipelines/*.py"),
                 *REPO.glob("bench/*.py"), REPO / "service.py"]:
        if "records" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""["']model_card\.(json|md)["']""", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert offenders == []
