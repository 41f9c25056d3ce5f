"""Which device runs the network, in which precision, with how many CPU threads.

bf16 autocast is 2.2-2.4x faster than fp32 on CPUs with native bf16 instructions (avx512_bf16,
AMX) and can be slower without them, so ``"auto"`` uses it only where the CPU reports them.
On CUDA ``"auto"`` means fp16 autocast, as nnU-Net does.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import torch

from liverseg.errors import LiversegError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = Path("/proc/cpuinfo")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a ``--device`` value: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` picks the first GPU when torch sees one and the CPU otherwise; asking for a GPU that
    is not there is a user error, not a silent fallback to a 10-100x slower CPU run.
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise LiversegError(f"unknown device '{device}'; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N for GPU N)")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise LiversegError(f"device '{device}' was asked for but torch {torch.__version__} ({build}) sees no CUDA "
                                "GPU; use --device cpu (or auto), or install a CUDA build of torch and check the "
                                "driver with nvidia-smi")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise LiversegError(f"device '{device}' does not exist: torch sees {count} GPU(s), "
                                f"cuda:0 to cuda:{count - 1}")
    return resolved


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the Linux kernel reports (empty where /proc/cpuinfo does not exist)."""
    return _read_cpu_flags(_CPUINFO)


@functools.lru_cache(maxsize=None)
def _read_cpu_flags(path: Path) -> frozenset[str]:
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (avx512_bf16 or AMX), so bf16 autocast pays off."""
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def autocast_dtype(device: torch.device, use_bf16: bool | str = "auto") -> torch.dtype | None:
    """The autocast dtype for the network on ``device``, or None for plain fp32.

    ``use_bf16``: ``"auto"`` = bf16 on CPUs that support it (fp32 otherwise), fp16 on CUDA;
    ``True`` = bf16 on any device; ``False`` = fp32 (the ``--fp32`` flag).
    """
    if use_bf16 is False:
        return None
    if use_bf16 is True:
        if device.type == "cpu" and not bf16_supported():
            log.warning("bf16 forced on a CPU without avx512_bf16/AMX: this can be slower than fp32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise LiversegError(f"bf16 was asked for but {torch.cuda.get_device_name(device)} has no bf16 support; "
                                "use the default precision (fp16 on GPUs) or fp32")
        return torch.bfloat16
    if use_bf16 != "auto":
        raise ValueError(f"use_bf16 must be True, False or 'auto', got {use_bf16!r}")
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if bf16_supported() else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, lowered by a cgroup v2 CPU quota if any.

    Containers and batch schedulers often limit CPUs this way while ``os.cpu_count()`` still
    reports the whole machine; more threads than CPUs makes every forward pass slower.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: :func:`available_cpus`) and return the number used."""
    threads = available_cpus() if num_threads is None else int(num_threads)
    if threads < 1:
        raise LiversegError(f"the number of threads must be at least 1, got {num_threads}")
    torch.set_num_threads(threads)
    return threads
