"""The preview montage shows each case with its liver and tumour outlines."""
from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from liverseg.data.phantom import generate_dataset
from liverseg.data.phantom_preview import LIVER_COLOUR, TUMOUR_COLOUR, write_preview
from liverseg.errors import LiversegError
from liverseg.io.dataset import RawDataset
from liverseg.io.images import read_image


def _pixels_of(png: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int(np.count_nonzero(np.all(np.abs(png[..., :3] - rgb) < 0.12, axis=-1)))


def test_preview_shows_images_and_outlines(tmp_path):
    root = generate_dataset(tmp_path / "Phantom", 4, seed=0, size="tiny")
    png_path = write_preview(root, root / "preview.png", max_cases=4)
    png = matplotlib.image.imread(png_path)
    assert png.shape[0] > 200 and png.shape[1] > 400
    grey = png[..., :3].mean(axis=-1)
    assert grey.std() > 0.1, "the montage is not a blank page"
    assert _pixels_of(png, LIVER_COLOUR) > 50
    dataset = RawDataset(root)
    with_tumour = sum((read_image(dataset.label_file(c))[0] == 2).any() for c in dataset.training_cases())
    assert with_tumour > 0
    assert _pixels_of(png, TUMOUR_COLOUR) > 5
    assert not list(root.glob(".tmp*")), "no temporary file is left behind"


def test_preview_of_an_empty_dataset_is_refused(tmp_path):
    root = generate_dataset(tmp_path / "Phantom", 1, size="tiny")
    for path in (root / "imagesTr").iterdir():
        path.unlink()
    with pytest.raises(LiversegError, match="no training cases"):
        write_preview(root, tmp_path / "p.png")
