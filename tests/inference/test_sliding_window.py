"""The sliding window on real (tiny) networks: coverage, seams, mirroring, batching, precision."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from liverseg.data.phantom import case_id, write_case
from liverseg.data.phantom_case import generate_case
from liverseg.errors import LiversegError
from liverseg.inference.device import bf16_supported
from liverseg.inference.sliding_window import mirror_combinations, predict_sliding_window
from liverseg.inference.windows import compute_steps, window_slices
from liverseg.io.images import read_image
from liverseg.networks import build_network

CUDA = torch.cuda.is_available()
PATCH = (16, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and lose a lot when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> np.ndarray:
    """A tiny phantom scan written as NIfTI, read back and z-scored: (1, z, y, x) float32."""
    root = tmp_path_factory.mktemp("phantom")
    write_case(generate_case(0, seed=0, size="tiny"), root, case_id(0))
    image, _ = read_image(root / "imagesTr" / f"{case_id(0)}_0000.nii.gz")
    image = image.astype(np.float32)
    return ((image - image.mean()) / image.std())[None]


def tiny_unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_network("unet", 1, 3, kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                         strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], features_per_stage=[8, 16, 32],
                         deep_supervision=False)


def constant_net(in_channels: int, bias: list[float]) -> nn.Module:
    """Logits equal to ``bias`` at every voxel, whatever the input."""
    net = nn.Conv3d(in_channels, len(bias), 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor(bias))
    return net


def conv_net(in_channels: int = 1, classes: int = 3, seed: int = 0, symmetric_axes: tuple[int, ...] = ()) -> nn.Module:
    """One 3x3x3 convolution (zero padding): translation-equivariant with a 1-voxel receptive radius.

    With ``symmetric_axes`` the kernel is averaged with its mirror images along those spatial
    axes, which makes the network commute with flips along them.
    """
    torch.manual_seed(seed)
    net = nn.Conv3d(in_channels, classes, 3, padding=1)
    with torch.no_grad():
        kernel = net.weight.clone()
        for axis in symmetric_axes:
            kernel = (kernel + torch.flip(kernel, [axis + 2])) / 2
        net.weight.copy_(kernel)
    return net


class Counting(nn.Module):
    """Runs ``inner`` and records the batch shape of every forward call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.inner(x)


class HandMirrored(nn.Module):
    """The mean logits over all flips along ``axes``, enumerated as flip/no-flip per axis."""

    def __init__(self, inner: nn.Module, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.inner, self.axes = inner, axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for flags in itertools.product((False, True), repeat=len(self.axes)):
            dims = [a + 2 for a, f in zip(self.axes, flags) if f]
            outputs.append(torch.flip(self.inner(torch.flip(x, dims)), dims))
        return torch.stack(outputs).mean(dim=0)


def whole_image(net: nn.Module, image: np.ndarray) -> torch.Tensor:
    """Softmax of one forward pass over the whole image."""
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(image)[None])[0], dim=0)


def random_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape, mirror", [((1, 21, 45, 50), None), ((2, 21, 45, 50), (1, 2)),
                                           ((1, 5, 12, 70), (0, 1, 2))])
def test_a_constant_predictor_gives_its_softmax_everywhere_without_seams(shape, mirror):
    bias = [0.5, -1.0, 2.0]
    expected = np.exp(bias) / np.exp(bias).sum()
    out = predict_sliding_window(constant_net(shape[0], bias), random_image(shape), (8, 16, 16), 3,
                                 mirror_axes=mirror, use_bf16=False)
    assert out.shape == (3, *shape[1:]) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(expected[:, None, None, None], out.shape), atol=1e-6)


