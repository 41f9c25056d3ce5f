"""Endless batches of training regions from the memory-mapped preprocessed cases of one model.

:class:`PatchLoader` is a batchgenerators ``DataLoader`` (``infinite=True``), so
:func:`liverseg.training.background.background_augmenter` can run it in worker processes. Each
batch picks ``batch_size`` cases uniformly with replacement (nnU-Net's rule), the kinds of centres
for the whole batch at once (:func:`liverseg.training.sampler.draw_kinds`: stratified, so the
plan's ratios hold over the batch, not all-or-nothing), and cuts one region per case::

    {"data": float32 (B, C, *region), "seg": uint8 (B, S, *region),
     "keys": [case ids], "kinds": [centre kinds], "centres": [(z, y, x) region centres in the case]}

``seg`` channel 0 is the target in the model's labels (:func:`~liverseg.training.sampler.map_labels`);
when the model has ``loss_mask_dilation_mm``, channel 1 is the loss mask (0/1), so every spatial
augmentation moves the mask together with the labels. The mask is computed once per case on the
whole volume (:func:`~liverseg.training.sampler.dilated_mask`) and kept as bits; it is 0 beyond the
case (and beyond the cascade crop), where there is only padding.

Cascade stage 2 (``model.roi``): each sample first crops its case to the ground-truth box of
``roi.labels`` grown by ``roi.margin_mm`` and moved by a random amount in ``[-jitter_mm, jitter_mm]``
per side (clipped to the case), and the crop then *is* the case: centres are drawn inside it and
the region is padded beyond it, as the predictor pads the crop it gets from stage 1.

Randomness comes from the loader's own ``numpy.random.Generator``, seeded from ``(seed, stream,
worker)``: worker 0 and the in-process loader draw the same sequence, the other workers their own.

Several training processes (DDP, ``shard=(rank, processes)``): each process' loader makes its
slice of a global batch of ``batch_size * processes`` patches. The kinds of centres of the global
batch are drawn with a generator seeded without the rank, the same in every process, and each
process takes its slice, so the union follows the plan's ratios as one batch would; cases and
centres come from a generator seeded with the rank, so the processes sample different patches.
The slices of one global draw meet in the same step when each process has 0 or 1 augmentation
worker; with more, batches arrive in the order the workers finish and the ratios hold over a few
steps instead.
Case arrays are opened memory-mapped on first use and the handles kept per process (never
pickled to the workers: each opens its own).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from batchgenerators.dataloading.data_loader import DataLoader

from liverseg.errors import LiversegError
from liverseg.planning.plans import ModelPlan
from liverseg.preprocessing.case import case_files, load_preprocessed_case
from liverseg.preprocessing.locations import Locations, load_locations
from liverseg.preprocessing.run import preprocessed_cases
from liverseg.training.sampler import (
    PackedMask,
    choose_centre,
    cut_region,
    dilated_mask,
    draw_kinds,
    label_box,
    map_labels,
    overlap,
)

log = logging.getLogger(__name__)

Box = tuple[tuple[int, int], ...]
# First spawn key of the loaders' seeds: keeps them apart from the augmentation workers' seeds of the same run seed.
_LOADER_KEY = 0x6C6F6164
# Spawn keys of a sharded loader: the rank's own generator, and the kinds generator all ranks share.
_RANK_KEY, _KINDS_KEY = 0x72616E6B, 0x6B696E64


@dataclass(frozen=True)
class _Case:
    data: np.ndarray
    seg: np.ndarray
    locations: Locations
    spacing: tuple[float, float, float]
    roi_box: Box | None
    mask: PackedMask | None


class Sample(NamedTuple):
    """One training region: image ``(C, *region)``, label channels ``(S, *region)``, and where it came from.

    ``centre`` is the region's centre in the case's voxels, ``box`` the part of the case it was
    cut from (``[start, stop)`` per axis: the cascade crop, or the whole case).
    """

    image: np.ndarray
    seg: np.ndarray
    kind: str
    centre: tuple[int, int, int]
    box: Box


class PatchLoader(DataLoader):
    """Batches of regions of ``region_size`` ``(z, y, x)`` from ``cases`` in ``folder``, as ``model`` says.

    ``region_size`` is the patch plus what augmentation needs around it
    (:func:`liverseg.training.augmentation.sampling_region_size`; the patch itself for
    validation). Centres are placed for the model's patch size. ``seed`` and ``stream`` make the
    sampling reproducible (module docstring); ``batch_size`` defaults to the model's. ``shard``
    ``(rank, processes)`` makes this loader one process' part of a global batch (module docstring;
    ``batch_size`` is then the part's size).
    """

    def __init__(self, folder: str | Path, cases: Sequence[str], model: ModelPlan, region_size: Sequence[int],
                 seed: int, stream: int = 0, batch_size: int | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        batch_size = int(batch_size if batch_size is not None else model.batch_size)
        super().__init__(list(cases), batch_size, num_threads_in_multithreaded=1, infinite=True)
        self.folder = Path(folder)
        self.cases = list(cases)
        self.indices = list(range(len(self.cases)))
        self.model = model
        self.patch_size = tuple(int(p) for p in model.topology.patch_size)
        self.region_size = tuple(int(r) for r in region_size)
        if len(self.region_size) != 3 or any(r < p for r, p in zip(self.region_size, self.patch_size)):
            raise ValueError(f"region size {list(region_size)} must be (z, y, x) and at least the patch size "
                             f"{list(self.patch_size)}")
        self.seed, self.stream = int(seed), int(stream)
        if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard must be (rank, processes) with 0 <= rank < processes, got {shard}")
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        check_cases(self.folder, self.cases)
        self._cache: dict[str, _Case] = {}
        self.rng = self._generator(0)
        self.kinds_rng = self._kinds_generator(0)

    def _generator(self, worker: int) -> np.random.Generator:
        key: tuple[int, ...] = (_LOADER_KEY, self.stream, worker)
        if self.shard is not None:
            key += (_RANK_KEY, self.shard[0])
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def _kinds_generator(self, worker: int) -> np.random.Generator | None:
        if self.shard is None:
            return None
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_KINDS_KEY, self.stream, worker)))

    def set_thread_id(self, thread_id: int) -> None:
        """Called once in each worker process: give the worker its own random stream."""
        super().set_thread_id(thread_id)
        self.rng = self._generator(thread_id)
        self.kinds_rng = self._kinds_generator(thread_id)

    def batch_kinds(self) -> list[str]:
        """The kinds of centres of the next batch (:func:`~liverseg.training.sampler.draw_kinds`; a slice when sharded)."""
        if self.shard is None:
            return draw_kinds(self.model.sampling, self.batch_size, self.rng)
        index, processes = self.shard
        kinds = draw_kinds(self.model.sampling, self.batch_size * processes, self.kinds_rng)
        return kinds[index * self.batch_size:(index + 1) * self.batch_size]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}  # memory maps would be pickled as whole arrays
        return state

    def generate_train_batch(self) -> dict[str, Any]:
        """One batch: ``batch_size`` cases drawn uniformly, one region each (module docstring)."""
        picks = self.rng.integers(len(self.cases), size=self.batch_size)
        kinds = self.batch_kinds()
        samples = [self.sample(self.cases[i], kind) for i, kind in zip(picks, kinds)]
        return {
            "data": np.stack([s.image for s in samples]),
            "seg": np.stack([s.seg for s in samples]),
            "keys": [self.cases[i] for i in picks],
            "kinds": [s.kind for s in samples],
            "centres": [s.centre for s in samples],
        }

    def sample(self, case_id: str, kind: str | None = None) -> Sample:
        """One region of ``case_id`` around a centre of ``kind`` (drawn from the plan's probabilities if None)."""
        case = self._open(case_id)
        data, seg, locations = case.data, case.seg, case.locations
        box = tuple((0, n) for n in seg.shape)
        if self.model.roi is not None:
            box = self.roi_crop(case, self.rng)
            window = tuple(slice(lo, hi) for lo, hi in box)
            data, seg = data[(slice(None), *window)], seg[window]
            locations = shift_locations(locations, box)
        centre = choose_centre(locations, self.model.sampling, seg.shape, self.rng, self.patch_size, seg, kind)
        image, labels = cut_region(data, seg, centre.position, self.region_size)
        channels = [map_labels(labels, self.model.learns)]
        position = tuple(int(c + lo) for c, (lo, _) in zip(centre.position, box))
        if case.mask is not None:
            mask = case.mask.cut(position, self.region_size)
            if self.model.roi is not None:  # nothing counts beyond the crop, which is the case here
                inside = np.zeros_like(mask)
                inside[overlap(seg.shape, centre.position, self.region_size)[1]] = True
                mask &= inside
            channels.append(mask.view(np.uint8))
        return Sample(image, np.stack(channels), centre.kind, position, box)  # type: ignore[arg-type]

    def roi_crop(self, case: _Case, rng: np.random.Generator) -> Box:
        """The cascade crop of one sample: the labels' box grown by the margin, each side jittered, clipped to the case."""
        roi = self.model.roi
        shape = case.seg.shape
        if case.roi_box is None:
            return tuple((0, n) for n in shape)
        box = []
        for (lo, hi), n, s in zip(case.roi_box, shape, case.spacing):
            jitter = rng.uniform(-roi.jitter_mm, roi.jitter_mm, size=2) if roi.jitter_mm > 0 else np.zeros(2)
            start = lo - int(round((roi.margin_mm + jitter[0]) / s))
            stop = hi + int(round((roi.margin_mm + jitter[1]) / s))
            start = min(max(start, 0), n - 1)
            box.append((start, min(max(stop, start + 1), n)))
        return tuple(box)

    def _open(self, case_id: str) -> _Case:
        case = self._cache.get(case_id)
        if case is None:
            data, seg, properties = load_preprocessed_case(self.folder, case_id, mmap_mode="r")
            spacing = tuple(float(s) for s in properties.get("spacing_after_resampling", properties.get("spacing_target")))
            roi_box = None
            if self.model.roi is not None:
                roi_box = label_box(seg, self.model.roi.labels)
                if roi_box is None:
                    log.warning("%s: no voxel of labels %s, so the cascade crop is the whole case", case_id,
                                list(self.model.roi.labels))
            mask = None
            if self.model.loss_mask_dilation_mm is not None:
                mask = PackedMask(dilated_mask(seg, self.model.loss_mask_labels, self.model.loss_mask_dilation_mm, spacing))
            locations = load_locations(case_files(self.folder, case_id)["locations"])
            case = self._cache[case_id] = _Case(data, seg, locations, spacing, roi_box, mask)  # type: ignore[arg-type]
        return case


def shift_locations(locations: Locations, box: Box) -> Locations:
    """The locations inside ``box`` (``[start, stop)`` per axis), in the box's coordinates; lesions left empty are dropped."""
    low = np.array([lo for lo, _ in box])
    high = np.array([hi for _, hi in box])

    def inside(coords: np.ndarray) -> np.ndarray:
        keep = np.all((coords >= low) & (coords < high), axis=1)
        return (coords[keep] - low).astype(coords.dtype)

    lesions = [inside(c) for c in locations.lesions]
    kept = [i for i, c in enumerate(lesions) if len(c)]
    return Locations(classes={k: inside(c) for k, c in locations.classes.items()}, lesions=[lesions[i] for i in kept],
                     lesion_sizes=np.asarray(locations.lesion_sizes)[kept])


def check_cases(folder: Path, cases: Sequence[str]) -> None:
    """Stop with a clear message when ``folder`` lacks some of ``cases`` or their labels."""
    if not cases:
        raise LiversegError(f"{folder}: no cases to sample patches from; check the fold's case lists in splits.json")
    if not folder.is_dir():
        raise LiversegError(f"{folder}: no preprocessed data; run liverseg_plan (it preprocesses the dataset)")
    missing = sorted(set(cases) - set(preprocessed_cases(folder)))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise LiversegError(f"{folder}: preprocessed case(s) {shown} not found; run liverseg_plan to preprocess the dataset "
                            "(or check splits.json)")
    no_label = [c for c in cases if not case_files(folder, c)["seg"].is_file()]
    if no_label:
        raise LiversegError(f"{folder}: case(s) {', '.join(no_label[:5])} have no label map (_seg.npy); "
                            "training needs labels; preprocess the dataset again with its labelsTr")

