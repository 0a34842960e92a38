"""Process group and device for training: CUDA (nccl), Ascend NPU (hccl) or CPU (gloo).

Launchers (torchrun, the Kubernetes training operators, DeepSpeed's own launcher) pass
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. A plain `fgclip train` gets
single-process defaults, so the same command runs in a test, a `dvc repro` stage and a
multi-node job.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}
LOOPBACK = "127.0.0.1"


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    accelerator: str  # "cuda" | "npu" | "cpu"
    device: torch.device
    backend: str
    owns_group: bool = False  # this process created the group, so it tears it down
    env_set: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def single_process_defaults() -> list[str]:
    """torchrun's variables for one local process, where no launcher set them."""
    if "WORLD_SIZE" in os.environ:
        return []
    defaults = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": LOOPBACK,
        "MASTER_PORT": str(_free_port()),
    }
    added = [name for name in defaults if name not in os.environ]
    for name in added:
        os.environ[name] = defaults[name]
    return added


def detect_accelerator() -> str:
    if torch.cuda.is_available():
        return "cuda"
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError:
        return "cpu"
    return "npu" if torch.npu.is_available() else "cpu"  # type: ignore[attr-defined]  # added by torch_npu


def setup_distributed(timeout_s: int, *, extensions_dir: str | Path, cpu_shm_comm: bool) -> DistContext:
    """Join (or create) the process group and pick this rank's device."""
    env_set = single_process_defaults()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(extensions_dir).resolve()))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator = detect_accelerator()
    os.environ.setdefault("DS_ACCELERATOR", accelerator)
    if accelerator == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    elif accelerator == "npu":
        torch.npu.set_device(local_rank)  # type: ignore[attr-defined]  # added by torch_npu
        device = torch.device("npu", local_rank)
    else:
        device = torch.device("cpu")
    backend = BACKENDS[accelerator]
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    _init_deepspeed_comm(backend, accelerator, cpu_shm_comm)
    log.info("rank %d/%d on %s (%s)", rank, world_size, device, backend)
    return DistContext(rank, world_size, local_rank, accelerator, device, backend, owns_group, env_set)


def _init_deepspeed_comm(backend: str, accelerator: str, cpu_shm_comm: bool) -> None:
    import deepspeed
    import deepspeed.ops

    if accelerator == "cpu" and not cpu_shm_comm:
        # DeepSpeed builds a C++ shared-memory collective on first use on CPU (about a
        # minute and a half on two cores); torch's gloo does the same job uncompiled.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend)


def teardown_distributed(context: DistContext, *, failed: bool = False) -> None:
    """Leave the process as found: destroy an own group, drop the defaults we set.

    After a failure there is no barrier: the other ranks may never reach it.
    """
    if context.owns_group and dist.is_initialized():
        import deepspeed.comm

        if not failed:
            dist.barrier()
        # DeepSpeed's wrapper also drops the groups it cached (a clone of WORLD, ...),
        # which would otherwise refer to a dead group in the next run of this process.
        deepspeed.comm.destroy_process_group()
    for name in context.env_set:
        os.environ.pop(name, None)
