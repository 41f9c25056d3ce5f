"""The candidates of model selection: each pipeline, and every ensemble of two or more pipelines.

A candidate's label map of a case comes from the cross-validation predictions
(:mod:`liverseg.selection.crossval`): a single pipeline's is its own ``<case>.nii.gz`` (its combine
rule's labels: for ``dual_binary`` the thresholds of its two models, which are not always the
argmax of its merged probabilities); an ensemble's is the argmax of the mean of its members'
``<case>.npz`` label probabilities, what :func:`liverseg.inference.predictor.average_combined`
does at prediction time. All arrays are in the canonical ``(z, y, x)`` layout.
"""
from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from liverseg.errors import LiversegError
from liverseg.io.atomic import atomic_output
from liverseg.io.images import read_image
from liverseg.selection.crossval import case_files


@dataclass(frozen=True)
class Candidate:
    """One pipeline (one member) or an ensemble of pipelines, with their cross-validation folders."""

    members: tuple[str, ...]
    folders: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not self.members or len(self.members) != len(self.folders) or len(set(self.members)) != len(self.members):
            raise ValueError(f"a candidate needs distinct members, one folder each; got {self.members}, {self.folders}")

    @property
    def name(self) -> str:
        """The members joined by ``+`` (``multiclass+dual_binary``)."""
        return "+".join(self.members)

    @property
    def is_ensemble(self) -> bool:
        """Whether the candidate averages several pipelines."""
        return len(self.members) > 1

    def probabilities(self, case: str) -> np.ndarray:
        """Label probabilities ``(labels, z, y, x)`` float32 of ``case``: the members' saved ones, averaged."""
        total = None
        for folder in self.folders:
            loaded = load_probabilities(case_files(folder, case)["probabilities"])
            if total is not None and loaded.shape != total.shape:
                raise LiversegError(f"{folder}: {case}.npz has shape {loaded.shape} but another member's has "
                                    f"{total.shape}; delete the crossval folders and run again")
            total = loaded if total is None else np.add(total, loaded, out=total)
        if len(self.folders) > 1:
            total /= len(self.folders)
        return total

    def label(self, case: str, cache: Path | None = None) -> np.ndarray:
        """The label map ``(z, y, x)`` uint8 of ``case`` before post-processing (module docstring).

        With ``cache`` (a folder), an ensemble's label map is saved there the first time and read
        back afterwards, so trying several post-processing lists does not average again.
        """
        if not self.is_ensemble:
            path = case_files(self.folders[0], case)["label"]
            try:
                return read_image(path)[0].astype(np.uint8, copy=False)
            except (OSError, RuntimeError) as e:
                raise LiversegError(f"{path}: cannot be read ({e}); delete it and run again to predict it anew") from None
        cached = None if cache is None else Path(cache) / f"{case}.npy"
        if cached is not None and cached.is_file():
            return np.load(cached)
        label = self.probabilities(case).argmax(0).astype(np.uint8)
        if cached is not None:
            with atomic_output(cached) as tmp:
                np.save(tmp, label)
        return label


def load_probabilities(path: Path) -> np.ndarray:
    """The ``probabilities`` array of a cross-validation ``.npz`` as float32."""
    try:
        with np.load(path) as content:
            return content["probabilities"].astype(np.float32)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise LiversegError(f"{path}: cannot be read as cross-validation probabilities ({e}); delete it and run again "
                            "to predict it anew") from None


def make_candidates(folders: dict[str, Path], ensembles: bool = True) -> list[Candidate]:
    """Each pipeline of ``folders`` (name -> crossval folder), then every ensemble of two or more, smaller first."""
    names = list(folders)
    sizes = range(1, len(names) + 1) if ensembles else range(1, 2)
    return [Candidate(tuple(c), tuple(folders[n] for n in c)) for k in sizes for c in itertools.combinations(names, k)]

