"""Background augmentation workers produce batches and never outlive their run."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.dataloading.data_loader import DataLoader

from liverseg.training.augmentation import build_training_transforms, build_validation_transforms
from liverseg.training.background import background_augmenter, worker_pids, worker_seeds

PATCH = (8, 24, 24)
REGION = (8, 32, 32)


class RandomLoader(DataLoader):
    """An endless loader of random volumes: (b, 1, z, y, x) images and (b, 1, z, y, x) labels 0..2."""

    def __init__(self, batch_size: int = 2, infinite: bool = True) -> None:
        super().__init__(None, batch_size, 1, infinite=infinite)
        self.indices = [0]

    def generate_train_batch(self) -> dict:
        image = np.random.normal(size=(self.batch_size, 1, *REGION)).astype(np.float32)
        seg = np.digitize(image, [-0.5, 0.5]).astype(np.int16)
        return {"data": image, "seg": seg, "keys": [f"case{np.random.randint(1000)}" for _ in range(self.batch_size)]}


class FailingLoader(RandomLoader):
    def generate_train_batch(self) -> dict:
        raise RuntimeError("broken case file")


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a dead child nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _wait_dead(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _pipeline():
    return build_training_transforms(PATCH, True, mirror_axes=(1, 2), p_rotation=0.5, p_scaling=0.5,
                                     bias_field=True, slice_thickness=True)


def test_two_workers_produce_batches_and_stop():
    with background_augmenter(RandomLoader(), _pipeline(), num_workers=2, seed=1) as batches:
        pids = worker_pids(batches)
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        received = [next(batches) for _ in range(6)]
    for batch in received:
        assert batch["data"].shape == (2, 1, *PATCH) and batch["data"].dtype == torch.float32
        assert batch["target"].shape == (2, 1, *PATCH) and batch["target"].dtype == torch.int16
        assert len(batch["keys"]) == 2 and all(k.startswith("case") for k in batch["keys"])
    # distinct worker seeds: no two batches are the same
    firsts = {float(b["data"].flatten()[0]) for b in received}
    assert len(firsts) == len(received)
    assert multiprocessing.active_children() == []
    assert not any(_alive(p) for p in pids)


def test_workers_stop_when_the_consuming_loop_raises():
    with pytest.raises(ValueError, match="loss is NaN"):
        with background_augmenter(RandomLoader(), _pipeline(), num_workers=2, seed=2) as batches:
            pids = worker_pids(batches)
            next(batches)
            raise ValueError("loss is NaN")
    assert multiprocessing.active_children() == []
    assert not any(_alive(p) for p in pids)


def test_a_failing_loader_surfaces_as_an_error_not_a_hang():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no longer alive"):
        with background_augmenter(FailingLoader(), _pipeline(), num_workers=2, seed=3) as batches:
            next(batches)
    assert time.monotonic() - start < 15
    assert multiprocessing.active_children() == []


def test_one_worker_is_reproducible_from_the_seed():
    def first_batches(seed):
        with background_augmenter(RandomLoader(), _pipeline(), num_workers=1, seed=seed) as batches:
            return [next(batches) for _ in range(3)]

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for x, y in zip(a, b):
        assert torch.equal(x["data"], y["data"]) and torch.equal(x["target"], y["target"])
    assert not torch.equal(a[0]["data"], c[0]["data"])


def test_in_process_augmentation_uses_the_callers_rng():
    def first_batches():
        np.random.seed(7)
        torch.manual_seed(7)
        with background_augmenter(RandomLoader(), _pipeline(), num_workers=0) as batches:
            assert worker_pids(batches) == []
            return [next(batches) for _ in range(2)]

    a, b = first_batches(), first_batches()
    for x, y in zip(a, b):
        assert torch.equal(x["data"], y["data"]) and torch.equal(x["target"], y["target"])
    assert a[0]["data"].shape == (2, 1, *PATCH)


def test_deep_supervision_targets_are_stacked_per_output():
    scales = [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]]
    pipeline = build_validation_transforms(PATCH, deep_supervision_scales=scales)
    with background_augmenter(RandomLoader(batch_size=3), pipeline, num_workers=1, seed=0) as batches:
        target = next(batches)["target"]
    assert [tuple(t.shape) for t in target] == [(3, 1, 8, 24, 24), (3, 1, 8, 12, 12), (3, 1, 4, 6, 6)]
    assert all(t.dtype == torch.int16 for t in target)


def test_the_loaders_arrays_are_left_unchanged():
    # transforms work in place; a patch cut without interpolation is a view of the loader's array, which may be
    # a cached or memory-mapped case: the batch transform must work on its own copy
    pipeline = build_training_transforms(REGION, True, mirror_axes=(), p_rotation=0, p_scaling=0, p_brightness=1,
                                         p_gamma=1, bias_field=True, p_bias_field=1)
    data = np.ones((2, 1, *REGION), dtype=np.float32)
    seg = np.ones((2, 1, *REGION), dtype=np.int16)
    with background_augmenter(iter([{"data": data, "seg": seg}] * 3), pipeline, num_workers=0) as batches:
        out = next(batches)
    assert not torch.equal(out["data"], torch.ones_like(out["data"]))
    assert (data == 1).all() and (seg == 1).all()


def test_worker_seeds_are_distinct_and_derived_from_the_run_seed():
    seeds = worker_seeds(42, 4)
    assert len(set(seeds)) == 4 and all(0 <= s < 2**31 for s in seeds)
    assert worker_seeds(42, 4) == seeds
    assert worker_seeds(43, 4) != seeds
    assert worker_seeds(42, 4, stream=1) != seeds
    assert worker_seeds(None, 2) != worker_seeds(None, 2)


def test_a_loader_that_ends_is_rejected():
    with pytest.raises(ValueError, match="infinite=True"):
        with background_augmenter(RandomLoader(infinite=False), _pipeline(), num_workers=2):
            pass


SCRIPT = """
import multiprocessing, sys, time
sys.path.insert(0, {tests!r})
from test_background import RandomLoader, _pipeline
from liverseg.training.background import background_augmenter, worker_pids

