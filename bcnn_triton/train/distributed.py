"""Process-group setup for ``torchrun``, and samplers that shard data across ranks.

Run unchanged in one process or under ``torchrun --nproc_per_node K`` (and multi-node through
torchrun's ``--nnodes/--rdzv-*`` flags): torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``...) selects distributed mode, NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from bcnn_triton.errors import UserInputError

__all__ = [
    "DistributedContext",
    "ShardedEvalSampler",
    "all_reduce_sum",
    "barrier",
    "broadcast_state",
    "init_distributed",
    "on_main_rank",
    "resolve_device",
    "shutdown_distributed",
]

Result = TypeVar("Result")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: rank and world size (1 without torchrun) and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints progress and writes files."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA if available else CPU; ``"cuda"`` → this process's local GPU.

    Raises:
        UserInputError: an unknown device, or CUDA where none is available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(device_name: str = "auto") -> DistributedContext:
    """Join torchrun's process group if launched by torchrun, else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=resolve_device(device_name))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if not dist.is_initialized():
        store = _restart_safe_store(world_size)
        group = {} if store is None else {"store": store, "rank": rank, "world_size": world_size}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device, **group)
        else:
            dist.init_process_group("gloo", **group)
    return DistributedContext(rank, world_size, local_rank, device)


def _restart_safe_store(world_size: int) -> dist.Store | None:
    """The torchrun agent's store, with keys prefixed by the restart count; None if no agent.

    The agent keeps one store for all restarts (``--max-restarts``). With the default env://
    init, restarted workers found the addresses that the killed workers had published and
    failed with "Gloo connectFullMesh failed ... Connection refused" (seen with torch 2.14;
    pytorch/pytorch#167288 reports the same for NCCL). A prefix per attempt keeps them apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"bcnn_triton/attempt_{attempt}", store)


def shutdown_distributed(context: DistributedContext, *, clean: bool = True) -> None:
    """Leave the process group; after a ``clean`` finish, first wait for every rank.

    After an error the barrier is skipped: the other ranks may be gone, and torchrun tears the
    group down (and restarts it under ``--max-restarts``).
    """
    if context.distributed and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if context.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in one process); returns it."""
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def on_main_rank(context: DistributedContext, action: Callable[[], Result]) -> Result | None:
    """``action()`` on rank 0 only; a UserInputError it raises is raised on every rank.

    The other ranks wait for rank 0's outcome (one broadcast), so a refusal there (a locked or
    unwritable run folder...) ends every process with the same one-line error instead of
    leaving them waiting in the next collective. Returns the result on rank 0, None elsewhere.
    """
    result, failure = None, None
    if context.is_main:
        try:
            result = action()
        except UserInputError as error:
            failure = error
    if context.distributed:
        outcome = [None if failure is None else (str(failure), failure.command_line)]
        device = context.device if context.device.type == "cuda" else None
        dist.broadcast_object_list(outcome, src=0, device=device)
        if not context.is_main and outcome[0] is not None:
            message, command_line = outcome[0]
            raise UserInputError(message, command_line=command_line)
    if failure is not None:
        raise failure
    return result


def broadcast_state(module: nn.Module, context: DistributedContext) -> None:
    """Overwrite ``module``'s parameters and buffers on every rank with rank 0's (in place)."""
    if context.distributed:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


class ShardedEvalSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``0..n-1``: every sample on exactly one rank.

    Unlike ``DistributedSampler`` it never pads with duplicates, so counts summed over ranks
    are exact (shards differ in length by at most one; evaluation needs no collective per step).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
