"""The 2D configuration's network: our 2D U-Net on every slice, with (z, y, x) shapes, checks and memory."""
from __future__ import annotations

import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.inference.sliding_window import predict_sliding_window
from liverseg.networks import AHNet, build_network
from liverseg.networks.slice_unet import SliceUNet
from liverseg.networks.transfer import transfer_2d_encoder
from liverseg.networks.unet import UNet

# The plan's form of a 2D topology: [z, y, x] entries with 1 along z.
PLANAR = dict(kernel_sizes=[[1, 3, 3]] * 4, strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]],
              features_per_stage=[4, 8, 16, 16])
TWO_D = dict(kernel_sizes=[[3, 3]] * 4, strides=[[1, 1], [2, 2], [2, 2], [2, 2]], features_per_stage=[4, 8, 16, 16])


def _pair(in_channels: int = 2, num_classes: int = 3) -> tuple[SliceUNet, UNet]:
    """A unet_2d and a plain UNet(dims=2) holding the same weights."""
    torch.manual_seed(0)
    net = build_network("unet_2d", in_channels, num_classes, **PLANAR)
    reference = UNet(in_channels, num_classes, dims=2, **TWO_D)
    reference.load_state_dict(net.state_dict())
    return net, reference


def test_outputs_of_one_slice_patches_keep_z_and_follow_the_in_plane_pooling():
    net, _ = _pair()
    outputs = net(torch.randn(3, 2, 1, 32, 24))
    # 4 stages: heads at the decoder stages above the lowest one, highest resolution first (strides 1, 2, 4).
    assert [tuple(o.shape) for o in outputs] == [(3, 3, 1, 32, 24), (3, 3, 1, 16, 12)]
    net.set_deep_supervision(False)
    assert tuple(net(torch.randn(3, 2, 1, 32, 24)).shape) == (3, 3, 1, 32, 24)
    assert net.pooling_factors == (1, 8, 8)
    net.set_deep_supervision(True)
    assert net.output_scales() == [(1, 1, 1), (1, 2, 2)]


def test_equals_the_2d_unet_applied_to_every_slice_on_its_own():
    net, reference = _pair()
    x = torch.randn(2, 2, 3, 16, 24)
    outputs = net(x)
    for b in range(2):
        for z in range(3):
            expected = reference(x[b:b + 1, :, z])
            for got, want in zip(outputs, expected, strict=True):
                torch.testing.assert_close(got[b:b + 1, :, z], want, atol=1e-5, rtol=1e-5)


def test_its_parameters_are_exactly_a_2d_unets():
    net, reference = _pair()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert all(v.dim() != 5 for v in net.state_dict().values())


def test_its_state_dict_starts_an_ahnet_encoder_slice_by_slice():
    net, reference = _pair(in_channels=1)
    hybrid = AHNet(1, 3, **{**PLANAR, "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]})
    report = transfer_2d_encoder(hybrid, net.state_dict())
    assert len(report.transferred) == sum(1 for k in net.state_dict() if k.startswith("encoder."))
    volume = torch.randn(1, 1, 4, 16, 16)
    skips = hybrid.encoder(volume)
    for z in range(4):
        for got, want in zip(skips, reference.encoder(volume[:, :, z]), strict=True):
            torch.testing.assert_close(got[:, :, z], want, atol=1e-5, rtol=1e-5)


def test_the_sliding_window_of_one_slice_predicts_every_slice_as_the_2d_unet():
    net, reference = _pair(in_channels=1)
    net.set_deep_supervision(False)
    reference.set_deep_supervision(False)
    image = torch.randn(1, 5, 16, 16)
    probabilities = predict_sliding_window(net, image, (1, 16, 16), 3, mirror_axes=None, use_bf16=False)
    with torch.no_grad():
        expected = torch.softmax(reference.eval()(image.transpose(0, 1)), dim=1).transpose(0, 1)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=1e-5)


def test_any_number_of_slices_fits_but_y_and_x_must_fit_the_pooling():
    net, _ = _pair()
    for patch in ([1, 16, 16], [7, 8, 24]):
        net.check_patch_size(patch)
    with pytest.raises(LiversegError, match=r"axis y \(12\) is not a positive multiple of 8"):
        net.check_patch_size([1, 12, 16])
    for patch in ([16, 16], [0, 16, 16]):
        with pytest.raises(LiversegError, match="the unet_2d takes \\(z, y, x\\) patches"):
            net.check_patch_size(patch)


def test_a_3d_topology_is_read_in_plane_as_the_ahnet_encoder_reads_it():
    thick = dict(kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
                 strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], features_per_stage=[4, 8, 16, 16])
    torch.manual_seed(0)
    net = build_network("unet_2d", 2, 3, **thick)
    reference = UNet(2, 3, dims=2, **TWO_D)
    reference.load_state_dict(net.state_dict())  # the same names and shapes: z entries are ignored
    x = torch.randn(1, 2, 3, 16, 16)
    for z in range(3):
        torch.testing.assert_close(net(x)[0][:, :, z], reference(x[:, :, z])[0], atol=1e-5, rtol=1e-5)
    assert net.pooling_factors == (1, 8, 8)


def test_a_topology_entry_that_is_not_z_y_x_is_a_user_error_naming_the_stage():
    with pytest.raises(LiversegError, match=r"network 'unet_2d': invalid topology in the plan: stage 0: kernel \[3, 3\] must be"):
        build_network("unet_2d", 1, 2, **{**PLANAR, "kernel_sizes": [[3, 3]] * 4})


@pytest.mark.parametrize("training", [True, False])
def test_memory_of_a_patch_is_that_of_its_slices_in_the_2d_unet(training):
    net, reference = _pair()
    for slices in (1, 3):
        assert net.activation_memory_bytes([slices, 32, 24], 2, training=training) == \
            reference.activation_memory_bytes([32, 24], 2 * slices, training=training)
    assert [size[0] for _, size in net.feature_maps([3, 32, 24])] == [3] * len(reference.feature_maps([32, 24]))


def test_backward_reaches_every_trainable_parameter():
    net, _ = _pair()
    loss = sum(o.square().mean() for o in net(torch.randn(2, 2, 2, 16, 16)))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
