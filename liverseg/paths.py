"""Where liverseg keeps its files, and how a dataset is found by name, folder name or id.

Three environment variables locate the three stores (see DESIGN.md):
``LIVERSEG_RAW`` (raw datasets), ``LIVERSEG_PREPROCESSED`` (fingerprint, plans, preprocessed
cases) and ``LIVERSEG_RESULTS`` (trained models). When one is unset, a folder under
``~/liverseg_data`` is used and the fallback is logged once.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from liverseg.errors import LiversegError

log = logging.getLogger(__name__)

ENV_RAW = "LIVERSEG_RAW"
ENV_PREPROCESSED = "LIVERSEG_PREPROCESSED"
ENV_RESULTS = "LIVERSEG_RESULTS"
DEFAULT_HOME = Path("~/liverseg_data")
_DEFAULT_SUBFOLDER = {ENV_RAW: "raw", ENV_PREPROCESSED: "preprocessed", ENV_RESULTS: "results"}
_warned: set[str] = set()

_NNUNET_NAME = re.compile(r"^Dataset(\d{3})_(.+)$")


def _store(variable: str) -> Path:
    value = os.environ.get(variable)
    if value:
        return Path(value).expanduser()
    fallback = (DEFAULT_HOME / _DEFAULT_SUBFOLDER[variable]).expanduser()
    if variable not in _warned:
        _warned.add(variable)
        log.info("%s is not set; using %s", variable, fallback)
    return fallback


def raw_root() -> Path:
    """Folder holding raw datasets (``$LIVERSEG_RAW``)."""
    return _store(ENV_RAW)


def preprocessed_root() -> Path:
    """Folder holding fingerprints, plans and preprocessed cases (``$LIVERSEG_PREPROCESSED``)."""
    return _store(ENV_PREPROCESSED)


def results_root() -> Path:
    """Folder holding trained models (``$LIVERSEG_RESULTS``)."""
    return _store(ENV_RESULTS)


def list_datasets(root: Path | None = None) -> list[str]:
    """Names of the dataset folders (those with a dataset.json) under the raw store."""
    root = raw_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "dataset.json").is_file())


def dataset_folder_name(name: str, root: Path | None = None) -> str:
    """The raw folder name of a dataset given as ``ATLAS``, ``Dataset501_ATLAS`` or ``501``.

    The folder name is also the dataset's name in the preprocessed and results stores.
    """
    root = raw_root() if root is None else root
    existing = list_datasets(root)
    if name in existing:
        return name
    if name.isdigit():
        matches = [d for d in existing if (m := _NNUNET_NAME.match(d)) and int(m.group(1)) == int(name)]
    else:
        matches = [d for d in existing if (m := _NNUNET_NAME.match(d)) and m.group(2) == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise LiversegError(f"dataset name '{name}' is ambiguous in {root}: {', '.join(matches)}; use the full folder name")
    listing = ", ".join(existing) if existing else "none"
    raise LiversegError(
        f"no dataset '{name}' in {root} (set {ENV_RAW} to change the folder). Datasets there: {listing}. "
        "Create one with liverseg_convert or liverseg_phantom."
    )


def raw_dataset_dir(name: str) -> Path:
    """Raw folder of an existing dataset."""
    return raw_root() / dataset_folder_name(name)


def preprocessed_dataset_dir(name: str) -> Path:
    """Preprocessed folder of an existing raw dataset (may not exist yet)."""
    return preprocessed_root() / dataset_folder_name(name)


def results_dataset_dir(name: str) -> Path:
    """Results folder of an existing raw dataset (may not exist yet)."""
    return results_root() / dataset_folder_name(name)
