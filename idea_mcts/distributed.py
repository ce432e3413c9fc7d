"""The processes of a multi-process launch (`torchrun`, `accelerate launch`): who this process is, the process
group, and where each rank's engines run. No cluster code of our own: the launcher starts and connects the
processes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment) and torch.distributed joins them.

    world = World.from_env()            # World(rank=0, size=1, local_rank=0) when not launched that way
    if world.size > 1:
        init_group()                    # gloo on CPU; cuda:nccl with cpu:gloo for object collectives on GPUs
        statuses = all_gather({"rank": world.rank, "ok": True})
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from idea_mcts.config import EngineConfig

logger = logging.getLogger(__name__)

GROUP_TIMEOUT = timedelta(days=7)
"""How long a collective waits for the slowest rank: the ranks meet once their whole shard is searched, which
can be hours apart on unbalanced shards (torch's default, 30 min for gloo, would kill a healthy job)."""


@dataclass(frozen=True)
class World:
    """This process's place in the launch."""

    rank: int = 0
    """Global rank (0 .. size-1); rank 0 merges, pushes, evaluates and reports."""
    size: int = 1
    """Number of processes (WORLD_SIZE)."""
    local_rank: int = 0
    """Rank on this node (LOCAL_RANK): picks the node's GPU."""

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> World:
        """From the variables torchrun / accelerate launch set (RANK, WORLD_SIZE, LOCAL_RANK)."""
        env = dict(os.environ) if env is None else env

        def num(name: str, default: int) -> int:
            try:
                return int(env.get(name, default))
            except ValueError:
                return default

        size = max(1, num("WORLD_SIZE", 1))
        rank = num("RANK", 0)
        if size > 1 and not 0 <= rank < size:
            from idea_mcts.errors import UsageError

            raise UsageError(f"RANK={env.get('RANK')} is not a rank of WORLD_SIZE={size}")
        return World(rank, size, num("LOCAL_RANK", rank if size > 1 else 0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def tag(self) -> str:
        return f"rank {self.rank} of {self.size}"


def init_group() -> None:
    """Join the launch's process group (once per process): `gloo` on CPU; on CUDA `cuda:nccl,cpu:gloo`, so tensor
    collectives use NCCL and object collectives (statuses) stay on the CPU. accelerate and the Trainer reuse
    this group (they initialise one only when none exists)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(World.from_env().local_rank % torch.cuda.device_count())
        backend = "cuda:nccl,cpu:gloo"
    dist.init_process_group(backend=backend, timeout=GROUP_TIMEOUT)


def leave_group() -> None:
    """Leave the process group, if this process joined one: entry points call it before the process exits. A
    process that exits with its gloo group alive can die in the group's threads at interpreter shutdown ("terminate
    called without an active exception", SIGABRT) instead of with its own exit code, e.g. a rank that stops at once
    on bad input while the others are still leaving."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never imports torch: a one-process run has no group to leave
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (a picklable status), in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def place_engines(engines: dict[str, EngineConfig], world: World, cuda_devices: int | None = None
                  ) -> dict[str, EngineConfig]:
    """The engines as this rank runs them. On GPUs an in-process engine left on `device: auto` runs on the
    rank's local GPU (`cuda:LOCAL_RANK`, modulo the GPUs visible); a vLLM engine gets its share of the node's
    GPUs through CUDA_VISIBLE_DEVICES (`tensor_parallel_size` GPUs per rank); an `openai` engine with
    `base_urls` talks to `base_urls[rank % len(base_urls)]` (a server pool shared out by rank). None of this is
    in the cache keys or the config fingerprint: where a result is computed is not what it is."""
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    placed = {}
    for key, e in engines.items():
        if e.backend == "openai" and e.base_urls:
            e = replace(e, base_url=e.base_urls[world.rank % len(e.base_urls)])
        elif e.backend == "vllm" and cuda_devices and world.size > 1:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(cuda_devices)]
            tp = e.tensor_parallel_size * e.data_parallel_size
            start = (world.local_rank * tp) % max(len(ids), 1)
            mine = ids[start:start + tp]
            if len(mine) < tp:
                from idea_mcts.errors import UsageError

                raise UsageError(f"engines.{key}: {world.tag()} needs {tp} GPUs (tensor_parallel_size x "
                                 f"data_parallel_size) and the node has {len(ids)} for its ranks")
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)  # read by vLLM's engine processes
        elif e.backend != "openai" and e.device == "auto" and cuda_devices and world.size > 1:
            e = replace(e, device=f"cuda:{world.local_rank % cuda_devices}")
        placed[key] = e
    return placed
