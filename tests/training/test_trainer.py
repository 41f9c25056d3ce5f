"""The training loop on a real tiny phantom: files written, exact resume, kill and continue, folds, initialisation."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from liverseg.data.splits import read_splits
from liverseg.errors import LiversegError
from liverseg.networks import build_network
from liverseg.planning.plans import load_plan
from liverseg.training import checkpoint as ckpt
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import RunState, build_parts, fold_cases, preprocessed_folder, save_checkpoints, train_model

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)
_TIMING_KEYS = ("epoch_seconds", "data_wait", "threads")


@pytest.fixture
def tiny(planned, tmp_path, monkeypatch):
    """The planned phantom's stores in the environment, results in a fresh folder; returns (plan, multiclass model)."""
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    plan = load_plan(planned["preprocessed"] / DATASET / "plans.json")
    return plan, plan.pipeline("multiclass").model("multiclass")


def _settings(model, **values) -> TrainSettings:
    base = {"iterations_per_epoch": 2, "validation_iterations": 1, "num_workers": 0, "threads": 1, "device": "cpu"}
    return TrainSettings.from_overrides(model, **{**base, **values})


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in _TIMING_KEYS} for record in history]


def test_two_epochs_write_checkpoints_figure_and_validation_in_the_input_geometry(tiny, planned, tmp_path):
    plan, model = tiny
    folder = tmp_path / "run"
    result = train_model(plan, model, 0, folder, _settings(model, epochs=2))
    assert {p.name for p in folder.iterdir()} == {ckpt.LATEST, ckpt.BEST, "progress.png", "validation"}
    latest = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert latest["epoch"] == 2 and [r["epoch"] for r in latest["history"]] == [0, 1]
    lr = model.schedule.learning_rate  # the plan's (the fast preset's Adam rate)
    assert [r["lr"] for r in latest["history"]] == pytest.approx([lr, lr * (1 - 1 / 2) ** 0.9])
    assert latest["model"] == "multiclass" and latest["plan"] == plan.to_dict() and latest["settings"]["epochs"] == 2
    assert all(len(r["pseudo_dice"]) == 2 for r in latest["history"])
    assert ckpt.load_checkpoint(folder / ckpt.BEST)["best_ema_dice"] == result["best_ema_dice"]

    raw = planned["raw"] / DATASET
    val_cases = read_splits(planned["preprocessed"] / DATASET / "splits.json")[0]["val"]
    summary = result["validation"]
    assert [row["case"] for row in summary["cases"]] == val_cases
    for row in summary["cases"]:
        case = row["case"]
        written = sitk.ReadImage(str(folder / "validation" / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        assert written.GetSize() == image.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
        predicted = sitk.GetArrayFromImage(written)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
        for label in (1, 2):  # Dice recomputed from the files, in the stored orientation
            p, r = predicted == label, reference == label
            expected = 2 * np.sum(p & r) / (p.sum() + r.sum()) if p.sum() + r.sum() else None
            assert row["dice"][str(label)] == (None if expected is None else pytest.approx(expected, abs=1e-4))
        probabilities = np.load(folder / "validation" / f"{case}.npz")["probabilities"]
        assert probabilities.dtype == np.float16 and probabilities.shape == (3, *predicted.shape)
        np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=3e-3)
    on_disk = (folder / "validation" / "summary.json").read_text()
    assert '"dice_foreground"' in on_disk and '"liver"' in on_disk


@pytest.mark.parametrize("workers", [0, 1])
def test_a_run_stopped_and_continued_ends_with_identical_weights(tiny, tmp_path, workers):
    plan, model = tiny
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_model(plan, model, 0, straight, _settings(model, epochs=2, num_workers=workers, final_validation=False))
    train_model(plan, model, 0, split, _settings(model, epochs=1, num_workers=workers, final_validation=False))
    first = ckpt.load_checkpoint(split / ckpt.LATEST)
    assert first["epoch"] == 1 and first["lr_schedule"]["max_steps"] == 1
    # --continue --epochs 2: the finished 1-epoch schedule is extended to 2 epochs
    train_model(plan, model, 0, split, _settings(model, epochs=2, num_workers=workers, continue_training=True,
                                                 final_validation=False))
    a, b = ckpt.load_checkpoint(straight / ckpt.LATEST), ckpt.load_checkpoint(split / ckpt.LATEST)
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key
    for index, state in a["optimizer"]["state"].items():  # momentum buffers (SGD) or moments and steps (Adam)
        assert state.keys() == b["optimizer"]["state"][index].keys()
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][name])), name
    assert a["lr_schedule"] == b["lr_schedule"] and a["epoch"] == b["epoch"] == 2
    assert _without_timings(a["history"]) == _without_timings(b["history"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_continue_without_a_checkpoint_starts_from_the_beginning(tiny, tmp_path, caplog):
    plan, model = tiny
    result = train_model(plan, model, 0, tmp_path / "new", _settings(model, epochs=1, continue_training=True,
                                                                      validation_iterations=0, final_validation=False))
    assert result["epochs"] == 1 and "no checkpoint" in caplog.text
    # without validation iterations there is no pseudo-Dice, so no best checkpoint
    assert not (tmp_path / "new" / ckpt.BEST).exists() and result["history"][0]["pseudo_dice"] is None


def test_a_killed_training_process_continues_from_an_intact_checkpoint(tiny, planned, tmp_path):
    plan, model = tiny
    results = tmp_path / "results"
    folder = results / DATASET / "multiclass" / "multiclass" / "fold_0"
    code = ("import torch; torch.set_num_threads(1)\n"
            "from liverseg.training.run import train\n"
            f"train({DATASET!r}, 'multiclass', 0, epochs=8, iterations_per_epoch=2, validation_iterations=1, num_workers=0, "
            "threads=1, device='cpu', final_validation=False)\n")
    env = {**os.environ, "LIVERSEG_RAW": str(planned["raw"]), "LIVERSEG_PREPROCESSED": str(planned["preprocessed"]),
           "LIVERSEG_RESULTS": str(results)}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (folder / ckpt.LATEST).exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        # then kill it, as soon as a checkpoint is being written if that is seen within a few seconds
        writing_deadline = time.monotonic() + 3
        while time.monotonic() < writing_deadline and not any(p.name.startswith(".tmp") and "checkpoint" in p.name
                                                            for p in folder.iterdir()):
            time.sleep(0.0005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    done_before = ckpt.load_checkpoint(folder / ckpt.LATEST)["epoch"]
    assert 1 <= done_before < 8
    result = train_model(plan, model, 0, folder, _settings(model, continue_training=True, final_validation=False))
    latest = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert result["epochs"] == latest["epoch"] == 8 and [r["epoch"] for r in latest["history"]] == list(range(8))
    assert not any(p.name.startswith(".tmp") for p in folder.iterdir())


def test_online_validation_uses_the_inner_validation_cases_and_fold_all_uses_every_case(tiny, planned, tmp_path):
    plan, model = tiny
    folder = preprocessed_folder(plan, model)
    split = read_splits(planned["preprocessed"] / DATASET / "splits.json")[1]
    assert fold_cases(plan, folder, 1) == (split["train"], split.get("inner_val") or split["val"], split["val"])
    every = sorted(f"phantom_{i:03d}" for i in range(4))
    assert fold_cases(plan, folder, "all") == (every, every, [])
    with pytest.raises(LiversegError, match="fold 4 does not exist: .*splits.json has folds 0 to 3"):
        fold_cases(plan, folder, 4)
    result = train_model(plan, model, "all", tmp_path / "all", _settings(model, epochs=1))
    assert result["validation"] is None and not (tmp_path / "all" / "validation").exists()
    assert result["history"][0]["pseudo_dice"] is not None  # measured on patches of the training cases


def test_latest_checkpoint_every_save_every_epochs_and_at_the_end(tiny, tmp_path):
    plan, model = tiny
    settings = _settings(model, epochs=5, save_every=2)
    parts = build_parts(model, 1, settings, torch.device("cpu"))
    written, state = [], RunState()
    for epoch in range(1, 6):
        for name in (ckpt.LATEST, ckpt.BEST):
            (tmp_path / name).unlink(missing_ok=True)
        state.epoch, state.ema_dice = epoch, 0.5 if epoch == 1 else 0.4  # the average improves in epoch 1 only
        save_checkpoints(parts, state, plan, model, 0, settings, "multiclass", tmp_path)
        written.append(sorted(p.name for p in tmp_path.iterdir()))
    assert written == [[ckpt.BEST], [ckpt.LATEST], [], [ckpt.LATEST], [ckpt.LATEST]]
    assert state.best_ema_dice == 0.5


def test_init_from_takes_the_weights_of_a_matching_network_only(tiny, tmp_path):
    plan, model = tiny
    source = tmp_path / "source"
    train_model(plan, model, 0, source, _settings(model, epochs=1, final_validation=False))
    weights = ckpt.load_checkpoint(source / ckpt.LATEST)["network"]
    # a learning rate of ~0 keeps the weights where they started, so the start can be compared
    train_model(plan, model, 0, tmp_path / "init", _settings(model, epochs=1, learning_rate=1e-12, final_validation=False,
                                                             init_from=source / ckpt.LATEST))
    started = ckpt.load_checkpoint(tmp_path / "init" / ckpt.LATEST)["network"]
    for key, value in weights.items():
        torch.testing.assert_close(started[key], value, rtol=0, atol=1e-6)
    binary = build_network("unet", 1, 2, **model.topology.network_kwargs())  # another number of classes
    foreign = {**ckpt.load_checkpoint(source / ckpt.LATEST), "network": binary.state_dict()}
    ckpt.save_checkpoint(tmp_path / "binary.pt", foreign)
    with pytest.raises(LiversegError, match="binary.pt: its network does not match this model's architecture"):
        train_model(plan, model, 0, tmp_path / "bad", _settings(model, epochs=1, init_from=tmp_path / "binary.pt"))


def test_missing_preprocessed_data_is_a_user_error(tiny, planned, monkeypatch, tmp_path):
    plan, model = tiny
    monkeypatch.setenv("LIVERSEG_PREPROCESSED", str(tmp_path / "empty"))
    with pytest.raises(LiversegError, match="preprocessed cases of model multiclass are missing; run liverseg_plan"):
        train_model(plan, model, 0, tmp_path / "x", _settings(model, epochs=1))
