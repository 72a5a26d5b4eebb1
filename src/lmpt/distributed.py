"""Thin helpers over ``torch.distributed`` (set up by ``torchrun``); all no-ops in a single process."""
from __future__ import annotations

import datetime
import logging
import os
from typing import Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: str = "cpu", timeout_s: Optional[float] = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    The backend is NCCL for CUDA devices and gloo otherwise. Returns True when a group exists.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = datetime.timedelta(seconds=timeout_s or float(os.environ.get("LMPT_DIST_TIMEOUT", 600)))
    dist.init_process_group(backend=backend, timeout=timeout)
    logger.info("joined process group: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def broadcast_object(obj: object, src: int = 0) -> object:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