def test_an_equivariant_network_matches_the_whole_image_where_windows_see_their_full_field():
    image, patch = random_image((1, 20, 44, 38)), (8, 16, 16)
    net = conv_net()
    out = predict_sliding_window(net, image, patch, 3, mirror_axes=None, use_bf16=False)
    # A window's prediction is wrong within 1 voxel of a window side that lies inside the image
    # (it sees zero padding there, the whole-image pass sees the neighbours).
    size = image.shape[1:]
    reliable = np.ones(size, bool)
    for window in window_slices(size, patch, 0.5):
        wrong = np.zeros(size, bool)
        for axis, s in enumerate(window):
            for edge in ([s.start] if s.start > 0 else []) + ([s.stop - 1] if s.stop < size[axis] else []):
                index = [slice(None)] * 3
                index[axis] = edge
                wrong[tuple(index)] = True
        inside = np.zeros(size, bool)
        inside[window] = True
        reliable &= ~(wrong & inside)
    assert reliable.mean() > 0.3
    expected = whole_image(net, image).numpy()
    np.testing.assert_allclose(out.numpy()[:, reliable], expected[:, reliable], atol=1e-5)
    assert np.abs(out.numpy() - expected).max() > 1e-4  # and window borders do matter elsewhere


def test_an_image_smaller_than_the_patch_is_padded_and_cropped_back():
    image = random_image((1, 5, 20, 13))
    net = conv_net()
    out = predict_sliding_window(net, image, PATCH, 3, mirror_axes=None, use_bf16=False)
    assert out.shape == (3, 5, 20, 13)
    # One window over the zero-padded image: the same as the convolution's own zero padding.
    np.testing.assert_allclose(out.numpy(), whole_image(net, image).numpy(), atol=1e-6)


@pytest.mark.parametrize("axes", [(1, 2), (0, 1, 2)])
def test_mirroring_a_mirror_symmetric_network_changes_nothing(axes):
    image = random_image((2, 20, 44, 38), seed=1)
    net = conv_net(in_channels=2, symmetric_axes=axes)
    plain = predict_sliding_window(net, image, (8, 16, 16), 3, mirror_axes=None, use_bf16=False)
    mirrored = predict_sliding_window(net, image, (8, 16, 16), 3, mirror_axes=axes, use_bf16=False)
    np.testing.assert_allclose(mirrored.numpy(), plain.numpy(), atol=1e-6)


@pytest.mark.parametrize("axes", [(1, 2), (0, 1, 2), (2,)])
def test_mirroring_averages_the_logits_of_the_flipped_passes(axes):
    net = conv_net(seed=3)
    # One window covering the image: the result is the softmax of the hand-mirrored logits.
    image = random_image((1, *PATCH), seed=2)
    out = predict_sliding_window(net, image, PATCH, 3, mirror_axes=axes, use_bf16=False)
    expected = whole_image(HandMirrored(net, axes), image)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)
    assert np.abs(out.numpy() - whole_image(net, image).numpy()).max() > 1e-3  # mirroring did something
    # Many windows: mirroring inside the engine = no mirroring of a network that mirrors itself.
    image = random_image((1, 20, 44, 38), seed=4)
    out = predict_sliding_window(net, image, (8, 16, 16), 3, mirror_axes=axes, use_bf16=False)
    by_hand = predict_sliding_window(HandMirrored(net, axes), image, (8, 16, 16), 3, mirror_axes=None, use_bf16=False)
    np.testing.assert_allclose(out.numpy(), by_hand.numpy(), atol=1e-6)


