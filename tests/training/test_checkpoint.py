"""Checkpoints: round trip of a real training state, random states, atomic writes, bad files, weights loading."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from liverseg.errors import LiversegError
from liverseg.training import checkpoint as ckpt


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.Conv3d(4, 2, 1))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    network(torch.randn(2, 1, 4, 8, 8)).sum().backward()
    optimizer.step()
    return network, optimizer


def _state(network: nn.Module, optimizer: torch.optim.Optimizer, epoch: int = 3) -> dict:
    return {"network": network.state_dict(), "optimizer": optimizer.state_dict(), "lr_schedule": {"current_step": epoch},
            "epoch": epoch, "rng": ckpt.rng_states(), "history": [{"epoch": 0, "train_loss": 1.5, "val_loss": None}],
            "plan": {"dataset": "D", "pipelines": {"m": {"models": {}}}}, "model": "m", "settings": {"epochs": 5}}


def test_round_trip_keeps_weights_optimiser_state_and_records(tmp_path):
    network, optimizer = _trained()
    ckpt.save_checkpoint(tmp_path / ckpt.LATEST, _state(network, optimizer))
    loaded = ckpt.load_checkpoint(tmp_path / ckpt.LATEST)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded["network"][key], value)
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], momentum)
    assert loaded["history"] == [{"epoch": 0, "train_loss": 1.5, "val_loss": None}] and loaded["epoch"] == 3
    assert loaded["format"] == ckpt.CHECKPOINT_FORMAT
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.LATEST]


def test_random_states_come_back_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's legacy state
    ckpt.save_checkpoint(tmp_path / "c.pt", {**_state(*_trained()), "rng": ckpt.rng_states()})
    expected = (random.random(), np.random.normal(size=3).tolist(), np.random.randint(0, 1000, 3).tolist(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    ckpt.restore_rng_states(ckpt.load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (random.random(), np.random.normal(size=3).tolist(), np.random.randint(0, 1000, 3).tolist(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    network, optimizer = _trained()
    path = tmp_path / ckpt.LATEST
    ckpt.save_checkpoint(path, _state(network, optimizer, epoch=1))
    with pytest.raises(Exception):
        ckpt.save_checkpoint(path, {**_state(network, optimizer, epoch=2), "broken": lambda: None})  # cannot be pickled
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.LATEST]


@pytest.mark.parametrize("content, message", [
    (b"", "cannot be read as a checkpoint"),
    (b"not a checkpoint at all", "cannot be read as a checkpoint"),
])
def test_damaged_files_are_user_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "checkpoint_latest.pt"
    path.write_bytes(content)
    with pytest.raises(LiversegError, match=message) as error:
        ckpt.load_checkpoint(path)
    assert str(path) in str(error.value) and "delete it" in str(error.value)


def test_a_truncated_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, _state(*_trained()))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LiversegError, match="damaged or not a liverseg checkpoint"):
        ckpt.load_checkpoint(path)


def test_foreign_files_are_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(LiversegError, match="not a liverseg checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(LiversegError, match="version 99"):
        ckpt.load_checkpoint(tmp_path / "future.pt")
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "version": ckpt.CHECKPOINT_VERSION, "network": {}}, tmp_path / "part.pt")
    with pytest.raises(LiversegError, match="lacks optimizer"):
        ckpt.load_checkpoint(tmp_path / "part.pt")
    # Arbitrary pickled objects are not loaded (weights_only): a downloaded file cannot run code.
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "payload": _Payload()}, tmp_path / "code.pt")
    with pytest.raises(LiversegError, match="cannot be read as a checkpoint"):
        ckpt.load_checkpoint(tmp_path / "code.pt")
    with pytest.raises(LiversegError, match="no such checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    pass


def test_newest_checkpoint_prefers_the_most_epochs(tmp_path):
    network, optimizer = _trained()
    assert ckpt.newest_checkpoint(tmp_path) is None
    ckpt.save_checkpoint(tmp_path / ckpt.LATEST, _state(network, optimizer, epoch=5))
    ckpt.save_checkpoint(tmp_path / ckpt.BEST, _state(network, optimizer, epoch=7))
    path, state = ckpt.newest_checkpoint(tmp_path)
    assert (path.name, state["epoch"]) == (ckpt.BEST, 7)
    ckpt.save_checkpoint(tmp_path / ckpt.LATEST, _state(network, optimizer, epoch=8))
    assert ckpt.newest_checkpoint(tmp_path)[0].name == ckpt.LATEST


def test_network_weights_load_only_into_the_same_architecture():
    network, optimizer = _trained()
    state = _state(network, optimizer)
    torch.manual_seed(5)
    same = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.Conv3d(4, 2, 1))
    assert ckpt.architectures_match(same, state)
    ckpt.load_network_weights(same, state, "a.pt")
    assert all(torch.equal(same.state_dict()[k], v) for k, v in network.state_dict().items())
    # wider: every tensor but the last bias (2 output classes either way) changes shape, 5 of 6
    wider = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.InstanceNorm3d(8, affine=True), nn.Conv3d(8, 2, 1))
    assert not ckpt.architectures_match(wider, state)
    shape = r"\(5 of another shape \(e.g. 0.weight: \(4, 1, 3, 3, 3\)"
    with pytest.raises(LiversegError, match=r"a.pt: its network does not match .*" + shape):
        ckpt.load_network_weights(wider, state, "a.pt")
    deeper = nn.Sequential(*same, nn.Conv3d(2, 2, 1))
    with pytest.raises(LiversegError, match="2 parameter\\(s\\) missing and 0 unexpected"):
        ckpt.load_network_weights(deeper, state, "a.pt")
