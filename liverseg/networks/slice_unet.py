"""The 2D configuration's network (``"unet_2d"``): our 2D U-Net applied to every slice of a 3D patch.

nnU-Net's 2d configuration trains on single slices. Here the 2D model keeps liverseg's one data
path: patches stay ``(z, y, x)`` (the 2D configuration plans ``[1, H, W]``), so the sampler,
augmentation, loss, deep supervision, validation and the sliding window work unchanged, and this
network folds z into the batch: ``(B, C, Z, H, W) -> (B*Z, C, H, W)`` through
``UNet(..., dims=2)``, and back. Every slice is segmented on its own, whatever the patch's depth.

It takes the plan's topology as every network does, in ``(z, y, x)`` order, and reads it as the
``ahnet``'s encoder does: the in-plane kernels and strides ``[ky, kx]``, ``[sy, sx]`` build the 2D
network and the z entries are ignored (it works within slices; the 2D configuration plans them as
1, and a 3D model's topology switches to ``"network": "unet_2d"`` by that one edit). So:

- its parameters are exactly those of ``UNet(..., dims=2)`` with the in-plane kernels and strides
  (same names, shapes ``(O, I, ky, kx)``): its state dict is a 2D U-Net's, which
  :func:`liverseg.networks.transfer.transfer_2d_encoder` copies into an ``ahnet`` as it is;
- everything the trainer and the planner ask a network is answered in ``(z, y, x)`` with a z entry
  of 1: :attr:`pooling_factors` ``(1, Py, Px)``, :meth:`output_scales` ``(1, sy, sx)``,
  :meth:`check_patch_size` (any number of slices), :meth:`feature_maps` (per sample, all slices);
- the deep-supervision outputs are ``(B, K, Z, h, w)``, highest resolution first.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from liverseg.errors import LiversegError
from liverseg.networks.blocks import FeatureMap
from liverseg.networks.unet import UNet, check_divisible


class SliceUNet(UNet):
    """``UNet(dims=2)`` on every slice of ``(B, C, Z, Y, X)`` inputs; see the module docstring.

    Arguments are the ``unet``'s for a ``(z, y, x)`` topology (one ``[z, y, x]`` kernel and stride and
    one width per stage); only the in-plane entries are used.
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
        super().__init__(in_channels, num_classes, _in_plane(kernel_sizes, "kernel"), _in_plane(strides, "stride"),
                         features_per_stage, n_conv_per_stage, n_conv_per_stage_decoder, deep_supervision, dims=2,
                         negative_slope=negative_slope)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        self.check_patch_size(tuple(x.shape[2:]))
        batch, channels, slices, height, width = x.shape
        planar = x.transpose(1, 2).reshape(batch * slices, channels, height, width)
        outputs = self.decoder(self.encoder(planar))
        if isinstance(outputs, Tensor):
            return _unfold(outputs, batch, slices)
        return [_unfold(output, batch, slices) for output in outputs]

    @property
    def pooling_factors(self) -> tuple[int, ...]:
        """Total downsampling per ``(z, y, x)`` axis: 1 along z, whose slices are never pooled."""
        return (1, *super().pooling_factors)

    def output_scales(self) -> list[tuple[int, ...]]:
        """Downsampling of each output relative to the input, ``(1, sy, sx)``, in forward output order."""
        return [(1, *scale) for scale in super().output_scales()]

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise a :class:`LiversegError` unless ``patch_size`` is ``(z, y, x)`` with y and x fitting the pooling."""
        if len(patch_size) != 3 or int(patch_size[0]) < 1:
            raise LiversegError(f"patch size {list(patch_size)}: the unet_2d takes (z, y, x) patches (one or more "
                                "slices, each segmented on its own); give 3 sizes, e.g. [1, 128, 128]")
        check_divisible(patch_size, self.pooling_factors, ("z", "y", "x"))

    def feature_maps(self, patch_size: Sequence[int]) -> list[FeatureMap]:
        """Every feature map a training forward pass keeps for backward, per ``(z, y, x)`` sample (all its slices)."""
        self.check_patch_size(patch_size)
        planar = tuple(int(s) for s in patch_size[1:])
        maps = self.encoder.feature_maps(planar) + self.decoder.feature_maps(self.encoder.stage_output_sizes(planar))
        return _with_slices(maps, int(patch_size[0]))

    def skip_maps(self, patch_size: Sequence[int]) -> list[FeatureMap]:
        """The encoder's stage outputs for a ``(z, y, x)`` patch (all its slices), which wait for the decoder."""
        planar = tuple(int(s) for s in patch_size[1:])
        return _with_slices(list(zip(self.encoder.output_channels, self.encoder.stage_output_sizes(planar))),
                            int(patch_size[0]))


def _in_plane(entries: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    """``[z, y, x]`` entries as ``[y, x]``; a ValueError names a stage whose entry is not three numbers."""
    planar = []
    for stage, entry in enumerate(entries):
        if not isinstance(entry, Sequence) or len(entry) != 3:
            raise ValueError(f"stage {stage}: {what} {entry!r} must be [z, y, x] (the plan's order; the unet_2d uses "
                             "y and x)")
        planar.append([entry[1], entry[2]])
    return planar


def _unfold(logits: Tensor, batch: int, slices: int) -> Tensor:
    """``(B*Z, K, h, w)`` back to ``(B, K, Z, h, w)`` (contiguous, as losses and the sliding window expect)."""
    return logits.reshape(batch, slices, *logits.shape[1:]).transpose(1, 2).contiguous()


def _with_slices(maps: list[FeatureMap], slices: int) -> list[FeatureMap]:
    return [(channels, (slices, *size)) for channels, size in maps]
