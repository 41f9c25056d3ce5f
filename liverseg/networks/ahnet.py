"""The anisotropic hybrid network (``"ahnet"``): a 2D encoder on every slice, a 3D decoder across slices.

After Liu et al. 2018 ("3D Anisotropic Hybrid Network: transferring convolutional features from 2D
images to 3D anisotropic volumes"), which the ATLAS 2023 liver paper (Lambert et al.) used: thick-
slice MRI has little between-slice information at full resolution, so the encoder looks at one
slice at a time (and can start from a 2D model's weights, :mod:`liverseg.networks.transfer`), and
the decoder's 3D convolutions restore the context between slices.

It takes the same topology keys as the ``unet`` (``kernel_sizes``, ``strides``,
``features_per_stage``, ``n_conv_per_stage``, ``n_conv_per_stage_decoder``, ``deep_supervision``),
so a plan switches networks with ``"network": "ahnet"`` and nothing else. It reads them this way:

- **Encoder: exactly a 2D network applied to every slice.** Stage ``i`` uses the plan's in-plane
  kernel and stride with 1 along z (kernel ``[1, ky, kx]``, stride ``[1, sy, sx]``), and its
  instance normalisation takes statistics per slice (:class:`SliceInstanceNorm`), as a 2D
  instance norm on that slice would. Its parameter names and shapes (without the z axis of the
  kernels) are those of our 2D ``unet`` encoder (``UNet(..., dims=2)`` with kernels ``[ky, kx]``),
  which makes weight transfer a copy.
- **z is never pooled in the encoder**: the plan's z strides are ignored. Pooling slices
  (strided or max-pooled) would make the deeper stages something no 2D model computes, and on
  thick-slice data the plan pools z only in the last, small stages anyway. The cost: the deep
  feature maps keep every slice (the memory estimate counts them, so a plan made for ``ahnet``
  sizes its patch accordingly); the patch needs no particular multiple along z.
- **Decoder: the ``unet`` decoder in 3D.** Transposed convolutions upsample in-plane only, every
  decoder convolution is 3 along z (kernel ``[3, ky, kx]``) with 3D instance norms, and each
  stage concatenates the encoder's output at its resolution. Each decoder convolution widens the
  view by one slice on each side (:attr:`AHNet.slice_context`).
- Deep-supervision heads and switch, output order, He initialisation, the patch check and the
  memory estimate are the ``unet``'s (:class:`liverseg.networks.unet.UNet`), inherited.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liverseg.networks.unet import Decoder, Encoder, UNet

DECODER_Z_KERNEL = 3


class SliceInstanceNorm(nn.Module):
    """Instance normalisation of ``(B, C, Z, Y, X)`` maps with statistics per slice (over y and x).

    Equal to ``nn.InstanceNorm2d`` applied to every slice, with one affine weight and bias per
    channel shared by all slices: this keeps a hybrid encoder slice-by-slice identical to the 2D
    network its weights come from (a 3D instance norm would mix the slices' statistics).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = int(num_features), float(eps)
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        b, c, z, y, w = x.shape
        # Viewed as (B, C*Z, Y, X), every (sample, channel, slice) is one instance; index c*Z + z.
        weight = self.weight.repeat_interleave(z) if self.weight is not None else None
        bias = self.bias.repeat_interleave(z) if self.bias is not None else None
        out = F.instance_norm(x.reshape(b, c * z, y, w), weight=weight, bias=bias, eps=self.eps)
        return out.view(b, c, z, y, w)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


@dataclass(frozen=True)
class _DecoderSpec:
    """What :class:`liverseg.networks.unet.Decoder` reads from an encoder, with the decoder's 3D operations.

    The widths and strides come from the real encoder, so encoder and decoder cannot disagree.
    """

    output_channels: list[int]
    strides: list[tuple[int, ...]]
    kernel_sizes: list[tuple[int, ...]]
    conv_op: type[nn.Module]
    norm_op: type[nn.Module]
    norm_kwargs: dict
    nonlin: type[nn.Module]
    nonlin_kwargs: dict

    @classmethod
    def from_encoder(cls, encoder: Encoder) -> "_DecoderSpec":
        kernels = [(DECODER_Z_KERNEL, *kernel[1:]) for kernel in encoder.kernel_sizes]
        return cls(list(encoder.output_channels), list(encoder.strides), kernels, nn.Conv3d, nn.InstanceNorm3d,
                   dict(encoder.norm_kwargs), encoder.nonlin, dict(encoder.nonlin_kwargs))


class AHNet(UNet):
    """Anisotropic hybrid network for 3D ``(z, y, x)`` patches; see the module docstring.

    Arguments are the ``unet``'s for a 3D topology (one ``[z, y, x]`` kernel and stride and one
    width per stage). The forward pass returns, with ``deep_supervision``, a list of logits highest
    resolution first (every output keeps all slices), otherwise the full-resolution logits.
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
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(in_channels, num_classes, kernel_sizes, strides, features_per_stage, n_conv_per_stage,
                         n_conv_per_stage_decoder, deep_supervision, dims=3, negative_slope=negative_slope)

    def build_encoder(self, in_channels: int, kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                      features_per_stage: Sequence[int], n_conv_per_stage: Sequence[int], nonlin_kwargs: dict) -> Encoder:
        """A 2D encoder on every slice: the plan's in-plane kernels and strides, 1 along z (module docstring)."""
        kernels = [(1, int(k[1]), int(k[2])) for k in kernel_sizes]
        in_plane_strides = [(1, int(s[1]), int(s[2])) for s in strides]
        return Encoder(in_channels, kernels, in_plane_strides, features_per_stage, n_conv_per_stage, nn.Conv3d,
                       SliceInstanceNorm, nn.LeakyReLU, nonlin_kwargs)

    def build_decoder(self, encoder: Encoder, num_classes: int, n_conv_per_stage: Sequence[int]) -> Decoder:
        """The ``unet`` decoder with 3D convolutions, 3 deep along z."""
        return Decoder(_DecoderSpec.from_encoder(encoder), num_classes, n_conv_per_stage)  # type: ignore[arg-type]

    @property
    def slice_context(self) -> int:
        """Slices on each side of an output slice that its logits can depend on through convolutions.

        The encoder sees one slice; each 3-deep decoder convolution adds one slice on each side.
        (The decoder's instance norms share statistics over the whole patch, beyond this.)
        """
        return sum(len(stage.blocks) * (DECODER_Z_KERNEL // 2) for stage in self.decoder.stages)
