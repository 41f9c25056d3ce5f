"""Cross-validation predictions of a trained pipeline: every fold's validation cases, by that fold's models.

The training's own ``validation/`` folders do not do for choosing between pipelines: a cascade's
second stage validates on the whole fine image rather than the first stage's crop, and each model
of ``dual_binary`` validates alone. So :func:`predict_crossval` runs the real
:class:`~liverseg.inference.predictor.Predictor` of the pipeline, loaded with one fold's models,
on the raw images of that fold's validation cases (``val`` in splits.json), without test-time
mirroring unless asked, and writes into ``<Results>/<Dataset>/<pipeline>/crossval/``:

- ``<case>.nii.gz``: the pipeline's label map (its combine rule; no post-processing), with the
  raw image's geometry;
- ``<case>.npz``: ``probabilities``, float16 ``(labels, z, y, x)``, the combined label
  probabilities in the canonical layout :func:`liverseg.io.images.read_image` returns;
- ``crossval.json``: per fold, the validation cases, the checkpoint choice, whether mirroring
  was on, and each checkpoint file with its size and modification time.

**Resuming.** Each file is written atomically, the label map last, so a case is complete when
both exist. A fold whose record still matches (same cases, same checkpoint files, same
mirroring) keeps its complete cases and predicts only the missing ones; a fold whose record
changed (a model retrained, other folds in splits.json, ``tta`` switched) has its cases deleted
and predicted again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.inference.combine import Combined
from liverseg.inference.models import LoadedPipeline, load_pipeline
from liverseg.inference.predictor import PreparedCase, Predictor
from liverseg.inference.run import CaseInput, pipelined_cases
from liverseg.io.atomic import atomic_output, read_json, write_json
from liverseg.io.dataset import RawDataset
from liverseg.preprocessing.inverse import write_prediction

log = logging.getLogger(__name__)

CROSSVAL_FOLDER = "crossval"
RECORD_FILE = "crossval.json"
LABEL_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = ".npz"


@dataclass
class CrossvalResult:
    """What :func:`predict_crossval` found and did: complete cases by fold, and cases that failed."""

    pipeline: str
    folder: Path
    cases: dict[str, int] = field(default_factory=dict)  # complete case -> its fold
    predicted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def crossval_folder(dataset_dir: Path, pipeline: str) -> Path:
    """``<Results>/<Dataset>/<pipeline>/crossval``."""
    return Path(dataset_dir) / pipeline / CROSSVAL_FOLDER


def case_files(folder: Path, case: str) -> dict[str, Path]:
    """The files of one case, the label map last (it is written last)."""
    return {"probabilities": folder / f"{case}{PROBABILITIES_SUFFIX}", "label": folder / f"{case}{LABEL_SUFFIX}"}


def is_complete(folder: Path, case: str) -> bool:
    """Whether both files of ``case`` are in ``folder``."""
    return all(p.is_file() for p in case_files(folder, case).values())


def fold_record(loaded: LoadedPipeline, cases: Sequence[str], checkpoint: str, tta: bool) -> dict[str, Any]:
    """What a fold's predictions depend on: its cases, the checkpoint files (size, mtime) and mirroring."""
    models = {}
    for model in loaded.models:
        stamps = []
        for path in model.checkpoints:
            stat = path.stat()
            stamps.append({"file": _relative(path, loaded.source.parent), "size": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns})
        models[model.name] = stamps
    return {"cases": sorted(cases), "checkpoint": checkpoint, "tta": bool(tta), "models": models}


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the dataset's results folder (a moved results store keeps its predictions)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_record(folder: Path) -> dict[str, Any]:
    """The folder's ``crossval.json`` (an empty record when there is none or it cannot be read)."""
    path = folder / RECORD_FILE
    try:
        record = read_json(path)
    except FileNotFoundError:
        return {"folds": {}}
    except (OSError, ValueError):
        log.warning("%s cannot be read; every fold of this folder is predicted again", path)
        return {"folds": {}}
    return record if isinstance(record, dict) and isinstance(record.get("folds"), dict) else {"folds": {}}


