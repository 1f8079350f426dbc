"""What every stage CLI shares: logging set-up and user errors without tracebacks."""

from __future__ import annotations

import logging
import os
import sys
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
