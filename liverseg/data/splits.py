"""Cross-validation folds: deterministic, optionally stratified, written once and then kept.

``splits.json`` is a list with one entry per fold, in nnU-Net's format (so an nnU-Net
``splits_final.json`` can be used as it is)::

    [{"train": [...], "val": [...], "inner_val": [...]}, ...]

``val`` holds the fold's held-out test cases (nnU-Net's name). ``inner_val``, present only when
asked for, is a model-selection set carved out of the fold's training cases: it never touches
``val``, and ``train`` lists exactly the cases a model learns from, so ``train``, ``inner_val`` and
``val`` of a fold are disjoint and together hold every case (the ATLAS paper's 40 / 8 / 12).
"""
from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json, write_json

log = logging.getLogger(__name__)

SPLIT_KEYS = ("train", "val", "inner_val")


def make_splits(
    cases: Sequence[str],
    num_folds: int = 5,
    seed: int = 12345,
    strata: dict[str, str] | None = None,
    inner_validation_fraction: float = 0.0,
) -> list[dict[str, list[str]]]:
    """Split ``cases`` into ``num_folds`` folds, each held out once as ``val``.

    Deterministic for a given set of cases and seed (their order does not matter). With
    ``strata`` (case -> attribute, e.g. contrast phase), each attribute value is spread as evenly
    as possible over the folds (counts differ by at most one), and fold sizes still differ by at
    most one. ``inner_validation_fraction`` of each fold's training cases (at least one when
    positive) become its ``inner_val``, chosen in proportion to the strata.
    """
    cases = sorted(cases)
    duplicates = sorted(c for c, n in Counter(cases).items() if n > 1)
    if duplicates:
        raise LiversegError(f"case names must be unique; repeated: {', '.join(duplicates)}")
    if num_folds < 2:
        raise LiversegError(f"cross-validation needs at least 2 folds, got {num_folds}")
    if len(cases) < num_folds:
        raise LiversegError(
            f"{len(cases)} case(s) cannot fill {num_folds} folds: every fold needs at least one held-out case; "
            "add cases or ask for fewer folds"
        )
    if not 0.0 <= inner_validation_fraction < 1.0:
        raise LiversegError(f"inner validation fraction must be in [0, 1), got {inner_validation_fraction}")
    groups = _group_by_stratum(cases, strata)
    rng = np.random.default_rng(seed)

    # Deal each stratum's shuffled cases round-robin, continuing where the previous stratum
    # stopped: every stratum and the fold sizes are then balanced to within one case.
    held_out: list[list[str]] = [[] for _ in range(num_folds)]
    next_fold = 0
    for stratum in sorted(groups):
        for case in _shuffled(groups[stratum], rng):
            held_out[next_fold].append(case)
            next_fold = (next_fold + 1) % num_folds

    splits = []
    for fold, val in enumerate(held_out):
        val_set = set(val)
        train = [c for c in cases if c not in val_set]
        split: dict[str, list[str]] = {"train": train, "val": sorted(val)}
        if inner_validation_fraction > 0:
            inner = _inner_validation(train, strata, inner_validation_fraction, np.random.default_rng([seed, fold]))
            if len(inner) >= len(train):
                raise LiversegError(
                    f"fold {fold} has {len(train)} training case(s); an inner validation fraction of "
                    f"{inner_validation_fraction} leaves none to train on; use a smaller fraction or more cases"
                )
            split = {"train": [c for c in train if c not in inner], "val": sorted(val), "inner_val": sorted(inner)}
        splits.append(split)
    return splits


