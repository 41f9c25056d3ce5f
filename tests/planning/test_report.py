"""The plan summary table and plans.png."""
from __future__ import annotations

import math

import matplotlib.image as mpimg

from liverseg.planning.report import format_plan, overlay_patches, plot_plan


def test_table_lists_every_emitted_model_with_its_numbers(atlas_plan):
    text = format_plan(atlas_plan)
    tumour = atlas_plan.pipeline("dual_binary").model("tumour")
    spacing = atlas_plan.preprocessing["fullres"].target_spacing
    row = next(line for line in text.splitlines() if line.startswith("dual_binary") and " tumour " in line)
    assert "x".join(map(str, tumour.topology.patch_size)) in row
    assert "x".join(f"{p * s:.0f}" for p, s in zip(tumour.topology.patch_size, spacing)) in row
    assert f"  {tumour.batch_size}  " in row and "lesion 90%" in row
    names = {p.name for p in atlas_plan.pipelines}
    rows = [line for line in text.splitlines() if line.split()[:1] and line.split()[0] in names]
    assert len(rows) == sum(len(p.models) for p in atlas_plan.pipelines if p.emitted)
    assert f"recommended: {atlas_plan.recommended}" in text
    for pipeline in atlas_plan.pipelines:
        if not pipeline.emitted:
            assert f"{pipeline.name}: not emitted: {pipeline.reason}" in text


def test_overlays_group_equal_patches_and_leave_out_whole_volume_models(atlas_plan):
    overlays = overlay_patches(atlas_plan)
    labels = ", ".join(overlays)
    assert "dual_binary/tumour" in labels and "coarse" not in labels
    liver = atlas_plan.pipeline("dual_binary").model("liver")
    same = [label for label in overlays if "dual_binary/liver" in label][0]
    assert "multiclass" in same  # the multiclass model has the liver model's patch
    spacing = atlas_plan.preprocessing["fullres"].target_spacing
    assert overlays[same] == tuple(round(p * s, 1) for p, s in zip(liver.topology.patch_size, spacing))
    assert all(math.prod(a) >= math.prod(b) for a, b in zip(list(overlays.values()), list(overlays.values())[1:]))


def test_plans_png_is_written(atlas_plan, fingerprints, tmp_path):
    path = plot_plan(atlas_plan, fingerprints.atlas(), tmp_path / "plans.png")
    image = mpimg.imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 500
