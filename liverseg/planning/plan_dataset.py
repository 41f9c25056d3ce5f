"""The whole ``liverseg_plan`` flow: check and fingerprint, plan, write the files, make folds, preprocess.

Into ``$LIVERSEG_PREPROCESSED/<dataset>/``: ``fingerprint.json`` and ``fingerprint.png`` (recomputed
every run, after the integrity check: a few seconds, and never stale), ``plans.json`` (derived, so
replaced on every run; changes that should survive belong in an overrides file), ``plans.png``,
``splits.json`` (written once and kept: :func:`liverseg.data.splits.load_or_create_splits`) and one
folder of preprocessed cases per preprocessing spec in use.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from liverseg.data.metadata import load_case_metadata, strata_from_metadata
from liverseg.data.splits import load_or_create_splits
from liverseg.fingerprint.dataset import write_fingerprint
from liverseg.io.atomic import read_json
from liverseg.io.dataset import RawDataset, open_dataset
from liverseg.paths import preprocessed_root
from liverseg.planning.overrides import apply_overrides, load_overrides
from liverseg.planning.planner import plan_from_fingerprint
from liverseg.planning.plans import PLANS_FILE, Plan, load_plan, save_plan
from liverseg.planning.report import plot_plan
from liverseg.planning.templates import load_defaults, load_templates
from liverseg.preprocessing.run import preprocess_dataset

log = logging.getLogger(__name__)

PLANS_PLOT = "plans.png"
SPLITS_FILE = "splits.json"


@dataclass
class PlanResult:
    """What a planning run wrote, and how long each step took (seconds)."""

    plan: Plan
    plan_path: Path
    plot_path: Path
    splits_path: Path | None
    preprocessed: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def write_splits(dataset: RawDataset, path: Path, settings: dict[str, Any]) -> Path | None:
    """Cross-validation folds in ``path`` (kept if present), stratified by case metadata when there is some.

    With fewer cases than folds, there is one fold per case; with a single case there are none.
    """
    cases = dataset.training_cases()
    num_folds = min(int(settings.get("num_folds", 5)), len(cases))
    if num_folds < 2:
        log.warning("%s has %d training case(s): no cross-validation folds", dataset.name, len(cases))
        return None
    if num_folds < settings.get("num_folds", 5):
        log.warning("%s has only %d training cases: %d folds instead of %d", dataset.name, len(cases), num_folds,
                    settings.get("num_folds", 5))
    metadata = load_case_metadata(dataset)
    attribute = next((a for a in settings.get("stratify_by", []) if any(a in m for m in metadata.values())), None)
    strata = strata_from_metadata(metadata, attribute, cases) if attribute else None
    if attribute:
        log.info("folds stratified by %s", attribute)
    inner = float(settings.get("inner_validation_fraction", 0.0))
    load_or_create_splits(path, cases, num_folds, int(settings.get("seed", 12345)), strata, inner)
    return path


def plan_dataset(
    dataset: RawDataset | str | Path,
    num_workers: int = 2,
    preset: str = "default",
    gpu_memory_gb: float | None = None,
    percentile: float = 95.0,
    overrides: str | Path | None = None,
    templates: Sequence[str | Path] = (),
    preprocess: bool = True,
    verify: bool = True,
) -> PlanResult:
    """Run the whole planning flow for a raw dataset and return what it wrote.

    ``overrides`` is a JSON file merged into the plan (:mod:`liverseg.planning.overrides`);
    ``templates`` are extra folders of pipeline templates.
    """
    raw = open_dataset(dataset)
    changes = load_overrides(overrides) if overrides else None  # fail on a bad file before any work
    pipeline_templates, defaults = load_templates(templates), load_defaults()
    defaults.preset(preset)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    fingerprint = read_json(write_fingerprint(raw, num_workers, verify=verify))
    seconds["fingerprint"] = time.perf_counter() - start

    start = time.perf_counter()
    plan = plan_from_fingerprint(fingerprint, pipeline_templates, defaults, preset, gpu_memory_gb, percentile)
    if changes is not None:
        plan = apply_overrides(plan, changes, source=str(overrides))
    out = preprocessed_root() / raw.name
    plan_path = out / PLANS_FILE
    if plan_path.is_file() and _differs(plan_path, plan):
        log.warning("replacing %s (it is derived from the data; keep changes in an overrides file, -p)", plan_path)
    save_plan(plan, plan_path)
    plot_path = plot_plan(plan, fingerprint, out / PLANS_PLOT)
    splits_path = write_splits(raw, out / SPLITS_FILE, defaults.splits)
    seconds["plan"] = time.perf_counter() - start
    log.info("wrote %s, %s and %s", plan_path, PLANS_PLOT, SPLITS_FILE)

    result = PlanResult(plan, plan_path, plot_path, splits_path, seconds=seconds)
    if preprocess:
        start = time.perf_counter()
        result.preprocessed = preprocess_plan(raw, plan, num_workers)
        seconds["preprocess"] = time.perf_counter() - start
    return result


def preprocess_plan(dataset: RawDataset | str | Path, plan: Plan | None = None, num_workers: int = 2) -> dict[str, Path]:
    """Preprocess every case for each spec the plan's emitted pipelines use.

    Without ``plan``, the dataset's plans.json is read (and validated), so hand edits count.
    """
    raw = open_dataset(dataset)
    out = preprocessed_root() / raw.name
    plan = plan if plan is not None else load_plan(out / PLANS_FILE)
    specs = plan.specs_in_use()
    log.info("preprocessing for spec(s) %s", ", ".join(f"{k} ({v.folder_name})" for k, v in specs.items()))
    return preprocess_dataset(raw, list(specs.values()), out, num_workers)


def _differs(path: Path, plan: Plan) -> bool:
    try:
        return read_json(path) != plan.to_dict()
    except (OSError, ValueError):
        return True
