"""What every command shares: logging set-up, turning user errors into a clear exit, and the options
that mean the same thing in every command (one flag per concept: ``-d/--dataset``, ``-np/--num-workers``,
``-v/--verbose``, ...; tests/cli/test_consistency.py holds the table and checks every command)."""
from __future__ import annotations

import argparse
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


def add_verbose(parser: argparse.ArgumentParser) -> argparse.Action:
    """``-v/--verbose``: debug logging, the same in every command."""
    return parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: info)")


def add_device(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> argparse.Action:
    """``--device auto|cpu|cuda|cuda:N``, the same in every command that runs a network."""
    return parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: a GPU if torch "
                               "sees one, else the CPU)")


def add_num_workers(parser: argparse.ArgumentParser, default: int, help: str) -> argparse.Action:
    """``-np/--num-workers`` with its old name ``--num-processes`` kept as a hidden alias.

    ``help`` says what the workers do and should end with the default.
    """
    action = parser.add_argument("-np", "--num-workers", type=int, default=default, help=help)
    add_hidden_alias(parser, "--num-processes", action)
    return action


def add_hidden_alias(parser: argparse.ArgumentParser, alias: str, action: argparse.Action) -> argparse.Action:
    """Accept ``alias`` as an old name of ``action``'s option, not shown in ``--help``.

    Renamed options keep working in existing scripts; the alias stores into the same destination
    with the same type and choices.
    """
    return parser.add_argument(alias, dest=action.dest, type=action.type, choices=action.choices, nargs=action.nargs,
                               metavar=action.metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
