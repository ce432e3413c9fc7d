"""configs/accelerate/*.yaml are accelerate configs of the kind their comments say (GPU ones are not run here;
cpu-2proc.yaml is launched for real by tests/test_distributed.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize(("name", "kind", "processes", "cpu"), [
    ("ddp", DistributedType.MULTI_GPU, 8, False), ("fsdp", DistributedType.FSDP, 8, False),
    ("deepspeed_zero2", DistributedType.DEEPSPEED, 8, False), ("deepspeed_zero3", DistributedType.DEEPSPEED, 8, False),
    ("cpu-2proc", DistributedType.MULTI_GPU, 2, True)])
def test_accelerate_config(name: str, kind: DistributedType, processes: int, cpu: bool) -> None:
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.distributed_type == kind and cfg.num_processes == processes and bool(cfg.use_cpu) == cpu
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
