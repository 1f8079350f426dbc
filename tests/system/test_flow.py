"""The Prefect flow against a real Prefect server on 127.0.0.1, on a tiny synthetic set.

Three runs in one copy of the repo, each read back through the Prefect client API:
1. floors at 0: every stage runs through DVC, the gate passes, the model is promoted, and the
   pictures artifact embeds the curves, the confusion matrix and Grad-CAM overlays as PNGs;
2. on a local Dask cluster (prefect-dask): DVC skips every stage, champion and challenger
   are scored in parallel on the same test split, the no-regression rule applies, promoted;
3. ``gate.on_synthetic: refuse``: the gate fails, the flow run ends Failed with the
   reason, and the promoted model is untouched;
4. a missing data folder: the download stage's user error ends the run Failed with its
   message and no traceback.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipelines.pictures import MAX_BYTES
from tests.code.test_pictures import EMBEDDED
from tests.system.prefect_server import flow_runs, prefect_api  # noqa: F401 - the server fixture
from tests.system.test_pipeline_e2e import TINY, copy_repo

pytestmark = pytest.mark.slow
STAGES = ["download", "validate", "split", "train", "evaluate", "export"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("flowproject"), {
        **TINY, "gate.min_recall": "0.0", "gate.min_specificity": "0.0", "gate.min_roc_auc": "0.0",
        "gate.max_regression": "0.5", "gate.on_synthetic": "enforce",
        "gate.synthetic_floors": "{min_recall: 0.0, min_specificity: 0.0, min_roc_auc: 0.0}"})
    return root


def run_flow(project: Path, api: str, bentoml_home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api, "BENTOML_HOME": str(bentoml_home), "PYTHONPATH": str(project),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "2",
           "GX_ANALYTICS_ENABLED": "false", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "pipelines.flow", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1200)


def read_back(api: str) -> list[dict]:
    return flow_runs(api, "cxr-pipeline")


def promoted_tag(bentoml_home: Path) -> str | None:
    alias = bentoml_home / "aliases" / "cxr-pneumonia.json"
    return json.loads(alias.read_text())["promoted"] if alias.exists() else None


def test_flow_runs_gates_promotes_and_is_visible_on_the_server(project, prefect_api, tmp_path_factory):
    bentoml_home = tmp_path_factory.mktemp("bentoml")

    first = run_flow(project, prefect_api, bentoml_home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    champion = promoted_tag(bentoml_home)
    assert champion and f"promoted: {champion}" in first.stdout

    runs = read_back(prefect_api)
    assert len(runs) == 1 and runs[0]["state"] == "COMPLETED"
    tasks = runs[0]["tasks"]
    for stage in STAGES:
        assert any(name.startswith(f"dvc-{stage}") for name in tasks), (stage, tasks)
    assert all(state == "COMPLETED" for state in tasks.values()), tasks
    assert any(n.startswith("gate") for n in tasks) and any(n.startswith("promote") for n in tasks)
    artifacts = runs[0]["artifacts"]
    for key in ("cxr-validation", "cxr-metrics", "cxr-confusion-matrix", "cxr-plots", "cxr-pictures",
                "cxr-stage-timings", "cxr-gate-verdict", "cxr-promotion"):
        assert key in artifacts, (key, sorted(artifacts))
    # The pictures: curves, confusion matrix and Grad-CAM overlays of the exported model, PNGs that decode.
    shown = EMBEDDED.findall(artifacts["cxr-pictures"].data)
    assert [name for name, _ in shown[:3]] == ["ROC", "precision-recall", "confusion matrix"], shown[:3]
    assert len(shown) >= 5 and len(artifacts["cxr-pictures"].data.encode()) <= MAX_BYTES
    for _, b64 in shown:
        Image.open(io.BytesIO(base64.b64decode(b64))).load()
    metrics = json.loads((project / "metrics.json").read_text())
    table = json.loads(artifacts["cxr-metrics"].data)
    roc = next(r for r in table if r["metric"] == "roc_auc")
    assert roc["test @ chosen threshold"] == metrics["test"]["roc_auc"]
    assert artifacts["cxr-gate-verdict"].data.startswith("# Gate PASSED")
    timings = json.loads(artifacts["cxr-stage-timings"].data)
    assert [t["stage"] for t in timings] == STAGES and all(t["ran"] for t in timings)

    # 2. Dask: nothing reruns; champion and challenger scored side by side; promoted again.
    second = run_flow(project, prefect_api, bentoml_home, "--dask")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = read_back(prefect_api)
    assert runs[-1]["state"] == "COMPLETED"
    assert "task runner DaskTaskRunner" in second.stdout and "distributed.scheduler" in second.stderr
    timings = json.loads(runs[-1]["artifacts"]["cxr-stage-timings"].data)
    assert not any(t["ran"] for t in timings), timings
    verdict = runs[-1]["artifacts"]["cxr-gate-verdict"].data
    assert f"champion {champion} on the same test split" in verdict
    assert "ROC AUC vs champion" in verdict
    assert sum(name.startswith("score-candidate") for name in runs[-1]["tasks"]) == 2
    second_champion = promoted_tag(bentoml_home)
    assert second_champion != champion

    # 3. A failing gate: Failed run, clear reason, champion untouched.
    subprocess.run([sys.executable, "-m", "cxr.params", "set", "gate.on_synthetic=refuse"], cwd=project,
                   check=True, env={**os.environ, "PYTHONPATH": str(project)})
    third = run_flow(project, prefect_api, bentoml_home)
    assert third.returncode == 1
    assert "gate FAILED" in third.stderr and "real (non-synthetic) data" in third.stderr
    assert "Traceback" not in third.stderr.split("flow cxr-pipeline")[-1]
    assert promoted_tag(bentoml_home) == second_champion
    runs = read_back(prefect_api)
    assert runs[-1]["state"] == "FAILED" and "gate FAILED" in runs[-1]["message"]
    assert not any(n.startswith("promote") for n in runs[-1]["tasks"])
    assert runs[-1]["artifacts"]["cxr-gate-verdict"].data.startswith("# Gate FAILED")

    # 4. A user mistake in a stage (a missing data folder): Failed with the stage's own message,
    #    no traceback, nothing promoted.
    subprocess.run([sys.executable, "-m", "cxr.params", "set", "download.source=/nonexistent/xrays"], cwd=project,
                   check=True, env={**os.environ, "PYTHONPATH": str(project)})
    fourth = run_flow(project, prefect_api, bentoml_home)
    assert fourth.returncode == 1
    assert "stage download failed (user error)" in fourth.stderr and "/nonexistent/xrays" in fourth.stderr
    assert "Traceback" not in fourth.stdout + fourth.stderr
    assert promoted_tag(bentoml_home) == second_champion
    runs = read_back(prefect_api)
    assert runs[-1]["state"] == "FAILED" and list(runs[-1]["tasks"]) == [n for n in runs[-1]["tasks"] if "download" in n]
