"""The Kaggle mirror (``paultimothymooney/chest-xray-pneumonia``) via the official client.

Credentials are checked *before* ``import kaggle``: kaggle 2.x authenticates when the
package is imported (it prints a help text and swallows the ``exit(1)`` when it finds
none, and creates ``~/.config/kaggle``), so importing it only to learn that the user has
no token would be noisy and slow. The zip lands in ``cache_dir/kaggle/`` and is handed
to the zip path (:mod:`cxr.data.sources.folder`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from cxr import UserError

log = logging.getLogger(__name__)

HOW_TO = (
    "Kaggle credentials not found: create an API token at https://www.kaggle.com/settings/api "
    "and either save kaggle.json to ~/.kaggle/ (or $KAGGLE_CONFIG_DIR), set KAGGLE_USERNAME "
    "and KAGGLE_KEY, or set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token); "
    "or run `kaggle auth login`"
)


def credential_sources(env: dict | None = None, home: Path | None = None) -> list[str]:
    """Where kaggle 2.x would find credentials; empty when it would find none."""
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    found = []
    if env.get("KAGGLE_API_TOKEN"):
        found.append("KAGGLE_API_TOKEN")
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        found.append("KAGGLE_USERNAME/KAGGLE_KEY")
    config_dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    config_dirs += [home / ".kaggle", xdg / "kaggle"]
    for d in config_dirs:
        if (d / "kaggle.json").is_file():
            found.append(str(d / "kaggle.json"))
    for name in ("access_token", "access_token.txt", "credentials.json"):
        if (home / ".kaggle" / name).is_file():
            found.append(str(home / ".kaggle" / name))
    return found


def download(dataset: str, cache_dir: str | Path) -> Path:
    """Download the Kaggle data set's zip into the cache and return its path."""
    if not isinstance(dataset, str) or dataset.count("/") != 1:
        raise UserError(f"params.yaml: 'download.kaggle_dataset' must be 'owner/name', got {dataset!r}")
    if not credential_sources():
        raise UserError(HOW_TO)
    out = Path(cache_dir) / "kaggle" / dataset.replace("/", "__")
    out.mkdir(parents=True, exist_ok=True)
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise):
            import kaggle  # authenticates at import time (kaggle 2.x)

            api = kaggle.KaggleApi()
            api.authenticate()
            # the client resumes its own partial downloads and skips an up-to-date zip
            api.dataset_download_files(dataset, path=str(out), quiet=False, unzip=False)
    except SystemExit:
        raise UserError(f"{HOW_TO} (the kaggle client rejected them)") from None
    except UserError:
        raise
    except Exception as exc:  # the client raises bare requests/HTTP errors
        raise UserError(f"kaggle download of {dataset} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if noise.getvalue().strip():
            log.info("kaggle: %s", noise.getvalue().strip().replace("\n", " | "))
    zips = sorted(out.glob("*.zip"))
    if len(zips) != 1:
        raise UserError(f"kaggle download of {dataset} left {len(zips)} zip files in {out}, expected one")
    return zips[0]