def load_or_create_splits(
    path: str | os.PathLike,
    cases: Sequence[str],
    num_folds: int = 5,
    seed: int = 12345,
    strata: dict[str, str] | None = None,
    inner_validation_fraction: float = 0.0,
    regenerate: bool = False,
) -> list[dict[str, list[str]]]:
    """The folds in ``path``, created there (atomically) from ``cases`` if the file does not exist.

    An existing file is never changed silently: if its cases differ from ``cases`` this raises a
    :class:`LiversegError` naming the added and removed cases. ``regenerate=True`` replaces it.
    """
    path = Path(path)
    if path.exists() and not regenerate:
        splits = read_splits(path)
        in_file = {c for split in splits for key in SPLIT_KEYS for c in split.get(key, [])}
        added, removed = sorted(set(cases) - in_file), sorted(in_file - set(cases))
        if added or removed:
            raise LiversegError(
                f"{path} was made for other cases than the dataset has now "
                f"(added: {_listing(added)}; removed: {_listing(removed)}). Folds are never changed silently, "
                f"so results stay comparable; to make new folds, delete {path} or regenerate them explicitly "
                "(regenerate=True, --regenerate-splits)"
            )
        if len(splits) != num_folds:
            log.warning("%s has %d folds, not %d; using the file as it is", path, len(splits), num_folds)
        return splits
    splits = make_splits(cases, num_folds, seed, strata, inner_validation_fraction)
    if path.exists():
        log.warning("replacing the existing folds in %s", path)
    write_json(path, splits)
    log.info("wrote %d folds for %d cases to %s", num_folds, len(set(cases)), path)
    return splits


def read_splits(path: str | os.PathLike) -> list[dict[str, list[str]]]:
    """Read and check a splits file: a list of folds with disjoint ``train`` / ``val`` / ``inner_val``."""
    try:
        splits: Any = read_json(path)
    except (OSError, ValueError) as e:
        raise LiversegError(f"{path}: cannot be read as a splits file ({e}); fix it or delete it to make new folds") from None
    if not isinstance(splits, list) or not splits:
        raise LiversegError(f"{path}: expected a non-empty list of folds; fix it or delete it to make new folds")
    for fold, split in enumerate(splits):
        if not isinstance(split, dict) or not {"train", "val"} <= set(split) or not set(split) <= set(SPLIT_KEYS):
            raise LiversegError(f"{path}: fold {fold} must have 'train' and 'val' lists (and optionally 'inner_val'), got {split!r:.200}")
        if not all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in split.values()):
            raise LiversegError(f"{path}: fold {fold} must hold lists of case names")
        sets = {k: set(v) for k, v in split.items()}
        for i, a in enumerate(sorted(sets)):
            for b in sorted(sets)[i + 1 :]:
                shared = sorted(sets[a] & sets[b])
                if shared:
                    raise LiversegError(f"{path}: fold {fold} has case(s) both in '{a}' and '{b}': {_listing(shared)}; a case must be in one of them")
    return splits


def _group_by_stratum(cases: list[str], strata: dict[str, str] | None) -> dict[str, list[str]]:
    if strata is None:
        return {"": list(cases)}
    missing = [c for c in cases if c not in strata]
    if missing:
        raise LiversegError(f"no stratum given for case(s) {_listing(missing)}; give every case one (e.g. 'unknown')")
    groups: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        groups[str(strata[case])].append(case)
    return dict(groups)


def _inner_validation(train: list[str], strata: dict[str, str] | None, fraction: float, rng: np.random.Generator) -> set[str]:
    """``fraction`` of ``train`` (at least one), each stratum contributing in proportion to its size."""
    total = max(1, round(fraction * len(train)))
    groups = _group_by_stratum(train, strata)
    names = sorted(groups)
    quotas = np.array([total * len(groups[n]) / len(train) for n in names])
    counts = np.floor(quotas).astype(int)
    # Largest remainders get the cases left over by rounding down (ties: larger stratum, then name).
    for i in sorted(range(len(names)), key=lambda i: (-(quotas[i] - counts[i]), -len(groups[names[i]]), names[i]))[: total - counts.sum()]:
        counts[i] += 1
    chosen: set[str] = set()
    for name, count in zip(names, counts):
        chosen.update(_shuffled(groups[name], rng)[:count])
    return chosen


def _shuffled(items: list[str], rng: np.random.Generator) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))]


def _listing(names: Sequence[str], limit: int = 10) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
