"""The dataset fingerprint on real raw datasets: summaries, parallel determinism, files, the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli.fingerprint import main
from liverseg.errors import LiversegError
from liverseg.fingerprint import compute_fingerprint, format_summary, write_fingerprint
from liverseg.io.dataset import ATLAS_LABELS, DatasetInfo, write_dataset_json

# Per case: spacing (z, y, x), shape, liver box, lesion boxes (all half-open voxel ranges).
CASES = {
    "a": ((3.0, 0.8, 0.8), (12, 40, 44), ((2, 10), (5, 35), (4, 40)), [((3, 5), (8, 14), (8, 12)), ((7, 8), (20, 22), (30, 33))]),
    "b": ((5.0, 1.0, 0.9), (8, 36, 36), ((1, 7), (3, 30), (6, 33)), []),
    "c": ((2.5, 0.7, 0.75), (16, 32, 40), ((0, 16), (2, 32), (0, 30)), [((0, 16), (2, 32), (0, 30))]),  # lesion = whole liver box, at the border
    "d": ((4.0, 1.2, 1.2), (10, 30, 30), ((2, 8), (4, 26), (4, 26)), [((2, 3), (4, 5), (4, 5)), ((5, 8), (10, 20), (10, 14)), ((4, 5), (20, 21), (20, 25))]),
}


def _write(path, array, spacing_zyx):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(spacing_zyx)[::-1])
    sitk.WriteImage(image, str(path))


def _arrays(case: str):
    spacing, shape, liver, lesions = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    image = rng.normal(200, 40, shape).astype(np.int16).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(*r) for r in liver)] = 1
    for box in lesions:
        label[tuple(slice(*r) for r in box)] = 2
    return image, label


def _make_dataset(root, cases=CASES):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in cases:
        image, label = _arrays(case)
        _write(root / "imagesTr" / f"{case}_0000.nii.gz", image, CASES[case][0])
        _write(root / "labelsTr" / f"{case}.nii.gz", label, CASES[case][0])
    write_dataset_json(root, DatasetInfo({"0": "MRI"}, dict(ATLAS_LABELS), len(cases)))
    return root


def _percentiles(values):
    values = np.asarray(values, dtype=float)
    return [np.percentile(values, q, axis=0) for q in (5, 25, 50, 75, 95)]


def test_summary_matches_the_construction(tmp_path):
    fp = compute_fingerprint(_make_dataset(tmp_path / "Dataset900_Boxes"), samples_per_case=10**6, progress=False)
    assert fp["version"] == 1 and fp["axis_order"] == "zyx" and fp["num_cases"] == 4
    assert list(fp["cases"]) == ["a", "b", "c", "d"]
    s = fp["summary"]

    spacings = np.array([CASES[c][0] for c in CASES])
    for key, expected in zip(("p5", "p25", "median", "p75", "p95"), _percentiles(spacings)):
        assert s["spacing"][key] == pytest.approx(expected, rel=1e-5)
    assert s["anisotropy"]["max"] == pytest.approx(max(sp[0] / max(sp[1:]) for sp in spacings), rel=1e-5)

    livers = np.array([[(r[1] - r[0]) * sp for r, sp in zip(CASES[c][2], CASES[c][0])] for c in CASES])
    assert s["liver_extent_mm"]["median"] == pytest.approx(np.median(livers, axis=0), rel=1e-5)
    assert s["liver_extent_mm"]["max"] == pytest.approx(livers.max(axis=0), rel=1e-5)

    lesions = np.array([[(r[1] - r[0]) * sp for r, sp in zip(box, CASES[c][0])] for c in CASES for box in CASES[c][3]])
    assert s["num_lesions"] == len(lesions) == 6
    assert s["lesion_extent_mm"]["n"] == 6
    assert s["lesion_extent_mm"]["median"] == pytest.approx(np.median(lesions, axis=0), rel=1e-5)
    assert s["lesion_extent_mm"]["mean"] == pytest.approx(lesions.mean(axis=0), rel=1e-5)
    volumes = [np.prod([r[1] - r[0] for r in box]) * np.prod(CASES[c][0]) / 1000 for c in CASES for box in CASES[c][3]]
    assert s["lesion_volume_ml"]["median"] == pytest.approx(np.median(volumes), rel=1e-5)
    diameters = [np.hypot(*lesion[1:]) for lesion in lesions]  # boxes: diagonal of the in-plane extent
    assert s["lesion_diameter_mm"]["max"] == pytest.approx(max(diameters), rel=1e-5)
    assert s["lesions_at_least_10mm"] == sum(d >= 10 for d in diameters)
    assert s["lesions_per_case"]["median"] == pytest.approx(np.median([2, 0, 1, 3]))
    assert s["cases_without_lesions"] == 1
    assert s["shape"]["median"] == pytest.approx(np.median([CASES[c][1] for c in CASES], axis=0))

    # Every foreground voxel is sampled here, so the pooled statistics are those of all of them.
    pooled = np.concatenate([image[label > 0] for image, label in map(_arrays, CASES)]).astype(np.float64)
    intensity = s["foreground_intensity"]["0"]
    assert intensity["num_voxels"] == pooled.size
    assert intensity["mean"] == pytest.approx(pooled.mean(), rel=1e-5)
    assert intensity["percentile_99_5"] == pytest.approx(np.percentile(pooled, 99.5), rel=1e-5)
    assert intensity["percentile_00_5"] == pytest.approx(np.percentile(pooled, 0.5), rel=1e-5)


def test_samples_are_bounded_per_case(tmp_path):
    fp = compute_fingerprint(_make_dataset(tmp_path / "Boxes"), samples_per_case=100, progress=False)
    assert fp["summary"]["foreground_intensity"]["0"]["num_voxels"] == 4 * 100
    assert fp["intensity_sampling"] == {"foreground_voxels_per_case": 100, "seed": 0}


def test_one_and_two_workers_give_identical_json(tmp_path):
    root = _make_dataset(tmp_path / "Boxes")
    one = compute_fingerprint(root, num_workers=1, samples_per_case=50, progress=False)
    two = compute_fingerprint(root, num_workers=2, samples_per_case=50, progress=False)
    assert json.dumps(one) == json.dumps(two)


def test_dataset_without_cases_is_a_user_error(tmp_path):
    root = tmp_path / "Empty"
    root.mkdir()
    write_dataset_json(root, DatasetInfo({"0": "MRI"}, dict(ATLAS_LABELS), 0))
    with pytest.raises(LiversegError, match="no training cases"):
        compute_fingerprint(root, progress=False)


def test_write_fingerprint_puts_files_in_the_preprocessed_store(stores):
    _make_dataset(stores["raw"] / "Dataset900_Boxes")
    path = write_fingerprint("900", verify=False, progress=False)
    assert path == stores["preprocessed"] / "Dataset900_Boxes" / "fingerprint.json"
    written = json.loads(path.read_text())
    assert written == compute_fingerprint(stores["raw"] / "Dataset900_Boxes", progress=False)
    assert (path.parent / "fingerprint.png").stat().st_size > 10_000


def test_dataset_without_lesions_still_gets_a_fingerprint_and_plot(stores):
    _make_dataset(stores["raw"] / "NoLesions", cases={"b": CASES["b"]})
    path = write_fingerprint("NoLesions", verify=False, progress=False)
    summary = json.loads(path.read_text())["summary"]
    assert summary["num_lesions"] == 0 and summary["cases_without_lesions"] == 1
    assert summary["lesion_diameter_mm"]["median"] is None and summary["lesion_extent_mm"]["n"] == 0
    assert (path.parent / "fingerprint.png").is_file()
    assert "lesions: 0" in format_summary(json.loads(path.read_text()))


def test_command_writes_json_and_png_and_prints_a_summary(stores, capsys):
    _make_dataset(stores["raw"] / "Dataset900_Boxes")
    assert main(["-d", "Boxes", "-np", "1"]) == 0
    out_dir = stores["preprocessed"] / "Dataset900_Boxes"
    fp = json.loads((out_dir / "fingerprint.json").read_text())
    assert fp["num_cases"] == 4 and (out_dir / "fingerprint.png").is_file()
    out = capsys.readouterr().out
    assert "4 cases" in out and "lesions: 6" in out and "1 cases without" in out


def test_command_reports_unknown_dataset_without_traceback(stores, capsys):
    assert main(["-d", "Nope"]) == 2
    assert "error: no dataset 'Nope'" in capsys.readouterr().err


def test_verify_only_fails_on_a_broken_dataset_and_passes_on_a_clean_one(stores, capsys):
    root = _make_dataset(stores["raw"] / "Dataset901_Broken")
    assert main(["-d", "901", "--verify-only", "-np", "1"]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    (root / "labelsTr" / "c.nii.gz").unlink()
    assert main(["-d", "901", "--verify-only", "-np", "1"]) == 2
    assert "c.nii.gz" in capsys.readouterr().err
    assert main(["-d", "901", "-np", "1"]) == 2  # the fingerprint refuses too, before measuring
    assert not (stores["preprocessed"] / "Dataset901_Broken" / "fingerprint.json").exists()


def _oracle(label_path, image_path):
    """Boxes recomputed with scipy.ndimage on the canonical (LPS) arrays, independently of liverseg."""
    from scipy import ndimage

    label_image = sitk.DICOMOrient(sitk.ReadImage(str(label_path)), "LPS")
    label = sitk.GetArrayFromImage(label_image)
    image = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(image_path)), "LPS"))
    spacing = np.array(label_image.GetSpacing()[::-1])
    components, count = ndimage.label(label == 2, structure=np.ones((3, 3, 3)))
    boxes = ndimage.find_objects(components)
    sizes = np.bincount(components.ravel())[1:]
    lesions = sorted((int(n), tuple(s.stop - s.start for s in box)) for n, box in zip(sizes, boxes))
    (liver,) = ndimage.find_objects((label > 0).astype(np.uint8))
    nonzero = np.argwhere(image != 0)
    crop = tuple(int(v) for v in nonzero.max(axis=0) - nonzero.min(axis=0) + 1)
    return spacing, lesions, tuple(s.stop - s.start for s in liver), crop


def test_tiny_phantom_matches_an_independent_recomputation(tmp_path):
    from liverseg.data.phantom import generate_dataset

    root = tmp_path / "Dataset902_Phantom"
    generate_dataset(root, 4, seed=3, size="tiny")
    one = compute_fingerprint(root, num_workers=1, progress=False)
    two = compute_fingerprint(root, num_workers=2, progress=False)
    assert json.dumps(one) == json.dumps(two)
    assert one["num_cases"] == 4
    total = 0
    for case, stats in one["cases"].items():
        spacing, lesions, liver, crop = _oracle(root / "labelsTr" / f"{case}.nii.gz", root / "imagesTr" / f"{case}_0000.nii.gz")
        assert stats["spacing"] == pytest.approx(spacing, rel=1e-5)
        measured = sorted((lesion["num_voxels"], tuple(lesion["extent_voxels"])) for lesion in stats["lesions"])
        assert measured == lesions
        assert sorted(lesion["volume_ml"] for lesion in stats["lesions"]) == pytest.approx(
            [n * np.prod(spacing) / 1000 for n, _ in lesions], rel=1e-5
        )
        assert tuple(stats["liver"]["extent_voxels"]) == liver
        assert stats["liver"]["extent_mm"] == pytest.approx(np.array(liver) * spacing, rel=1e-5)
        assert tuple(stats["shape_after_crop"]) == crop
        total += len(lesions)
    assert total > 0 and one["summary"]["num_lesions"] == total
