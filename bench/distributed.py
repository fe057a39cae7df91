"""Several processes, one job: the torch.distributed process group that ``torchrun`` sets up.

A run is distributed when ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts it; otherwise ``World`` is the one process,
and every collective below is the identity, so the single-process path runs the same code.

Work is split in contiguous *shards* whose boundaries are multiples of a fixed unit (the encoding
batch and the scoring tile). The unit never depends on the world size, so every batch and every
score tile is the same computation whatever the number of processes: that is what makes the
distributed numbers the single-process numbers, bit for bit.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from tbps_bench.errors import BenchError

T = TypeVar("T")

#: how long a collective waits for a rank that stopped before the job gives up (seconds)
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1 or self.backend is not None

    # -- sharding
    def shards(self, total: int, unit: int) -> list[slice]:
        """Contiguous slices of ``range(total)``, one per rank, cut at multiples of ``unit`` and as
        even as whole units allow (a rank may get nothing when there are fewer units than ranks)."""
        units = math.ceil(total / unit) if total else 0
        cuts = [min(total, (units * r // self.size) * unit) for r in range(self.size + 1)]
        return [slice(cuts[r], cuts[r + 1]) for r in range(self.size)]

    def shard(self, total: int, unit: int) -> slice:
        return self.shards(total, unit)[self.rank]

    # -- collectives (identities in one process)
    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """The element-wise sum or max over ranks (a new tensor on ``tensor``'s device)."""
        if not self.distributed:
            return tensor
        moved = tensor.to(self._device()).contiguous()
        dist.all_reduce(moved, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return moved.to(tensor.device)

    def broadcast(self, tensor: torch.Tensor, source: int) -> torch.Tensor:
        """``tensor`` of rank ``source`` on every rank; other ranks pass a buffer of the same shape."""
        if not self.distributed:
            return tensor
        moved = tensor.to(self._device()).contiguous()
        dist.broadcast(moved, src=source)
        return moved.to(tensor.device)

    def all_gather_object(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def shapes(self, tensor: torch.Tensor) -> list[tuple[int, ...]]:
        """Every rank's shape of a tensor with the same number of dimensions everywhere."""
        if not self.distributed:
            return [tuple(tensor.shape)]
        shape = torch.tensor(tensor.shape, dtype=torch.int64, device=self._device())
        pieces = [torch.empty_like(shape) for _ in range(self.size)]
        dist.all_gather(pieces, shape)
        return [tuple(int(n) for n in piece) for piece in pieces]

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order; trailing sizes may differ (zero-padded to
        the largest). Differentiable: the backward gives each rank's rows the sum over the ranks of
        their gradient (see ``batch_gatherer``)."""
        if not self.distributed:
            return tensor
        shapes = self.shapes(tensor)
        widest = [max(sizes) for sizes in zip(*shapes, strict=True)]
        pad = [p for have, want in zip(reversed(tensor.shape), reversed(widest), strict=True) for p in (0, want - have)]
        pieces = differentiable.all_gather(torch.nn.functional.pad(tensor, pad).to(self._device()))
        return torch.cat([piece[: shape[0]] for piece, shape in zip(pieces, shapes, strict=True)]).to(tensor.device)

    def gather_features(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's rows of each feature tensor (``gather_rows``), without gradients."""
        return {key: self.gather_rows(value.detach()) for key, value in features.items()}

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def in_turn(self, function: Callable[[], T]) -> T:
        """``function()`` on rank 0 first, then on the first process of every other machine, then on
        the rest: whatever fills a cache on first use (a generated dataset, a parsed annotation) is
        written by one process per file system, never by two at once, and read by the others."""
        if not self.distributed:
            return function()
        turn = 0 if self.rank == 0 else 1 if self.local_rank == 0 else 2
        result = None
        for step in range(3):
            if step == turn:
                result = function()
            self.barrier()
        return result


SINGLE = World()


def current_world() -> World:
    """The world of an initialised process group, or the single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())
    return SINGLE


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


class _Joined:
    """Whether this module initialised the process group: a program that set up its own (a training
    script that evaluates under torchrun, several commands in one job) keeps it after a command."""

    by_us = False


def start(device_option: str) -> tuple[World, str]:
    """Join the job ``torchrun`` launched (NCCL on CUDA, gloo on the CPU) and pick this rank's
    device: ``cuda:LOCAL_RANK`` or the CPU. Outside torchrun: the single process, device unchanged.
    A process group the program already initialised is used as it is."""
    if not launched_by_torchrun():
        return SINGLE, device_option
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    wants_cuda = device_option.startswith("cuda") or (device_option == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if not torch.cuda.is_available():
            raise BenchError("--device cuda was requested but no CUDA device is available on this rank")
        if local_rank >= torch.cuda.device_count():
            raise BenchError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", f"cuda:{local_rank}"
    else:
        backend, device = "gloo", "cpu"
    if not dist.is_initialized():
        timeout = float(os.environ.get("TBPS_BENCH_COLLECTIVE_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
        _Joined.by_us = True
    return current_world(), device


def explained(exc: BaseException) -> str:
    """One line for an error in a distributed job; a collective that waited out its timeout names
    the variable that sets it (a step that is slow on one process, not a fault, needs a longer one)."""
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
    lowered = message.lower()
    if "timeout" in lowered or "timed out" in lowered:
        limit = os.environ.get("TBPS_BENCH_COLLECTIVE_TIMEOUT_S", f"{DEFAULT_TIMEOUT_S:g}")
        message += (
            f" (a collective waited longer than TBPS_BENCH_COLLECTIVE_TIMEOUT_S = {limit} s for another process; "
            "if one process is legitimately slower, set it higher, e.g. TBPS_BENCH_COLLECTIVE_TIMEOUT_S=1800)"
        )
    return message


def stop() -> None:
    """Leave the process group this module started; one the program initialised itself stays."""
    if _Joined.by_us and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _Joined.by_us = False


def describe(world: World, device: torch.device) -> dict[str, Any]:
    """World size, backend and every rank's host and device, for the result's provenance."""
    from tbps_bench.provenance import describe_device

    here = {"rank": world.rank, "host": socket.gethostname(), "device": describe_device(device)}
    return {"world_size": world.size, "backend": world.backend, "ranks": world.all_gather_object(here)}


def batch_gatherer(world: World) -> Callable[[Any], Any]:
    """The function a method applies to its batch features (tensors, or dicts, tuples and lists of
    them) before a batch-level loss: the global batch, in rank order, differentiable.

    Every process then computes the same global loss. The gather's backward sums each row's
    gradient over the processes, so every gradient is ``world.size`` times its single-process value
    until ``data_parallel``'s average divides the sum by the world size."""

    def gather(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return world.gather_rows(value)
        if isinstance(value, dict):
            return {key: gather(item) for key, item in value.items()}
        if isinstance(value, tuple | list):
            return type(value)(gather(item) for item in value)
        return value

    return gather


def data_parallel(
    network: torch.nn.Module, losses: Callable[[Any], dict[str, torch.Tensor]], world: World, device: torch.device
) -> Callable[[Any], dict[str, torch.Tensor]]:
    """A method's loss function, run through torch's DistributedDataParallel over ``network``: the
    first process's parameters and buffers are broadcast once, and every backward pass averages the
    gradients over the processes (gloo on the CPU, NCCL on CUDA). In one process, ``losses`` itself.

    The losses are computed on the gathered global batch (``batch_gatherer``), whose backward sums
    each row's gradient over the processes: DistributedDataParallel's mean then gives the gradient
    of one process on the whole global batch. Parameters a step does not use keep no gradient, as
    in one process."""
    if not world.distributed:
        return losses
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # static graph: every step computes the same losses, so the parameters a step leaves unused are
    # found once, in the first step, instead of by a traversal of the graph in every step
    return torch.nn.parallel.DistributedDataParallel(
        _LossModule(network, losses), device_ids=device_ids, static_graph=True
    )


class _LossModule(torch.nn.Module):
    """A method's loss computation as one module, the form DistributedDataParallel wraps: its
    parameters are the network's, its forward the method's ``training_losses``."""

    def __init__(self, network: torch.nn.Module, losses: Callable[[Any], dict[str, torch.Tensor]]):
        super().__init__()
        self.network = network
        self._losses = losses  # a bound method of the plugin, not a module

    def forward(self, inputs: Any) -> dict[str, torch.Tensor]:
        return self._losses(inputs)


def with_global_batch_norm(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """``module`` with batch statistics over the global batch in every BatchNorm layer while
    training, as one process computes them: torch's SyncBatchNorm on CUDA (NCCL), and on the CPU
    (gloo), which SyncBatchNorm refuses, ``GlobalBatchNorm``. The layers are swapped, keeping their
    parameter and buffer objects, so state-dict keys and optimizer groups are unchanged."""
    if not world.distributed:
        return module
    if world.backend == "nccl":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _swapped_batch_norm(module)


def _swapped_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        swapped = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        swapped.weight, swapped.bias = module.weight, module.bias
        swapped.running_mean, swapped.running_var = module.running_mean, module.running_var
        swapped.num_batches_tracked = module.num_batches_tracked
        swapped.train(module.training)
        return swapped
    for name, child in module.named_children():
        module.add_module(name, _swapped_batch_norm(child))
    return module


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm of any dimensionality whose training statistics (mean, biased variance for the
    output, unbiased for the running estimate, in float32) cover every process's rows; evaluation
    and a single process are torch's BatchNorm unchanged."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        view = [1, -1] + [1] * (input.dim() - 2)
        dtype, x = input.dtype, input.float()  # statistics in float32, also under mixed precision
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / max(x.shape[1], 1)])])
        totals = differentiable.all_reduce(local)
        count, mean = totals[-1], totals[:-1] / totals[-1]
        centred = x - mean.view(view)
        variance = differentiable.all_reduce((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(variance + self.eps).view(view)
        if self.weight is not None:
            out = out * self.weight.view(view) + self.bias.view(view)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = variance * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        return out.to(dtype)
