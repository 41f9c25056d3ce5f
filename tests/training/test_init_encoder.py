"""--init-encoder-from: an ahnet starts from a trained 2D model's encoder, recorded, never transferred twice, clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import liverseg
from liverseg.cli.train import main as train_main
from liverseg.errors import LiversegError
from liverseg.networks import build_network
from liverseg.networks.slice_unet import SliceUNet
from liverseg.networks.transfer import encoder_weights
from liverseg.planning.overrides import apply_overrides
from liverseg.planning.plans import load_plan, save_plan
from liverseg.preprocessing.case import load_preprocessed_case
from liverseg.training import checkpoint as ckpt
from liverseg.training.init_encoder import INITIAL_WEIGHTS, start_from_2d_encoder
from liverseg.training.run import train
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import preprocessed_folder, start_run

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)
FAST = {"iterations_per_epoch": 1, "validation_iterations": 1, "num_workers": 0, "threads": 1, "device": "cpu"}
AHNET_LIVER = {"pipelines": {"dual_binary": {"models": {"liver": {"topology": {"network": "ahnet"}}}}}}
CLI = ["-d", DATASET, "-c", "dual_binary", "-m", "liver", "-f", "0", "--iters-per-epoch", "1", "--val-iters", "1",
       "-np", "0", "--threads", "1", "--device", "cpu", "--no-final-validation"]


@pytest.fixture(scope="module")
def trained_2d(planned, tmp_path_factory):
    """A private copy of the planned stores whose liver model is an ahnet, and a 2D model trained for one epoch on it."""
    root = tmp_path_factory.mktemp("init_encoder")
    preprocessed = root / "preprocessed"
    shutil.copytree(planned["preprocessed"], preprocessed)
    plans = preprocessed / DATASET / "plans.json"
    save_plan(apply_overrides(load_plan(plans), AHNET_LIVER), plans)
    stores = {"raw": planned["raw"], "preprocessed": preprocessed, "results": root / "results"}
    with pytest.MonkeyPatch.context() as env:
        for name, path in stores.items():
            env.setenv(f"LIVERSEG_{name.upper()}", str(path))
        folder = train(DATASET, "multiclass_2d", 0, epochs=1, final_validation=False, **FAST)[0]
    return {**stores, "source": folder}


@pytest.fixture
def env(trained_2d, tmp_path, monkeypatch):
    """The module's stores in the environment, with fresh results for the ahnet runs."""
    for name in ("raw", "preprocessed"):
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(trained_2d[name]))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    return {**trained_2d, "results": tmp_path / "results"}


def _plan_and_models(env):
    plan = load_plan(env["preprocessed"] / DATASET / "plans.json")
    return plan, plan.pipeline("dual_binary").model("liver"), plan.pipeline("multiclass_2d").model("multiclass")


def _two_d_network(plan, model, path):
    network = build_network(model.topology.network, len(plan.channel_names), model.num_classes,
                            **model.topology.network_kwargs())
    ckpt.load_network_weights(network, ckpt.load_checkpoint(path), path)
    return network


def test_before_any_step_the_hybrid_encoder_is_the_2d_encoder_on_every_slice(env, tmp_path):
    plan, liver, two_d_model = _plan_and_models(env)
    settings = TrainSettings.from_overrides(liver, init_encoder_from=env["source"], seed=3, **FAST)
    started = start_from_2d_encoder(plan, liver, settings, tmp_path, "dual_binary", 0)
    assert started.init_from == tmp_path / INITIAL_WEIGHTS
    parts, state = start_run(liver, len(plan.channel_names), started, torch.device("cpu"), None)  # what the trainer does
    hybrid = parts.network
    assert state.epoch == 0 and type(hybrid).__name__ == "AHNet"
    planar = _two_d_network(plan, two_d_model, env["source"] / ckpt.BEST)
    assert isinstance(planar, SliceUNet)

    data, _, _ = load_preprocessed_case(preprocessed_folder(plan, liver), "phantom_000")
    volume = torch.from_numpy(np.array(data[:, :6, :32, :32]))[None]
    with torch.no_grad():
        hybrid_skips = hybrid.encoder(volume)
        for z in range(volume.shape[2]):
            for got, want in zip(hybrid_skips, planar.encoder(volume[:, :, z]), strict=True):
                torch.testing.assert_close(got[:, :, z], want, atol=1e-4, rtol=1e-4)
    # The decoder is the one a run with this seed would start with anyway.
    torch.manual_seed(3)
    fresh = build_network("ahnet", 1, liver.num_classes, **liver.topology.network_kwargs())
    for key, value in fresh.state_dict().items():
        if key.startswith("decoder."):
            assert torch.equal(hybrid.state_dict()[key], value), key


