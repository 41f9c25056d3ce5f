"""What every command shares: logging set-up and turning user errors into a clear exit."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from liverseg.errors import LiversegError

EXIT_USER_ERROR = 2


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with ``--verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body; a :class:`LiversegError` becomes a message and exit code 2."""
    try:
        return int(body() or 0)
    except LiversegError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
