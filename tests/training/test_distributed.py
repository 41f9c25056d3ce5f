"""Training with several processes (DDP) on the CPU with gloo: a step equals one process on the whole batch,
torchrun runs write one set of files that load in a single process, --continue and --ddp work."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from liverseg.cli.train import main as train_main
from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json
from liverseg.io.dataset import RawDataset
from liverseg.networks import available_networks, build_network
from liverseg.planning.plans import load_plan
from liverseg.training import checkpoint as ckpt
from liverseg.training import distributed
from liverseg.training.deep_supervision import DeepSupervisionLoss
from liverseg.training.losses import build_loss
from liverseg.training.patch_loader import PatchLoader
from liverseg.training.run import train
from liverseg.training.sampler import kind_probabilities
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import build_parts, preprocessed_folder, seed_everything, torch_threads, train_step
from liverseg.training.validation import validate_cases

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)
TORCHRUN_TIMEOUT = 300


@pytest.fixture
def plan(planned, monkeypatch, tmp_path):
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    return load_plan(planned["preprocessed"] / DATASET / "plans.json")


# ---------------------------------------------------------------- without a process group


def test_the_global_batch_splits_evenly_or_is_refused():
    assert distributed.per_rank_batch(4, 2) == 2
    assert distributed.per_rank_batch(2, 2) == 1
    assert distributed.per_rank_batch(3, 1) == 3
    with pytest.raises(LiversegError, match="1 patch.*over 2 processes.*--batch-size 2$"):
        distributed.per_rank_batch(1, 2)
    with pytest.raises(LiversegError, match="5 patch.*--batch-size 4 or 6"):
        distributed.per_rank_batch(5, 2)


def test_each_process_has_its_own_seed_and_rank_0_keeps_the_run_seed():
    seeds = [distributed.rank_seed(11, r) for r in range(4)]
    assert seeds[0] == 11 and len(set(seeds)) == 4
    assert seeds == [distributed.rank_seed(11, r) for r in range(4)]  # deterministic
    assert distributed.rank_seed(12, 1) != seeds[1]
    assert distributed.rank_seed(11, 0, epoch=3) not in seeds  # a continued run's fresh seeds differ from the start's


def test_one_process_runs_as_without_ddp():
    assert not distributed.is_distributed() and distributed.world_size() == 1
    assert distributed.is_main() and distributed.shard() is None
    network = torch.nn.Conv3d(1, 2, 1)
    assert distributed.wrap(network, torch.device("cpu")) is network and distributed.unwrap(network) is network
    counts = torch.arange(6).reshape(3, 2)
    assert distributed.all_reduce_sum(counts) is counts
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.all_gather_objects(5) == [5]
    outputs, target = [torch.ones(2, 2, 4)], torch.zeros(2, 1, 4)
    gathered, same_target, mask = distributed.gather_for_loss(outputs, target, None)
    assert gathered[0] is outputs[0] and same_target is target and mask is None


def test_sharded_loaders_share_the_kinds_of_a_global_batch_and_sample_their_own_patches(plan):
    """Two processes' slices of 2 patches: the 4 together follow the plan's ratios as one batch of 4 would."""
    model = plan.pipeline("multiclass").model("multiclass")  # lesion 0.5, class 1 0.3, random 0.2
    folder = preprocessed_folder(plan, model)
    cases = sorted(p.name[:-4] for p in folder.glob("*.npy") if not p.name.endswith("_seg.npy"))
    patch = model.topology.patch_size
    loaders = [PatchLoader(folder, cases, model, patch, seed=3, batch_size=2, shard=(r, 2)) for r in range(2)]
    probabilities = kind_probabilities(model.sampling)
    # Stratified over the global batch of 4: each kind floor(4p) or ceil(4p) times (by hand: lesion 2, class 1 in {1, 2},
    # random in {0, 1}); two independent batches of 2 could give 0 or 4 lesion patches.
    allowed = {"lesion": {2}, "class_1": {1, 2}, "random": {0, 1}}
    assert set(probabilities) == set(allowed)
    totals = dict.fromkeys(allowed, 0)
    for _ in range(200):
        union = loaders[0].batch_kinds() + loaders[1].batch_kinds()
        for kind in allowed:
            assert union.count(kind) in allowed[kind]
            totals[kind] += union.count(kind)
    for kind, p in probabilities.items():
        assert totals[kind] / 800 == pytest.approx(p, abs=0.05)
    # The processes pick cases and centres with their own generators.
    batches = [loader.generate_train_batch() for loader in loaders]
    assert batches[0]["centres"] != batches[1]["centres"]
    with pytest.raises(ValueError, match="shard"):
        PatchLoader(folder, cases, model, patch, seed=3, batch_size=2, shard=(2, 2))


@pytest.mark.parametrize("name", sorted(available_networks()))
def test_every_parameter_of_every_network_learns_in_training_mode(plan, name):
    """DDP runs with find_unused_parameters=False: every head must reach the deep-supervision loss."""
    model = plan.pipeline("multiclass").model("multiclass")
    network = build_network(name, 1, model.num_classes, **model.topology.network_kwargs())
    network.train()
    outputs = network(torch.randn(1, 1, *model.topology.patch_size))
    target = torch.randint(0, model.num_classes, (1, 1, *model.topology.patch_size))
    DeepSupervisionLoss(build_loss("dice_ce"))(outputs, target).backward()
    silent = [n for n, p in network.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert silent == []


def test_ddp_refuses_what_it_cannot_do(monkeypatch, capsys):
    assert train_main(["-d", DATASET, "-c", "multiclass", "-f", "0", "--ddp", "0"]) == 2
    assert "--ddp must be a number of processes >= 1" in capsys.readouterr().err
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert train_main(["-d", DATASET, "-c", "multiclass", "-f", "0", "--ddp", "2"]) == 2
    assert "already runs under torchrun: leave --ddp out" in capsys.readouterr().err


# ---------------------------------------------------------------- one step on 2 gloo processes


def _batches(model, size: int) -> list[dict]:
    """Two fixed batches with lesions and loss masks of different sizes per sample (masked means, batch Dice)."""
    patch = model.topology.patch_size
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in patch], indexing="ij"))
    generator = torch.Generator().manual_seed(5)
    batches = []
    for step in range(2):
        radius = torch.tensor([3.0 + 2 * b + step for b in range(size)]).view(size, 1, 1, 1, 1)
        distance = torch.from_numpy(np.sqrt((grid ** 2).sum(0)))[None, None]
        batches.append({
            "data": torch.randn(size, 1, *patch, generator=generator) + (distance < radius).float(),
            "target": (distance < radius).to(torch.int64),
            "mask": distance < radius + 3 + 3 * torch.arange(size).view(size, 1, 1, 1, 1),
        })
    return batches


def _part(batch: dict, index: int, processes: int) -> dict:
    size = batch["data"].shape[0] // processes
    return {k: v[index * size:(index + 1) * size] for k, v in batch.items()}


def _fresh_parts(model, settings):
    seed_everything(0)
    return build_parts(model, 1, settings, torch.device("cpu"))


def _steps(parts, batches: list[dict]) -> tuple[list[float], list[dict]]:
    """The trainer's train_step on each batch: the losses and the gradients of each step."""
    losses, gradients = [], []
    for batch in batches:
        losses.append(train_step(parts, batch))
        gradients.append({n: p.grad.clone() for n, p in distributed.unwrap(parts.network).named_parameters()})
    return losses, gradients


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``|actual - expected| / |expected|`` over the whole tensor (rounding grows in the first layers' gradients)."""
    return float((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30))


def _two_processes(worker, *args: object) -> None:
    """Run ``worker(rank, store, *args)`` in 2 processes forked from the test, joined in a gloo group by a file store.

    Fails (instead of hanging) when they do not finish within two minutes.
    """
    store = Path(str(args[-1]) + "_store")
    context = mp.start_processes(_joined, args=(worker, str(store), *args), nprocs=2, start_method="fork", join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 2 minutes")


def _joined(rank: int, worker, store: str, *args: object) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    worker(rank, *args)
    dist.barrier()
    # Leave without tearing the group down: destroying a gloo group in a process forked from a threaded pytest
    # once deadlocked (its worker thread waiting for the GIL while the main thread joined it).
    os._exit(0)


def _step_worker(rank: int, model, settings, batches, out: str) -> None:
    """One of 2 gloo processes: the trainer's own train_step on its part of each batch."""
    parts = _fresh_parts(model, settings)
    parts.network = distributed.wrap(parts.network, parts.device)
    losses, gradients = _steps(parts, [_part(batch, rank, 2) for batch in batches])
    torch.save({"losses": losses, "gradients": gradients, "weights": distributed.unwrap(parts.network).state_dict()},
               f"{out}_{rank}.pt")


def test_a_step_on_two_processes_equals_one_process_on_the_whole_batch(plan, tmp_path):
    """The tumour model (masked loss, batch Dice): losses, gradients and weights of two steps, 2 x 2 patches vs 4.

    With SGD, whose step is linear in the gradient (Adam's first steps are nearly sign(gradient) and
    would hide a wrongly scaled one, and amplify rounding where a gradient is near its epsilon).
    """
    model = plan.pipeline("dual_binary").model("tumour")
    model = dataclasses.replace(model, schedule=dataclasses.replace(model.schedule, optimizer="sgd"))
    settings = TrainSettings.from_overrides(model, precision="fp32", device="cpu", batch_size=4, learning_rate=0.01)
    batches = _batches(model, 4)
    _two_processes(_step_worker, model, settings, batches, str(tmp_path / "rank"))
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in range(2)]
    with torch_threads(1):
        parts = _fresh_parts(model, settings)
        with torch.no_grad():  # a plain per-process loss (the mean of the halves') would not be the global one
            parts.network.train()
            whole = float(parts.loss(parts.network(batches[0]["data"]), batches[0]["target"], batches[0]["mask"]))
            halves = [float(parts.loss(parts.network(p["data"]), p["target"], p["mask"]))
                      for p in (_part(batches[0], 0, 2), _part(batches[0], 1, 2))]
        assert abs(whole - np.mean(halves)) > 1e-3
        reference, gradients = _steps(parts, batches)
    for result in ranks:  # both processes hold the same loss and the same weights
        assert result["losses"] == pytest.approx(reference, rel=1e-5)
        assert result["losses"][0] == pytest.approx(whole, rel=1e-5)
        # Rounding reaches 6e-5 in the second step's gradients; a per-process loss is off by about 1 (100%).
        for step in range(2):
            errors = {name: _relative_error(result["gradients"][step][name], g) for name, g in gradients[step].items()}
            assert max(errors.values()) < 1e-3, (step, max(errors, key=errors.get), max(errors.values()))
        errors = {name: _relative_error(result["weights"][name], w) for name, w in parts.network.state_dict().items()}
        assert max(errors.values()) < 1e-3, (max(errors, key=errors.get), max(errors.values()))


def _refusal_worker(rank: int, out: str) -> None:
    """One of 2 gloo processes with torchrun's variables: what run.train refuses before training."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    messages = []
    for options in ({"seeds": 2}, {"batch_size": 3}, {"batch_size": 1}):
        try:
            train(DATASET, "multiclass", 0, device="cpu", epochs=1, num_workers=0, **options)
            messages.append(None)
        except LiversegError as e:
            messages.append(str(e))
    Path(f"{out}_{rank}.txt").write_text("\n".join(str(m) for m in messages))


def test_several_processes_refuse_seed_selection_and_a_batch_that_does_not_split(plan, tmp_path):
    _two_processes(_refusal_worker, str(tmp_path / "rank"))
    for rank in range(2):
        seeds, odd, small = (tmp_path / f"rank_{rank}.txt").read_text().splitlines()
        assert "cannot run with several torchrun processes" in seeds
        assert "batch of 3 patch(es)" in odd and "--batch-size 2 or 4" in odd
        assert "batch of 1 patch(es)" in small and small.endswith("give --batch-size 2")


# ---------------------------------------------------------------- torchrun, as a user runs it

TRAIN_ARGS = ["-d", DATASET, "-c", "multiclass", "-f", "0", "--iters-per-epoch", "2", "--val-iters", "1", "-np", "0",
              "--device", "cpu"]
FOLD = Path(DATASET) / "multiclass" / "multiclass" / "fold_0"


def _environment(planned, results: Path) -> dict[str, str]:
    return {**os.environ, "LIVERSEG_RAW": str(planned["raw"]), "LIVERSEG_PREPROCESSED": str(planned["preprocessed"]),
            "LIVERSEG_RESULTS": str(results)}


def _run(command: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _torchrun(arguments: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                 "liverseg.cli.train", *arguments], environment)


@pytest.fixture(scope="module")
def ddp_run(planned, tmp_path_factory):
    """One epoch of the multiclass model on 2 gloo processes started by torchrun: (results store, completed process)."""
    results = tmp_path_factory.mktemp("ddp_results")
    return results, _torchrun([*TRAIN_ARGS, "--epochs", "1"], _environment(planned, results))


def test_torchrun_trains_an_epoch_and_rank_0_alone_writes_the_files(ddp_run):
    results, done = ddp_run
    folder = results / FOLD
    assert done.stdout.splitlines() == [str(folder)]  # printed once
    assert {p.name for p in folder.iterdir()} == {"plans.json", "log.txt", ckpt.LATEST, ckpt.BEST, "progress.png",
                                                 "validation"}
    log_text = (folder / "log.txt").read_text()
    assert log_text.count("epoch 0: train loss") == 1 and log_text.count("validation phantom_") == 1
    assert "2 processes train together, 1 patch(es) of the batch each" in log_text
    state = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert state["epoch"] == 1 and state["processes"] == 2 and state["settings"]["batch_size"] == 2
    first, second = state["rng_ranks"]
    assert torch.equal(first["torch"], state["rng"]["torch"])  # rank 0's states are the checkpoint's own
    assert not torch.equal(first["torch"], second["torch"])  # the other process drew from its own seed
    assert {p.name for p in (folder / "validation").iterdir()} == {"phantom_000.nii.gz", "phantom_000.npz",
                                                                  "summary.json"}


def test_the_checkpoint_of_a_ddp_run_loads_and_predicts_in_one_process(ddp_run, plan, tmp_path):
    results, _ = ddp_run
    folder = results / FOLD
    model = plan.pipeline("multiclass").model("multiclass")
    network = build_network(model.topology.network, 1, model.num_classes, **model.topology.network_kwargs())
    state = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert set(state["network"]) == set(network.state_dict())  # saved without DDP's "module." prefix
    ckpt.load_network_weights(network, state, folder / ckpt.LATEST)
    raw = RawDataset(Path(os.environ["LIVERSEG_RAW"]) / DATASET)
    with torch_threads(1):
        summary = validate_cases(network, model, plan.labels, preprocessed_folder(plan, model), raw, ["phantom_000"],
                                 tmp_path, torch.device("cpu"), "auto")
    expected = read_json(folder / "validation" / "summary.json")["cases"][0]["dice"]  # what rank 0 predicted
    assert summary["cases"][0]["dice"] == pytest.approx(expected, abs=1e-3)
    ours = np.load(tmp_path / "validation" / "phantom_000.npz")["probabilities"].astype(np.float32)
    theirs = np.load(folder / "validation" / "phantom_000.npz")["probabilities"].astype(np.float32)
    np.testing.assert_allclose(ours, theirs, atol=2e-2)


def test_a_ddp_run_continues_with_the_ddp_shortcut(ddp_run, planned, tmp_path):
    results, _ = ddp_run
    shutil.copytree(results, tmp_path / "results")
    folder = tmp_path / "results" / FOLD
    before = ckpt.load_checkpoint(folder / ckpt.LATEST)
    done = _run([sys.executable, "-m", "liverseg.cli.train", *TRAIN_ARGS, "--continue", "--epochs", "2", "--ddp", "2"],
                _environment(planned, tmp_path / "results"))
    assert done.stdout.splitlines() == [str(folder)]
    state = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert state["epoch"] == 2 and [r["epoch"] for r in state["history"]] == [0, 1]
    assert state["history"][0] == before["history"][0]
    log_text = (folder / "log.txt").read_text()
    assert log_text.count("continuing from") == 1 and log_text.count("epoch 1: train loss") == 1
    assert not any(torch.equal(before["network"][k], v) for k, v in state["network"].items() if v.is_floating_point()
                   and k.endswith("conv.weight"))


@pytest.mark.slow
def test_a_continued_ddp_run_ends_with_the_weights_of_an_uninterrupted_one(ddp_run, planned, tmp_path):
    """Each process' random states come back from the checkpoint (rng_ranks): bit-identical weights after 2 epochs."""
    results, _ = ddp_run
    shutil.copytree(results, tmp_path / "continued")
    _torchrun([*TRAIN_ARGS, "--continue", "--epochs", "2", "--no-final-validation"],
              _environment(planned, tmp_path / "continued"))
    _torchrun([*TRAIN_ARGS, "--epochs", "2", "--no-final-validation"], _environment(planned, tmp_path / "straight"))
    continued = ckpt.load_checkpoint(tmp_path / "continued" / FOLD / ckpt.LATEST)
    straight = ckpt.load_checkpoint(tmp_path / "straight" / FOLD / ckpt.LATEST)
    assert continued["history"][1]["train_loss"] == straight["history"][1]["train_loss"]
    for name, value in straight["network"].items():
        assert torch.equal(continued["network"][name], value), name
