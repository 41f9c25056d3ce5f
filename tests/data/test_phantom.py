"""The phantom generator writes a readable, consistent, deterministic ATLAS-like raw dataset."""
from __future__ import annotations

import json
import time

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli.phantom import main
from liverseg.data.metadata import load_case_metadata
from liverseg.data.phantom import case_id, generate_case, generate_dataset
from liverseg.errors import LiversegError
from liverseg.io.dataset import ATLAS_LABELS, RawDataset
from liverseg.io.images import geometry_mismatch, read_image

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def tiny_cases():
    """Twenty tiny cases of seed 0, generated once for the statistics tests."""
    return [generate_case(i, seed=0, size="tiny") for i in range(20)]


def test_dataset_on_disk_is_consistent(tmp_path):
    root = generate_dataset(tmp_path / "Phantom", 4, seed=3, size="tiny")
    dataset = RawDataset(root)
    assert dataset.info.labels == ATLAS_LABELS
    assert dataset.info.channel_names == {"0": "MRI"}
    assert dataset.info.num_training == 4
    assert dataset.training_cases() == [case_id(i) for i in range(4)]
    for i, case in enumerate(dataset.training_cases()):
        image, image_geometry = read_image(dataset.image_files(case)[0])
        label, label_geometry = read_image(dataset.label_file(case))
        assert geometry_mismatch(image_geometry, label_geometry, tolerance=0) == ""
        assert sitk.ReadImage(str(dataset.image_files(case)[0])).GetPixelID() == sitk.sitkInt16
        assert label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1, 2}
        assert (label == 1).any()
        sz, sy, sx = image_geometry.spacing
        assert 2.0 <= sz <= 4.6 and 0.68 <= sy <= 1.4 and 0.68 <= sx <= 1.4
        # What is on disk is exactly the generated case, whatever orientation it was stored in.
        generated = generate_case(i, seed=3, size="tiny")
        np.testing.assert_array_equal(image, generated.image)
        np.testing.assert_array_equal(label, generated.label)
        np.testing.assert_allclose(image_geometry.original_direction, generated.direction, atol=1e-9)
        np.testing.assert_allclose(image_geometry.origin, generated.origin, atol=1e-4)
        np.testing.assert_allclose(image_geometry.spacing, generated.spacing, atol=1e-6)


def test_tumours_lie_within_the_liver(tiny_cases):
    on_edge = total = 0
    for case in tiny_cases:
        region = case.label > 0
        components, n = cc3d.connected_components(region, connectivity=26, return_N=True)
        # Every piece of the whole-liver region holds liver tissue: no tumour floats outside the liver.
        assert set(range(1, n + 1)) <= set(np.unique(components[case.label == 1]).tolist())
        # Tumours may bulge out of the liver surface, but most tumour voxels are surrounded by liver
        # or tumour in their slice (4 in-plane neighbours; slices are too thick to ask the same in z).
        tumour = case.label == 2
        padded = np.pad(region, ((0, 0), (1, 1), (1, 1)))
        inner = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
        on_edge += np.count_nonzero(tumour & ~inner)
        total += np.count_nonzero(tumour)
    assert total > 0
    assert on_edge < 0.35 * total


def test_liver_is_in_the_right_upper_abdomen(tiny_cases, tmp_path):
    for case in tiny_cases:
        liver_x = np.argwhere(case.label > 0)[:, 2].mean()
        body_x = np.argwhere(case.image > np.percentile(case.image, 60))[:, 2].mean()
        assert liver_x < body_x, "liver must be on the patient's right: lower x in LPS arrays"
    # Also after a round trip through a flipped file.
    flipped = next(i for i, c in enumerate(tiny_cases) if c.direction != IDENTITY)
    root = generate_dataset(tmp_path / "P", flipped + 1, seed=0, size="tiny")
    label, geometry = read_image(root / "labelsTr" / f"{case_id(flipped)}.nii.gz")
    assert geometry.original_orientation != "LPS"
    assert np.argwhere(label > 0)[:, 2].mean() < label.shape[2] / 2 + 2


