"""2D -> hybrid encoder weight transfer: the hybrid's encoder then computes the 2D encoder on every slice."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from liverseg.errors import LiversegError
from liverseg.networks.ahnet import AHNet
from liverseg.networks.transfer import load_2d_weights, transfer_2d_encoder
from liverseg.networks.unet import UNet
from liverseg.training.checkpoint import save_checkpoint

FEATURES = [4, 8, 16]
HYBRID = dict(kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
              features_per_stage=FEATURES)
PLANAR = dict(kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]], features_per_stage=FEATURES, dims=2)


def trained_looking_2d(in_channels: int = 2, seed: int = 0, **changes) -> UNet:
    """A 2D unet whose every parameter (norm weights and biases too) is random, as after training."""
    torch.manual_seed(seed)
    net = UNet(in_channels, 3, **(PLANAR | changes))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.5)
    return net


def per_slice(encoder: nn.Module, x: torch.Tensor, planar: bool = True) -> list[torch.Tensor]:
    """Apply an encoder to every slice of ``x`` (B, C, Z, Y, X) as a separate image; outputs back as (B, C', Z, Y', X')."""
    b, c, z, y, w = x.shape
    slices = x.permute(0, 2, 1, 3, 4).reshape(b * z, c, y, w)
    outputs = encoder(slices if planar else slices.unsqueeze(2))
    if not planar:
        outputs = [o.squeeze(2) for o in outputs]
    return [o.reshape(b, z, *o.shape[1:]).permute(0, 2, 1, 3, 4) for o in outputs]


def assert_encoder_equals(hybrid: AHNet, expected: list[torch.Tensor], x: torch.Tensor) -> None:
    with torch.no_grad():
        got = hybrid.encoder(x)
    assert len(got) == len(expected)
    for stage, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=f"stage {stage}")


def source_forms(net: UNet, tmp_path: Path) -> dict[str, object]:
    state = net.state_dict()
    torch.save(state, tmp_path / "state.pt")
    save_checkpoint(tmp_path / "checkpoint_best.pt", {"network": state, "epoch": 3})
    return {
        "state dict": state,
        "encoder state dict": net.encoder.state_dict(),
        "DDP state dict": {f"module.{k}": v for k, v in state.items()},
        "checkpoint dict": {"network": state, "epoch": 3},
        "state dict file": tmp_path / "state.pt",
        "checkpoint file": str(tmp_path / "checkpoint_best.pt"),
    }


@pytest.mark.parametrize("form", ["state dict", "encoder state dict", "DDP state dict", "checkpoint dict",
                                  "state dict file", "checkpoint file"])
def test_after_transfer_the_hybrid_encoder_is_the_2d_encoder_on_every_slice(form, tmp_path: Path):
    planar = trained_looking_2d()
    x = torch.randn(2, 2, 5, 16, 24) * torch.linspace(0.5, 3.0, 5).view(1, 1, 5, 1, 1)
    with torch.no_grad():
        expected = per_slice(planar.encoder, x)
    hybrid = AHNet(2, 3, **HYBRID)
    # The oracle can fail: before the transfer the hybrid's encoder computes something else.
    with pytest.raises(AssertionError):
        assert_encoder_equals(hybrid, expected, x)
    transfer_2d_encoder(hybrid, source_forms(planar, tmp_path)[form])
    assert_encoder_equals(hybrid, expected, x)


def test_transfer_from_a_3d_unet_with_in_plane_kernels_trained_on_single_slices():
    torch.manual_seed(5)
    single_slice = UNet(1, 3, kernel_sizes=[[1, 3, 3]] * 3, strides=HYBRID["strides"], features_per_stage=FEATURES)
    with torch.no_grad():
        for parameter in single_slice.parameters():
            parameter.normal_(0.0, 0.5)
    x = torch.randn(1, 1, 4, 16, 16)
    with torch.no_grad():
        expected = per_slice(single_slice.encoder, x, planar=False)
    hybrid = AHNet(1, 3, **HYBRID)
    transfer_2d_encoder(hybrid, single_slice.state_dict())
    assert_encoder_equals(hybrid, expected, x)


def test_report_names_what_was_transferred_and_the_decoder_is_left_alone(caplog: pytest.LogCaptureFixture):
    planar = trained_looking_2d()
    hybrid = AHNet(2, 3, **HYBRID)
    decoder_before = {k: v.clone() for k, v in hybrid.decoder.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="liverseg.networks.transfer"):
        report = transfer_2d_encoder(hybrid, planar.state_dict())
    encoder_keys = [k for k in hybrid.state_dict() if k.startswith("encoder.")]
    # 3 stages x 2 convolutions x (kernel, norm weight, norm bias)
    assert len(encoder_keys) == 18 and sorted(report.transferred) == sorted(encoder_keys)
    assert sorted(report.unused) == sorted(k for k in planar.state_dict() if not k.startswith("encoder."))
    assert report.not_transferred == ()
    assert report.values == sum(p.numel() for p in planar.encoder.parameters())
    assert report.source == "the given state dict"
    for key, value in hybrid.decoder.state_dict().items():
        assert torch.equal(value, decoder_before[key]), key
    kernel = hybrid.encoder.stages[1].blocks[0].conv.weight
    assert tuple(kernel.shape) == (8, 4, 1, 3, 3)
    assert torch.equal(kernel[:, :, 0], planar.encoder.stages[1].blocks[0].conv.weight)
    assert "transferred 18 encoder tensors" in caplog.text


