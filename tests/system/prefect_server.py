"""A real Prefect server on 127.0.0.1 for the flow tests, and the runs read back from it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": ""}
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(1)
        assert server.poll() is None, (home / "server.log").read_text()[-3000:]
    else:
        server.kill()
        pytest.fail("prefect server did not become healthy in 120 s")
    yield url
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def flow_runs(api: str, flow_name: str) -> list[dict]:
    """Every run of ``flow_name``, oldest first: state, state name, message, task runs, artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = []
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.START_TIME_ASC)
        for run in runs:
            only = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            out.append({"state": run.state.type.value, "name": run.state.name, "message": run.state.message or "",
                        "tasks": {t.name: t.state.type.value for t in client.read_task_runs(flow_run_filter=only)},
                        "artifacts": {a.key: a for a in client.read_artifacts(flow_run_filter=only) if a.key}})
    return out