if __name__ == "__main__":
    multiprocessing.set_start_method({method!r})
    with background_augmenter(RandomLoader(), _pipeline(), num_workers=2, seed=0) as batches:
        next(batches)
        print("PIDS", *worker_pids(batches), flush=True)
        while True:
            next(batches)
            time.sleep(0.05)
"""


def _start_training_like_process(tmp_path: Path, method: str = "fork"):
    script = tmp_path / "train_like.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parent), method=method)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a command started in a terminal
    line = process.stdout.readline()
    assert line.startswith("PIDS"), process.stderr.read()
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    return process, pids


def test_ctrl_c_stops_the_workers(tmp_path):
    process, pids = _start_training_like_process(tmp_path)
    process.send_signal(signal.SIGINT)  # only the parent: the context manager has to stop the workers
    process.wait(timeout=20)
    assert "KeyboardInterrupt" in process.stderr.read()
    assert _wait_dead(pids, timeout=5)


def test_ctrl_c_in_a_terminal_stops_everything(tmp_path):
    process, pids = _start_training_like_process(tmp_path)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group, workers too
    assert process.wait(timeout=20) != 0
    assert _wait_dead(pids, timeout=5)


# Linux's default start method before Python 3.14, and from 3.14 (slower: each worker imports torch afresh)
@pytest.mark.parametrize("method", ["fork", pytest.param("forkserver", marks=pytest.mark.slow)])
def test_workers_exit_when_the_trainer_is_killed(tmp_path, method):
    process, pids = _start_training_like_process(tmp_path, method)
    process.kill()  # SIGKILL: no cleanup code runs in the parent; the workers notice on their own
    process.wait(timeout=10)
    assert _wait_dead(pids, timeout=5)
