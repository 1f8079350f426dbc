"""The drift monitor flow for real: ``python -m pipelines.monitor`` against a real Prefect server on
127.0.0.1, on generated audit trails (rotated files) and a model card in tmp_path, read back through
the Prefect client API.

1. an unshifted trail: Completed, exit 0, the ``cxr-drift`` artifact carries the figures and a plot;
2. a shifted trail: Failed with the reason (PSI and KS), exit 1;
3. no card given and no promoted model: a user error, exit 2, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.code.test_drift import audit_lines, card, write_trail
from tests.shared_paths import REPO
from tests.system.prefect_server import flow_runs, prefect_api  # noqa: F401 - the server fixture

pytestmark = pytest.mark.slow


def run_monitor(api: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO),
           "BENTOML_HOME": str(tmp_path / "bentoml"), "CXR_PARAMS": str(REPO / "params.yaml")}
    return subprocess.run([sys.executable, "-m", "pipelines.monitor", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def read_back(api: str) -> list[dict]:
    return flow_runs(api, "cxr-monitor")


def figures(run: dict) -> dict:
    return {row["figure"]: row for row in json.loads(run["artifacts"]["cxr-drift-figures"].data)}


def test_the_monitor_flow_passes_a_steady_trail_and_fails_a_shifted_one(prefect_api, tmp_path):  # noqa: F811
    card_path = tmp_path / "export" / "model_card.json"
    card_path.parent.mkdir()
    card(seed=0).write(card_path.parent)
    steady = write_trail(tmp_path / "steady" / "audit.jsonl", audit_lines(21, 900), rotate_every=400)
    shifted = write_trail(tmp_path / "shifted" / "audit.jsonl",
                          audit_lines(22, 900, shift=0.3, refusal_share=0.15, reason="not_a_chest_xray"),
                          rotate_every=400)

    first = run_monitor(prefect_api, tmp_path, "--audit", str(steady), "--card", str(card_path.parent),
                        "--out", str(tmp_path / "out"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "flow cxr-monitor Completed: no drift" in first.stdout
    runs = read_back(prefect_api)
    assert runs[-1]["state"] == "COMPLETED" and runs[-1]["message"].startswith("no drift")
    assert {n.rsplit("-", 1)[0] for n in runs[-1]["tasks"]} == {"read-trail", "reference", "compare", "publish"}
    assert all(s == "COMPLETED" for s in runs[-1]["tasks"].values())
    md = runs[-1]["artifacts"]["cxr-drift"].data
    assert md.startswith("# Drift monitor: no drift") and "| PSI |" in md and "| KS statistic |" in md
    assert "data:image/png;base64," in md and "3 file(s)" in md
    rows = figures(runs[-1])
    assert rows["PSI"]["recent"] < 0.2 and rows["PSI"]["drifted"] is False
    assert rows["answers"]["recent"] >= 800 and rows["refusal rate"]["drifted"] is False
    assert (tmp_path / "out" / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdict = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert verdict["outcome"] == "stable" and len(verdict["figures"]["window"]["files"]) == 3

    second = run_monitor(prefect_api, tmp_path, "--audit", str(shifted), "--card", str(card_path))
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert "flow cxr-monitor Failed: drift: PSI" in second.stderr
    runs = read_back(prefect_api)
    assert runs[-1]["state"] == "FAILED"
    message = runs[-1]["message"]
    assert message.startswith("drift: PSI") and "KS statistic" in message and "refusal rate" in message
    assert "not_a_chest_xray" in message
    md = runs[-1]["artifacts"]["cxr-drift"].data
    assert md.startswith("# Drift monitor: DRIFT") and "Refusals by reason: `not_a_chest_xray`" in md
    rows = figures(runs[-1])
    assert rows["PSI"]["recent"] > 0.2 and rows["PSI"]["drifted"] is True
    assert rows["KS statistic"]["drifted"] is True and rows["refusal rate"]["drifted"] is True

    third = run_monitor(prefect_api, tmp_path, "--audit", str(steady))
    assert third.returncode == 2, third.stdout[-3000:] + third.stderr[-3000:]
    assert "error [cxr-monitor]: no promoted cxr-pneumonia model" in third.stderr
    assert "Traceback" not in third.stdout + third.stderr
    assert read_back(prefect_api)[-1]["state"] == "FAILED"
