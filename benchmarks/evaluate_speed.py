"""How long liverseg_evaluate takes on full-size phantom cases (prints timings; not a test).

References are the labels of a phantom dataset (256-512 in-plane, 40-100 slices); predictions are
perturbed copies: the liver eroded in-plane and shifted by one column, the smallest lesion dropped
and a false-positive blob added, so that every metric has real work to do.

    .venv/bin/python benchmarks/evaluate_speed.py --cases 20 --workers 2
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from liverseg.data.phantom import generate_dataset
from liverseg.evaluation.evaluate import evaluate_folders
from liverseg.evaluation.metrics import evaluate_case
from liverseg.io.images import read_image, write_image


def perturb(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect prediction of ``label``."""
    liver = ndimage.binary_erosion(label > 0, structure=np.ones((1, 3, 3), bool))
    liver = np.roll(liver, 1, axis=2)
    tumour = np.roll(label == 2, 1, axis=2) & liver
    components, count = cc3d.connected_components(tumour, connectivity=26, return_N=True)
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        tumour[components == 1 + int(np.argmin(sizes))] = False
    out = liver.astype(np.uint8)
    out[tumour] = 2
    z, y, x = (int(rng.integers(0, n - 6)) for n in label.shape)
    out[z:z + 5, y:y + 5, x:x + 5] = 2  # false positive
    return out


def make_predictions(labels: Path, predictions: Path, seed: int = 0) -> None:
    """Write a perturbed copy of every label file into ``predictions``."""
    rng = np.random.default_rng(seed)
    predictions.mkdir(parents=True, exist_ok=True)
    for path in sorted(labels.glob("*.nii.gz")):
        label, geometry = read_image(path)
        write_image(perturb(label, rng), geometry, predictions / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--size", default="full")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="reuse or keep the generated data here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="liverseg_evaluate_speed_"))
    dataset, predictions = workdir / "Dataset900_EvalSpeed", workdir / "predictions"
    if not (dataset / "dataset.json").is_file():
        start = time.perf_counter()
        generate_dataset(dataset, args.cases, seed=0, size=args.size, num_workers=args.workers)
        print(f"generated {args.cases} {args.size} phantom cases in {time.perf_counter() - start:.1f} s")
    if not predictions.is_dir():
        start = time.perf_counter()
        make_predictions(dataset / "labelsTr", predictions)
        print(f"wrote perturbed predictions in {time.perf_counter() - start:.1f} s")
    labels = sorted((dataset / "labelsTr").glob("*.nii.gz"))
    shapes = [read_image(p)[0].shape for p in labels]
    print(f"{len(labels)} cases, shapes (z, y, x) from {min(shapes)} to {max(shapes)}")

    reference, geometry = read_image(labels[0])
    prediction, _ = read_image(predictions / labels[0].name)
    for profile in ("atlas", "default"):
        for threads in (1, 2):
            start = time.perf_counter()
            evaluate_case(reference, prediction, geometry.spacing, profile=profile, threads=threads)
            print(f"evaluate_case {labels[0].name} {reference.shape}, profile {profile}, {threads} edt thread(s): "
                  f"{time.perf_counter() - start:.2f} s")

    for workers, lesions in ((1, False), (args.workers, False), (args.workers, True)):
        start = time.perf_counter()
        summary = evaluate_folders(dataset, predictions, profile="atlas", num_workers=workers, lesions=lesions)
        elapsed = time.perf_counter() - start
        print(f"evaluate_folders: {summary['num_cases']} cases, {workers} worker(s), lesions {'on' if lesions else 'off'}: "
              f"{elapsed:.1f} s ({elapsed / summary['num_cases']:.2f} s per case)")
    print(f"liver Dice {summary['metrics']['liver_dice']['mean']:.3f}, tumour Dice {summary['metrics']['tumor_dice']['mean']:.3f}")
    print(f"data in {workdir}")


if __name__ == "__main__":
    main()