def predict_crossval(dataset_dir: Path, pipeline: str, splits: Sequence[dict[str, list[str]]], folds: Sequence[int],
                     raw: RawDataset, checkpoint: str = "best", tta: bool = False, num_workers: int = 1,
                     **predictor_options: Any) -> CrossvalResult:
    """Predict the validation cases of each fold in ``folds`` with that fold's models (module docstring).

    ``splits`` is splits.json's list; ``raw`` the raw dataset holding the images; ``num_workers``
    threads read and preprocess ahead of the network; ``predictor_options`` go to
    :class:`~liverseg.inference.predictor.Predictor` (``device``, ``use_bf16``, ...).
    Post-processing is never applied here. Failed cases are logged and listed in the result.
    """
    folder = crossval_folder(dataset_dir, pipeline)
    folder.mkdir(parents=True, exist_ok=True)
    record = read_record(folder)
    record["pipeline"] = pipeline
    result = CrossvalResult(pipeline, folder)
    for fold in folds:
        cases = list(splits[fold]["val"])
        loaded = load_pipeline(Path(dataset_dir), pipeline, [fold], checkpoint)
        wanted = fold_record(loaded, cases, checkpoint, tta)
        old = record["folds"].get(str(fold))
        if old != wanted:
            if old is not None:
                log.info("%s fold %s: cases, checkpoints or mirroring changed since its predictions; predicting again",
                         pipeline, fold)
            for case in set(cases) | set(old.get("cases", []) if isinstance(old, dict) else []):
                for path in case_files(folder, case).values():
                    path.unlink(missing_ok=True)
            record["folds"][str(fold)] = wanted
            write_json(folder / RECORD_FILE, record)
        todo = [c for c in cases if not is_complete(folder, c)]
        if len(todo) < len(cases):
            log.info("%s fold %s: %d of %d case(s) already predicted", pipeline, fold, len(cases) - len(todo), len(cases))
        if todo:
            _predict_fold(loaded, fold, todo, folder, raw, tta, num_workers, predictor_options, result)
        result.cases.update({c: fold for c in cases if is_complete(folder, c)})
    return result


def _predict_fold(loaded: LoadedPipeline, fold: int, cases: list[str], folder: Path, raw: RawDataset, tta: bool,
                  num_workers: int, predictor_options: dict[str, Any], result: CrossvalResult) -> None:
    predictor = Predictor(loaded, tta=tta, postprocessing="none", **predictor_options)
    inputs = [_case_input(raw, case) for case in cases]

    def export(case: CaseInput, prepared: PreparedCase, combined: Combined) -> tuple[str]:
        files = case_files(folder, case.case_id)
        files["label"].unlink(missing_ok=True)
        with atomic_output(files["probabilities"]) as tmp:
            np.savez_compressed(tmp, probabilities=combined.probabilities.astype(np.float16))
        write_prediction(combined.label, prepared.geometry, files["label"])
        return (case.case_id,)

    desc = f"crossval {loaded.name} fold {fold}"
    for case, outcome in pipelined_cases(inputs, predictor, export, num_workers, desc=desc):
        if isinstance(outcome, str):
            result.failed[case.case_id] = outcome
        else:
            result.predicted.append(case.case_id)


def _case_input(raw: RawDataset, case: str) -> CaseInput:
    files = raw.image_files(case)
    missing = [p for p in files if not p.is_file()]
    problem = ""
    if missing:
        problem = (f"{missing[0]}: image not found; cross-validation predicts each fold's validation cases from the raw "
                   f"dataset {raw.root}, which must still hold its training images")
    return CaseInput(case, tuple(files), LABEL_SUFFIX, problem)


def check_raw_images(raw: RawDataset, cases: Sequence[str]) -> None:
    """A LiversegError naming the first missing image when the raw dataset lacks any of ``cases``."""
    for case in cases:
        problem = _case_input(raw, case).problem
        if problem:
            raise LiversegError(problem)
