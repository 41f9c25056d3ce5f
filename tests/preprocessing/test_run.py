"""Dataset-level preprocessing on phantom datasets: layout, idempotence, parallelism, a killed run."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from liverseg.data.phantom import generate_dataset
from liverseg.errors import LiversegError
from liverseg.io.dataset import RawDataset
from liverseg.preprocessing.case import case_files, load_preprocessed_case
from liverseg.preprocessing.locations import load_locations
from liverseg.preprocessing.run import SPEC_FILE, preprocess_dataset, preprocessed_cases
from liverseg.preprocessing.spec import PreprocessingSpec

SPEC = PreprocessingSpec(target_spacing=(3.0, 1.2, 1.2), normalization=("zscore_foreground",))
CASES = [f"phantom_{i:03d}" for i in range(3)]


@pytest.fixture
def dataset(stores) -> RawDataset:
    return RawDataset(generate_dataset(stores["raw"] / "Tiny", len(CASES), seed=1, size="tiny"))


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def assert_same_outputs(a: Path, b: Path) -> None:
    """Two folders hold the same cases with identical arrays and properties."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        pa, pb = a / name, b / name
        if name.endswith(".npy"):
            assert pa.read_bytes() == pb.read_bytes(), name
        elif name.endswith(".json"):
            assert json.loads(pa.read_text()) == json.loads(pb.read_text()), name
        else:  # .npz: zip members carry their write time, so compare the arrays
            with np.load(pa) as za, np.load(pb) as zb:
                assert za.files == zb.files
                for key in za.files:
                    np.testing.assert_array_equal(za[key], zb[key])


def test_layout_properties_and_memory_mapping(dataset, stores):
    folders = preprocess_dataset("Tiny", [SPEC])
    folder = stores["preprocessed"] / "Tiny" / SPEC.folder_name
    assert folders == {SPEC.folder_name: folder}
    assert json.loads((folder / SPEC_FILE).read_text()) == SPEC.to_dict()
    assert preprocessed_cases(folder) == CASES
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [SPEC_FILE] + [p.name for case in CASES for p in case_files(folder, case).values()]
    )
    for case in CASES:
        data, seg, properties = load_preprocessed_case(folder, case)
        assert isinstance(data, np.memmap) and isinstance(seg, np.memmap)
        assert data.dtype == np.float32 and seg.dtype == np.uint8
        assert data.shape == (1, *properties["shape_after_resampling"]) and seg.shape == data.shape[1:]
        raw_label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset.label_file(case))))
        expected_counts = np.bincount(raw_label.ravel())
        assert properties["class_voxels_original"] == {str(v): int(n) for v, n in enumerate(expected_counts) if n}
        assert properties["class_voxels"] == {str(v): int(n) for v, n in enumerate(np.bincount(np.asarray(seg).ravel())) if n}
        num_lesions = ndimage.label(np.asarray(seg) == 2, structure=np.ones((3, 3, 3)))[1]
        assert properties["num_lesions"] == num_lesions
        assert [s["path"] for s in properties["source"]] == [f"imagesTr/{case}_0000.nii.gz", f"labelsTr/{case}.nii.gz"]
        locations = load_locations(case_files(folder, case)["locations"])
        assert len(locations.lesions) == num_lesions
        for value, coords in locations.classes.items():
            assert np.all(seg[tuple(coords.T)] == value)


def test_rerun_skips_and_changes_are_redone(dataset, stores, caplog):
    folder = preprocess_dataset(dataset, [SPEC])[SPEC.folder_name]
    before = mtimes(folder)
    with caplog.at_level(logging.INFO, logger="liverseg.preprocessing.run"):
        preprocess_dataset(dataset, [SPEC])
    assert mtimes(folder) == before
    assert "(3 up to date)" in caplog.text

    # Same bytes, new modification time (a copied dataset): recorded, not redone.
    image = dataset.image_files(CASES[0])[0]
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    preprocess_dataset(dataset, [SPEC])
    after = mtimes(folder)
    assert after[f"{CASES[0]}.npy"] == before[f"{CASES[0]}.npy"]
    source = load_preprocessed_case(folder, CASES[0])[2]["source"][0]
    assert source["mtime_ns"] == image.stat().st_mtime_ns

    # A changed label is redone; the other cases are not touched.
    label_file = dataset.label_file(CASES[1])
    label = sitk.ReadImage(str(label_file))
    array = sitk.GetArrayFromImage(label)
    array[array == 2] = 1
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(label)
    sitk.WriteImage(changed, str(label_file), useCompression=True)
    preprocess_dataset(dataset, [SPEC])
    redone = mtimes(folder)
    assert redone[f"{CASES[1]}_seg.npy"] > before[f"{CASES[1]}_seg.npy"]
    assert redone[f"{CASES[2]}_seg.npy"] == before[f"{CASES[2]}_seg.npy"]
    properties = load_preprocessed_case(folder, CASES[1])[2]
    assert "2" not in properties["class_voxels"] and properties["num_lesions"] == 0

    # A damaged case (a file deleted) is redone.
    case_files(folder, CASES[2])["seg"].unlink()
    preprocess_dataset(dataset, [SPEC])
    assert case_files(folder, CASES[2])["seg"].is_file()


