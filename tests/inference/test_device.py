"""Device resolution, bf16 detection, autocast choice and thread settings."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.inference import device as device_module
from liverseg.inference.device import (autocast_dtype, available_cpus, bf16_supported, configure_threads, cpu_flags,
                                       resolve_device)

CUDA = torch.cuda.is_available()
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx2 avx512f {extra} constant_tsc
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu vme sse sse2 avx2 avx512f {extra} constant_tsc
"""


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_cpu_resolves_to_the_cpu(name):
    assert resolve_device(name) == torch.device("cpu")


def test_auto_picks_the_gpu_only_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_user_error(name):
    with pytest.raises(LiversegError, match=r"sees no CUDA GPU; use --device cpu"):
        resolve_device(name)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_resolves_and_a_missing_gpu_index_is_refused():
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(LiversegError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x", ""])
def test_unknown_devices_are_refused_with_the_choices(name):
    with pytest.raises(LiversegError, match="use one of auto, cpu, cuda"):
        resolve_device(name)


@pytest.mark.parametrize("extra, expected", [("avx512_bf16", True), ("amx_bf16 amx_tile", True),
                                             ("avx512_vnni", False), ("", False)])
def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, monkeypatch, extra, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    monkeypatch.setattr(device_module, "_CPUINFO", cpuinfo)
    assert bf16_supported() is expected
    assert {"sse2", "avx512f"} <= cpu_flags()
    assert autocast_dtype(torch.device("cpu"), "auto") == (torch.bfloat16 if expected else None)


def test_no_cpuinfo_means_no_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(device_module, "_CPUINFO", tmp_path / "missing")
    assert cpu_flags() == frozenset() and not bf16_supported()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux only")
def test_bf16_support_on_this_machine_matches_a_plain_text_search():
    text = Path("/proc/cpuinfo").read_text()
    assert bf16_supported() == (" avx512_bf16" in text or " amx_bf16" in text)


def test_autocast_choices(caplog, tmp_path, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, False) is None and autocast_dtype(cuda, False) is None
    assert autocast_dtype(cuda, "auto") == torch.float16
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=""))
    monkeypatch.setattr(device_module, "_CPUINFO", cpuinfo)
    with caplog.at_level(logging.WARNING):
        assert autocast_dtype(cpu, True) == torch.bfloat16  # forced, with a warning
    assert "slower than fp32" in caplog.text
    with pytest.raises(ValueError, match="use_bf16"):
        autocast_dtype(cpu, "yes")


def test_threads():
    before = torch.get_num_threads()
    try:
        assert 1 <= available_cpus() <= (os.cpu_count() or 1)
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads() == available_cpus() == torch.get_num_threads()
        with pytest.raises(LiversegError, match="at least 1"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)