def test_set_is_heterogeneous(tiny_cases):
    counts = [len(c.lesion_diameters_mm) for c in tiny_cases]
    assert 0 in counts, "some cases have no tumour"
    assert max(counts) >= 3, "some cases have several tumours"
    for case, count in zip(tiny_cases, counts):
        assert (case.label == 2).any() == (count > 0)
        assert case.spacing[0] > max(case.spacing[1:]), "slices are thicker than the in-plane spacing"
        assert 2.0 <= case.spacing[0] <= 4.6 and all(0.68 <= s <= 1.4 for s in case.spacing[1:])
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        assert case.image.shape == case.label.shape
    assert any(c.direction != IDENTITY for c in tiny_cases), "some cases are stored flipped"
    assert len({c.image.shape for c in tiny_cases}) > 5
    assert len({c.phase for c in tiny_cases}) > 1
    # Arbitrary intensity scales: the brightest voxel varies a lot between cases.
    maxima = [float(c.image.max()) for c in tiny_cases]
    assert max(maxima) > 2 * min(maxima)


@pytest.mark.parametrize("size, slices, inplane", [("tiny", (14, 18), (40, 56)), ("small", (30, 34), (120, 136))])
def test_reduced_sizes(size, slices, inplane):
    case = generate_case(4, seed=1, size=size)
    nz, ny, nx = case.image.shape
    assert slices[0] <= nz <= slices[1] and inplane[0] <= ny <= inplane[1] and inplane[0] <= nx <= inplane[1]
    # The shrunken patient still has a liver of a visible size: a few percent of the volume.
    assert 0.01 < np.count_nonzero(case.label) / case.label.size < 0.4


def test_cases_are_deterministic(tmp_path):
    a = generate_case(2, seed=5, size="tiny")
    b = generate_case(2, seed=5, size="tiny")
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    other = generate_case(2, seed=6, size="tiny")
    assert a.image.shape != other.image.shape or not np.array_equal(a.image, other.image)
    # Independent of the number of cases and of the number of worker processes.
    one = generate_dataset(tmp_path / "one", 2, seed=5, size="tiny", num_workers=1)
    two = generate_dataset(tmp_path / "two", 3, seed=5, size="tiny", num_workers=2)
    for folder in ("imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        x, _ = read_image(one / folder)
        y, _ = read_image(two / folder)
        np.testing.assert_array_equal(x, y)


def test_refuses_bad_arguments(tmp_path):
    with pytest.raises(LiversegError, match="size"):
        generate_case(0, size="huge")
    with pytest.raises(LiversegError, match="at least 1"):
        generate_dataset(tmp_path / "x", 0)


def test_cli_end_to_end(stores, capsys):
    assert main(["-d", "Phantom", "-n", "3", "--size", "tiny", "-np", "1", "--preview"]) == 0
    root = stores["raw"] / "Phantom"
    assert capsys.readouterr().out.strip() == str(root)
    assert RawDataset(root).training_cases() == [case_id(i) for i in range(3)]
    assert (root / "preview.png").stat().st_size > 10_000
    assert main(["-d", "Phantom", "-n", "2", "--size", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--overwrite" in err and "Traceback" not in err
    assert len(RawDataset(root).training_cases()) == 3
    assert main(["-d", "Phantom", "-n", "2", "--size", "tiny", "--overwrite"]) == 0
    assert RawDataset(root).training_cases() == [case_id(i) for i in range(2)]
    assert not (root / "preview.png").exists()
    elsewhere = stores["raw"].parent / "elsewhere"
    assert main(["-d", "P2", "-n", "1", "--size", "tiny", "--output-dir", str(elsewhere)]) == 0
    assert (elsewhere / "P2" / "dataset.json").is_file()


def test_full_size_case_looks_like_a_real_scan():
    start = time.perf_counter()
    case = generate_case(1, seed=0, size="full")
    seconds = time.perf_counter() - start
    nz, ny, nx = case.image.shape
    sz, sy, sx = case.spacing
    assert 40 <= nz <= 100 and 256 <= ny <= 512 and 256 <= nx <= 512
    assert 340 <= ny * sy <= 460 and 340 <= nx * sx <= 460
    liver_ml = np.count_nonzero(case.label) * sz * sy * sx / 1000
    assert 1000 <= liver_ml <= 2300
    assert all(5 <= d <= 70 for d in case.lesion_diameters_mm)
    assert seconds < 20


def test_contrast_phase_is_a_case_attribute_for_stratified_splits(tmp_path):
    root = generate_dataset(tmp_path / "Phantom", 6, seed=3, size="tiny")
    metadata = load_case_metadata(RawDataset(root))
    drawn = {r["case"]: r["phase"] for r in json.loads((root / "phantom_cases.json").read_text())["cases"]}
    assert metadata == {case: {"contrast_phase": phase} for case, phase in drawn.items()}