@pytest.mark.parametrize("axes, passes", [(None, 1), ((), 1), ((2,), 2), ((1, 2), 4), ((0, 1, 2), 8)])
def test_each_batch_runs_once_per_mirror_combination(axes, passes):
    assert len(mirror_combinations(axes)) == passes
    image, patch = random_image((1, 20, 44, 38)), (8, 16, 16)
    windows = math.prod(len(s) for s in compute_steps(image.shape[1:], patch))
    net = Counting(constant_net(1, [0.0, 1.0]))
    predict_sliding_window(net, image, patch, 2, mirror_axes=axes, batch_windows=4)
    batches = [4] * (windows // 4) + ([windows % 4] if windows % 4 else [])
    assert [shape[0] for shape in net.calls] == [b for b in batches for _ in range(passes)]
    assert all(shape[1:] == (1, *patch) for shape in net.calls)


@pytest.mark.parametrize("axes", [[3], [1, 1], [-1]])
def test_bad_mirror_axes_are_refused(axes):
    with pytest.raises(LiversegError, match="mirror axes"):
        mirror_combinations(axes)


def test_batching_windows_does_not_change_the_result(phantom):
    net = tiny_unet()
    one = predict_sliding_window(net, phantom, PATCH, 3, batch_windows=1, use_bf16=False)
    three = predict_sliding_window(net, phantom, PATCH, 3, batch_windows=3, use_bf16=False)
    # Identical up to float32 rounding: oneDNN blocks convolutions differently per batch size.
    np.testing.assert_allclose(three.numpy(), one.numpy(), atol=1e-5)


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16 (avx512_bf16 / AMX)")
def test_bf16_agrees_with_fp32(phantom):
    net = tiny_unet()
    fp32 = predict_sliding_window(net, phantom, PATCH, 3, use_bf16=False)
    bf16 = predict_sliding_window(net, phantom, PATCH, 3, use_bf16="auto")
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    assert (fp32 - bf16).abs().max().item() < 0.05
    same = fp32.argmax(0) == bf16.argmax(0)
    assert same.float().mean().item() > 0.99  # random weights make many near-ties
    top2 = fp32.topk(2, dim=0).values
    assert same[top2[0] - top2[1] > 0.1].all()  # no clear decision changes


def test_the_input_is_untouched_and_the_result_is_an_ordinary_tensor(phantom, capsys):
    net = tiny_unet()
    net.train()
    original = phantom.copy()
    from_numpy = predict_sliding_window(net, phantom, PATCH, 3, use_bf16=False, progress=True)
    assert "sliding window" in capsys.readouterr().err
    np.testing.assert_array_equal(phantom, original)
    assert net.training  # its mode is restored
    from_tensor = predict_sliding_window(net, torch.from_numpy(phantom), PATCH, 3, use_bf16=False,
                                         compute_device="cpu", accumulate_device="cpu")
    assert torch.equal(from_numpy, from_tensor) and from_tensor.device.type == "cpu"
    np.testing.assert_allclose(from_numpy.sum(0).numpy(), 1.0, atol=1e-6)
    from_numpy += from_tensor  # fold averaging updates results in place outside inference mode
    read_only = phantom.copy()
    read_only.flags.writeable = False  # as np.load(..., mmap_mode="r") gives
    assert torch.equal(predict_sliding_window(net, read_only, PATCH, 3, use_bf16=False), from_tensor)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_compute_on_the_gpu_accumulate_on_the_cpu(phantom):
    net = tiny_unet()
    cpu = predict_sliding_window(net, phantom, PATCH, 3, use_bf16=False)
    mixed = predict_sliding_window(net, phantom, PATCH, 3, use_bf16=False, compute_device="cuda",
                                   accumulate_device="cpu")
    assert mixed.device.type == "cpu"
    np.testing.assert_allclose(mixed.numpy(), cpu.numpy(), atol=1e-4)


def test_bad_inputs_are_clear_errors(phantom):
    net = tiny_unet()
    with pytest.raises(LiversegError, match="leading channel axis"):
        predict_sliding_window(net, phantom[0], PATCH, 3)
    with pytest.raises(LiversegError, match="2 channel"):
        predict_sliding_window(net, np.concatenate([phantom, phantom]), PATCH, 3)
    broken = phantom.copy()
    broken[0, 3, 4, 5] = np.nan
    with pytest.raises(LiversegError, match="NaN"):
        predict_sliding_window(net, broken, PATCH, 3)
    with pytest.raises(LiversegError, match="logits of shape"):
        predict_sliding_window(net, phantom, PATCH, 2)
    with pytest.raises(LiversegError, match="three positive integers"):
        predict_sliding_window(net, phantom, (32, 32), 3)
    with pytest.raises(LiversegError, match="batch_windows"):
        predict_sliding_window(net, phantom, PATCH, 3, batch_windows=0)
    with pytest.raises(LiversegError, match="multiple of"):  # the U-Net's own check of the patch
        predict_sliding_window(net, phantom, (16, 30, 32), 3)
