"""The anisotropic hybrid network: shapes, a per-slice encoder, a 3D decoder, gradients, registry, memory, trainer interface."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from liverseg.data.phantom import generate_dataset
from liverseg.errors import LiversegError
from liverseg.inference.sliding_window import predict_sliding_window
from liverseg.io.images import read_image
from liverseg.networks import build_network
from liverseg.networks.ahnet import AHNet, SliceInstanceNorm
from liverseg.planning.memory import activation_count_bytes
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.planning.plans import NetworkTopology
from liverseg.planning.topology import NetworkSettings, derive_topology
from liverseg.training import checkpoint as ckpt
from liverseg.training.deep_supervision import DeepSupervisionLoss
from liverseg.training.losses import build_loss
from liverseg.training.run import train

# Thick slices as the planner makes them: in-plane kernels first, z pooled in the last stages.
ANISOTROPIC = dict(kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                   strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                   features_per_stage=[4, 8, 16, 16, 16])
ISOTROPIC = dict(kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3, features_per_stage=[8, 16, 32, 32])
TINY = dict(kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
            features_per_stage=[4, 8, 16])


def encoder_convs(net: nn.Module) -> list[nn.Conv3d]:
    return [m for m in net.encoder.modules() if isinstance(m, nn.Conv3d)]


def decoder_convs(net: nn.Module) -> list[nn.Conv3d]:
    return [block.conv for stage in net.decoder.stages for block in stage.blocks]


@pytest.mark.parametrize("topology,patch,expected_sizes", [
    # z is never pooled: every output keeps all slices; in-plane as the plan pools (sizes by hand).
    (ANISOTROPIC, (8, 64, 48), [(8, 64, 48), (8, 32, 24), (8, 16, 12)]),
    # An isotropic plan pools z too; the hybrid ignores that, so 6 slices (not a multiple of 8) are fine.
    (ISOTROPIC, (6, 32, 24), [(6, 32, 24), (6, 16, 12)]),
    (TINY, (5, 16, 16), [(5, 16, 16)]),
])
@pytest.mark.parametrize("in_channels,num_classes", [(1, 3), (2, 2)])
def test_output_shapes_with_and_without_deep_supervision(topology, patch, expected_sizes, in_channels, num_classes):
    net = AHNet(in_channels, num_classes, **topology)
    x = torch.randn(2, in_channels, *patch)
    outputs = net(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [(2, num_classes, *size) for size in expected_sizes]
    assert [tuple(s // f for s, f in zip(patch, scale)) for scale in net.output_scales()] == expected_sizes
    net.set_deep_supervision(False)
    final = net(x)
    assert isinstance(final, torch.Tensor) and tuple(final.shape) == (2, num_classes, *patch)
    torch.testing.assert_close(final, outputs[0])


def test_encoder_convolves_in_plane_only_and_decoder_across_slices():
    net = AHNet(1, 3, **ANISOTROPIC)
    convs = encoder_convs(net)
    assert len(convs) == 2 * 5
    assert all(conv.kernel_size[0] == 1 and conv.stride[0] == 1 and conv.padding[0] == 0 for conv in convs)
    # In-plane, the plan's kernels and strides stage by stage.
    assert [stage.blocks[0].conv.kernel_size[1:] for stage in net.encoder.stages] == [(3, 3)] * 5
    assert [stage.blocks[0].conv.stride[1:] for stage in net.encoder.stages] == [(1, 1)] + [(2, 2)] * 4
    assert all(isinstance(m, SliceInstanceNorm) for stage in net.encoder.stages for m in (b.norm for b in stage.blocks))
    assert [conv.kernel_size for conv in decoder_convs(net)] == [(3, 3, 3)] * 8
    assert [up.stride for up in net.decoder.transpconvs] == [(1, 2, 2)] * 4
    assert net.pooling_factors == (1, 16, 16)
    assert net.slice_context == 8  # 4 decoder stages x 2 convolutions, one slice each


def test_slice_instance_norm_equals_a_2d_instance_norm_on_every_slice():
    torch.manual_seed(0)
    norm3, norm2 = SliceInstanceNorm(3), nn.InstanceNorm2d(3, affine=True)
    with torch.no_grad():
        for p in (norm3.weight, norm3.bias):
            p.normal_()
        norm2.weight.copy_(norm3.weight)
        norm2.bias.copy_(norm3.bias)
    x = torch.randn(2, 3, 4, 5, 6) * torch.arange(1, 5).view(1, 1, 4, 1, 1)  # slices of different scale
    slices = x.permute(0, 2, 1, 3, 4).reshape(8, 3, 5, 6)
    expected = norm2(slices).reshape(2, 4, 3, 5, 6).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(norm3(x), expected)
    # The oracle can fail: a 3D instance norm shares statistics across slices.
    volume = nn.InstanceNorm3d(3, affine=False)(x)
    assert not torch.allclose(volume, norm3(x), atol=1e-3)


@torch.no_grad()
def test_encoder_sees_every_slice_on_its_own():
    torch.manual_seed(1)
    net = AHNet(1, 3, **ANISOTROPIC).eval()
    x = torch.randn(1, 1, 6, 32, 32)
    changed = x.clone()
    changed[:, :, 2] += torch.randn(32, 32)
    for before, after in zip(net.encoder(x), net.encoder(changed)):
        differs = (before - after).abs().amax(dim=(0, 1, 3, 4)) > 0
        assert differs.tolist() == [False, False, True, False, False, False]


@torch.no_grad()
def test_decoder_convolutions_reach_slice_context_slices_each_way():
    """Only the convolutions connect slices once the decoder's norms (whole-patch statistics) are taken out."""
    torch.manual_seed(2)
    net = AHNet(1, 3, deep_supervision=False, **TINY).eval()
    assert net.slice_context == 4  # 2 decoder stages x 2 convolutions
    for stage in net.decoder.stages:
        for block in stage.blocks:
            block.norm = None
    x = torch.randn(1, 1, 12, 16, 16)
    changed = x.clone()
    changed[:, :, 5] += 1.0
    differs = (net(x) - net(changed)).abs().amax(dim=(0, 1, 3, 4)) > 0
    assert np.flatnonzero(differs.numpy()).tolist() == list(range(5 - 4, 5 + 4 + 1))


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_backward_gives_finite_gradients_for_every_trainable_parameter(deep_supervision):
    net = AHNet(2, 3, deep_supervision=deep_supervision, **ANISOTROPIC)
    outputs = net(torch.randn(2, 2, 4, 32, 32))
    outputs = outputs if isinstance(outputs, list) else [outputs]
    sum(nn.functional.cross_entropy(o, torch.randint(0, 3, (o.shape[0], *o.shape[2:]))) for o in outputs).backward()
    for name, parameter in net.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_deep_supervision_switch_keeps_parameters_and_freezes_unused_heads():
    with_ds = AHNet(1, 3, deep_supervision=True, **ANISOTROPIC)
    without = AHNet(1, 3, deep_supervision=False, **ANISOTROPIC)
    assert with_ds.state_dict().keys() == without.state_dict().keys()
    unused = 3 * (8 + 1) + 3 * (16 + 1)  # heads at 8 and 16 channels
    assert without.num_parameters(trainable_only=True) == without.num_parameters() - unused
    with_ds.set_deep_supervision(False)
    assert with_ds.num_parameters(trainable_only=True) == without.num_parameters(trainable_only=True)


