"""The training and validation augmentation pipelines, built from plain settings the plan provides.

Pipelines are batchgeneratorsv2 ``ComposeTransforms`` that work on one sample at a time:
``pipeline(image=..., segmentation=...)`` with torch tensors ``image`` ``(c, z, y, x)`` float32 and
``segmentation`` ``(k, z, y, x)`` integer (k label channels; usually 1). The
:mod:`liverseg.training.background` module runs them over batches in worker processes.

Axis order. batchgeneratorsv2 names the spatial axes x, y, z but only ever means "spatial axis 0,
1, 2". We hand it liverseg's ``(z, y, x)``, so every axis-dependent setting here is in that order:
``mirror_axes=(1, 2)`` mirrors y and x; in-plane rotation is rotation about axis 0 (z).

Region and patch. As in nnU-Net, the sampler hands over a region larger than the patch
(:func:`sampling_region_size`) and the spatial transform rotates and scales about the region's
centre, then cuts the final patch out of it, so rotated corners show image rather than padding.

Anisotropic data (thick slices). Rotation happens about z only, scaling is in-plane only (one
factor for y and x), elastic deformation does not move along z, and the low-resolution simulation
leaves z alone: z is not interpolated between slices that lie millimetres apart, and the region's z
extent equals the patch's, so slices stay exactly on their grid positions.

One-slice patches (the 2D configuration, patch ``[1, H, W]``) are augmented in-plane only, on thick
and thin slices alike: rotation about z, one in-plane scale, no elastic motion along z, Gaussian
blur and the low-resolution simulation applied to the slice as a 2D image (:class:`_OnTheSlice`:
blurring pads reflectively and cannot work along an axis of length 1), no slice-thickness
augmentation (one slice has nothing to average with) and no mirroring along z (a no-op).

Randomness. Parameters are drawn from numpy's global RNG (batchgeneratorsv2's scalars, our MRI
transforms) and torch's global RNG (``RandomTransform``, mirroring, noise): seeding both, as
:mod:`liverseg.training.background` does in each worker, makes a pipeline reproducible.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform, create_affine_matrix_3d
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from liverseg.errors import LiversegError
from liverseg.training.mri_transforms import BiasFieldTransform, SliceThicknessTransform

Z_AXIS = 0
_LABEL_MODES = {"linear": "bilinear", "nearest": "nearest"}  # ours -> SpatialTransform's mode_seg


class _AxisAngle:
    """Rotation angle sampler for SpatialTransform: uniform in ``[-max, max]`` about the given axes, 0 otherwise.

    SpatialTransform asks once per spatial axis ``dim`` (rotation about that axis). A class rather
    than a lambda so that pipelines pickle into worker processes.
    """

    def __init__(self, max_radians: float, axes: Sequence[int]) -> None:
        self.max_radians = max_radians
        self.axes = tuple(axes)

    def __call__(self, *args: Any, dim: int | None = None, **kwargs: Any) -> float:
        if dim not in self.axes or self.max_radians == 0:
            return 0.0
        return float(np.random.uniform(-self.max_radians, self.max_radians))


class _InPlaneScale:
    """Scale sampler for anisotropic data: 1 along z, one shared random factor for y and x.

    SpatialTransform asks for axes 0, 1, 2 in that order; the factor drawn for y is reused for x.
    """

    def __init__(self, scale_range: Sequence[float]) -> None:
        self.scale_range = tuple(scale_range)
        self._last = 1.0

    def __call__(self, *args: Any, dim: int | None = None, **kwargs: Any) -> float:
        if dim == Z_AXIS:
            return 1.0
        if dim == 1 or dim is None:
            self._last = float(np.random.uniform(*self.scale_range))
        return self._last


class _ElasticMagnitude:
    """Elastic displacement in voxels: up to a quarter of the smoothing width (a gentle warp), 0 on frozen axes."""

    def __init__(self, frozen_axes: Sequence[int]) -> None:
        self.frozen_axes = tuple(frozen_axes)

    def __call__(self, *args: Any, dim: int | None = None, patch_size: Sequence[int] = (),
                 deformation_scale: float = 0.0, **kwargs: Any) -> float:
        if dim in self.frozen_axes:
            return 0.0
        return float(np.random.uniform(0.0, 0.25 * deformation_scale * patch_size[dim]))


class _OnTheSlice(ImageOnlyTransform):
    """Apply an image transform to the ``(c, y, x)`` image of a one-slice ``(c, 1, y, x)`` patch: in-plane only."""

    def __init__(self, transform: BasicTransform) -> None:
        super().__init__()
        self.transform = transform

    def _apply_to_image(self, img: Any, **params: Any) -> Any:
        return self.transform(image=img[:, 0])["image"][:, None]


def _check_settings(patch_size: Sequence[int], mirror_axes: Sequence[int], scale_range: Sequence[float],
                    probabilities: dict[str, float]) -> None:
    if len(patch_size) != 3 or any(int(s) != s or s < 1 for s in patch_size):
        raise LiversegError(f"augmentation needs a 3D patch size of positive integers (z, y, x), "
                            f"got {list(patch_size)}")
    if any(a not in (0, 1, 2) for a in mirror_axes):
        raise LiversegError(f"mirror axes must be among 0 (z), 1 (y), 2 (x); got {list(mirror_axes)}")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise LiversegError(f"scale range must be (low, high) with 0 < low <= high, got {list(scale_range)}")
    for name, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise LiversegError(f"augmentation probability {name} must lie in [0, 1], got {p}")


def build_training_transforms(
    patch_size: Sequence[int],
    anisotropic: bool,
    mirror_axes: Sequence[int] = (0, 1, 2),
    rotation_deg: float = 30.0,
    scale_range: Sequence[float] = (0.7, 1.4),
    elastic: bool = False,
    p_rotation: float = 0.2,
    p_scaling: float = 0.2,
    p_elastic: float = 0.2,
    p_noise: float = 0.1,
    p_blur: float = 0.2,
    p_brightness: float = 0.15,
    p_contrast: float = 0.15,
    p_low_resolution: float = 0.25,
    p_gamma: float = 0.3,
    p_gamma_inverted: float = 0.1,
    bias_field: bool = False,
    p_bias_field: float = 0.3,
    bias_field_amplitude: float = 0.4,
    slice_thickness: bool = False,
    p_slice_thickness: float = 0.25,
    slice_thickness_max_factor: float = 2.0,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    label_interpolation: str = "linear",
) -> ComposeTransforms:
    """The per-sample training pipeline: spatial, MRI, intensity, mirroring, deep-supervision targets.

    Defaults follow nnU-Net v2's (probabilities and ranges). ``anisotropic`` keeps every spatial
    change in-plane (see the module docstring), and so does a one-slice ``patch_size`` (then
    ``slice_thickness`` and mirroring along z are left out). ``rotation_deg`` is the largest rotation about each
    allowed axis. ``bias_field`` and ``slice_thickness`` add the MRI transforms of
    :mod:`liverseg.training.mri_transforms`; ``slice_thickness_max_factor`` of 2.5 makes 2 mm slices
    look like up to 5 mm ones. With ``deep_supervision_scales`` (per output, the size relative to the
    patch, per axis) the ``segmentation`` comes out as a list, one tensor per output.
    ``label_interpolation`` is ``"linear"`` (each label's indicator interpolated linearly, the
    largest wins: smooth boundaries, nnU-Net's choice) or ``"nearest"`` (several times cheaper on
    large regions, blockier boundaries when zooming in).
    """
    probabilities = dict(p_rotation=p_rotation, p_scaling=p_scaling, p_elastic=p_elastic, p_noise=p_noise,
                         p_blur=p_blur, p_brightness=p_brightness, p_contrast=p_contrast,
                         p_low_resolution=p_low_resolution, p_gamma=p_gamma, p_gamma_inverted=p_gamma_inverted,
                         p_bias_field=p_bias_field, p_slice_thickness=p_slice_thickness)
    _check_settings(patch_size, mirror_axes, scale_range, probabilities)
    if label_interpolation not in _LABEL_MODES:
        raise LiversegError(f"label_interpolation must be one of {sorted(_LABEL_MODES)}, got {label_interpolation!r}")
    if slice_thickness_max_factor < 1:
        raise LiversegError(f"slice_thickness_max_factor must be >= 1, got {slice_thickness_max_factor}")
    if rotation_deg < 0 or bias_field_amplitude < 0:
        raise LiversegError(f"rotation_deg and bias_field_amplitude must be >= 0, got {rotation_deg} and "
                            f"{bias_field_amplitude}")
    patch_size = tuple(int(s) for s in patch_size)
    one_slice = patch_size[Z_AXIS] == 1
    in_plane = anisotropic or one_slice
    rotation_axes = (Z_AXIS,) if in_plane else (0, 1, 2)
    frozen_axes = (Z_AXIS,) if in_plane else ()
    if one_slice:
        slice_thickness = False
        mirror_axes = tuple(a for a in mirror_axes if a != Z_AXIS)

    def in_plane_image(transform: BasicTransform) -> BasicTransform:
        return _OnTheSlice(transform) if one_slice else transform

    transforms: list = [SpatialTransform(
        patch_size,
        patch_center_dist_from_border=0,
        random_crop=False,
        p_elastic_deform=p_elastic if elastic else 0.0,
        elastic_deform_scale=(0.1, 0.2),
        elastic_deform_magnitude=_ElasticMagnitude(frozen_axes),
        p_rotation=p_rotation,
        rotation=_AxisAngle(math.radians(rotation_deg), rotation_axes),
        p_scaling=p_scaling,
        scaling=_InPlaneScale(scale_range) if in_plane else tuple(scale_range),
        p_synchronize_scaling_across_axes=0.0 if in_plane else 1.0,
        mode_seg=_LABEL_MODES[label_interpolation],
    )]
    if bias_field:
        transforms.append(RandomTransform(BiasFieldTransform(amplitude=(0.0, bias_field_amplitude)), p_bias_field))
    if slice_thickness:
        transforms.append(RandomTransform(SliceThicknessTransform(factor=(1.0, slice_thickness_max_factor)),
                                          p_slice_thickness))
    transforms += [
        RandomTransform(GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_channel=1.0,
                                               synchronize_channels=True), p_noise),
        RandomTransform(in_plane_image(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                                             synchronize_axes=False, p_per_channel=0.5)), p_blur),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1.0), p_brightness),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1.0), p_contrast),
        RandomTransform(in_plane_image(SimulateLowResolutionTransform(
            scale=(0.5, 1.0), synchronize_channels=False, synchronize_axes=True,
            ignore_axes=None if one_slice else frozen_axes or None, allowed_channels=None, p_per_channel=0.5)),
            p_low_resolution),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1.0, synchronize_channels=False,
                                       p_per_channel=1.0, p_retain_stats=1.0), p_gamma_inverted),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0.0, synchronize_channels=False,
                                       p_per_channel=1.0, p_retain_stats=1.0), p_gamma),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=tuple(mirror_axes)))
    if deep_supervision_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales=[list(s) for s in deep_supervision_scales]))
    return ComposeTransforms(transforms)


def build_validation_transforms(patch_size: Sequence[int],
                                deep_supervision_scales: Sequence[Sequence[float]] | None = None) -> ComposeTransforms:
    """The validation pipeline: no augmentation, only a centre crop to ``patch_size`` and deep-supervision targets.

    The crop is the identity when the validation sampler already hands over patch-sized regions.
    """
    _check_settings(patch_size, (), (1.0, 1.0), {})
    transforms: list = [SpatialTransform(tuple(int(s) for s in patch_size), patch_center_dist_from_border=0,
                                         random_crop=False, p_rotation=0.0, p_scaling=0.0, p_elastic_deform=0.0)]
    if deep_supervision_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales=[list(s) for s in deep_supervision_scales]))
    return ComposeTransforms(transforms)


def sampling_region_size(patch_size: Sequence[int], anisotropic: bool, rotation_deg: float = 30.0,
                         max_scale: float = 1.4) -> tuple[int, ...]:
    """The ``(z, y, x)`` size of the region the sampler should cut so that augmentation stays inside it.

    It is the bounding box of the patch enlarged by ``max_scale`` (in-plane only when
    ``anisotropic`` or the patch is one slice) and rotated by up to ``rotation_deg`` about each
    allowed axis (z only in those cases), the angles searched on a grid. Each axis grows by an even number of voxels so
    an unrotated patch sits exactly on the voxel grid. A smaller region only means that extreme
    rotations show some zero padding; the sampler pads regions that reach past the case.
    """
    _check_settings(patch_size, (), (1.0, max(1.0, max_scale)), {})
    anisotropic = anisotropic or int(patch_size[Z_AXIS]) == 1
    scale = np.full(3, max(1.0, max_scale))
    if anisotropic:
        scale[Z_AXIS] = 1.0
    extent = np.asarray(patch_size, dtype=float) * scale
    limit = math.radians(min(abs(rotation_deg), 180.0))
    steps = np.linspace(-limit, limit, 91 if anisotropic else 13)
    zero = np.zeros(1)
    grids = np.meshgrid(steps, zero, zero) if anisotropic else np.meshgrid(steps, steps, steps)
    angles = np.stack([g.ravel() for g in grids], axis=1)
    # the same rotation composition SpatialTransform uses; scaling already sits in `extent`
    widths = [np.abs(create_affine_matrix_3d(a, np.ones(3))) @ extent for a in angles]
    region = np.ceil(np.max(widths, axis=0) - 1e-6).astype(int)
    region = np.maximum(region, np.asarray(patch_size))
    region += (region - np.asarray(patch_size)) % 2
    return tuple(int(r) for r in region)
