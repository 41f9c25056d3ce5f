"""The dynamic anisotropic U-Net: topology (kernels, strides, widths) comes from the plan.

Conventions follow nnU-Net's plain convolutional U-Net, so nnU-Net plans translate directly:

- stage ``i`` of the encoder is ``n_conv_per_stage[i]`` conv -> InstanceNorm(affine) ->
  LeakyReLU blocks; its first convolution has stride ``strides[i]`` (strided convolutions
  downsample, there are no pooling layers), so ``strides[0]`` is normally all ones;
- kernel sizes and strides are per axis in ``(z, y, x)`` order: thick-slice data uses ``[1, 3, 3]``
  kernels and ``[1, 2, 2]`` strides while z is coarser than the in-plane axes;
- the decoder upsamples with transposed convolutions whose kernel equals the stride, concatenates
  the encoder's output at that resolution and refines with ``n_conv_per_stage_decoder`` blocks
  (ordered from the deepest decoder stage up to full resolution, as in nnU-Net plans);
- 1x1 segmentation heads sit at every decoder resolution except the lowest one (nnU-Net computes
  that output and then gives it zero loss weight); outputs are ordered highest resolution first.

The decoder is built from the encoder object (its channels, strides and kernels), so the two
cannot disagree, and every block reports its feature-map sizes, which is what
:meth:`UNet.activation_memory_bytes` sums for the planner's memory estimate.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from liverseg.errors import LiversegError
from liverseg.networks.blocks import FeatureMap, StackedConvBlocks, feature_map_elements

_OPS: dict[int, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    2: (nn.Conv2d, nn.InstanceNorm2d, nn.ConvTranspose2d),
    3: (nn.Conv3d, nn.InstanceNorm3d, nn.ConvTranspose3d),
}
_AXIS_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}
# At inference no activations are kept for backward: besides the encoder outputs waiting for the
# decoder, one block's input, convolution output and norm output are alive at the same time.
_INFERENCE_WORKING_MAPS = 3


class Encoder(nn.Module):
    """The contracting path: one :class:`StackedConvBlocks` per resolution stage."""

    def __init__(
        self,
        in_channels: int,
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        features_per_stage: Sequence[int],
        n_conv_per_stage: Sequence[int],
        conv_op: type[nn.Module],
        norm_op: type[nn.Module],
        nonlin: type[nn.Module],
        nonlin_kwargs: dict,
    ) -> None:
        super().__init__()
        self.conv_op, self.norm_op, self.nonlin, self.nonlin_kwargs = conv_op, norm_op, nonlin, dict(nonlin_kwargs)
        self.norm_kwargs = {"eps": 1e-5, "affine": True}
        stages, channels = [], in_channels
        for kernel, stride, features, n_convs in zip(kernel_sizes, strides, features_per_stage, n_conv_per_stage):
            stages.append(StackedConvBlocks(n_convs, conv_op, channels, features, kernel, stride,
                                            norm_op, self.norm_kwargs, nonlin, self.nonlin_kwargs))
            channels = features
        self.stages = nn.ModuleList(stages)
        self.output_channels = [stage.out_channels for stage in stages]
        self.strides = [stage.stride for stage in stages]
        self.kernel_sizes = [stage.kernel_size for stage in stages]

    def forward(self, x: Tensor) -> list[Tensor]:
        """The output of every stage, highest resolution first (the decoder's skip inputs)."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def stage_output_sizes(self, input_size: Sequence[int]) -> list[tuple[int, ...]]:
        """Spatial size of every stage's output for an input of spatial size ``input_size``."""
        sizes, size = [], tuple(input_size)
        for stage in self.stages:
            size = stage.output_size(size)
            sizes.append(size)
        return sizes

    def feature_maps(self, input_size: Sequence[int]) -> list[FeatureMap]:
        """Feature maps all encoder blocks allocate, in forward order."""
        maps, size = [], tuple(input_size)
        for stage in self.stages:
            maps += stage.feature_maps(size)
            size = stage.output_size(size)
        return maps


class Decoder(nn.Module):
    """The expanding path, derived from an :class:`Encoder` so both always agree.

    Decoder stage ``d`` (0 = just above the bottleneck) upsamples by the stride of encoder stage
    ``n - 1 - d``, concatenates the output of encoder stage ``n - 2 - d`` and uses that stage's
    kernel size and width.
    """

    def __init__(self, encoder: Encoder, num_classes: int, n_conv_per_stage: Sequence[int]) -> None:
        super().__init__()
        n = len(encoder.output_channels)
        dims = len(encoder.strides[0])
        transpconv_op = _OPS[dims][2]
        self.transpconvs, self.stages, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        # Heads at every decoder stage except the lowest; with two encoder stages the lowest is the last.
        self.first_head_stage = min(1, n - 2)
        for d in range(n - 1):
            below, skip = encoder.output_channels[n - 1 - d], encoder.output_channels[n - 2 - d]
            stride = encoder.strides[n - 1 - d]
            self.transpconvs.append(transpconv_op(below, skip, stride, stride, bias=True))
            self.stages.append(StackedConvBlocks(n_conv_per_stage[d], encoder.conv_op, 2 * skip, skip,
                                                 encoder.kernel_sizes[n - 2 - d], 1, encoder.norm_op,
                                                 encoder.norm_kwargs, encoder.nonlin, encoder.nonlin_kwargs))
            if d >= self.first_head_stage:
                self.heads.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.num_classes = num_classes
        self.deep_supervision = True

    def forward(self, skips: list[Tensor]) -> Tensor | list[Tensor]:
        """Final logits, or (deep supervision) logits at each headed resolution, highest first."""
        x, outputs = skips[-1], []
        for d, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = stage(torch.cat((up(x), skips[-2 - d]), dim=1))
            if self.deep_supervision and d >= self.first_head_stage:
                outputs.append(self.heads[d - self.first_head_stage](x))
        if not self.deep_supervision:
            return self.heads[-1](x)
        return outputs[::-1]

    def feature_maps(self, skip_sizes: Sequence[Sequence[int]]) -> list[FeatureMap]:
        """Feature maps the decoder keeps for backward, given the encoder's stage output sizes.

        Per stage: the concatenation (the transposed convolution's output is freed as soon as it
        is concatenated), the blocks' maps, and the logits of each head that runs.
        """
        maps: list[FeatureMap] = []
        n = len(skip_sizes)
        for d, stage in enumerate(self.stages):
            size = tuple(skip_sizes[n - 2 - d])
            maps.append((stage.in_channels, size))
            maps += stage.feature_maps(size)
            if (self.deep_supervision and d >= self.first_head_stage) or d == n - 2:
                maps.append((self.num_classes, size))
        return maps


class UNet(nn.Module):
    """Dynamic U-Net for 2D or 3D patches; see the module docstring for the conventions.

    ``strides[0]`` is the first stage's stride (normally all ones); ``kernel_sizes``, ``strides``
    and ``features_per_stage`` have one entry per stage. ``n_conv_per_stage`` gives one count per
    encoder stage, ``n_conv_per_stage_decoder`` one per decoder stage (deepest first); a single
    integer applies to all. With ``deep_supervision`` the forward pass returns a list of logits,
    highest resolution first; otherwise the full-resolution logits tensor.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        features_per_stage: Sequence[int],
        n_conv_per_stage: int | Sequence[int] = 2,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
        deep_supervision: bool = True,
        dims: int = 3,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        n_stages = _validate(in_channels, num_classes, kernel_sizes, strides, features_per_stage, dims, negative_slope)
        encoder_convs = _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")
        decoder_convs = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        self.dims, self.in_channels, self.num_classes = dims, int(in_channels), int(num_classes)
        self.encoder = self.build_encoder(in_channels, kernel_sizes, strides, features_per_stage, encoder_convs,
                                          {"negative_slope": negative_slope, "inplace": True})
        self.decoder = self.build_decoder(self.encoder, num_classes, decoder_convs)
        self.apply(lambda module: _init_he(module, negative_slope))
        self.set_deep_supervision(deep_supervision)

    def build_encoder(self, in_channels: int, kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                      features_per_stage: Sequence[int], n_conv_per_stage: Sequence[int], nonlin_kwargs: dict) -> Encoder:
        """The contracting path for the validated topology; a network that convolves differently overrides it."""
        conv_op, norm_op, _ = _OPS[self.dims]
        return Encoder(in_channels, kernel_sizes, strides, features_per_stage, n_conv_per_stage, conv_op, norm_op,
                       nn.LeakyReLU, nonlin_kwargs)

    def build_decoder(self, encoder: Encoder, num_classes: int, n_conv_per_stage: Sequence[int]) -> Decoder:
        """The expanding path, derived from ``encoder`` (overridden by networks whose decoder differs)."""
        return Decoder(encoder, num_classes, n_conv_per_stage)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        self.check_patch_size(tuple(x.shape[2:]))
        return self.decoder(self.encoder(x))

    @property
    def deep_supervision(self) -> bool:
        """Whether :meth:`forward` returns the logits of every head (a list) or only the final ones."""
        return self.decoder.deep_supervision

    def set_deep_supervision(self, enabled: bool) -> None:
        """Switch deep supervision on or off without changing the parameter set.

        All heads always exist, so checkpoints load into either mode. Heads that do not run are
        frozen (``requires_grad=False``), which DistributedDataParallel ignores; DDP records the
        trainable parameters when it wraps the model, so call this *before* wrapping.
        """
        self.decoder.deep_supervision = bool(enabled)
        for head in self.decoder.heads[:-1]:
            head.requires_grad_(bool(enabled))

    @property
    def pooling_factors(self) -> tuple[int, ...]:
        """Total downsampling per spatial axis (product of all strides); patches must be multiples."""
        return tuple(math.prod(axis) for axis in zip(*self.encoder.strides))

    def output_scales(self) -> list[tuple[int, ...]]:
        """Downsampling factor of each output relative to the input, in forward output order.

        The trainer uses it to downsample the labels for the deep-supervision loss.
        """
        scales, scale = [], (1,) * self.dims
        for stride in self.encoder.strides[:-1]:
            scale = tuple(a * b for a, b in zip(scale, stride))
            scales.append(scale)
        n_outputs = len(self.decoder.heads) if self.deep_supervision else 1
        return scales[:n_outputs]

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise a :class:`LiversegError` unless ``patch_size`` fits this network's pooling."""
        names = _AXIS_NAMES[self.dims]
        if len(patch_size) != self.dims:
            raise LiversegError(f"patch size {list(patch_size)} has {len(patch_size)} axes but the network is "
                                f"{self.dims}D; give {self.dims} sizes in ({', '.join(names)}) order")
        check_divisible(patch_size, self.pooling_factors, names)

    def feature_maps(self, patch_size: Sequence[int]) -> list[FeatureMap]:
        """Every feature map a training forward pass keeps for backward, per sample, as (channels, size)."""
        self.check_patch_size(patch_size)
        return self.encoder.feature_maps(patch_size) + self.decoder.feature_maps(self.encoder.stage_output_sizes(patch_size))

    def skip_maps(self, patch_size: Sequence[int]) -> list[FeatureMap]:
        """The encoder's stage outputs for ``patch_size``, which wait for the decoder (inference memory)."""
        return list(zip(self.encoder.output_channels, self.encoder.stage_output_sizes(patch_size)))

    def activation_memory_bytes(self, patch_size: Sequence[int], batch_size: int, bytes_per_element: int = 4,
                                training: bool = True) -> int:
        """Estimated activation memory of one forward pass, from the blocks' reported feature maps.

        ``training=True``: the feature maps autograd keeps for the backward pass (per block the
        convolution and norm outputs, the nonlinearity works in place; the decoder's
        concatenations; the logits of the heads that run); the input batch, weights, gradients
        and optimiser state are not included. This matches the tensors autograd saves to within
        1% (``tests/networks/test_unet.py``); the real peak of a forward+backward pass is higher
        because the backward pass allocates gradient buffers: measured 1.23x this estimate on the
        CPU (process RSS). ``training=False``: the encoder outputs waiting for the decoder plus
        three maps of the largest size; measured peak 1.08x. Build the network under
        ``torch.device("meta")`` to estimate without allocating weights.
        """
        if batch_size < 1 or bytes_per_element < 1:
            raise ValueError(f"batch_size and bytes_per_element must be positive, got {batch_size}, {bytes_per_element}")
        maps = self.feature_maps(patch_size)
        if training:
            elements = feature_map_elements(maps)
        else:
            skips = self.skip_maps(patch_size)
            largest = max(feature_map_elements([m]) for m in maps)
            elements = feature_map_elements(skips) + _INFERENCE_WORKING_MAPS * largest
        return int(elements) * int(batch_size) * int(bytes_per_element)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameter values (all, or only those that currently receive gradients)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def check_divisible(patch_size: Sequence[int], factors: Sequence[int], names: Sequence[str]) -> None:
    """Raise a :class:`LiversegError` unless every axis of ``patch_size`` is a positive multiple of its pooling factor."""
    for name, size, factor in zip(names, patch_size, factors):
        if size < factor or size % factor:
            lower, upper = max(factor, size // factor * factor), (size // factor + 1) * factor
            suggestion = f"{lower} or {upper}" if lower != upper else f"{lower}"
            raise LiversegError(
                f"patch size {list(patch_size)}: axis {name} ({size}) is not a positive multiple of {factor}, the "
                f"network's total stride along {name}; use a multiple of {factor} (e.g. {suggestion}) or change the strides")


def _validate(in_channels: int, num_classes: int, kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
              features_per_stage: Sequence[int], dims: int, negative_slope: float) -> int:
    """Check the constructor arguments (a programmer error otherwise); returns the number of stages."""
    if dims not in _OPS:
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be positive, got {in_channels} and {num_classes}")
    n_stages = len(features_per_stage)
    if n_stages < 2:
        raise ValueError(f"a U-Net needs at least 2 stages, got features_per_stage={list(features_per_stage)}")
    if len(kernel_sizes) != n_stages or len(strides) != n_stages:
        raise ValueError(f"kernel_sizes ({len(kernel_sizes)}), strides ({len(strides)}) and features_per_stage "
                         f"({n_stages}) must have one entry per stage")
    for i, (kernel, stride) in enumerate(zip(kernel_sizes, strides)):
        if not isinstance(kernel, Sequence) or not isinstance(stride, Sequence):
            raise ValueError(f"stage {i}: kernel {kernel!r} and stride {stride!r} must be lists of {dims} integers")
        if len(kernel) != dims or len(stride) != dims:
            raise ValueError(f"stage {i}: kernel {list(kernel)} and stride {list(stride)} need {dims} entries "
                             f"for a {dims}D network")
        if any(int(k) != k or k < 1 or k % 2 == 0 for k in kernel):
            raise ValueError(f"stage {i}: kernel sizes must be odd positive integers, got {list(kernel)}")
        if any(int(s) != s or s < 1 for s in stride):
            raise ValueError(f"stage {i}: strides must be positive integers, got {list(stride)}")
    if any(int(f) != f or f < 1 for f in features_per_stage):
        raise ValueError(f"features_per_stage must hold positive integers, got {list(features_per_stage)}")
    if negative_slope < 0:
        raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
    return n_stages


def _per_stage(value: int | Sequence[int], n: int, name: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be a positive integer or {n} positive integers, got {value!r}")
    return [int(v) for v in values]


def _init_he(module: nn.Module, negative_slope: float) -> None:
    """He initialisation for the leaky ReLU that follows, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=negative_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
