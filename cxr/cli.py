"""What every stage CLI shares: logging set-up and user errors without tracebacks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from cxr import UserError


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CXR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def paths(argv: list[str] | None, stage: str, **names: str) -> argparse.Namespace:
    """A stage's inputs and outputs from its command line (``--name PATH``, each required), so that
    ``dvc.yaml``'s ``cmd`` is the one place paths live. ``names``: option -> what it is."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    for name, what in names.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True, metavar="PATH",
                            help=what)
    return parser.parse_args(argv)


def run(main: Callable[[], None], name: str) -> None:
    """Run a stage's ``main``; a :class:`UserError` ends it with a one-line message, exit 2."""
    setup_logging()
    try:
        main()
    except UserError as exc:
        logging.getLogger(name).error("%s", exc)
        print(f"error [{name}]: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"[{name}] interrupted; no output was published", file=sys.stderr)
        raise SystemExit(130) from None
