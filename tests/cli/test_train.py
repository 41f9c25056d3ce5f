"""liverseg_train on a tiny phantom: prints the results folder, continues and extends, refuses bad options cleanly."""
from __future__ import annotations

import pytest
import torch

from liverseg.cli.train import main
from liverseg.data.phantom import generate_dataset
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.training.checkpoint import LATEST, load_checkpoint

DATASET = "Dataset904_CliPhantom"
QUICK = ["--iters-per-epoch", "1", "--val-iters", "1", "-np", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Raw and preprocessed stores of a planned tiny phantom (fast preset), shared by the module."""
    root = tmp_path_factory.mktemp("cli_train_stores")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("raw", "preprocessed"):
            (root / name).mkdir()
            patch.setenv(f"LIVERSEG_{name.upper()}", str(root / name))
        generate_dataset(root / "raw" / DATASET, 4, size="tiny")
        plan_dataset(DATASET, num_workers=1, preset="fast", verify=False)
    return root


@pytest.fixture
def planned(dataset, tmp_path, monkeypatch):
    for name in ("raw", "preprocessed"):
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(dataset / name))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    return {"results": tmp_path / "results"}


def test_trains_prints_the_folder_and_continues_with_more_epochs(planned, capsys):
    first = ["-d", "CliPhantom", "-c", "multiclass", "-f", "0", "--epochs", "1", "--no-final-validation", "--device", "cpu"]
    assert main([*first, *QUICK]) == 0
    folder = planned["results"] / DATASET / "multiclass" / "multiclass" / "fold_0"
    assert capsys.readouterr().out.strip() == str(folder)
    assert load_checkpoint(folder / LATEST)["epoch"] == 1 and not (folder / "validation").exists()
    assert main(["-d", "904", "-c", "multiclass", "-f", "0", "--continue", "--epochs", "2", "--device", "cpu", *QUICK]) == 0
    state = load_checkpoint(folder / LATEST)
    assert state["epoch"] == 2 and state["lr_schedule"]["max_steps"] == 2 and (folder / "validation" / "summary.json").is_file()
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("options, message", [
    (["-c", "multiclass", "-f", "0", "--epochs", "-1"], "--epochs (epochs) must be a whole number >= 1; got -1"),
    (["-c", "multiclass", "-f", "0", "--batch-size", "0"], "--batch-size (batch_size) must be a whole number >= 1"),
    (["-c", "multiclass", "-f", "0", "--lr", "-0.01"], "--lr (learning_rate) must be a positive number"),
    (["-c", "multiclass", "-f", "0", "--device", "cuda"], "sees no CUDA GPU"),
    (["-c", "cascade", "-f", "0"], "pipeline 'cascade' was not planned"),
    (["-c", "dual_binary", "-f", "0", "-m", "lesion"], "has no model 'lesion'"),
    (["-c", "multiclass", "-f", "x"], "fold must be a number"),
    (["-c", "multiclass", "-f", "0", "--init-from", "nowhere.pt"], "nowhere.pt: no such checkpoint"),
])
def test_bad_options_exit_with_a_message_and_no_traceback(planned, capsys, options, message):
    if "cuda" in options and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["-d", DATASET, *options, *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
