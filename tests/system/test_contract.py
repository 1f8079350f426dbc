"""The OpenAPI contract, checked by schemathesis against a real ``bentoml serve`` on 127.0.0.1.

Schemathesis generates requests from ``/docs.json`` (valid ones, and ones the schema forbids)
and checks every answer: no 5xx, each status and body documented, schema-valid requests
accepted, invalid ones refused. ``schemathesis.toml`` at the repo root says which statuses
count as accepting or refusing, and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.shared_paths import REPO

pytestmark = pytest.mark.slow
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


def test_docs_describe_the_real_requests_and_errors(service):
    with urllib.request.urlopen(f"{service.url}/docs.json", timeout=10) as resp:
        spec = json.load(resp)
    predict = spec["paths"]["/predict"]["post"]
    assert predict["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["image"]
    assert "application/json" in predict["requestBody"]["content"]
    assert {"400", "408", "413", "415", "422", "429", "503"} <= set(predict["responses"])
    assert "/predict_raw" in spec["paths"]
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_error_and_no_contract_failure(service):
    out = subprocess.run(
        [SCHEMATHESIS, "run", f"{service.url}/docs.json", "--checks", "all", "--max-examples", "40",
         "--seed", "1", "--no-color"],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    summary = out.stdout[out.stdout.rfind("SUMMARY"):]
    print(summary)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Tested: 9" in summary and " passed" in summary
