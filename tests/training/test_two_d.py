"""The 2D configuration end to end: planned on a phantom, augmented in-plane, trained, predicted in the input geometry."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from liverseg.cli.predict import main as predict_main
from liverseg.io.images import read_image
from liverseg.networks import build_network
from liverseg.networks.slice_unet import SliceUNet
from liverseg.planning.memory import GIB, estimate_training_memory
from liverseg.planning.plans import load_plan
from liverseg.preprocessing.case import load_preprocessed_case
from liverseg.training import checkpoint as ckpt
from liverseg.training.augmentation import build_training_transforms, sampling_region_size
from liverseg.training.mri_transforms import SliceThicknessTransform
from liverseg.training.run import train
from liverseg.training.trainer import preprocessed_folder

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)
FAST = {"iterations_per_epoch": 2, "validation_iterations": 1, "num_workers": 0, "threads": 1, "device": "cpu"}
NO_INTENSITY = dict(p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_resolution=0, p_gamma=0, p_gamma_inverted=0)


@pytest.fixture
def env(planned, tmp_path, monkeypatch):
    """The planned stores in the environment, with fresh results."""
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    return {**planned, "results": tmp_path / "results"}


def test_the_planner_writes_a_2d_model_for_the_phantom_that_runs_on_its_slices(env):
    plan = load_plan(env["preprocessed"] / DATASET / "plans.json")
    pipeline = plan.pipeline("multiclass_2d")
    model = pipeline.model("multiclass")
    topology = model.topology
    assert pipeline.emitted and plan.recommended != "multiclass_2d"
    assert topology.patch_size[0] == 1 and all(k[0] == 1 for k in topology.kernel_sizes)
    budget = plan.planner.gpu_memory_gb * GIB
    assert estimate_training_memory(topology, model.batch_size, len(plan.channel_names), model.num_classes) <= budget
    network = build_network(topology.network, len(plan.channel_names), model.num_classes, **topology.network_kwargs())
    assert isinstance(network, SliceUNet)
    data, _, _ = load_preprocessed_case(preprocessed_folder(plan, model), "phantom_000")
    height, width = topology.patch_size[1:]
    slices = torch.zeros((1, data.shape[0], 2, height, width))  # two slices, zero-padded where the case is smaller
    y, x = min(height, data.shape[2]), min(width, data.shape[3])
    slices[0, :, :, :y, :x] = torch.from_numpy(np.array(data[:, 3:5, :y, :x]))
    outputs = network(slices)
    assert tuple(outputs[0].shape) == (1, model.num_classes, 2, height, width)


@pytest.mark.parametrize("anisotropic", [True, False])
def test_a_one_slice_patch_is_only_rotated_and_scaled_in_plane(anisotropic):
    """A constant region stays constant under in-plane rotation and scaling; tilting the slice would sample padding."""
    patch = (1, 24, 24)
    region = sampling_region_size(patch, anisotropic)
    assert region[0] == 1
    pipeline = build_training_transforms(patch, anisotropic, mirror_axes=(0, 1, 2), p_rotation=1.0, p_scaling=1.0,
                                         **NO_INTENSITY)
    torch.manual_seed(0)
    np.random.seed(0)
    for _ in range(10):
        out = pipeline(image=torch.ones((1, *region)), segmentation=torch.ones((1, *region), dtype=torch.int16))
        assert tuple(out["image"].shape) == (1, *patch)
        torch.testing.assert_close(out["image"], torch.ones((1, *patch)), atol=1e-4, rtol=0)
        assert bool((out["segmentation"] == 1).all())


@pytest.mark.parametrize("anisotropic", [True, False])
def test_blur_and_low_resolution_work_on_the_slice_and_slice_thickness_is_left_out(anisotropic):
    pipeline = build_training_transforms((1, 24, 24), anisotropic, slice_thickness=True, p_rotation=0, p_scaling=0,
                                         **{**NO_INTENSITY, "p_blur": 1.0, "p_low_resolution": 1.0})
    inner = [t.transform if isinstance(t, RandomTransform) else t for t in pipeline.transforms]
    assert not any(isinstance(t, SliceThicknessTransform) for t in inner)
    torch.manual_seed(1)
    np.random.seed(1)
    changed = 0
    for _ in range(10):
        image = torch.randn(1, 1, 24, 24)
        out = pipeline(image=image.clone(), segmentation=torch.zeros((1, 1, 24, 24), dtype=torch.int16))["image"]
        assert tuple(out.shape) == (1, 1, 24, 24) and bool(torch.isfinite(out).all())
        changed += not torch.allclose(out, image)
    assert changed > 0  # blurring or resampling happened (each acts on half of the draws' channels)


def test_two_epochs_of_2d_training_and_a_prediction_give_label_maps_in_the_input_geometry(env, tmp_path):
    folder = train(DATASET, "multiclass_2d", 0, epochs=2, **FAST)[0]
    assert folder == env["results"] / DATASET / "multiclass_2d" / "multiclass" / "fold_0"
    state = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert state["epoch"] == 2 and state["model_plan"]["topology"]["network"] == "unet_2d"
    assert all(v.dim() == 4 for k, v in state["network"].items() if k.endswith("conv.weight"))  # 2D kernels
    plan = load_plan(folder / "plans.json")
    patch = plan.pipeline("multiclass_2d").model("multiclass").topology.patch_size
    assert f"patch {list(patch)}" in (folder / "log.txt").read_text()
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    assert summary["cases"] and all(0 <= row["dice"]["1"] <= 1 for row in summary["cases"])

    image_file = env["raw"] / DATASET / "imagesTr" / "phantom_001_0000.nii.gz"
    out = tmp_path / "predicted"
    assert predict_main(["-i", str(image_file), "-o", str(out), "-d", DATASET, "-c", "multiclass_2d", "-f", "0",
                         "-np", "0", "--no-tta", "--device", "cpu", "--threads", "1"]) == 0
    labels, geometry = read_image(out / "phantom_001.nii.gz")
    image, image_geometry = read_image(image_file)
    assert labels.shape == image.shape and geometry_equal(geometry, image_geometry)
    assert set(np.unique(labels)) <= {0, 1, 2}


def geometry_equal(a, b) -> bool:
    return all(np.allclose(getattr(a, f), getattr(b, f)) for f in ("spacing", "origin", "direction"))
