"""Pooling per axis, kernels and widths from spacing and patch."""
from __future__ import annotations

import math

import pytest

from liverseg.errors import LiversegError
from liverseg.planning.topology import NetworkSettings, derive_topology, describe_topology, round_up


def test_isotropic_patch_pools_every_axis_with_cubic_kernels():
    topology = derive_topology((128, 128, 128), (1.0, 1.0, 1.0), NetworkSettings())
    # 128 -> 4 after five halvings (min feature map 4): six stages, all 3x3x3.
    assert topology.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert topology.kernel_sizes == ((3, 3, 3),) * 6
    assert topology.features_per_stage == (32, 64, 128, 256, 320, 320)
    assert topology.patch_size == (128, 128, 128) and topology.deep_supervision


def test_thick_slices_convolve_in_plane_first_and_pool_z_late():
    # 4 mm slices, 1 mm pixels: z is 4x coarser, then 2x after one in-plane halving, then equal.
    topology = derive_topology((32, 256, 256), (4.0, 1.0, 1.0), NetworkSettings())
    assert topology.kernel_sizes[:2] == ((1, 3, 3), (1, 3, 3))
    assert topology.kernel_sizes[2:] == ((3, 3, 3),) * (topology.num_stages - 2)
    assert topology.strides[1:3] == ((1, 2, 2), (1, 2, 2))  # no z pooling in the first two steps
    assert topology.strides[3] == (2, 2, 2)
    # z: 32 -> 4 takes three halvings; in-plane 256 -> 4 six, capped by max_stages = 7 (six steps).
    assert [sum(s[a] == 2 for s in topology.strides) for a in range(3)] == [3, 6, 6]
    assert "[1, 3, 3] kernels in the first 2 stage(s)" in describe_topology(topology)


def test_pooling_stops_at_the_minimum_feature_map_size_and_patch_is_divisible():
    topology = derive_topology((20, 100, 60), (1.0, 1.0, 1.0), NetworkSettings())
    divisor = tuple(math.prod(s[a] for s in topology.strides) for a in range(3))
    assert all(p % d == 0 for p, d in zip(topology.patch_size, divisor))
    assert all(p // d >= 4 for p, d in zip(topology.patch_size, divisor))  # bottleneck at least 4 voxels
    assert all(p >= q for p, q in zip(topology.patch_size, (20, 100, 60)))  # only rounded up
    assert topology.patch_size == round_up((20, 100, 60), divisor)


def test_fast_settings_keep_few_stages_and_narrow_features():
    settings = NetworkSettings(base_features=8, max_features=64, max_stages=4)
    topology = derive_topology((32, 96, 96), (3.0, 1.0, 1.0), settings)
    assert topology.num_stages == 4 and topology.features_per_stage == (8, 16, 32, 64)
    assert topology.kernel_sizes[0] == (1, 3, 3) and topology.strides[1] == (1, 2, 2)


def test_a_tiny_patch_still_gets_two_stages():
    topology = derive_topology((3, 5, 5), (1.0, 1.0, 1.0), NetworkSettings())
    assert topology.num_stages == 2 and topology.patch_size == (4, 6, 6)


@pytest.mark.parametrize("change", [dict(base_features=0), dict(max_stages=1), dict(max_features=8)])
def test_bad_settings_are_user_errors(change):
    with pytest.raises(LiversegError):
        NetworkSettings(**change)


def test_an_in_plane_topology_never_pools_or_convolves_along_z():
    settings = NetworkSettings()
    # 64 in-plane voxels halve to 32, 16, 8, 4: four poolings, five stages; z stays one slice.
    topology = derive_topology([1, 60, 64], (3.0, 1.0, 1.0), settings, in_plane_only=True)
    assert topology.patch_size == (1, 64, 64)
    assert topology.strides == ((1, 1, 1),) + ((1, 2, 2),) * 4
    assert topology.kernel_sizes == ((1, 3, 3),) * 5
    assert "a 2D network" in describe_topology(topology)
    # The same in-plane extent in 3D pools and convolves z as soon as the spacing allows.
    three_d = derive_topology([16, 64, 64], (3.0, 1.0, 1.0), settings)
    assert any(s[0] == 2 for s in three_d.strides) and three_d.kernel_sizes[-1] == (3, 3, 3)