def test_same_seed_same_network():
    torch.manual_seed(3)
    a = AHNet(1, 3, **TINY)
    torch.manual_seed(3)
    b = AHNet(1, 3, **TINY)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_plan_switches_to_ahnet_by_name_alone():
    settings = NetworkSettings(network="unet", base_features=4, max_features=16, max_stages=4)
    unet_topology = derive_topology((10, 40, 40), (3.0, 1.0, 1.0), settings)
    # What a user edits in plans.json: the network name and nothing else.
    topology = NetworkTopology.from_dict(dict(unet_topology.to_dict(), network="ahnet"))
    net = build_network(topology.network, 1, 3, **topology.network_kwargs())
    assert isinstance(net, AHNet)
    unet = build_network("unet", 1, 3, **topology.network_kwargs())
    patch = topology.patch_size
    with torch.no_grad():
        outputs, unet_outputs = net(torch.randn(1, 1, *patch)), unet(torch.randn(1, 1, *patch))
    assert tuple(outputs[0].shape) == tuple(unet_outputs[0].shape) == (1, 3, *patch)
    assert len(outputs) == len(unet_outputs) == len(net.output_scales())
    assert net.pooling_factors == (1, *unet.pooling_factors[1:])


def test_topology_errors_are_user_errors_when_built_by_name():
    with pytest.raises(LiversegError, match="ahnet.*invalid topology.*3 entries"):
        build_network("ahnet", 1, 3, kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]], features_per_stage=[4, 8, 16])
    with pytest.raises(LiversegError, match="ahnet.*does not accept"):
        build_network("ahnet", 1, 3, dims=2, **TINY)


@pytest.mark.parametrize("patch,axis,divisor", [((4, 30, 32), "y", 4), ((4, 32, 10), "x", 4)])
def test_patch_not_divisible_in_plane_is_a_clear_user_error(patch, axis, divisor):
    net = AHNet(1, 3, **TINY)
    with pytest.raises(LiversegError, match=f"axis {axis} .*multiple of {divisor}"):
        net(torch.zeros(1, 1, *patch))
    for z in (1, 3, 7):  # any number of slices
        net.check_patch_size((z, 32, 32))


