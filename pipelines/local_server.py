"""``make prefect-server`` then ``make run`` (or ``make monitor``) just works: without
PREFECT_API_URL, a flow uses a Prefect server answering on 127.0.0.1:4200, else Prefect's
ephemeral mode. Called before Prefect is imported, since Prefect reads its settings then."""

from __future__ import annotations

import os

LOCAL_SERVER = "http://127.0.0.1:4200/api"


def use_local_server_if_running() -> None:
    if os.environ.get("PREFECT_API_URL"):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(f"{LOCAL_SERVER}/health", timeout=1) as resp:
            if resp.status == 200:
                os.environ["PREFECT_API_URL"] = LOCAL_SERVER
    except OSError:
        pass
