"""Data-parallel training across processes: what the engine needs from `torch.distributed`
(PyTorch's DistributedDataParallel, Li et al. 2020, "PyTorch Distributed: Experiences on
Accelerating Data Parallel Training").

A run is distributed when its launcher says so: `torchrun` (or any `env://` launcher) sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process it starts
(`cnnlab.core.env.launch_ranks`). Then `setup` joins the process group (NCCL between GPUs, one GPU
per process, LOCAL_RANK choosing it; Gloo on CPUs), and the engine wraps the model in DDP,
which averages the gradients of every step across processes. Without those variables
everything here is a no-op and a run is the plain single process it always was.

Division of work: every process holds the whole data set on its device and draws the same
seeded permutation; the tasks give each rank its own contiguous slice of each global batch
(`cnnlab.data.loader.shard_slice`), so each sample is seen once per epoch across ranks and the
global batch is the recipe's. Only rank 0 writes files; checkpoints, resume state and BatchNorm
statistics flow from rank 0 to the others (`broadcast_object`, `broadcast_buffers`).
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed
import torch.nn as nn

from cnnlab.core.env import distributed_backend, launch_ranks
from cnnlab.core.errors import CnnlabError
from cnnlab.core.rng import rank_seed


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: rank 0 of 1 when not distributed."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group the launcher describes (once per process) and return this
    process's place in it and its device: on CUDA, GPU number LOCAL_RANK."""
    rank, world_size, local_rank = launch_ranks()
    if world_size <= 1:
        return DistContext(), device
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CnnlabError(f"process {rank} wants GPU {local_rank} but this machine has "
                              f"{torch.cuda.device_count()}; start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(distributed_backend(device))
        # Leave the group cleanly at exit; NCCL warns about (and may hang on) a group left open.
        atexit.register(_leave)
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return DistContext(rank, world_size, local_rank, str(torch.distributed.get_backend())), device


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or not distributed. Before the group is joined, the launcher's RANK says."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return launch_ranks()[0] == 0


def wrap(module: nn.Module, dist: DistContext, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel when distributed (else itself). DDP copies rank 0's
    weights and buffers to every rank here, averages gradients during backward, and, with
    broadcast_buffers (the default), hands rank 0's BatchNorm running statistics to the other
    ranks before each forward pass."""
    if not dist.enabled:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


class TrainingModule:
    """The module training runs, in DistributedDataParallel when distributed and compiled when
    asked. DDP registers the parameters that require gradients when it is built, so when a
    task freezes or unfreezes layers between epochs, `current()` builds a new wrapper (one
    broadcast of weights that are already equal). Compiling wraps the same parameters."""

    def __init__(self, module: nn.Module, dist: DistContext, device: torch.device, *, compile: bool = False):
        self.module, self.dist, self.device, self.compile = module, dist, device, compile
        self._key: tuple | None = None
        self._wrapped: nn.Module | None = None

    def current(self) -> nn.Module:
        key = tuple(p.requires_grad for p in self.module.parameters()) if self.dist.enabled else ()
        if self._wrapped is None or key != self._key:
            wrapped = wrap(self.module, self.dist, self.device)
            self._wrapped, self._key = torch.compile(wrapped) if self.compile else wrapped, key
        return self._wrapped


def seed_rank(dist: DistContext, seed: int, epoch: int) -> None:
    """Give every rank but 0 a torch seed of its own for the epoch (`cnnlab.core.rng.rank_seed`):
    rank 0 keeps the single-process stream, so a one-process run is unchanged."""
    if dist.rank > 0:
        torch.manual_seed(rank_seed(seed, dist.rank, epoch))


def sync_batchnorm(model: nn.Module, dist: DistContext, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch instead of each rank's share (`--sync-bn`). PyTorch's
    SyncBatchNorm runs on GPUs only; a single process has nothing to synchronise."""
    if not dist.enabled:
        return model
    if device.type != "cuda":
        raise CnnlabError("sync_bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPUs); "
                          "drop --sync-bn to train with per-process BatchNorm statistics")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def broadcast_object(obj: Any, dist: DistContext) -> Any:
    """Rank 0's `obj` on every rank (e.g. the checkpoint only rank 0 reads)."""
    if not dist.enabled:
        return obj
    box = [obj if dist.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(dist: DistContext, *modules: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. After an epoch each rank
    has folded its own last batch into them; evaluating and saving rank 0's makes every rank
    score the same model, the one the checkpoint holds."""
    if dist.enabled:
        for module in {id(m): m for m in modules}.values():  # the model twice when no EMA
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)


def sum_over_ranks(sums: dict[str, torch.Tensor], images: int, dist: DistContext,
                   device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """The epoch's metric sums and image count added over all ranks: one all-reduce."""
    if not dist.enabled:
        return sums, images
    keys = list(sums)  # the same order on every rank: the same code filled them
    packed = torch.stack([*(sums[k].to(device=device, dtype=torch.float64) for k in keys),
                          torch.tensor(float(images), dtype=torch.float64, device=device)])
    torch.distributed.all_reduce(packed)
    return {k: packed[i] for i, k in enumerate(keys)}, int(packed[-1].item())


class _GatherRows(torch.autograd.Function):
    """All ranks' rows of a tensor, in rank order, with the gradient flowing back to each
    rank's own rows. Backward sums every rank's gradient of those rows: each rank computes the
    same loss of the gathered batch, so after DDP averages the parameter gradients over the
    ranks they are exactly the single-process gradient of that loss."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        # all_gather needs equal shapes: pad every share to the largest, then trim.
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        torch.distributed.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def gather_rows(local: torch.Tensor, sizes: tuple[int, ...], dist: DistContext) -> torch.Tensor:
    """The global batch's rows from each rank's share (`sizes[r]` rows on rank r)."""
    if not dist.enabled:
        return local
    if len(local) != sizes[dist.rank]:
        raise ValueError(f"rank {dist.rank} holds {len(local)} rows, expected {sizes[dist.rank]}")
    return _GatherRows.apply(local, tuple(sizes), dist.rank)

