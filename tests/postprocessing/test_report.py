"""The lesion report on constructed cases with known volumes, diameters and positions."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.errors import LiversegError
from liverseg.evaluation.metrics import tumor_burden
from liverseg.io.images import read_image
from liverseg.lesion_measures import lesion_table
from liverseg.postprocessing.report import (
    CASE_COLUMNS,
    LESION_COLUMNS,
    lesion_instance_map,
    lesion_report,
    write_case_report,
    write_run_table,
)

SPACING = (3.0, 0.8, 0.7)  # (z, y, x) mm
VOXEL_ML = 3.0 * 0.8 * 0.7 / 1000.0
# Boxes (z, y, x), listed in raster order; by size they are L (320), M (50), S (6).
SMALL = (slice(2, 3), slice(4, 6), slice(4, 7))
LARGE = (slice(3, 7), slice(10, 20), slice(10, 18))
MEDIUM = (slice(5, 7), slice(25, 30), slice(25, 30))


def _case() -> np.ndarray:
    label = np.zeros((10, 40, 40), np.uint8)
    label[1:9, 2:38, 2:38] = 1
    for box in (SMALL, LARGE, MEDIUM):
        label[box] = 2
    return label


def _diagonal(box) -> float:
    """Longest axial diameter of a box lesion: the diagonal of its in-plane extent (edge to edge)."""
    return math.hypot((box[1].stop - box[1].start) * SPACING[1], (box[2].stop - box[2].start) * SPACING[2])


def test_lesions_are_measured_and_sorted_by_size():
    report = lesion_report(_case(), spacing=SPACING, case_id="p1")
    assert report["case_id"] == "p1" and report["num_lesions"] == 3
    lesions = report["lesions"]
    assert [lesion["id"] for lesion in lesions] == [1, 2, 3]
    for lesion, box, n in zip(lesions, (LARGE, MEDIUM, SMALL), (4 * 10 * 8, 2 * 5 * 5, 1 * 2 * 3)):
        assert lesion["num_voxels"] == n
        assert lesion["volume_ml"] == pytest.approx(n * VOXEL_ML, rel=1e-12)
        assert lesion["longest_axial_diameter_mm"] == pytest.approx(_diagonal(box), rel=1e-9)
        assert lesion["bbox"] == [[s.start, s.stop] for s in box]
        assert lesion["centroid_voxel"] == pytest.approx([(s.start + s.stop - 1) / 2 for s in box])
        assert lesion["extent_mm"] == pytest.approx([(s.stop - s.start) * d for s, d in zip(box, SPACING)])
        assert lesion["mean_tumour_probability"] is None and lesion["uncertainty"] is None
    # Identity direction, zero origin: world (x, y, z) is the voxel centre times the spacing.
    z, y, x = lesions[0]["centroid_voxel"]
    assert lesions[0]["centroid_world_mm"] == pytest.approx([x * 0.7, y * 0.8, z * 3.0])


def test_component_ids_are_the_raster_order_ids_of_the_lesion_table():
    """The evaluation numbers lesions in raster order; component_id links a report lesion to it."""
    label = _case()
    report = lesion_report(label, spacing=SPACING)
    assert [lesion["component_id"] for lesion in report["lesions"]] == [2, 3, 1]  # SMALL comes first in raster order
    table = {row["id"]: row for row in lesion_table(label, SPACING)}
    for lesion in report["lesions"]:
        row = table[lesion["component_id"]]
        assert (row["num_voxels"], row["bbox"]) == (lesion["num_voxels"], lesion["bbox"])


def test_instance_map_ids_match_the_report():
    label = _case()
    instance = lesion_instance_map(label)
    assert instance.dtype == np.uint16 and instance.shape == label.shape
    for lesion_id, box in zip((1, 2, 3), (LARGE, MEDIUM, SMALL)):
        assert np.all(instance[box] == lesion_id)
        assert np.count_nonzero(instance == lesion_id) == np.count_nonzero(label[box] == 2)
    np.testing.assert_array_equal(instance > 0, label == 2)


def test_equal_sizes_keep_raster_order():
    label = np.zeros((3, 10, 10), np.uint8)
    label[1, 6:8, 1:3] = 2  # second in raster order
    label[1, 1:3, 6:8] = 2  # first in raster order
    instance = lesion_instance_map(label)
    assert instance[1, 1, 6] == 1 and instance[1, 6, 1] == 2


def test_uncertainty_is_one_minus_the_mean_tumour_probability():
    label = _case()
    probability = np.random.default_rng(0).random(label.shape).astype(np.float32)
    probability[3:5, 10:20, 10:18] = 0.9  # the large lesion: half its slices at 0.9 ...
    probability[5:7, 10:20, 10:18] = 0.5  # ... half at 0.5: mean 0.7
    probability[MEDIUM] = 0.25
    report = lesion_report(label, spacing=SPACING, tumour_probability=probability)
    large, medium, small = report["lesions"]
    assert large["mean_tumour_probability"] == pytest.approx(0.7, abs=1e-6)
    assert large["uncertainty"] == pytest.approx(0.3, abs=1e-6)
    assert medium["uncertainty"] == pytest.approx(0.75, abs=1e-6)
    expected_small = float(np.mean(probability[SMALL].astype(np.float64)))
    assert small["mean_tumour_probability"] == pytest.approx(expected_small, abs=1e-9)
    assert small["uncertainty"] == pytest.approx(1.0 - expected_small, abs=1e-9)


def test_case_volumes_and_burden_use_the_evaluation_definition():
    label = _case()
    report = lesion_report(label, spacing=SPACING)
    tumour = 320 + 50 + 6
    whole = 8 * 36 * 36
    assert report["tumour_volume_ml"] == pytest.approx(tumour * VOXEL_ML)
    assert report["liver_volume_ml"] == pytest.approx(whole * VOXEL_ML)
    assert report["liver_parenchyma_volume_ml"] == pytest.approx((whole - tumour) * VOXEL_ML)
    assert report["tumour_burden"] == pytest.approx(tumour / whole)
    assert report["tumour_burden"] == tumor_burden(label)
    assert report["tumour_burden"] == pytest.approx(report["tumour_volume_ml"] / report["liver_volume_ml"])


def test_empty_case():
    report = lesion_report(np.zeros((3, 4, 5), np.uint8), spacing=SPACING)
    assert report["lesions"] == [] and report["num_lesions"] == 0
    assert report["tumour_burden"] == 0.0 and report["liver_volume_ml"] == 0.0
    assert not lesion_instance_map(np.zeros((3, 4, 5), np.uint8)).any()


DIRECTIONS = {
    "permuted_flipped": (-1, 0, 0, 0, 0, 1, 0, -1, 0),
    "oblique": tuple(sitk.VersorRigid3DTransform((0.1, 0.2, 0.05, 0.97)).GetMatrix()),
}


def _write_case(path, direction):
    """A file on disk whose index order differs from the canonical one; returns its array and image."""
    disk = np.zeros((6, 12, 14), np.uint8)
    disk[1:5, 2:10, 2:12] = 1
    disk[2:4, 3:6, 3:9] = 2  # 36 voxels
    disk[3, 3:5, 7:9] = 1  # carve it so its centroid is off its box centre: 32 voxels
    disk[1, 7:9, 9:11] = 2  # 4 voxels
    image = sitk.GetImageFromArray(disk)
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((10.0, -20.0, 30.5))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return disk, image


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_world_centroids_agree_with_simpleitk(tmp_path, direction):
    disk, image = _write_case(tmp_path / "case.nii.gz", DIRECTIONS[direction])
    label, geometry = read_image(tmp_path / "case.nii.gz")
    report = lesion_report(label, geometry, case_id="case")
    expected = []
    for box in ((slice(2, 4), slice(3, 6), slice(3, 9)), (slice(1, 2), slice(7, 9), slice(9, 11))):
        index_zyx = np.argwhere(_in_box(disk.shape, box) & (disk == 2)).mean(axis=0)
        expected.append(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_zyx[::-1]]))
    assert [lesion["num_voxels"] for lesion in report["lesions"]] == [32, 4]
    for lesion, point in zip(report["lesions"], expected):
        assert lesion["centroid_world_mm"] == pytest.approx(point, abs=1e-4)
    assert report["lesions"][0]["volume_ml"] == pytest.approx(32 * 0.8 * 0.9 * 3.0 / 1000.0)


def _in_box(shape, box) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box] = True
    return mask


def test_case_files_open_on_top_of_the_scan(tmp_path):
    disk, image = _write_case(tmp_path / "case.nii.gz", DIRECTIONS["permuted_flipped"])
    label, geometry = read_image(tmp_path / "case.nii.gz")
    report = lesion_report(label, geometry, case_id="case")
    written = write_case_report(report, tmp_path / "out", lesion_instance_map(label), geometry)
    assert [p.name for p in written] == ["case.lesions.json", "case_lesions.nii.gz"]
    assert json.loads(written[0].read_text()) == report
    back = sitk.ReadImage(str(written[1]))
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    ids = sitk.GetArrayFromImage(back)
    assert np.all(ids[2:4, 3:6, 3:9][disk[2:4, 3:6, 3:9] == 2] == 1)  # the larger lesion is id 1
    assert np.all(ids[1, 7:9, 9:11] == 2)
    np.testing.assert_array_equal(ids > 0, disk == 2)


def test_run_tables(tmp_path):
    probability = np.full((10, 40, 40), 0.6, np.float32)
    reports = [lesion_report(_case(), spacing=SPACING, tumour_probability=probability, case_id="a"),
               lesion_report(np.ones((3, 4, 5), np.uint8), spacing=SPACING, case_id="b"),
               lesion_report(_case(), spacing=SPACING, case_id="c")]
    write_run_table(reports, tmp_path / "lesions.csv", tmp_path / "cases.csv")
    with open(tmp_path / "lesions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LESION_COLUMNS
    assert [(r["case_id"], r["lesion_id"], r["component_id"]) for r in rows] == [
        ("a", "1", "2"), ("a", "2", "3"), ("a", "3", "1"), ("c", "1", "2"), ("c", "2", "3"), ("c", "3", "1")]
    assert float(rows[0]["volume_ml"]) == pytest.approx(320 * VOXEL_ML)
    assert float(rows[0]["uncertainty"]) == pytest.approx(0.4, abs=1e-6)
    assert rows[3]["uncertainty"] == "" and rows[3]["mean_tumour_probability"] == ""
    world = [float(rows[0][k]) for k in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")]
    assert world == pytest.approx(reports[0]["lesions"][0]["centroid_world_mm"])
    assert [int(rows[0][k]) for k in ("bbox_z_start", "bbox_z_stop", "bbox_x_start", "bbox_x_stop")] == [3, 7, 10, 18]
    with open(tmp_path / "cases.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert tuple(cases[0]) == CASE_COLUMNS
    assert [c["case_id"] for c in cases] == ["a", "b", "c"]
    assert cases[1]["num_lesions"] == "0" and float(cases[1]["largest_lesion_volume_ml"]) == 0.0
    assert float(cases[0]["tumour_burden"]) == pytest.approx(376 / (8 * 36 * 36))


@pytest.mark.parametrize("probability, message", [
    (np.zeros((10, 40, 39), np.float32), "does not match the label map"),
    (np.full((10, 40, 40), 3.0, np.float32), "within \\[0, 1\\]"),
    (np.full((10, 40, 40), np.nan, np.float32), "within \\[0, 1\\]"),
])
def test_bad_probabilities_are_user_errors(probability, message):
    with pytest.raises(LiversegError, match=message):
        lesion_report(_case(), spacing=SPACING, tumour_probability=probability, case_id="p1")


def test_unwritable_output_is_a_user_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    report = lesion_report(_case(), spacing=SPACING, case_id="p1")
    with pytest.raises(LiversegError, match="cannot write the lesion report"):
        write_case_report(report, blocker / "out")
    with pytest.raises(LiversegError, match="cannot write"):
        write_run_table([report], blocker / "lesions.csv")
