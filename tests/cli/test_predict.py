"""liverseg_predict on a tiny trained model: prints the result, --continue, model selection, clear errors (exit 2)."""
from __future__ import annotations

import shutil

import pytest

from liverseg.cli.predict import main
from liverseg.data.phantom import generate_dataset
from liverseg.io.atomic import read_json
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.training.run import train

DATASET = "Dataset953_CliPredict"
QUICK = ["--no-tta", "-np", "0", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A tiny phantom planned (fast preset) with fold 0 of its multiclass model trained for one short epoch."""
    root = tmp_path_factory.mktemp("cli_predict_stores")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("raw", "preprocessed", "results"):
            (root / name).mkdir()
            patch.setenv(f"LIVERSEG_{name.upper()}", str(root / name))
        generate_dataset(root / "raw" / DATASET, 4, size="tiny")
        plan_dataset(DATASET, num_workers=1, preset="fast", verify=False)
        train(DATASET, "multiclass", 0, epochs=1, iterations_per_epoch=2, validation_iterations=1, batch_size=2, num_workers=0,
              device="cpu", final_validation=False)
    return root


@pytest.fixture
def env(stores, monkeypatch, tmp_path):
    """The stores in the environment and an input folder of two images."""
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(stores / name))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in (0, 1):
        shutil.copy(stores / "raw" / DATASET / "imagesTr" / f"phantom_{k:03d}_0000.nii.gz", inputs)
    return {"in": inputs, "out": tmp_path / "out", "results": stores / "results" / DATASET}


def test_predicts_prints_the_counts_and_continues(env, capsys):
    assert main(["-i", str(env["in"]), "-o", str(env["out"]), "-d", "CliPredict", "--lesion-maps", *QUICK]) == 0
    assert capsys.readouterr().out.strip() == f"2 predicted, 0 skipped, 0 failed: {env['out']}"
    for case in ("phantom_000", "phantom_001"):
        for name in (f"{case}.nii.gz", f"{case}.lesions.json", f"{case}_lesions.nii.gz"):
            assert (env["out"] / name).is_file()
    assert {"lesions.csv", "cases.csv", "predict_settings.json"} <= {p.name for p in env["out"].iterdir()}
    assert main(["-i", str(env["in"]), "-o", str(env["out"]), "--continue", "--lesion-maps", *QUICK]) == 0
    assert capsys.readouterr().out.strip() == f"0 predicted, 2 skipped, 0 failed: {env['out']}"


def test_options_reach_the_predictor(env):
    steps = env["out"].parent / "steps.json"
    steps.write_text('["close_tumour"]')
    args = ["-i", str(env["in"] / "phantom_001_0000.nii.gz"), "-o", str(env["out"]), "-m",
            str(env["results"] / "multiclass"), "-f", "0", "--checkpoint", "latest", "--step", "0.75",
            "--batch-windows", "3", "--fp32", "--postprocessing", str(steps), "--save-probabilities", *QUICK]
    assert main(args) == 0
    settings = read_json(env["out"] / "predict_settings.json")
    assert settings["folds"] == [0] and settings["step"] == 0.75 and settings["batch_windows"] == 3
    assert settings["precision"] == "float32" and settings["postprocessing"] == [{"name": "close_tumour", "params": {}}]
    assert settings["models"]["multiclass"][0].endswith("fold_0/checkpoint_latest.pt")
    assert (env["out"] / "phantom_001.npz").is_file()


@pytest.mark.parametrize("case, message", [
    ("unreadable", "broken_0000.nii.gz: is not a readable gzip file"),
    ("empty", "empty: no images found"),
    ("not_writable", "blocker/out: the output folder cannot be created or written to"),
    ("bad_steps", "steps.json: not valid JSON"),
    ("unknown_dataset", "no trained models for dataset 'Nope'"),
])
def test_clear_errors_exit_with_2(env, capsys, case, message):
    inputs, out = env["in"], env["out"]
    extra = []
    if case == "unreadable":
        inputs = inputs / "broken_0000.nii.gz"
        inputs.write_bytes(b"not an image")
    elif case == "empty":
        inputs = env["out"].parent / "empty"
        inputs.mkdir()
    elif case == "not_writable":
        (out.parent / "blocker").write_text("a file, not a folder")
        out = out.parent / "blocker" / "out"
    elif case == "bad_steps":
        (out.parent / "steps.json").write_text("[not json")
        extra = ["--postprocessing", str(out.parent / "steps.json")]
    elif case == "unknown_dataset":
        extra = ["-d", "Nope"]
    assert main(["-i", str(inputs), "-o", str(out), *extra, *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_failed_case_among_good_ones_exits_with_2_after_the_others(env, capsys):
    (env["in"] / "broken_0000.nii.gz").write_bytes(b"not an image")
    assert main(["-i", str(env["in"]), "-o", str(env["out"]), *QUICK]) == 2
    captured = capsys.readouterr()
    assert captured.out.strip() == f"2 predicted, 0 skipped, 1 failed: {env['out']}"
    assert "1 of 3 case(s) failed" in captured.err and "broken_0000.nii.gz" in captured.err
    assert (env["out"] / "phantom_000.nii.gz").is_file() and (env["out"] / "phantom_001.nii.gz").is_file()


def test_dataset_and_results_folder_together_are_refused(env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-i", str(env["in"]), "-o", str(env["out"]), "-d", DATASET, "-m", str(env["results"])])
    assert exit_.value.code == 2 and "either -d" in capsys.readouterr().err
