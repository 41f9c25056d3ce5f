"""How fast liverseg resamples a 512 x 512 x 80 MRI volume to about 1 mm in-plane (prints timings; not a test).

Compares :func:`liverseg.preprocessing.resample.resample_image` (torch, bicubic in-plane, z kept)
with third-order scipy / scikit-image resampling as nnU-Net does it (per slice for anisotropic
data), and the one-hot label resampling with nnU-Net's per-label linear resampling. Also times the
other per-case primitives (body mask, normalisation, sampler locations) on the same volume.

    .venv/bin/python benchmarks/resample_speed.py [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from liverseg.data.phantom_case import generate_case
from liverseg.preprocessing.locations import compute_locations
from liverseg.preprocessing.normalize import body_mask, normalize
from liverseg.preprocessing.resample import resample_image, resample_label, target_shape

SPACING = (3.0, 0.7, 0.7)
TARGET_SPACING = (3.0, 1.0, 1.0)


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs, in seconds (the least disturbed by other load on the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def scipy_zoom_3d(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Order-3 spline zoom of the whole volume (also interpolates along the unchanged z)."""
    return ndimage.zoom(image, np.array(shape) / image.shape, order=3, mode="nearest", grid_mode=True)


def scipy_zoom_per_slice(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Order-3 spline zoom of each slice, z kept (nnU-Net's separate-z path with scipy)."""
    factors = np.array(shape[1:]) / image.shape[1:]
    return np.stack([ndimage.zoom(s, factors, order=3, mode="nearest", grid_mode=True) for s in image])


def skimage_per_slice(image: np.ndarray, shape: tuple[int, int, int], order: int = 3) -> np.ndarray:
    """nnU-Net's own call: skimage resize per slice, order 3, edge mode, no antialiasing."""
    from skimage.transform import resize

    return np.stack([resize(s, shape[1:], order=order, mode="edge", anti_aliasing=False) for s in image])


def nnunet_label_per_slice(label: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """nnU-Net's label resampling: per label, linear resize of its mask per slice, > 0.5 wins."""
    from skimage.transform import resize

    out = np.zeros(shape, dtype=label.dtype)
    for value in np.unique(label):
        if value == 0:
            continue
        mask = np.stack([resize((s == value).astype(float), shape[1:], order=1, mode="edge", anti_aliasing=False) for s in label])
        out[mask >= 0.5] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    case = generate_case(3, seed=0, size="full")  # a 512 x 512 phantom
    image = np.ascontiguousarray(case.image[:80], dtype=np.float32)
    label = np.ascontiguousarray(case.label[:80])
    shape = target_shape(image.shape, SPACING, TARGET_SPACING)
    print(f"volume {image.shape} at {SPACING} mm -> {shape} at {TARGET_SPACING} mm; torch threads {torch.get_num_threads()}")

    ours = best_time(lambda: resample_image(image[None], shape, order_inplane=3, order_z=0), args.repeats)
    print(f"{'image, liverseg (torch bicubic, z kept)':48s} {ours:7.3f} s")
    baselines = {
        "image, scipy zoom order 3, 3D": lambda: scipy_zoom_3d(image, shape),
        "image, scipy zoom order 3, per slice": lambda: scipy_zoom_per_slice(image, shape),
    }
    try:
        import skimage  # noqa: F401

        baselines["image, skimage resize order 3, per slice (nnU-Net)"] = lambda: skimage_per_slice(image, shape)
    except ImportError:
        print("scikit-image not installed: skipping nnU-Net's exact call")
    for name, function in baselines.items():
        seconds = best_time(function, args.repeats)
        print(f"{name:48s} {seconds:7.3f} s   liverseg is {seconds / ours:6.1f}x faster")

    reference = scipy_zoom_per_slice(image, shape)
    difference = np.abs(resample_image(image[None], shape)[0] - reference)
    print(f"mean |liverseg - scipy per slice| = {difference.mean() / np.ptp(image):.2e} of the intensity range (different cubic kernels)")

    ours_label = best_time(lambda: resample_label(label, shape), args.repeats)
    print(f"{'label, liverseg one-hot linear':48s} {ours_label:7.3f} s")
    try:
        seconds = best_time(lambda: nnunet_label_per_slice(label, shape), args.repeats)
        print(f"{'label, nnU-Net per-label linear per slice':48s} {seconds:7.3f} s   liverseg is {seconds / ours_label:6.1f}x faster")
    except ImportError:
        pass

    back = best_time(lambda: resample_image(np.zeros((3, *shape), np.float32), image.shape, order_inplane=1), args.repeats)
    print(f"{'3 probability maps back to the original grid':48s} {back:7.3f} s")
    print(f"{'body mask':48s} {best_time(lambda: body_mask(image), args.repeats):7.3f} s")
    print(f"{'zscore_foreground normalisation':48s} {best_time(lambda: normalize(image[None], ['zscore_foreground']), args.repeats):7.3f} s")
    print(f"{'sampler locations (classes 1, 2; lesions)':48s} {best_time(lambda: compute_locations(label, [1, 2]), args.repeats):7.3f} s")


if __name__ == "__main__":
    main()
