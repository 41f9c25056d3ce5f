"""Shared fixtures: every test gets its own raw/preprocessed/results stores."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tiny tensors gain nothing from threads, and on a shared 2-core machine thread contention makes
# them many times slower: the whole suite runs single-threaded in torch.
torch.set_num_threads(1)


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point LIVERSEG_RAW / _PREPROCESSED / _RESULTS at fresh folders under ``tmp_path``."""
    dirs = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    return dirs
