"""Training with several processes (PyTorch DDP): one process per GPU, on one machine or several.

``torchrun`` starts the processes and tells each one who it is through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``);
:func:`init_from_environment` joins that job once per process: NCCL when training on GPUs (each
process on the GPU of its ``LOCAL_RANK``), gloo on the CPU. Outside torchrun, or with a single
process, every helper here is a no-op and training runs exactly as without this module.

How a step is split (:mod:`liverseg.training.trainer` calls these hooks):

- the plan's batch is the **global** batch: each of the ``W`` processes trains on ``B / W``
  patches (:func:`per_rank_batch` refuses a batch that does not split evenly);
- each process samples its own patches (its own seed, :func:`rank_seed`), while the kinds of
  centres (lesion, class, random) of one global batch are drawn once, with a generator every
  process shares, and each process takes its slice (:class:`~liverseg.training.patch_loader.PatchLoader`
  ``shard``): the union over processes follows the plan's oversampling ratios as one batch would;
- the loss is the loss of the **concatenated** batch: :func:`gather_for_loss` collects every
  process' network outputs (gradients flow back to the process that made them), targets and
  masks, so a batch Dice or a masked mean is computed over the global batch. Every process then
  holds the same loss, its gradient reaches each process ``W`` times through the gather, and DDP's
  gradient averaging divides by ``W``: the update is the single-process update on the whole batch,
  for any registered loss (tested). The price is memory: each process holds the logits and loss
  terms of the global batch (``W`` times its own);
- validation counts and losses are summed or computed over all processes; only rank 0 writes
  (checkpoints, log, ``progress.png``, final validation) and shows progress bars.

A long final validation on rank 0 makes the other processes wait at their next collective (the
next model of a pipeline), so the process group is created with a :data:`TIMEOUT` of hours, not
NCCL's default ten minutes.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
from datetime import timedelta
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from liverseg.errors import LiversegError
from liverseg.inference.device import available_cpus, resolve_device

log = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = timedelta(hours=3)
TRAIN_MODULE = "liverseg.cli.train"
# Spawn key separating the per-process seeds from every other use of the run seed.
_RANK_KEY = 0x72616E6B
_quietened: list[tuple[logging.Logger, int]] = []


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def is_distributed() -> bool:
    """Whether this process trains together with others (a process group of two or more is joined)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process' global rank: the process group's, else torchrun's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files, logs and shows progress."""
    return rank() == 0


def local_rank() -> int:
    """This process' rank on its machine (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def processes_per_machine() -> int:
    """Processes torchrun started on this machine (``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``; 1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1))))


