"""User overrides merged into a plan by name, validated like a loaded plans.json."""
from __future__ import annotations

import json

import pytest

from liverseg.errors import LiversegError
from liverseg.planning.overrides import apply_overrides, load_overrides, merge


def test_objects_merge_by_name_and_lists_replace():
    base = {"models": {"liver": {"batch_size": 2, "patch": [1, 2]}, "tumour": {"batch_size": 4}}}
    merged = merge(base, {"models": {"tumour": {"batch_size": 6}, "liver": {"patch": [3]}}})
    assert merged == {"models": {"liver": {"batch_size": 2, "patch": [3]}, "tumour": {"batch_size": 6}}}
    assert base["models"]["tumour"]["batch_size"] == 4  # the base is not changed


def test_overrides_change_only_what_they_name(atlas_plan):
    changes = {"pipelines": {"dual_binary": {"models": {"tumour": {"batch_size": 3, "schedule": {"epochs": 250}}}}},
               "preprocessing": {"fullres": {"normalization": ["percentile"]}}}
    plan = apply_overrides(atlas_plan, changes, "my_overrides.json")
    tumour = plan.pipeline("dual_binary").model("tumour")
    assert tumour.batch_size == 3 and tumour.schedule.epochs == 250
    assert tumour.schedule.learning_rate == atlas_plan.pipeline("dual_binary").model("tumour").schedule.learning_rate
    assert plan.preprocessing["fullres"].normalization == ("percentile",)
    assert plan.pipeline("multiclass") == atlas_plan.pipeline("multiclass")


def test_a_new_patch_size_gets_strides_and_kernels_derived_for_it(atlas_plan):
    original = atlas_plan.pipeline("dual_binary").model("tumour").topology
    changes = {"pipelines": {"dual_binary": {"models": {"tumour": {"topology": {"patch_size": [16, 64, 64]}}}}}}
    topology = apply_overrides(atlas_plan, changes).pipeline("dual_binary").model("tumour").topology
    assert topology.patch_size == (16, 64, 64) and topology.num_stages < original.num_stages
    assert all(p % d == 0 for p, d in zip(topology.patch_size, topology.divisor))
    assert topology.kernel_sizes[0] == (1, 3, 3)  # still thick slices


@pytest.mark.parametrize("changes,message", [
    ({"pipelines": {"dual_binary": {"models": {"tumor": {"batch_size": 2}}}}},
     "unknown key 'tumor' at pipelines.dual_binary.models; known keys there: liver, tumour"),
    ({"pipelines": {"dual_binary": {"models": {"tumour": {"batch_sise": 2}}}}}, "unknown key 'batch_sise'.*known keys there: learns, preprocessing"),
    ({"recomended": "multiclass"}, "unknown key 'recomended' at the top level"),
    ({"pipelines": {"dual_binary": {"models": {"tumour": {"topology": {"patch_size": [30, 128, 128], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                                                                      "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "features_per_stage": [32, 64, 128]}}}}}},
     r"patch_size \[30, 128, 128\] is not divisible .* on axis z"),
    ({"pipelines": {"dual_binary": {"models": {"tumour": {"topology": {"patch_size": [30, 128, 128]}}}}}},
     r"not divisible .* \(strides derived for the overridden patch size \[30, 128, 128\]"),
    ({"pipelines": {"dual_binary": {"models": {"tumour": {"topology": {"network": "segformer"}}}}}}, "unknown network name 'segformer'"),
    ({"pipelines": {"dual_binary": {"models": {"tumour": {"topology": {"patch_size": [512, 512, 512]}}}}}}, "more than planner.gpu_memory_gb"),
])
def test_bad_overrides_are_rejected_with_a_clear_message(atlas_plan, changes, message):
    with pytest.raises(LiversegError, match=message) as error:
        apply_overrides(atlas_plan, changes, "my_overrides.json")
    assert "my_overrides.json" in str(error.value)


def test_overrides_files_must_be_json_objects(tmp_path):
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(LiversegError, match="one JSON object"):
        load_overrides(tmp_path / "list.json")
    with pytest.raises(LiversegError, match="not valid JSON"):
        load_overrides(tmp_path / "broken.json")
    with pytest.raises(LiversegError, match="no such overrides file"):
        load_overrides(tmp_path / "missing.json")
    (tmp_path / "ok.json").write_text(json.dumps({"recommended": "multiclass"}))
    assert load_overrides(tmp_path / "ok.json") == {"recommended": "multiclass"}


def test_a_2d_models_new_patch_size_keeps_it_2d(atlas_plan):
    changes = {"pipelines": {"multiclass_2d": {"models": {"multiclass": {"topology": {"patch_size": [1, 96, 96]}}}}}}
    topology = apply_overrides(atlas_plan, changes).pipeline("multiclass_2d").model("multiclass").topology
    # 96 halves to 48, 24, 12, 6 (a feature map keeps at least 4 voxels): four poolings in-plane, none along z.
    assert topology.patch_size == (1, 96, 96) and topology.num_stages == 5
    assert all(s[0] == 1 for s in topology.strides) and all(k == (1, 3, 3) for k in topology.kernel_sizes)