def saved_for_backward(net: nn.Module, x: torch.Tensor) -> dict[int, int]:
    """Storages autograd keeps after a forward pass (plus the returned logits), parameters and input excluded."""
    skip = {p.untyped_storage().data_ptr() for p in net.parameters()} | {x.untyped_storage().data_ptr()}
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in skip:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = net(x)
    for output in outputs if isinstance(outputs, list) else [outputs]:
        storages[output.untyped_storage().data_ptr()] = output.untyped_storage().nbytes()
    return storages


@pytest.mark.parametrize("topology,patch", [(ANISOTROPIC, (8, 32, 48)), (ISOTROPIC, (8, 16, 32))])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_memory_estimate_matches_what_autograd_keeps(topology, patch, deep_supervision):
    batch = 2
    net = AHNet(2, 3, deep_supervision=deep_supervision, **topology)
    storages = saved_for_backward(net, torch.randn(batch, 2, *patch))
    # Besides feature maps autograd keeps per-(sample, channel[, slice]) norm statistics: small, left out.
    small = batch * max(topology["features_per_stage"]) * 2 * patch[0] * 4
    feature_storages = [n for n in storages.values() if n > small]
    assert len(feature_storages) == len(net.feature_maps(patch))
    assert net.activation_memory_bytes(patch, batch) == pytest.approx(sum(feature_storages), rel=1e-9)


def test_the_planner_sizes_ahnet_with_its_own_estimate():
    """Deep stages keep every slice, so a topology that pools z costs the hybrid more than the unet."""
    settings = NetworkSettings(network="ahnet", base_features=4, max_features=16, max_stages=4)
    topology = derive_topology((16, 32, 32), (1.0, 1.0, 1.0), settings)
    assert any(s[0] == 2 for s in topology.strides)
    with torch.device("meta"):
        ghost = AHNet(1, 3, **topology.network_kwargs())
    expected = AHNet(1, 3, **topology.network_kwargs()).activation_memory_bytes(topology.patch_size, 1)
    assert ghost.activation_memory_bytes(topology.patch_size, 1) == expected
    assert activation_count_bytes(topology, 1, 3) == expected
    as_unet = activation_count_bytes(dataclasses.replace(topology, network="unet"), 1, 3)
    assert expected > as_unet


def test_works_with_the_trainers_loss_and_the_sliding_window():
    torch.manual_seed(4)
    net = AHNet(1, 3, **TINY)
    outputs = net(torch.randn(2, 1, 4, 16, 16))
    target = torch.randint(0, 3, (2, 1, 4, 16, 16))
    loss = DeepSupervisionLoss(build_loss("dice_ce"))(outputs, target)
    assert torch.isfinite(loss) and loss.requires_grad
    image = np.random.default_rng(0).normal(size=(1, 7, 20, 24)).astype(np.float32)
    probabilities = predict_sliding_window(net, image, (4, 16, 16), 3, mirror_axes=None, use_bf16=False)
    assert tuple(probabilities.shape) == (3, 7, 20, 24)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(7, 20, 24))
    assert net.deep_supervision  # restored after prediction



def test_a_phantom_plan_edited_to_ahnet_trains_validates_and_reloads(stores: dict[str, Path]):
    """The whole interface at once: trainer, deep-supervision loss, whole-case validation, checkpoint."""
    dataset = "Dataset951_AhnetPhantom"
    generate_dataset(stores["raw"] / dataset, 4, size="tiny")
    plan_dataset(dataset, num_workers=1, preset="fast", verify=False)
    path = stores["preprocessed"] / dataset / "plans.json"
    content = json.loads(path.read_text())
    content["pipelines"]["multiclass"]["models"]["multiclass"]["topology"]["network"] = "ahnet"
    path.write_text(json.dumps(content))
    folder = train(dataset, "multiclass", 0, epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0,
                   threads=1, device="cpu")[0]
    assert "validation phantom_" in (folder / "log.txt").read_text()
    # The validation case was predicted whole (sliding window) and written on its original grid.
    case = json.loads((folder / "validation" / "summary.json").read_text())["cases"][0]
    predicted, _ = read_image(folder / "validation" / case["prediction"])
    reference, _ = read_image(stores["raw"] / dataset / "labelsTr" / f"{case['case']}.nii.gz")
    assert predicted.shape == reference.shape and set(np.unique(predicted)) <= {0, 1, 2}
    saved = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert saved["plan"]["pipelines"]["multiclass"]["models"]["multiclass"]["topology"]["network"] == "ahnet"
    topology = NetworkTopology.from_dict(saved["plan"]["pipelines"]["multiclass"]["models"]["multiclass"]["topology"])
    net = build_network("ahnet", 1, 3, **topology.network_kwargs())
    ckpt.load_network_weights(net, saved, folder / ckpt.LATEST)
    assert any(k.startswith("encoder.") and v.dim() == 5 and v.shape[2] == 1 for k, v in saved["network"].items())