def cpus_per_process() -> int:
    """This machine's CPUs shared among its training processes (at least 1): what one process may use."""
    return max(1, available_cpus() // processes_per_machine())


def init_from_environment(device: str = "auto") -> bool:
    """Join the torchrun job of this process, once; returns whether it trains together with others.

    ``device`` (``--device``) picks the backend: NCCL for GPUs (this process then uses the GPU of
    its ``LOCAL_RANK``), gloo for the CPU. Outside torchrun, or with ``WORLD_SIZE`` 1, nothing
    happens. The group lives until :func:`shutdown` or the end of the process (a process group
    cannot be created twice in one process); processes other than rank 0 log warnings only.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if dist.is_initialized():
        return is_distributed()
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if resolved.index is not None:
            raise LiversegError(f"--device {device}: under torchrun each process uses the GPU of its LOCAL_RANK; give "
                                "--device cuda or auto (choose the GPUs with CUDA_VISIBLE_DEVICES)")
        if local_rank() >= torch.cuda.device_count():
            raise LiversegError(f"LOCAL_RANK {local_rank()} but torch sees {torch.cuda.device_count()} GPU(s) on this "
                                "machine; start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank())
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(shutdown)
    if not is_main():
        logger = logging.getLogger("liverseg")
        _quietened.append((logger, logger.level))
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    log.info("joined a %s process group: %d processes, %d on this machine", backend, world_size(),
             processes_per_machine())
    return True


def shutdown() -> None:
    """Leave the process group (if joined) and give the other ranks their log level back."""
    if dist.is_available() and dist.is_initialized():
        # DDP wrappers left in reference cycles would otherwise drop the group's last reference later,
        # from the garbage collector, where joining gloo's threads under the GIL can deadlock.
        gc.collect()
        dist.destroy_process_group()
    while _quietened:
        logger, level = _quietened.pop()
        logger.setLevel(level)


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[bool]:
    """Within the block, be part of the torchrun job (see :func:`init_from_environment`); leave it afterwards.

    Yields whether this process trains together with others. A group that already existed when
    the block started is left alone.
    """
    existed = dist.is_available() and dist.is_initialized()
    joined = init_from_environment(device)
    try:
        yield joined
    finally:
        if joined and not existed:
            shutdown()


def training_device(device: str) -> torch.device:
    """The torch device of this process for ``--device``: under DDP on GPUs, the GPU of its ``LOCAL_RANK``."""
    resolved = resolve_device(device)
    if is_distributed() and resolved.type == "cuda":
        return torch.device("cuda", local_rank())
    return resolved


def per_rank_batch(batch_size: int, processes: int | None = None) -> int:
    """Patches each process trains on for a global ``batch_size``; a LiversegError when it does not split evenly."""
    processes = world_size() if processes is None else processes
    if batch_size % processes == 0:
        return batch_size // processes
    lower, upper = batch_size // processes * processes, (batch_size // processes + 1) * processes
    choices = f"--batch-size {upper}" if lower == 0 else f"--batch-size {lower} or {upper}"
    raise LiversegError(f"the batch of {batch_size} patch(es) is the global batch and does not split evenly over "
                        f"{processes} processes (each trains on the same number); give {choices}")


def shard() -> tuple[int, int] | None:
    """``(rank, world size)`` for the patch loaders when training with several processes, else None."""
    return (rank(), world_size()) if is_distributed() else None


def rank_seed(seed: int, process: int | None = None, epoch: int = 0) -> int:
    """The seed of one process' data and random generators: ``seed`` itself on rank 0, distinct on the others.

    ``epoch`` gives a continued run's processes fresh seeds (when their saved states cannot be used).
    """
    process = rank() if process is None else process
    if process == 0 and epoch == 0:
        return int(seed)
    key = (_RANK_KEY, int(process)) if epoch == 0 else (_RANK_KEY, int(process), int(epoch))
    state = np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1)[0]
    return int(state & 0x7FFFFFFF)


def wrap(network: nn.Module, device: torch.device) -> nn.Module:
    """``network`` in DistributedDataParallel when training with several processes (else as it is).

    ``find_unused_parameters`` stays off: in training mode every head of liverseg's networks
    contributes to the deep-supervision loss. DDP copies rank 0's weights to every process here.
    """
    if not is_distributed():
        return network
    ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids)


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (what checkpoints and prediction use)."""
    return network.module if isinstance(network, DistributedDataParallel) else network


class _GatherWithGradient(torch.autograd.Function):
    """All processes' tensors concatenated along the batch; the gradient of its own part flows back to each."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> Tensor:
        # Every process computed the same loss, so each part's gradient is summed over the copies.
        gradient = gradient.contiguous()
        dist.all_reduce(gradient)
        return gradient[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gather_for_loss(outputs: Tensor | Sequence[Tensor], target: Tensor,
                    mask: Tensor | None) -> tuple[Tensor | list[Tensor], Tensor, Tensor | None]:
    """Network outputs, targets and masks of the global batch (concatenated in rank order); as given without DDP.

    Outputs keep their graph: the loss of the global batch, computed on every process, sends each
    process the gradient of its own outputs (module docstring).
    """
    if not is_distributed():
        return (outputs if isinstance(outputs, Tensor) else list(outputs)), target, mask
    if isinstance(outputs, Tensor):
        gathered: Tensor | list[Tensor] = _GatherWithGradient.apply(outputs.float())
    else:
        gathered = [_GatherWithGradient.apply(o.float()) for o in outputs]
    return gathered, _gather(target), None if mask is None else _gather(mask.to(torch.uint8)).bool()


def _gather(tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over all processes (a new tensor on ``tensor``'s device); itself without DDP."""
    if not is_distributed():
        return tensor
    reduced = tensor.to(_communication_device(), copy=True)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (a picklable object); ``obj`` itself without DDP."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0, device=_communication_device())
    return holder[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process' ``obj``, in rank order, on every process; ``[obj]`` without DDP."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait until every process reaches this point (nothing to wait for without DDP)."""
    if is_distributed():
        dist.barrier()


def _communication_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launch(processes: int, argv: Sequence[str], module: str = TRAIN_MODULE) -> int:
    """Run ``python -m module argv`` in ``processes`` processes on this machine through torchrun; returns the exit code.

    torchrun's ``--standalone`` rendezvous picks a free port; the exit code is 0, or the first
    failed process' code (2 for a user error). Several machines: run torchrun yourself
    (docs/training.md).
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise LiversegError(f"--ddp must be a number of processes >= 1; got {processes!r}")
    if launched_by_torchrun():
        raise LiversegError("--ddp starts torchrun itself; this process already runs under torchrun: leave --ddp out")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    arguments = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(processes), "-m", module, *argv])
    log.info("starting %d training processes: torchrun --standalone --nproc_per_node %d -m %s %s", processes, processes,
             module, " ".join(argv))
    try:
        run(arguments)
    except ChildFailedError as e:
        codes = [failure.exitcode for _, failure in sorted(e.failures.items())]
        code = next((c for c in codes if c and c > 0), 1)
        log.error("%d of %d training process(es) failed (exit code %d); their messages are above", len(codes),
                  processes, code)
        return code
    return 0
