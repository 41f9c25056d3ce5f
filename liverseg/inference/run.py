"""Predict a folder of scans (or one file, or one DICOM series): what ``liverseg_predict`` does.

Inputs (:func:`find_cases`): a folder of images named as nnU-Net names them (``<case>_0000.nii.gz``,
``<case>_0001.nii.gz``, ... one file per channel) or plainly (``<case>.nii.gz``, one channel), and
sub-folders each holding one DICOM series; a single image file; or a folder holding one DICOM
series. Any ending of :data:`liverseg.io.images.IMAGE_SUFFIXES` works.

Outputs, per case, into the output folder:

- ``<case><ending>``: the label map, with exactly the input's size, spacing, origin and direction,
  in the input's format (``.nii.gz`` for DICOM input);
- ``<case>.lesions.json``: the lesion report (docs/postprocessing.md);
- ``<case>_lesions.nii.gz`` with ``lesion_maps``: lesion ``k`` of the report has value ``k``;
- ``<case>.npz`` with ``save_probabilities``: ``probabilities``, float16 ``(labels, z, y, x)`` before
  post-processing, in the canonical layout :func:`liverseg.io.images.read_image` returns;

and for the run ``lesions.csv`` and ``cases.csv`` (``lesions_part<K>.csv``, ``cases_part<K>.csv``
for part ``K`` of a sharded run) and ``predict_settings.json`` (models, folds, options).

**Complete cases.** The label map is written last, each file atomically, and a case's old label
map is deleted before it is predicted again: a case is complete exactly when its label map exists
(and, with ``save_probabilities`` / ``lesion_maps``, those files too). ``continue_`` skips
complete cases; their reports still go into the run's tables.

**Sharding.** ``part_id``/``num_parts`` take every ``num_parts``-th case of the sorted case list,
starting at ``part_id``: parts are disjoint, cover every case, and mix large and small cases.

**Overlap.** With ``num_workers`` > 0, that many threads read and preprocess the next cases while
the network runs, and one thread post-processes and writes the finished case; at most
``num_workers + 1`` prepared and one finished case wait in memory. The heavy parts (numpy, SimpleITK, torch)
release the GIL, so threads overlap without copying volumes between processes.

**Failures.** A case that fails (unreadable file, wrong dimension or channel count, ...) is
logged with its file and reason and listed in the summary; the other cases still run.
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.inference.combine import Combined
from liverseg.inference.predictor import PreparedCase, Prediction, Predictor
from liverseg.io.atomic import atomic_output, read_json, write_json
from liverseg.io.images import image_suffix
from liverseg.postprocessing.report import write_case_report, write_run_table
from liverseg.preprocessing.inverse import write_prediction

log = logging.getLogger(__name__)

DICOM_OUTPUT_SUFFIX = ".nii.gz"
SETTINGS_FILE = "predict_settings.json"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
CaseResult = tuple[dict[str, Any], dict[str, float]]  # a predicted case's lesion report and seconds per stage


@dataclass(frozen=True)
class CaseInput:
    """One case to predict: its id, its channel files (or DICOM folder), the output ending, and any problem found."""

    case_id: str
    sources: tuple[Path, ...]
    suffix: str
    problem: str = ""


@dataclass
class RunSummary:
    """What a prediction run did: cases predicted, skipped (complete already) and failed (with the reason).

    ``timings`` holds the seconds of each predicted case per stage (read, preprocess, network,
    map_back, postprocess, report, write); ``seconds`` is the whole run's wall time.
    """

    output: Path
    cases: int
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {**asdict(self), "output": str(self.output)}

    def raise_for_failures(self) -> None:
        """Raise a LiversegError listing the failed cases, if any."""
        if self.failed:
            lines = "; ".join(f"{case}: {reason}" for case, reason in self.failed.items())
            raise LiversegError(f"{len(self.failed)} of {self.cases} case(s) failed (the others were written to "
                                f"{self.output}): {lines}")


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def find_cases(source: str | Path, num_channels: int = 1) -> list[CaseInput]:
    """The cases of an input file or folder, sorted by id (module docstring); a LiversegError when there are none."""
    source = Path(source)
    if not source.exists():
        raise LiversegError(f"{source}: input not found; give a folder of images, an image file or a DICOM series folder")
    if source.is_file():
        suffix = image_suffix(source)
        if not suffix:
            raise LiversegError(f"{source}: not a supported image file (endings: .nii.gz, .nii, .nrrd, .mha, .mhd); "
                                "for DICOM give the folder holding the series")
        stem = source.name[: -len(suffix)]
        match = _CHANNEL_FILE.match(stem)
        if match and match["channel"] == "0000":
            files = sorted(source.parent.glob(f"{_glob_escape(match['case'])}_[0-9][0-9][0-9][0-9]{suffix}"))
            return [_channel_case(match["case"], files, suffix, num_channels)]
        return [_plain_case(stem, source, suffix, num_channels)]
    files = sorted(p for p in source.iterdir() if p.is_file() and image_suffix(p))
    if not files and _is_dicom_folder(source):
        return [_plain_case(source.name, source, DICOM_OUTPUT_SUFFIX, num_channels)]
    groups: dict[tuple[str, str], list[Path]] = {}
    plain: list[CaseInput] = []
    for path in files:
        suffix = image_suffix(path)
        match = _CHANNEL_FILE.match(path.name[: -len(suffix)])
        if match:
            groups.setdefault((match["case"], suffix), []).append(path)
        else:
            plain.append(_plain_case(path.name[: -len(suffix)], path, suffix, num_channels))
    cases = list(plain)
    for (case, suffix), paths in groups.items():
        if any(p.name == f"{case}_0000{suffix}" for p in paths):
            cases.append(_channel_case(case, paths, suffix, num_channels))
        else:  # not nnU-Net naming after all: each file is a case of its own
            cases.extend(_plain_case(p.name[: -len(suffix)], p, suffix, num_channels) for p in paths)
    cases.extend(_plain_case(d.name, d, DICOM_OUTPUT_SUFFIX, num_channels)
                 for d in sorted(source.iterdir()) if _is_dicom_folder(d))
    if not cases:
        raise LiversegError(f"{source}: no images found; expected <case>_0000.nii.gz (one file per channel), <case>.nii.gz "
                            "or other image files (.nii, .nrrd, .mha, .mhd), or DICOM series folders")
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise LiversegError(f"{source}: case id(s) {', '.join(duplicates)} occur more than once (e.g. the same case in two "
                            "formats); keep one file per case and channel")
    return sorted(cases, key=lambda c: c.case_id)


def _glob_escape(text: str) -> str:
    """``text`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _plain_case(case: str, path: Path, suffix: str, num_channels: int) -> CaseInput:
    problem = ""
    if num_channels != 1:
        problem = (f"{path}: one image but the model expects {num_channels} channels; name the channel files "
                   f"{case}_0000{suffix} ... {case}_{num_channels - 1:04d}{suffix}")
    return CaseInput(case, (path,), suffix, problem)


def _channel_case(case: str, paths: list[Path], suffix: str, num_channels: int) -> CaseInput:
    paths = sorted(paths)
    expected = [f"{case}_{k:04d}{suffix}" for k in range(num_channels)]
    problem = ""
    if [p.name for p in paths] != expected:
        problem = (f"{paths[0].parent / expected[0]}: case {case} has channel files {', '.join(p.name for p in paths)} "
                   f"but the model expects {num_channels} channel(s): {', '.join(expected)}")
    return CaseInput(case, tuple(paths), suffix, problem)


def select_part(cases: list[CaseInput], part_id: int, num_parts: int) -> list[CaseInput]:
    """Part ``part_id`` (0-based) of ``num_parts``: every ``num_parts``-th case of the sorted list."""
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise LiversegError(f"--num-parts must be a whole number >= 1; got {num_parts!r}")
    if isinstance(part_id, bool) or not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise LiversegError(f"--part-id must be between 0 and {num_parts - 1} for --num-parts {num_parts}; got {part_id!r} "
                            "(with a SLURM array: --part-id $SLURM_ARRAY_TASK_ID --num-parts $SLURM_ARRAY_TASK_COUNT)")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]


def output_files(output: Path, case: CaseInput, save_probabilities: bool, lesion_maps: bool) -> dict[str, Path]:
    """The files a case writes, the label map last."""
    files = {"report": output / f"{case.case_id}.lesions.json"}
    if save_probabilities:
        files["probabilities"] = output / f"{case.case_id}.npz"
    if lesion_maps:
        files["lesion_map"] = output / f"{case.case_id}_lesions.nii.gz"
    files["label"] = output / f"{case.case_id}{case.suffix}"
    return files


def is_complete(files: dict[str, Path]) -> bool:
    """Whether a case's outputs are all there (the label map is written last)."""
    return all(p.is_file() for p in files.values())


def check_output_folder(output: Path, inputs: Path) -> None:
    """Create the output folder and check that files can be written into it (before any work)."""
    if output.resolve() == (inputs if inputs.is_dir() else inputs.parent).resolve():
        raise LiversegError(f"{output}: the output folder is the input folder; label maps would overwrite or mix with the "
                            "images; choose another -o")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write_test"):
            pass
    except OSError as e:
        raise LiversegError(f"{output}: the output folder cannot be created or written to ({e.strerror or e}); "
                            "choose another -o or fix its permissions") from None


def predict_folder(source: str | Path, output: str | Path, predictor: Predictor | None = None, *, num_workers: int = 1,
                   continue_: bool = False, part_id: int = 0, num_parts: int = 1, save_probabilities: bool = False,
                   lesion_maps: bool = False, **model_options: Any) -> RunSummary:
    """Predict every case of ``source`` into ``output`` (module docstring); returns what happened.

    Without ``predictor``, one is loaded with :meth:`Predictor.from_folder` from ``model_options``
    (``source`` of the models as ``model``, ``pipeline``, ``folds``, ``checkpoint`` and the
    predictor's options). Failed cases do not raise: see :meth:`RunSummary.raise_for_failures`.
    """
    start = time.perf_counter()
    source, output = Path(source), Path(output)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise LiversegError(f"-np (worker threads) must be a whole number >= 0; got {num_workers!r}")
    if predictor is None:
        predictor = Predictor.from_folder(model_options.pop("model", None), **model_options)
    elif model_options:
        raise TypeError(f"model options {sorted(model_options)} given together with a predictor")
    cases = select_part(find_cases(source, predictor.models.num_channels), part_id, num_parts)
    check_output_folder(output, source)
    write_json(output / SETTINGS_FILE, {**predictor.describe(), "input": str(source), "part_id": part_id,
                                        "num_parts": num_parts, "save_probabilities": save_probabilities,
                                        "lesion_maps": lesion_maps})
    summary = RunSummary(output, len(cases))
    reports: dict[str, dict[str, Any]] = {}
    todo = []
    for case in cases:
        files = output_files(output, case, save_probabilities, lesion_maps)
        if continue_ and is_complete(files):
            summary.skipped.append(case.case_id)
            report = _read_report(files["report"])
            if report is not None:
                reports[case.case_id] = report
        else:
            todo.append(case)
    if summary.skipped:
        log.info("--continue: %d of %d case(s) are complete and skipped", len(summary.skipped), len(cases))
    log.info("predicting %d case(s) from %s into %s with %s (%s), folds %s", len(todo), source, output,
             predictor.models.name, predictor.models.dataset, ", ".join(map(str, predictor.models.folds)))
    export = _Exporter(output, predictor, save_probabilities, lesion_maps)
    for case, outcome in pipelined_cases(todo, predictor, export, num_workers):
        if isinstance(outcome, tuple):
            summary.predicted.append(case.case_id)
            reports[case.case_id], summary.timings[case.case_id] = outcome
        else:
            summary.failed[case.case_id] = outcome
    suffix = "" if num_parts == 1 else f"_part{part_id}"
    ordered = [reports[c.case_id] for c in cases if c.case_id in reports]
    write_run_table(ordered, output / f"lesions{suffix}.csv", output / f"cases{suffix}.csv")
    summary.seconds = time.perf_counter() - start
    log.info("%d case(s) predicted, %d skipped, %d failed in %.1f s", len(summary.predicted), len(summary.skipped),
             len(summary.failed), summary.seconds)
    for case_id, reason in summary.failed.items():
        log.error("failed: %s: %s", case_id, reason)
    return summary


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        log.warning("%s: cannot be read; the case is left out of the run's tables", path)
        return None


class _Exporter:
    """Post-processing, lesion report and files of one case (run in the export thread)."""

    def __init__(self, output: Path, predictor: Predictor, save_probabilities: bool, lesion_maps: bool) -> None:
        self.output, self.predictor = output, predictor
        self.save_probabilities, self.lesion_maps = save_probabilities, lesion_maps

    def __call__(self, case: CaseInput, prepared: PreparedCase, combined: Combined) -> CaseResult:
        prediction = self.predictor.finish(prepared, combined, keep_probabilities=self.save_probabilities)
        start = time.perf_counter()
        files = output_files(self.output, case, self.save_probabilities, self.lesion_maps)
        self.write(prediction, files)
        prediction.seconds["write"] = time.perf_counter() - start
        _log_case(case, prediction)
        return prediction.lesion_report, prediction.seconds

    def write(self, prediction: Prediction, files: dict[str, Path]) -> None:
        """Write the case's files, the label map last (its old version deleted first: a case is complete iff it exists)."""
        try:
            files["label"].unlink(missing_ok=True)
            if "probabilities" in files:
                with atomic_output(files["probabilities"]) as tmp:
                    np.savez_compressed(tmp, probabilities=prediction.probabilities)
            write_case_report(prediction.lesion_report, self.output,
                              prediction.lesion_map() if self.lesion_maps else None, prediction.geometry)
            write_prediction(prediction.label, prediction.geometry, files["label"])
        except OSError as e:
            raise LiversegError(f"{files['label'].parent}: cannot write the outputs of {prediction.case_id} "
                                f"({e.strerror or e}); is the disk full or the folder read-only?") from None


def _log_case(case: CaseInput, prediction: Prediction) -> None:
    s = prediction.seconds
    report = prediction.lesion_report
    stages = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in s.items())
    log.info("%s: %.1f s (%s); %d lesion(s), liver %.0f ml, tumour burden %.3f", case.case_id, sum(s.values()), stages,
             report["num_lesions"], report["liver_volume_ml"], report["tumour_burden"])


def _failure(case: CaseInput, error: BaseException) -> str:
    """The reason a case failed, logged with its file (with a traceback for anything but a user error)."""
    where = case.sources[0] if len(case.sources) == 1 else f"{case.sources[0]} (+{len(case.sources) - 1} channel files)"
    if isinstance(error, LiversegError):
        reason = str(error)
        log.error("%s failed: %s", case.case_id, reason)
    else:
        reason = f"{where}: {type(error).__name__}: {error}"
        log.error("%s failed: %s", case.case_id, reason, exc_info=error)
    return reason


def _prepare(predictor: Predictor, case: CaseInput) -> PreparedCase:
    if case.problem:
        raise LiversegError(case.problem)
    try:
        return predictor.prepare(list(case.sources), case_id=case.case_id)
    except LiversegError as e:
        text = str(e)
        where = str(case.sources[0])
        raise LiversegError(text if where in text else f"{where}: {text}") from None


def pipelined_cases(cases: list[CaseInput], predictor: Predictor, export: Callable[[CaseInput, PreparedCase, Combined], Any],
                    num_workers: int, desc: str = "predict") -> Iterator[tuple[CaseInput, Any]]:
    """Yield ``(case, what export returned, or the failure reason)`` per case as each finishes.

    Cases are prepared ahead in ``num_workers`` threads and ``export(case, prepared, combined)``
    runs in a thread behind the network (module docstring); a failed case yields its reason (a
    str) and the others go on. ``desc`` labels the progress bar.
    """
    if not cases:
        return
    bar = tqdm(total=len(cases), desc=desc, unit="case", disable=None)
    readers = ThreadPoolExecutor(num_workers, thread_name_prefix="prepare") if num_workers else None
    writer = ThreadPoolExecutor(1, thread_name_prefix="export") if num_workers else None
    queue = iter(cases)
    prepared: deque[tuple[CaseInput, Future]] = deque()
    exports: deque[tuple[CaseInput, Future]] = deque()

    def submit_next() -> None:
        case = next(queue, None)
        if case is not None:
            prepared.append((case, _call(readers, _prepare, predictor, case)))

    def finished(wait_all: bool):
        while exports and (wait_all or len(exports) > 1 or exports[0][1].done()):
            case, future = exports.popleft()
            bar.update()
            try:
                yield case, future.result()
            except Exception as error:  # a failed case is reported, the others go on
                yield case, _failure(case, error)

    try:
        for _ in range(max(1, num_workers)):
            submit_next()
        while prepared:
            case, future = prepared.popleft()
            submit_next()
            try:
                ready = future.result()
                combined = predictor.infer(ready)
            except Exception as error:
                bar.update()
                yield case, _failure(case, error)
                continue
            exports.append((case, _call(writer, export, case, ready, combined)))
            del ready, combined
            yield from finished(wait_all=False)
        yield from finished(wait_all=True)
    finally:
        for pool in (readers, writer):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _call(pool: ThreadPoolExecutor | None, function: Callable[..., Any], *args: Any) -> Future:
    """``function(*args)`` in ``pool``, or right away (as a finished future) without one."""
    if pool is not None:
        return pool.submit(function, *args)
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except Exception as error:
        future.set_exception(error)
    return future
