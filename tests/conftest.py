"""Session fixtures for the serving tests: one tiny promoted model, one real ``bentoml serve``.

Built once per test session (about 40 s on 2 cores for the model, 5-10 s for the server)
and shared by tests/system/test_service.py, test_page.py and tests/model/test_lambda.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_env(bentoml_home: Path, **extra: str) -> dict:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "CXR_API_THREADS": "2", **extra}
    env.pop("CXR_URL_ALLOWLIST", None)
    env.pop("CXR_MODEL_TAG", None)
    # One worker: these tests check behaviour, not throughput; two would double each server's
    # start-up CPU and memory on CI's 2 cores (the 2-worker default is exercised by bench/serving.py).
    env["CXR_WORKERS"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def promoted_model(tmp_path_factory) -> dict:
    """A 64-px MobileNetV2 (alpha 0.35) trained a few steps, exported and promoted into a temp BENTOML_HOME."""
    out = tmp_path_factory.mktemp("served_model")
    home = out / "bentoml_home"
    proc = subprocess.run([sys.executable, "-m", "tests.serving_fixtures", str(out)], cwd=REPO,
                          env=serving_env(home), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"tag": facts["tag"], "export_dir": Path(facts["export_dir"]), "bentoml_home": home,
            "image_size": int(facts["image_size"]), "threshold": float(facts["threshold"]),
            "subtype_threshold": float(facts["subtype_threshold"]), "legacy_tag": facts["legacy_tag"],
            "legacy_dir": Path(facts["legacy_dir"])}


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(bentoml_home: Path, log: Path, timeout: float = 120, **env: str) -> Server:
    import requests

    port = free_port()
    handle = log.open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "bentoml"), "serve", "service:CXRScreening", "--host", "127.0.0.1",
         "--port", str(port)], cwd=REPO, env=serving_env(bentoml_home, **env), stdout=handle,
        stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bentoml serve exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if requests.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.5)
    server.stop()
    raise AssertionError(f"bentoml serve not ready in {timeout} s:\n{server.log_text()[-3000:]}")


@pytest.fixture(scope="session")
def service(promoted_model, tmp_path_factory):
    """A real ``bentoml serve service:CXRScreening`` on 127.0.0.1 (a free port), serving the tiny model."""
    server = start_server(promoted_model["bentoml_home"], tmp_path_factory.mktemp("serve") / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def legacy_service(promoted_model, tmp_path_factory):
    """The same tiny network as exported before the subtype head, served by today's code (CXR_MODEL_TAG)."""
    server = start_server(promoted_model["bentoml_home"], tmp_path_factory.mktemp("serve-legacy") / "serve.log",
                          CXR_MODEL_TAG=promoted_model["legacy_tag"])
    yield server
    server.stop()
