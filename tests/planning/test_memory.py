"""The training-memory estimate against the network's own report and a measured peak."""
from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from liverseg.networks import build_network
from liverseg.planning.memory import (
    MIXED_PRECISION_PEAK,
    PARAMETER_COPIES,
    RESERVED_BYTES,
    activation_count_bytes,
    estimate_training_memory,
    parameter_count,
)
from liverseg.planning.topology import NetworkSettings, derive_topology

TINY = NetworkSettings(base_features=8, max_features=64, max_stages=5)


def test_estimate_is_the_networks_count_scaled_plus_weights_and_reserve():
    topology = derive_topology((16, 64, 64), (3.0, 1.0, 1.0), TINY)
    real = build_network("unet", 1, 3, **topology.network_kwargs())
    count = real.activation_memory_bytes(topology.patch_size, 1, 4)
    params = sum(p.numel() for p in real.parameters())
    assert activation_count_bytes(topology) == count and parameter_count(topology) == params
    for batch in (1, 2, 5):
        expected = batch * count * MIXED_PRECISION_PEAK + params * 4 * PARAMETER_COPIES + RESERVED_BYTES
        assert estimate_training_memory(topology, batch) == pytest.approx(expected)


def test_more_channels_and_classes_cost_more():
    topology = derive_topology((16, 64, 64), (3.0, 1.0, 1.0), TINY)
    assert estimate_training_memory(topology, 2, 2, 3) > estimate_training_memory(topology, 2, 1, 3)
    assert estimate_training_memory(topology, 2, 1, 3) > estimate_training_memory(topology, 2, 1, 2)


PEAK_SCRIPT = textwrap.dedent("""
    import ctypes, gc, json, re, sys
    import torch
    from liverseg.networks import build_network

    libc = ctypes.CDLL(sys.argv[1])
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: large tensors are mapped and unmapped, so RSS follows them
    torch.set_num_threads(1)

    def rss(field):
        return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    kwargs = json.loads(sys.argv[2])
    patch = tuple(kwargs.pop("patch"))
    net = build_network("unet", 1, 3, **kwargs)
    x = torch.randn(2, 1, *patch)
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = net(x)
            loss = sum(o.float().mean() for o in outputs)
        loss.backward()
    step()  # warm-up: kernels, weight gradients, thread pools
    gc.collect(); libc.malloc_trim(0)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    before = rss("VmRSS")
    step()
    print(rss("VmHWM") - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="peak measurement needs Linux /proc and glibc malloc")
def test_mixed_precision_peak_matches_the_calibrated_factor(tmp_path: Path):
    """A real bf16-autocast training step of a small planned network, measured as process RSS."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("cannot reset the RSS high-water mark here")
    topology = derive_topology((16, 64, 64), (3.0, 1.0, 1.0), TINY)
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    kwargs = dict(topology.network_kwargs(), patch=list(topology.patch_size))
    result = subprocess.run([sys.executable, str(script), ctypes.util.find_library("c"), json.dumps(kwargs)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    measured = int(result.stdout.strip())
    estimated = 2 * activation_count_bytes(topology) * MIXED_PRECISION_PEAK
    # Documented in liverseg.planning.memory: 0.69 of the count measured for this tiny network
    # (0.63-0.65 for full-size ones), against the factor 0.7.
    assert 0.75 <= measured / estimated <= 1.35, (measured, estimated)

