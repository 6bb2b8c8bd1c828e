"""Process-group set-up from torchrun's environment, on CPU (gloo) and CUDA (nccl).

BasicSR's ``init_dist`` hard-wires nccl and ``torch.cuda.set_device``; this works without a GPU.
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain ``python train.py`` is one
process with no process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(num_gpu: object = 'auto', local_rank: int = 0) -> torch.device:
    """``num_gpu``: 'auto' (CUDA when available), 0 (CPU) or a positive count (CUDA required)."""
    if num_gpu == 'auto':
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = int(num_gpu) > 0
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError(f'num_gpu: {num_gpu} asks for CUDA, but torch sees no CUDA device; use num_gpu: 0 or auto')
    return torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')


def init_distributed(num_gpu: object = 'auto') -> DistInfo:
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = choose_device(num_gpu, local_rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size,
                                device_id=device if device.type == 'cuda' else None)
    return DistInfo(rank, world_size, local_rank, device)


def get_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without a process group)."""
    _, world = get_rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (for agreeing to stop together)."""
    _, world = get_rank_world()
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if get_rank_world()[1] > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
