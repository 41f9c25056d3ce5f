"""The planner's rules on fabricated fingerprints (see conftest.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.planning.memory import GIB, estimate_training_memory
from liverseg.planning.planner import plan_from_fingerprint
from liverseg.planning.templates import load_defaults, load_templates
from liverseg.preprocessing.normalize import CT_STATS_KEYS


def _plan(fingerprint, **kwargs):
    return plan_from_fingerprint(fingerprint, load_templates(), load_defaults(), **kwargs)


def _spacings(fp):
    return np.array([c["spacing"] for c in fp["cases"].values()])


def _patch_mm(plan, model):
    return np.array(model.topology.patch_size) * plan.preprocessing[model.preprocessing].target_spacing


def _liver_extents(fp):
    return np.array([c["liver"]["extent_mm"] for c in fp["cases"].values() if c["liver"]])


def _lesion_extents(fp):
    return np.array([les["extent_mm"] for c in fp["cases"].values() for les in c["lesions"]])


def test_isotropic_ct_pools_every_axis_with_cubic_kernels_and_dataset_ct_normalisation(fingerprints):
    fp = fingerprints.ct()
    plan = _plan(fp)
    spec = plan.preprocessing["fullres"]
    assert spec.target_spacing == (0.8, 0.8, 0.8) and not spec.separate_z
    assert spec.normalization == ("ct",)
    assert spec.intensity_statistics == ({k: fp["summary"]["foreground_intensity"]["0"][k] for k in CT_STATS_KEYS},)
    topology = plan.pipeline("multiclass").model("multiclass").topology
    assert all(k == (3, 3, 3) for k in topology.kernel_sizes)
    assert all(s == (2, 2, 2) for s in topology.strides[1:])


def test_thick_slice_mri_keeps_z_spacing_and_convolves_in_plane_first(fingerprints, atlas_plan):
    fp = fingerprints.atlas()
    spacings = _spacings(fp)
    spec = atlas_plan.preprocessing["fullres"]
    assert spec.target_spacing == pytest.approx(np.median(spacings, axis=0), abs=1e-4)
    assert spec.separate_z and spec.order_z_image == 0 and spec.normalization == ("zscore_foreground",)
    assert spec.intensity_statistics == ()
    for pipeline in atlas_plan.pipelines:
        for model in pipeline.models:
            if model.preprocessing != "fullres":
                continue
            assert model.topology.kernel_sizes[0] == (1, 3, 3)
            assert model.topology.strides[1] == (1, 2, 2)  # no z pooling in the first step
    assert "nnU-Net would upsample to" in atlas_plan.reasons["target_spacing"]


def test_dual_binary_s_liver_model_is_not_mirrored_and_the_others_get_nnunet_s_axes(atlas_plan):
    liver, tumour = atlas_plan.pipeline("dual_binary").model("liver"), atlas_plan.pipeline("dual_binary").model("tumour")
    assert liver.mirroring == "none" and "liver always lies on the patient's right" in liver.reasons["mirroring"]
    assert tumour.mirroring == "auto" and tumour.reasons["mirroring"].startswith("mirrored along y and x in training")
    assert atlas_plan.pipeline("multiclass").model("multiclass").mirroring == "auto"


def test_tumour_patch_is_smaller_than_the_liver_patch_and_dual_binary_is_recommended(atlas_plan):
    dual = atlas_plan.pipeline("dual_binary")
    tumour, liver = dual.model("tumour").topology.patch_size, dual.model("liver").topology.patch_size
    assert all(t <= v for t, v in zip(tumour, liver)) and math.prod(tumour) < 0.5 * math.prod(liver)
    assert atlas_plan.recommended == "dual_binary" and "small against the liver" in atlas_plan.reasons["recommended"]


def test_patches_hold_the_percentile_of_the_boxes_when_memory_allows(fingerprints):
    fp = fingerprints.atlas(seed=4)
    plan = _plan(fp, gpu_memory_gb=200, percentile=90)
    dual = plan.pipeline("dual_binary")
    liver_wanted = np.percentile(_liver_extents(fp), 90, axis=0) + 2 * 10
    lesion_wanted = np.percentile(_lesion_extents(fp), 90, axis=0) + 2 * 20
    median_image = np.median([np.array(c["shape"]) * c["spacing"] for c in fp["cases"].values()], axis=0)
    assert np.all(_patch_mm(plan, dual.model("liver")) >= np.minimum(liver_wanted, median_image) - 1.1 * np.array(plan.preprocessing["fullres"].target_spacing))
    assert np.all(_patch_mm(plan, dual.model("tumour")) >= lesion_wanted)
    assert "shrunk" not in dual.model("tumour").reasons["patch_size"]


def test_images_smaller_than_a_patch_clip_it_to_the_image(fingerprints):
    shapes = [(12, 40, 44), (14, 44, 40), (12, 42, 42)]
    fp = fingerprints.make([(3.0, 1.0, 1.0)] * 3, shapes, [(150, 180, 200)] * 3, [[(30, 30, 30)]] * 3)
    plan = _plan(fp)
    model = plan.pipeline("multiclass").model("multiclass")
    divisor = model.topology.divisor
    median = np.median(shapes, axis=0)
    assert all(p <= math.ceil(m / d) * d for p, m, d in zip(model.topology.patch_size, median, divisor))
    assert "clipped to the median image" in model.reasons["patch_size"]
    assert not plan.pipeline("cascade").emitted  # the whole image fits one patch


def test_huge_images_under_a_small_budget_fit_it(fingerprints):
    plan = _plan(fingerprints.atlas(huge=True), gpu_memory_gb=3)
    for pipeline in plan.pipelines:
        for model in pipeline.models:
            topology = model.topology
            assert all(p % d == 0 for p, d in zip(topology.patch_size, topology.divisor))
            assert estimate_training_memory(topology, model.batch_size, 1, model.num_classes) <= 3 * GIB
    assert "shrunk to fit 3 GB" in plan.pipeline("multiclass").model("multiclass").reasons["patch_size"]


def test_cascade_is_emitted_for_large_volumes_with_a_coarse_grid(fingerprints):
    plan = _plan(fingerprints.atlas(num_cases=6, huge=True))  # fields of view four times as wide
    cascade = plan.pipeline("cascade")
    assert cascade.emitted and "more than 4" in cascade.reason
    coarse, fine = cascade.model("coarse"), cascade.model("fine")
    low, full = plan.preprocessing["lowres"], plan.preprocessing["fullres"]
    assert coarse.preprocessing == "lowres" and fine.preprocessing == "fullres"
    assert all(c >= f for c, f in zip(low.target_spacing, full.target_spacing)) and low.target_spacing != full.target_spacing
    assert fine.roi is not None and fine.roi.from_model == "coarse" and fine.roi.margin_mm == 15
    assert "lowres" in plan.specs_in_use() and "low_resolution" in plan.reasons


def test_cascade_is_not_emitted_when_images_are_cropped_to_the_liver(fingerprints):
    # Images barely larger than the liver: one patch already sees most of the volume.
    shapes = [(60, 200, 220)] * 6
    fp = fingerprints.make([(3.0, 1.0, 1.0)] * 6, shapes, [(170, 190, 210)] * 6, [[(20, 20, 20)]] * 6)
    plan = _plan(fp)
    cascade = plan.pipeline("cascade")
    assert not cascade.emitted and cascade.models == () and "not more than 4" in cascade.reason
    assert "lowres" not in plan.preprocessing


def test_large_lesions_make_multiclass_the_recommendation(fingerprints):
    livers = [(150, 170, 190)] * 6
    fp = fingerprints.make([(3.0, 1.0, 1.0)] * 6, [(80, 400, 400)] * 6, livers, [[(140, 160, 180)]] * 6)
    plan = _plan(fp)
    assert plan.recommended == "multiclass" and "large against the liver" in plan.reasons["recommended"]


def test_without_lesions_the_tumour_model_is_not_planned(fingerprints):
    fp = fingerprints.make([(3.0, 1.0, 1.0)] * 4, [(80, 400, 400)] * 4, [(150, 170, 190)] * 4, [[]] * 4)
    plan = _plan(fp)
    dual = plan.pipeline("dual_binary")
    assert not dual.emitted and "no lesions" in dual.reason
    assert plan.recommended == "multiclass"


def test_fast_preset_makes_a_small_anisotropic_network(fingerprints):
    plan = _plan(fingerprints.atlas(), preset="fast")
    assert plan.planner.gpu_memory_gb == 2
    for pipeline in plan.pipelines:
        for model in pipeline.models:
            topology = model.topology
            assert topology.num_stages <= 4 and max(topology.features_per_stage) <= 64
            assert math.prod(topology.patch_size) <= 32 * 96 * 96
            assert model.schedule.epochs == 20
            if model.preprocessing == "fullres":
                assert topology.kernel_sizes[0] == (1, 3, 3) and topology.strides[1] == (1, 2, 2)
    assert plan.recommended == "dual_binary"  # boxes, not the capped patches, decide


def test_a_dataset_without_livers_cannot_be_planned(fingerprints):
    fp = fingerprints.make([(3.0, 1.0, 1.0)] * 2, [(80, 400, 400)] * 2, [None, None], [[], []])
    with pytest.raises(LiversegError, match="no training case has liver labels"):
        _plan(fp)


def test_unknown_preset_is_a_user_error(fingerprints):
    with pytest.raises(LiversegError, match="unknown preset 'huge'; presets: default, fast"):
        _plan(fingerprints.atlas(num_cases=3), preset="huge")


def _without_2d(templates):
    return {name: t for name, t in templates.items() if name != "multiclass_2d"}


@pytest.mark.parametrize("preset", ["default", "fast"])
def test_the_2d_configuration_sees_one_slice_of_the_liver_box_with_the_3d_models_stages(fingerprints, preset):
    fp = fingerprints.atlas()
    plan = _plan(fp, preset=preset)
    two_d = plan.pipeline("multiclass_2d")
    model = two_d.model("multiclass")
    topology = model.topology
    assert two_d.emitted and topology.network == "unet_2d" and topology.patch_size[0] == 1
    assert all(k[0] == 1 for k in topology.kernel_sizes) and all(s[0] == 1 for s in topology.strides)
    # In-plane: the 95th percentile of the liver boxes plus 10 mm per side, as for the 3D liver models, unless
    # the median image is smaller (memory is no limit for one slice here).
    spacing = plan.preprocessing["fullres"].target_spacing
    wanted = np.ceil((np.percentile(_liver_extents(fp), 95, axis=0) + 20) / spacing - 1e-6)[1:]
    median = np.median([c["shape_after_crop"] for c in fp["cases"].values()], axis=0)[1:]
    assert np.all(np.array(topology.patch_size[1:]) >= np.minimum(wanted, median) - 1e-9)
    three_d = [m.topology.num_stages for p in plan.pipelines if p.emitted and p.name != "multiclass_2d" for m in p.models
               if m.preprocessing == "fullres"]
    assert topology.num_stages == max(three_d)
    assert model.batch_size > plan.pipeline("multiclass").model("multiclass").batch_size
    assert plan.recommended != "multiclass_2d" and "in-plane" in model.reasons["patch_size"]


def test_a_2d_batch_holds_at_most_the_voxels_of_the_presets_largest_3d_batch(fingerprints):
    plan = _plan(fingerprints.atlas(), preset="fast")
    preset = load_defaults().preset("fast")
    model = plan.pipeline("multiclass_2d").model("multiclass")
    assert model.batch_size * math.prod(model.topology.patch_size) <= preset.max_batch_size * preset.max_patch_voxels
    assert model.batch_size > preset.max_batch_size


def test_adding_the_2d_configuration_leaves_the_3d_pipelines_as_they_were(fingerprints):
    fp = fingerprints.atlas()
    with_2d = _plan(fp)
    without = plan_from_fingerprint(fp, _without_2d(load_templates()), load_defaults())
    assert [p.to_dict() for p in with_2d.pipelines if p.name != "multiclass_2d"] == [p.to_dict() for p in without.pipelines]
    assert (with_2d.recommended, with_2d.reasons) == (without.recommended, without.reasons)


def test_a_2d_pipeline_is_recommended_only_when_nothing_else_is_planned(fingerprints):
    templates = load_templates()
    plan = plan_from_fingerprint(fingerprints.atlas(), {"multiclass_2d": templates["multiclass_2d"]}, load_defaults())
    assert plan.recommended == "multiclass_2d"
    # Alone, the 2D model is not limited to the stages of 3D models: its in-plane patch decides.
    assert plan.pipeline("multiclass_2d").model("multiclass").topology.num_stages >= \
        _plan(fingerprints.atlas()).pipeline("multiclass_2d").model("multiclass").topology.num_stages
