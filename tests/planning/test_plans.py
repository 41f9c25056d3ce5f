"""plans.json: JSON round trip through the dataclasses and validation on load."""
from __future__ import annotations

import copy
import json
import re

import pytest

from liverseg.errors import LiversegError
from liverseg.planning.plans import PLAN_VERSION, Plan, load_plan, save_plan


def test_round_trip_through_json_keeps_every_field(atlas_plan, tmp_path):
    path = save_plan(atlas_plan, tmp_path / "plans.json")
    text = path.read_text()
    assert '"patch_size": [' in text and text.count("\n") > 100  # readable: indented, short lists on one line
    loaded = load_plan(path)
    assert loaded == atlas_plan
    assert loaded.to_dict() == json.loads(text)
    tumour = loaded.pipeline("dual_binary").model("tumour")
    assert tumour.learns == {2: 1} and tumour.num_classes == 2
    assert tumour.loss_mask_dilation_mm == 10 and tumour.sampling.patch_must_contain == (1, 2)


def _broken(plan, edit):
    d = copy.deepcopy(plan.to_dict())
    edit(d)
    return d


def _tumour(d):
    return d["pipelines"]["dual_binary"]["models"]["tumour"]


@pytest.mark.parametrize("edit,message", [
    (lambda d: _tumour(d)["topology"].update(patch_size=[0, 128, 128]), "patch_size must hold integers >= 1"),
    (lambda d: _tumour(d)["topology"].update(patch_size=[4096, 128, 128]), "exceeds 2048 voxels"),
    (lambda d: _tumour(d)["topology"].update(network="vnet"), "unknown network name 'vnet'; known: .*unet"),
    (lambda d: _tumour(d)["topology"].update(kernel_sizes=[[2, 3, 3]] * len(_tumour(d)["topology"]["strides"])), "kernel sizes must be odd"),
    (lambda d: _tumour(d)["topology"].update(kernel_sizes=[[3, 3, 3]]), "need one entry per stage"),
    (lambda d: _tumour(d).update(batch_size=64), r"needs about .* GB for training, more than planner.gpu_memory_gb = 8"),
    (lambda d: _tumour(d).update(patch_size=[32, 128, 128]), "models.tumour: unknown key.* patch_size; known keys: name|learns"),
    (lambda d: _tumour(d)["sampling"].update(lesion=0.5), "sum to 1"),
    (lambda d: _tumour(d).update(learns={"3": 1}), r"learns labels \[3\] that the dataset does not have"),
    (lambda d: _tumour(d).update(preprocessing="midres"), "preprocessing 'midres' is not one of the plan's specs"),
    (lambda d: _tumour(d)["schedule"].update(loss="dice_typo"), "unknown loss name 'dice_typo'"),
    (lambda d: d["pipelines"]["dual_binary"].update(combine="vote"), "unknown combine name 'vote'"),
    (lambda d: d["pipelines"]["dual_binary"].update(postprocessing=["fill_everything"]), "step 1: unknown post-processing step 'fill_everything'"),
    (lambda d: d["pipelines"]["dual_binary"].update(postprocessing=[{"name": "close_tumour", "params": {"radius_cm": 2}}]),
     r"close_tumour\) has no parameter radius_cm"),
    (lambda d: d.update(recommended="cascade2"), "recommended pipeline 'cascade2' is not an emitted pipeline"),
    (lambda d: d.update(version=PLAN_VERSION + 1), "plan version 2 is not 1; run liverseg_plan again"),
    (lambda d: d["preprocessing"]["fullres"].update(order_z_image=2), "order_z_image must be one of"),
    (lambda d: _tumour(d).update(mirroring="sometimes"), "models.tumour: unknown mirroring name 'sometimes'; known: auto, none"),
])
def test_impossible_or_unknown_values_are_rejected_with_the_place(atlas_plan, tmp_path, edit, message):
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(_broken(atlas_plan, edit)))
    with pytest.raises(LiversegError, match=message) as error:
        load_plan(path)
    assert str(path) in str(error.value)


def test_a_patch_the_strides_do_not_divide_is_rejected_with_sizes_that_work(atlas_plan, tmp_path):
    strides = _tumour(atlas_plan.to_dict())["topology"]["strides"]
    divisor = [1, 1, 1]
    for stride in strides:
        divisor = [d * s for d, s in zip(divisor, stride)]
    patch = [divisor[0] * 3 + 1, divisor[1] * 4, divisor[2] * 4]
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(_broken(atlas_plan, lambda d: _tumour(d)["topology"].update(patch_size=patch))))
    expected = f"not divisible by the product of the strides {divisor} on axis z; use multiples of {divisor} (e.g. {[divisor[0] * 4, *patch[1:]]})"
    with pytest.raises(LiversegError, match=re.escape(expected)):
        load_plan(path)


def test_a_hand_edit_within_the_rules_is_accepted(atlas_plan, tmp_path):
    steps = ["largest_liver_component_fill_holes", {"name": "close_tumour", "params": {"radius_mm": 2.0}}]
    d = _broken(atlas_plan, lambda d: (_tumour(d).update(batch_size=2), _tumour(d)["schedule"].update(epochs=300),
                                       d["pipelines"]["dual_binary"].update(postprocessing=steps)))
    (tmp_path / "plans.json").write_text(json.dumps(d))
    plan = load_plan(tmp_path / "plans.json")
    tumour = plan.pipeline("dual_binary").model("tumour")
    assert tumour.batch_size == 2 and tumour.schedule.epochs == 300
    assert list(plan.pipeline("dual_binary").postprocessing) == steps


def test_a_plan_written_before_mirroring_existed_mirrors_every_model_as_nnunet(atlas_plan, tmp_path):
    d = atlas_plan.to_dict()
    for pipeline in d["pipelines"].values():
        for model in pipeline["models"].values():
            del model["mirroring"]
    (tmp_path / "plans.json").write_text(json.dumps(d))
    plan = load_plan(tmp_path / "plans.json")
    assert {m.mirroring for p in plan.pipelines for m in p.models} == {"auto"}


def test_missing_or_invalid_files_are_user_errors(tmp_path):
    with pytest.raises(LiversegError, match="no plan yet; run liverseg_plan"):
        load_plan(tmp_path / "plans.json")
    (tmp_path / "plans.json").write_text("{not json")
    with pytest.raises(LiversegError, match="not valid JSON"):
        load_plan(tmp_path / "plans.json")
    with pytest.raises(LiversegError, match="expected an object"):
        Plan.from_dict([1, 2])
