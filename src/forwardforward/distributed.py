"""torch.distributed helpers: rank, world size and reductions, usable without a group."""

from __future__ import annotations

import torch.distributed as td


def world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    """This process's rank, 0 when not distributed."""
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0)."""
    return rank() == 0
