"""Shared fixtures: every test gets its own raw/preprocessed/results stores."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pytest
import torch

from liverseg.data.phantom import generate_dataset
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.planning.plans import Plan
from liverseg.planning.templates import load_templates

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


def with_cascade(plan: Plan) -> Plan:
    """The plan with its cascade emitted: a coarse stage twice as coarse in-plane, a fine stage with the template's roi."""
    template = {m.name: m for m in load_templates()["cascade"].models}
    base = plan.pipeline("multiclass").model("multiclass")
    spec = plan.preprocessing["fullres"]
    z, y, x = spec.target_spacing
    low = dataclasses.replace(spec, target_spacing=(z, 2 * y, 2 * x))
    coarse = dataclasses.replace(base, name="coarse", preprocessing="lowres", sampling=template["coarse"].sampling)
    fine = dataclasses.replace(base, name="fine", sampling=template["fine"].sampling, roi=template["fine"].roi)
    pipelines = tuple(dataclasses.replace(p, emitted=True, models=(coarse, fine)) if p.name == "cascade" else p
                      for p in plan.pipelines)
    return dataclasses.replace(plan, preprocessing={**plan.preprocessing, "lowres": low}, pipelines=pipelines)


@pytest.fixture(scope="session")
def emit_cascade() -> Callable[[Plan], Plan]:
    """:func:`with_cascade`, for tests whose tiny phantoms are too small for the planner to emit a cascade."""
    return with_cascade


PLANNED_DATASET = "Dataset902_TrainerPhantom"


@pytest.fixture(scope="session")
def planned(tmp_path_factory):
    """A planned and preprocessed 4-case tiny phantom (fast preset) named ``Dataset902_TrainerPhantom``.

    Returns its raw and preprocessed stores; shared by the trainer and demo tests, which must not
    change it
    (they write results elsewhere and copy the plan before editing it).
    """
    root = tmp_path_factory.mktemp("trainer_stores")
    stores = {name: root / name for name in ("raw", "preprocessed")}
    with pytest.MonkeyPatch.context() as patch:
        for name, path in stores.items():
            path.mkdir()
            patch.setenv(f"LIVERSEG_{name.upper()}", str(path))
        generate_dataset(stores["raw"] / PLANNED_DATASET, 4, size="tiny")
        plan_dataset(PLANNED_DATASET, num_workers=1, preset="fast", verify=False)
    return stores