def test_a_run_records_the_transfer_and_continuing_never_transfers_again(env):
    source = str(env["source"])
    assert train_main([*CLI, "--epochs", "1", "--init-encoder-from", source]) == 0
    folder = env["results"] / DATASET / "dual_binary" / "liver" / "fold_0"
    initial = ckpt.load_checkpoint(folder / INITIAL_WEIGHTS)
    hybrid_encoder = [k for k in initial["network"] if k.startswith("encoder.")]
    assert initial["epoch"] == 0 and initial["encoder_transfer"]["source"] == source
    assert initial["encoder_transfer"]["file"] == str(env["source"] / ckpt.BEST)
    assert sorted(initial["encoder_transfer"]["transferred"]) == sorted(hybrid_encoder)
    first = ckpt.load_checkpoint(folder / ckpt.LATEST)["settings"]
    assert first["init_encoder_from"] == source and first["init_from"] == str(folder / INITIAL_WEIGHTS)
    written = (folder / INITIAL_WEIGHTS).read_bytes()
    log = (folder / "log.txt").read_text()
    assert log.count(f"transferred {len(hybrid_encoder)} encoder tensors") == 1

    # A job script that always passes the same options, then a plain continue: no second transfer, the record stays.
    assert train_main([*CLI, "--epochs", "2", "--continue", "--init-encoder-from", source]) == 0
    assert train_main([*CLI, "--epochs", "3", "--continue"]) == 0
    assert (folder / INITIAL_WEIGHTS).read_bytes() == written
    log = (folder / "log.txt").read_text()
    assert log.count("encoder tensors") == 1 and "no new transfer" in log
    latest = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert latest["epoch"] == 3 and latest["settings"]["init_encoder_from"] == source


def test_a_2d_model_with_other_stages_is_refused_with_the_override_that_makes_it_fit(env, tmp_path):
    plan, liver, two_d_model = _plan_and_models(env)
    state = ckpt.load_checkpoint(env["source"] / ckpt.BEST)
    # The same 2D model planned with one stage less (and so other widths at the bottom).
    topology = dict(state["model_plan"]["topology"])
    topology.update(kernel_sizes=topology["kernel_sizes"][:-1], strides=topology["strides"][:-1],
                    features_per_stage=topology["features_per_stage"][:-1])
    shallow = build_network("unet_2d", 1, 3, **{k: v for k, v in topology.items() if k not in ("network", "patch_size")})
    state.update(network=shallow.state_dict(), model_plan={**state["model_plan"], "topology": topology})
    bad = tmp_path / "shallow.pt"
    ckpt.save_checkpoint(bad, {k: v for k, v in state.items() if k not in ("format", "version")})

    with pytest.raises(LiversegError) as error:
        liverseg.train(DATASET, "dual_binary", 0, model="liver", epochs=1, init_encoder_from=bad, **FAST)
    message = str(error.value)
    assert f"{bad}: its encoder does not have the ahnet's layout" in message
    stages = len(liver.topology.features_per_stage)
    assert f"has {stages - 1} stages" in message and f"the ahnet (liver) {stages} with" in message
    assert not env["results"].exists()
    # The override the message gives makes the 2D model's encoder fit the ahnet.
    overrides = json.loads(message[message.index("FILE holding ") + len("FILE holding "):message.index(", and train it again")])
    replanned = apply_overrides(plan, overrides).pipeline("multiclass_2d").model("multiclass").topology
    refit = build_network("unet_2d", 1, 3, **replanned.network_kwargs())
    with torch.device("meta"):
        hybrid = build_network("ahnet", 1, 2, **liver.topology.network_kwargs())
    converted, _ = encoder_weights(hybrid, refit.state_dict())
    assert set(converted) == {k for k in hybrid.state_dict() if k.startswith("encoder.")}


@pytest.mark.parametrize("model, source, message", [
    ("tumour", "{source}", "but model tumour is a 'unet'; make it an ahnet"),
    ("liver", "{source}/../..", "no checkpoint_best.pt or checkpoint_latest.pt in this folder"),
    ("liver", "{source}/..", "it holds fold_0: give one of them"),
    ("liver", "{source}/missing.pt", "missing.pt: no such file or folder"),
    ("liver", "{truncated}", "cannot be read as torch weights"),
])
def test_bad_sources_are_clear_errors_before_anything_trains(env, tmp_path, model, source, message):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((env["source"] / ckpt.BEST).read_bytes()[:1000])
    path = source.format(source=env["source"], truncated=truncated)
    with pytest.raises(LiversegError, match=message):
        liverseg.train(DATASET, "dual_binary", 0, model=model, epochs=1, init_encoder_from=path, **FAST)
    assert not env["results"].exists()


def test_the_command_line_prints_the_error_and_exits_2(env, capsys):
    assert train_main([*CLI, "--epochs", "1", "-m", "tumour", "--init-encoder-from", str(env["source"])]) == 2
    assert capsys.readouterr().err.startswith("error: --init-encoder-from starts an ahnet's encoder from a 2D model")
    assert train_main([*CLI, "--epochs", "1", "--init-from", "x.pt", "--init-encoder-from", str(env["source"])]) == 2
    assert "both give the weights the run starts from" in capsys.readouterr().err