@pytest.mark.parametrize("changes,in_channels,tensor,given,needed", [
    (dict(features_per_stage=[4, 8, 32]), 2, "encoder.stages.2.blocks.0.conv.weight", "(32, 8, 3, 3)", r"\(16, 8, 1, 3, 3\)"),
    ({}, 1, "encoder.stages.0.blocks.0.conv.weight", "(4, 1, 3, 3)", r"\(4, 2, 1, 3, 3\)"),
    (dict(kernel_sizes=[[3, 3], [5, 5], [3, 3]]), 2, "encoder.stages.1.blocks.0.conv.weight", "(8, 4, 5, 5)",
     r"\(8, 4, 1, 3, 3\)"),
])
def test_mismatched_shapes_name_the_tensor_and_both_shapes_and_change_nothing(changes, in_channels, tensor, given, needed):
    planar = trained_looking_2d(in_channels, **changes)
    hybrid = AHNet(2, 3, **HYBRID)
    before = {k: v.clone() for k, v in hybrid.state_dict().items()}
    with pytest.raises(LiversegError, match=rf"{tensor} has shape {re_escape(given)} .*needs {needed}"):
        transfer_2d_encoder(hybrid, planar.state_dict())
    assert all(torch.equal(v, before[k]) for k, v in hybrid.state_dict().items())


def re_escape(text: str) -> str:
    return text.replace("(", r"\(").replace(")", r"\)")


def test_a_3d_kernel_is_not_taken_for_a_2d_one():
    volumetric = UNet(2, 3, **HYBRID)  # stage 1 and 2 kernels are 3 deep along z
    with pytest.raises(LiversegError, match=r"encoder.stages.1.blocks.0.conv.weight has shape \(8, 4, 3, 3, 3\)"):
        transfer_2d_encoder(AHNet(2, 3, **HYBRID), volumetric.state_dict())


def test_a_different_number_of_stages_fails_unless_not_strict():
    shallow = trained_looking_2d(kernel_sizes=[[3, 3]] * 2, strides=[[1, 1], [2, 2]], features_per_stage=[4, 8])
    hybrid = AHNet(2, 3, **HYBRID)
    with pytest.raises(LiversegError, match=r"6 encoder tensor\(s\) of the ahnet are not in it \(e.g. encoder.stages.2"):
        transfer_2d_encoder(hybrid, shallow.state_dict())
    stage_2 = {k: v.clone() for k, v in hybrid.encoder.stages[2].state_dict().items()}
    report = transfer_2d_encoder(hybrid, shallow.state_dict(), strict=False)
    assert sorted(report.not_transferred) == sorted(f"encoder.stages.2.{k}" for k in stage_2)
    assert len(report.transferred) == 12
    assert all(torch.equal(v, stage_2[k]) for k, v in hybrid.encoder.stages[2].state_dict().items())
    assert torch.equal(hybrid.encoder.stages[1].blocks[1].norm.bias, shallow.encoder.stages[1].blocks[1].norm.bias)

    deep = trained_looking_2d(kernel_sizes=[[3, 3]] * 4, strides=[[1, 1]] + [[2, 2]] * 3, features_per_stage=[4, 8, 16, 16])
    with pytest.raises(LiversegError, match=r"have no place in the ahnet \(e.g. encoder.stages.3"):
        transfer_2d_encoder(hybrid, deep.state_dict())
    report = transfer_2d_encoder(hybrid, deep.state_dict(), strict=False)
    assert len(report.transferred) == 18 and any(k.startswith("encoder.stages.3.") for k in report.unused)


def test_bad_weight_files_are_clear_user_errors(tmp_path: Path):
    hybrid = AHNet(2, 3, **HYBRID)
    with pytest.raises(LiversegError, match=r"missing\.pt: no such weight file"):
        transfer_2d_encoder(hybrid, tmp_path / "missing.pt")
    (tmp_path / "notes.pt").write_text("not torch")
    with pytest.raises(LiversegError, match=r"notes\.pt: cannot be read as torch weights"):
        load_2d_weights(tmp_path / "notes.pt")
    torch.save({"epoch": 3, "lr": 0.01}, tmp_path / "plain.pt")
    with pytest.raises(LiversegError, match=r"plain\.pt: not a state dict"):
        transfer_2d_encoder(hybrid, tmp_path / "plain.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(LiversegError, match=r"linear\.pt: holds no encoder tensors"):
        transfer_2d_encoder(hybrid, tmp_path / "linear.pt")


class _Payload:
    """An object whose unpickling would run code if the file were loaded without weights_only."""

    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))

    target = ""


def test_a_weight_file_cannot_run_code(tmp_path: Path):
    _Payload.target = str(tmp_path / "ran")
    torch.save({"network": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(LiversegError, match="cannot be read as torch weights"):
        transfer_2d_encoder(AHNet(2, 3, **HYBRID), tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists()


def test_the_target_must_have_an_encoder():
    with pytest.raises(LiversegError, match="no encoder parameters"):
        transfer_2d_encoder(nn.Conv3d(1, 1, 1), trained_looking_2d().state_dict())
