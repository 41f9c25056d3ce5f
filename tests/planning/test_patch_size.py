"""Patch size from box percentiles under a memory budget, and batch size."""
from __future__ import annotations

import math

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.planning.memory import GIB, estimate_training_memory
from liverseg.planning.patch_size import choose_batch_size, coverage, fit_patch, plan_patch
from liverseg.planning.topology import NetworkSettings, derive_topology

SPACING = (3.0, 1.0, 1.0)
LARGE_DATASET = 1e10


def _divisible(topology):
    return all(p % d == 0 for p, d in zip(topology.patch_size, topology.divisor))


def test_patch_holds_the_percentile_of_the_boxes_when_memory_allows():
    rng = np.random.default_rng(3)
    boxes = rng.uniform([20, 30, 30], [60, 90, 110], size=(40, 3))
    wanted = np.percentile(boxes, 90, axis=0)  # per axis, mm
    choice = plan_patch(wanted, (100, 400, 400), SPACING, NetworkSettings(), 64 * GIB, LARGE_DATASET)
    patch_mm = np.array(choice.topology.patch_size) * SPACING
    assert np.all(patch_mm >= wanted)
    # Never more than one pooling unit above what was wanted.
    assert np.all(patch_mm - np.array(choice.topology.divisor) * SPACING < wanted)
    assert _divisible(choice.topology) and "shrunk" not in choice.patch_reason
    assert coverage(boxes, patch_mm) >= 0.7  # 90th percentile per axis: most boxes fit on all axes at once


def test_huge_images_under_a_small_budget_shrink_the_longest_axis_in_mm_first():
    budget = 2.0 * GIB
    choice = plan_patch((300, 600, 600), (400, 800, 800), (1.5, 1.0, 1.0), NetworkSettings(), budget, LARGE_DATASET)
    topology = choice.topology
    assert _divisible(topology)
    assert estimate_training_memory(topology, 2) <= budget
    assert estimate_training_memory(topology, choice.batch_size) <= budget
    patch_mm = np.array(topology.patch_size) * (1.5, 1.0, 1.0)
    # Shrinking the longest side in mm first brings the patch close to a cube in mm, where the
    # wanted box (300 x 600 x 600 mm) shrunk in proportion would stay twice as long in-plane.
    assert patch_mm.max() / patch_mm.min() <= 1.5
    assert "shrunk to fit 2 GB" in choice.patch_reason


def test_images_smaller_than_the_wanted_patch_clip_it():
    image = (12, 40, 36)
    choice = plan_patch((200, 200, 200), image, SPACING, NetworkSettings(), 8 * GIB, LARGE_DATASET)
    divisor = choice.topology.divisor
    limit = [math.ceil(s / d) * d for s, d in zip(image, divisor)]
    assert list(choice.topology.patch_size) <= limit and all(p <= q for p, q in zip(choice.topology.patch_size, limit))
    assert all(p >= s for p, s in zip(choice.topology.patch_size, image))  # covers the image
    assert "clipped to the median image" in choice.patch_reason


def test_the_preset_voxel_limit_caps_the_patch():
    settings = NetworkSettings(base_features=8, max_features=64, max_stages=4)
    topology, notes = fit_patch((64, 256, 256), SPACING, settings, 8 * GIB, max_patch_voxels=32 * 96 * 96)
    assert math.prod(topology.patch_size) <= 32 * 96 * 96 and notes and _divisible(topology)


def test_a_budget_too_small_for_any_patch_is_a_user_error():
    with pytest.raises(LiversegError, match="raise --gpu-memory-gb"):
        fit_patch((64, 256, 256), SPACING, NetworkSettings(), 0.4 * GIB)  # less than the fixed reserve


def test_batch_size_fills_the_budget_with_a_minimum_of_two_and_the_five_percent_cap():
    topology = derive_topology((16, 64, 64), SPACING, NetworkSettings(base_features=8, max_features=64, max_stages=4))
    voxels = math.prod(topology.patch_size)
    per_sample = estimate_training_memory(topology, 1) - estimate_training_memory(topology, 0)
    fixed = estimate_training_memory(topology, 0)
    budget = fixed + 7.5 * per_sample
    assert choose_batch_size(topology, budget, LARGE_DATASET)[0] == 7  # memory: floor(7.5)
    assert choose_batch_size(topology, budget, 0.05 ** -1 * 4 * voxels)[0] == 4  # 5% of the data is 4 patches
    batch, reason = choose_batch_size(topology, budget, 10 * voxels)
    assert batch == 2 and "minimum" in reason  # 5% would be 0 patches
    assert choose_batch_size(topology, budget, LARGE_DATASET, max_batch_size=3)[0] == 3
