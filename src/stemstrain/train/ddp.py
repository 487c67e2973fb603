"""The process group: one code path for 1 process, N processes, N nodes.

``torchrun`` (or Slurm's ``srun`` with the same variables) sets RANK, WORLD_SIZE and LOCAL_RANK;
without them the process trains alone in a world of one. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import datetime
import hashlib
import os

import torch
import torch.distributed as dist

from stemstrain.errors import StemstrainInputError
from stemstrain.execute import available_cores

__all__ = ["broadcast_object", "environment", "parameter_checksum", "setup", "summed"]


def environment() -> tuple[int, int, int, int]:
    """Rank, world size, local rank and processes on this node, from torchrun's variables."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world))


def setup(rank: int, world: int, local_rank: int, local_world: int) -> torch.device:
    """Join the process group (a world of one without torchrun) and return this process's device."""
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise StemstrainInputError(
                f"process {local_rank} of {local_world} on this node has no GPU of its own: the node has "
                f"{torch.cuda.device_count()}; start at most that many (--nproc, or torchrun's --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        # Processes on one node share its cores; oversubscription slows every rank down.
        torch.set_num_threads(max(1, available_cores() // local_world))
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=30)
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return device


def summed(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum of a small CPU tensor over all ranks (NCCL reduces only GPU tensors)."""
    values = values.to(device, copy=True)
    dist.all_reduce(values)
    return values.cpu()


def broadcast_object(value, src: int = 0):
    """``value`` of rank ``src`` on every rank (a picklable Python object)."""
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def parameter_checksum(model: torch.nn.Module) -> str:
    """sha256 over a model's state (names and values): equal on every rank after a correct DDP run."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
