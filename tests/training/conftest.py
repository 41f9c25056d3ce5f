"""A real preprocessed tiny phantom with every pipeline emitted, shared by the data-pipeline tests."""
from __future__ import annotations

import dataclasses

import pytest

from liverseg.data.phantom import generate_dataset
from liverseg.data.splits import read_splits
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.planning.plans import Plan
from liverseg.planning.templates import load_templates
from liverseg.preprocessing.run import preprocess_dataset


def _with_cascade(plan: Plan) -> Plan:
    """The plan with its cascade emitted (the tiny phantom is too small for the planner to emit it).

    Stage 1 gets a grid twice as coarse in-plane; both stages take sampling and region of interest
    from the cascade template.
    """
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
def phantom(tmp_path_factory):
    """(plan with cascade, preprocessed dataset folder, fold 0) of a 4-case tiny phantom, fast preset."""
    root = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as env:
        for name in ("raw", "preprocessed", "results"):
            (root / name).mkdir()
            env.setenv(f"LIVERSEG_{name.upper()}", str(root / name))
        generate_dataset(root / "raw" / "Phantom", 4, size="tiny")
        plan = _with_cascade(plan_dataset("Phantom", num_workers=1, preset="fast").plan)
        out = root / "preprocessed" / "Phantom"
        preprocess_dataset(root / "raw" / "Phantom", [plan.preprocessing["lowres"]], out)
    return plan, out, read_splits(out / "splits.json")[0]
