"""Reading a torch file someone gave us (checkpoint, weights) safely, with a clear message when it is bad."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from liverseg.errors import LiversegError

# What torch.load raises on a truncated, damaged or foreign file.
# torch.load raises KeyError or IndexError on some text or truncated files.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError)


def load_torch_file(path: str | Path, missing: str, unreadable: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: a file from elsewhere cannot run code.

    A missing file raises a LiversegError ``"<path>: <missing>"``; an unreadable one
    ``"<path>: <unreadable> (<reason>)..."`` where ``unreadable`` names what was expected and
    says what to do (it is completed with the reason in parentheses after its first clause).
    """
    path = Path(path)
    if not path.is_file():
        raise LiversegError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        first, _, rest = unreadable.partition(";")
        raise LiversegError(f"{path}: {first} ({reason[:300]});{rest}") from None