def test_removed_raw_case_loses_its_outputs_and_a_new_spec_gets_its_own_folder(dataset):
    folder = preprocess_dataset(dataset, [SPEC])[SPEC.folder_name]
    dataset.image_files(CASES[2])[0].unlink()
    dataset.label_file(CASES[2]).unlink()
    coarse = PreprocessingSpec(target_spacing=(4.0, 2.0, 2.0), normalization=("percentile",))
    folders = preprocess_dataset(dataset, [SPEC, coarse, SPEC])
    assert list(folders) == [SPEC.folder_name, coarse.folder_name]
    for f in folders.values():
        assert sorted(p.name for p in f.glob("*.json")) == sorted([SPEC_FILE] + [f"{c}.json" for c in CASES[:2]])
        assert not list(f.glob(f"{CASES[2]}*"))
    fine_shape = load_preprocessed_case(folder, CASES[0])[2]["shape_after_resampling"]
    coarse_shape = load_preprocessed_case(folders[coarse.folder_name], CASES[0])[2]["shape_after_resampling"]
    assert all(c < f for c, f in zip(coarse_shape, fine_shape))
    assert folders[SPEC.folder_name] == folder


def test_parallel_run_equals_serial_run(dataset, tmp_path):
    preprocess_dataset(dataset, [SPEC], tmp_path / "serial", num_workers=1)
    preprocess_dataset(dataset, [SPEC], tmp_path / "parallel", num_workers=2)
    assert_same_outputs(tmp_path / "serial" / SPEC.folder_name, tmp_path / "parallel" / SPEC.folder_name)


def test_problems_of_single_cases_are_reported_together_after_the_others(dataset, tmp_path):
    dataset.label_file(CASES[1]).unlink()
    with pytest.raises(LiversegError) as info:
        preprocess_dataset(dataset, [SPEC], tmp_path / "out", num_workers=2)
    message = str(info.value)
    assert "1 case(s)" in message and str(dataset.label_file(CASES[1])) in message
    folder = tmp_path / "out" / SPEC.folder_name
    assert preprocessed_cases(folder) == [CASES[0], CASES[2]]


def test_bad_specs_and_datasets_are_refused_before_any_work(dataset, tmp_path):
    two_channels = PreprocessingSpec(target_spacing=(3.0, 1.0, 1.0), normalization=("zscore_foreground", "zscore_foreground"))
    with pytest.raises(LiversegError, match="1 channel"):
        preprocess_dataset(dataset, [two_channels], tmp_path / "out")
    unknown = PreprocessingSpec(target_spacing=(3.0, 1.0, 1.0), normalization=("no_such_scheme",))
    with pytest.raises(LiversegError, match="no_such_scheme"):
        preprocess_dataset(dataset, [unknown], tmp_path / "out")
    with pytest.raises(LiversegError, match="no preprocessing spec"):
        preprocess_dataset(dataset, [], tmp_path / "out")
    with pytest.raises(LiversegError, match="no dataset 'Nope'"):
        preprocess_dataset("Nope", [SPEC])
    assert not (tmp_path / "out").exists()


def wait_until_group_is_dead(group: int, timeout: float = 30.0) -> None:
    """Wait until every process of ``group`` has exited (a rerun would see a dying worker as alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group:
                states.append(fields[0])
        if all(state == "Z" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"processes of group {group} still run {timeout} s after SIGKILL")


_KILLED_RUN = """
import json, sys
from pathlib import Path
from liverseg.preprocessing.run import preprocess_dataset
from liverseg.preprocessing.spec import PreprocessingSpec
preprocess_dataset(sys.argv[1], [PreprocessingSpec.from_dict(json.loads(sys.argv[2]))], Path(sys.argv[3]), num_workers=2)
"""


def test_killed_run_followed_by_a_rerun_ends_complete_and_correct(stores, tmp_path):
    cases = 8
    root = generate_dataset(stores["raw"] / "Small", 1, seed=2, size="small")
    for i in range(1, cases):  # copies of the one case: the work per case is what matters here
        shutil.copyfile(root / "imagesTr" / "phantom_000_0000.nii.gz", root / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz")
        shutil.copyfile(root / "labelsTr" / "phantom_000.nii.gz", root / "labelsTr" / f"phantom_{i:03d}.nii.gz")
    spec = PreprocessingSpec(target_spacing=(3.0, 1.2, 1.2), normalization=("zscore_foreground",))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    folder = killed / spec.folder_name
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(root), json.dumps(spec.to_dict()), str(killed)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(folder.glob("phantom_*.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert process.poll() is None, "the run ended before its first case appeared"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its worker processes
        process.wait()
        wait_until_group_is_dead(process.pid)
    assert 1 <= len(preprocessed_cases(folder)) < cases  # killed mid-run

    preprocess_dataset(root, [spec], killed, num_workers=1)
    preprocess_dataset(root, [spec], clean, num_workers=1)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp")]
    assert preprocessed_cases(folder) == [f"phantom_{i:03d}" for i in range(cases)]
    assert_same_outputs(folder, clean / spec.folder_name)
    shutil.rmtree(clean)
