"""Run the augmentation pipeline over batches in background worker processes, and always stop them.

A batch loader (a batchgenerators ``DataLoader`` with ``infinite=True``, or any iterator) yields
dictionaries ``{"data": (b, c, z, y, x) float array, "seg": (b, k, z, y, x) integer array, ...}``
(numpy or torch). :class:`PerSampleTransform` runs a batchgeneratorsv2 per-sample pipeline on each
sample and stacks the results into ``{"data": float32 tensor, "target": int16 tensor (or a list
of them, one per deep-supervision output), ...}``; other keys pass through unchanged.
:func:`background_augmenter` runs loader and pipeline in worker processes (batchgenerators'
``NonDetMultiThreadedAugmenter``) or, with ``num_workers=0``, in the calling process.

Seeding. Each worker seeds numpy's and torch's global RNGs with its own seed, derived from the run
seed by :func:`worker_seeds`; the loader's sampling and every augmentation draw from those. Batches
of several workers arrive in whatever order the workers finish, so a run is reproducible batch for
batch only with ``num_workers`` 0 or 1. With 0, nothing is reseeded: the pipeline draws from the
caller's global RNGs, which the trainer seeds and saves in its checkpoints.

Clean stops. The context manager stops the workers when its block ends for any reason (also an
exception or Ctrl-C), and each worker exits by itself within about a second when the training
process dies (e.g. SIGKILL), so a killed run leaves no orphans. Workers are forked on Linux; on a
platform that spawns them, loader and pipeline must be picklable (the pipelines built by
:mod:`liverseg.training.augmentation` are).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

log = logging.getLogger(__name__)

_PARENT_POLL_SECONDS = 0.5
_TENSOR_KEYS = ("data", "target")  # what PerSampleTransform makes; other keys pass through as the loader gave them


class PerSampleTransform:
    """Batch-level callable (batchgenerators v1 style) that applies a per-sample pipeline and stacks the results."""

    def __init__(self, transforms: BasicTransform) -> None:
        self.transforms = transforms

    def __call__(self, **batch: Any) -> dict[str, Any]:
        # one copy we own: transforms work in place, and the loader's arrays may be shared or memory-mapped
        data = torch.as_tensor(batch.pop("data")).to(torch.float32, copy=True)
        seg = batch.pop("seg", None)
        seg = torch.as_tensor(seg).to(torch.int16, copy=True) if seg is not None else None
        images, targets = [], []
        with torch.no_grad():
            for b in range(data.shape[0]):
                sample = {"image": data[b]}
                if seg is not None:
                    sample["segmentation"] = seg[b]
                out = self.transforms(**sample)
                images.append(out["image"])
                targets.append(out.get("segmentation"))
        result = {"data": torch.stack(images), **batch}
        if seg is not None:
            if isinstance(targets[0], (list, tuple)):
                result["target"] = [torch.stack([t[i] for t in targets]) for i in range(len(targets[0]))]
            else:
                result["target"] = torch.stack(targets)
        return result


class _NumpyOut:
    """Hand batches across the process boundary as numpy arrays.

    torch sends tensors between processes as shared memory whose file descriptor the sending
    worker must still be alive to pass on; a worker stopping while its last batch is in flight then
    breaks the receiving thread. numpy arrays travel as plain bytes through the queue's pipe.
    """

    def __init__(self, batch_transform: PerSampleTransform) -> None:
        self.batch_transform = batch_transform

    def __call__(self, **batch: Any) -> dict[str, Any]:
        out = self.batch_transform(**batch)
        return {k: _map_tensors(v, torch.Tensor.numpy) if k in _TENSOR_KEYS else v for k, v in out.items()}


class _TorchIn:
    """Iterator over a worker augmenter's batches with the numpy arrays turned back into (optionally pinned) tensors."""

    def __init__(self, augmenter: NonDetMultiThreadedAugmenter, pin_memory: bool) -> None:
        self.augmenter = augmenter
        self.pin = pin_memory and torch.cuda.is_available()

    def __iter__(self) -> "_TorchIn":
        return self

    def __next__(self) -> dict[str, Any]:
        def to_torch(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(a)
            return t.pin_memory() if self.pin else t
        batch = next(self.augmenter)
        return {k: _map_tensors(v, to_torch, np.ndarray) if k in _TENSOR_KEYS else v for k, v in batch.items()}


def _map_tensors(item: Any, function: Any, kind: type = torch.Tensor) -> Any:
    """Apply ``function`` to a ``kind`` object or to each one in a list (deep-supervision targets)."""
    if isinstance(item, list):
        return [_map_tensors(v, function, kind) for v in item]
    return function(item) if isinstance(item, kind) else item


def worker_seeds(seed: int | None, num_workers: int, stream: int = 0) -> list[int]:
    """Distinct 31-bit seeds for ``num_workers`` workers, derived from the run ``seed`` (fresh entropy if None).

    ``stream`` separates independent uses of one run seed, e.g. the epoch a resumed run restarts
    its workers at, or training versus validation loaders.
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(stream,)) if seed is not None else np.random.SeedSequence()
    return [int(child.generate_state(1)[0] & 0x7FFFFFFF) for child in sequence.spawn(num_workers)]


class _WorkerLoader:
    """The user's loader as a worker sees it: one torch thread, and exit when the parent process disappears.

    batchgenerators calls ``set_thread_id`` once in each worker before the first batch: the hook
    for per-worker setup. Everything else is forwarded to the wrapped loader.
    """

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._parent_pid = os.getpid()

    def set_thread_id(self, thread_id: int) -> None:
        torch.set_num_threads(1)
        _watch_parent(self._parent_pid)
        if hasattr(self._loader, "was_initialized"):
            self._loader.was_initialized = False  # each worker re-initialises its own copy
        if hasattr(self._loader, "set_thread_id"):
            self._loader.set_thread_id(thread_id)

    def __iter__(self) -> "_WorkerLoader":
        return self

    def __next__(self) -> Any:
        return next(self._loader)

    def __getattr__(self, name: str) -> Any:
        if "_loader" not in self.__dict__:  # during unpickling in a spawned worker
            raise AttributeError(name)
        return getattr(self._loader, name)


def _watch_parent(main_pid: int) -> None:
    """In a worker, start a daemon thread that ends the process as soon as the training process is gone.

    Two signs, checked every half second: the worker was re-parented (its parent, the training
    process when workers are forked or spawned, died), or the training process no longer runs (under
    the forkserver start method the parent is multiprocessing's fork server, which stays alive as
    long as any worker does).
    """
    if os.getpid() == main_pid:  # in-process use: nothing to watch
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent and not _process_gone(main_pid):
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(0)  # nobody will read our batches, and no state needs flushing

    threading.Thread(target=watch, name="liverseg-parent-watch", daemon=True).start()


def _process_gone(pid: int) -> bool:
    """True if process ``pid`` has ended (also when it is a zombie nobody has reaped yet, on Linux)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def background_augmenter(loader: Any, transforms: BasicTransform, num_workers: int,
                         num_cached_per_worker: int = 2, seed: int | None = None, seed_stream: int = 0,
                         pin_memory: bool = False) -> Iterator[Iterator[dict[str, Any]]]:
    """Yield an endless iterator of augmented batches; stop the workers when the ``with`` block ends.

    ``num_workers`` processes each draw batches from their own copy of ``loader`` (which must be
    endless, e.g. ``DataLoader(..., infinite=True)``) and augment them with ``transforms``;
    ``num_workers=0`` does the work in this process when a batch is asked for (for debugging and
    bit-exact runs). ``seed`` and ``seed_stream`` give each worker its seed (:func:`worker_seeds`).
    ``pin_memory`` pins batches for fast host-to-GPU copies when CUDA is available.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if getattr(loader, "infinite", True) is False:
        raise ValueError("background workers need an endless loader: create the DataLoader with infinite=True")
    batch_transform = PerSampleTransform(transforms)
    if num_workers == 0:
        yield SingleThreadedAugmenter(loader, batch_transform)
        return
    seeds = worker_seeds(seed, num_workers, seed_stream)
    augmenter = NonDetMultiThreadedAugmenter(_WorkerLoader(loader), _NumpyOut(batch_transform), num_workers,
                                             num_cached=max(1, num_cached_per_worker * num_workers),
                                             seeds=seeds, pin_memory=False)
    log.debug("augmentation workers: %d, seeds %s", num_workers, seeds)
    try:
        augmenter._start()
        yield _TorchIn(augmenter, pin_memory)
    finally:
        augmenter._finish()
        log.debug("augmentation workers stopped")


def worker_pids(batches: Any) -> Sequence[int]:
    """Process ids of the workers behind an iterator from :func:`background_augmenter` (empty in-process)."""
    augmenter = getattr(batches, "augmenter", None)
    return [p.pid for p in getattr(augmenter, "_processes", [])]
