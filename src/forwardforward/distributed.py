"""torch.distributed for training past one process: the group, the replicas, the messages.

Launched by ``torchrun``, each process finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment. :func:`process_group` joins the
group when ``WORLD_SIZE > 1`` and leaves it on exit; the backend is ``gloo``, or, where
CUDA is present, ``cpu:gloo,cuda:nccl`` (NCCL moves CUDA tensors, gloo the host-side
objects such as checkpoints). Every function here also works in a single process, where
it does nothing or returns its input.

Every message between ranks goes through this module, which turns a backend failure (a
peer that died or closed its socket, or none that answered within the group's timeout)
into a one-line :class:`~forwardforward.errors.DistributedError`. So a failed or killed
rank makes the others stop with a message instead of waiting for ever.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as td
from torch import Tensor

from forwardforward import errors
from forwardforward.errors import ConfigError, DistributedError, ForwardForwardError

DEFAULT_TIMEOUT = 300.0  # seconds one rank waits for another before giving up
T = TypeVar("T")
_timeout = DEFAULT_TIMEOUT  # the timeout of the group joined, for messages


def world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    """This process's rank, 0 when not distributed."""
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0)."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``, set by torchrun), else 0."""
    return _env_int("LOCAL_RANK", 0)


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by the launcher; 1 for a process started on its own."""
    return _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun"
        ) from None


def cuda_device() -> torch.device:
    """The GPU of this rank: ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: this machine has fewer GPUs than ranks started on it.
    """
    count = torch.cuda.device_count()
    if local_rank() >= count:
        raise ConfigError(
            f"local rank {local_rank()} has no GPU of its own ({count} visible); start at "
            f"most {count} processes per machine (--nproc-per-node) or train with --device cpu"
        )
    return torch.device("cuda", local_rank())


@contextmanager
def process_group(timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Join torchrun's process group for the body when ``WORLD_SIZE > 1``; leave it after.

    Args:
        timeout: seconds that rendezvous and every send, receive and collective may wait
            for another rank before raising (gloo; NCCL's watchdog ends the process).

    Raises:
        ConfigError: the launcher's environment is incomplete, or ``timeout`` is not > 0.
        DistributedError: the other ranks did not join within ``timeout``.
    """
    if launched_world_size() <= 1 or td.is_initialized():
        yield
        return
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"dist-timeout must be a positive number of seconds, got {timeout!r}")
    missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ]
    if missing or not td.is_available():
        lacking = ", ".join(missing) or "torch.distributed"
        raise ConfigError(
            f"WORLD_SIZE is {launched_world_size()} but {lacking} is missing; launch with "
            "torchrun --nproc-per-node=N -m forwardforward train ..."
        )

    # Limitation: the CUDA half (nccl, one GPU per LOCAL_RANK) is written from the PyTorch
    # documentation and has not been run: the machine it was built on has no GPU.
    cuda = torch.cuda.is_available()
    if cuda and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())  # object collectives and NCCL use this device
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    global _timeout
    _timeout = timeout
    try:
        td.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as err:  # DistStoreError, DistNetworkError: a rendezvous timeout
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise DistributedError(
            f"rank {os.environ['RANK']} could not join the {launched_world_size()} ranks at "
            f"{where} within {timeout:g} s ({_first_line(err)}); start every rank with the "
            "same --master-addr/--master-port, or raise --dist-timeout"
        ) from None

    try:
        yield
    finally:
        td.destroy_process_group()


def _first_line(err: BaseException) -> str:
    """The gist of a backend error: its first sentence, without gloo's source location."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # "[.../pair.cc:553] Connection closed ..."
    return text.split(". ")[0].rstrip(".")


def _guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Make a backend failure inside ``fn`` a one-line DistributedError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:  # gloo: closed or reset socket, timeout; DistBackendError
            raise DistributedError(
                f"rank {rank()} of {world_size()} lost contact with the other ranks in "
                f"{fn.__name__} ({_first_line(err)}); another rank failed or was killed "
                f"(see its message), or none answered within --dist-timeout ({_timeout:g} s)"
            ) from None

    return wrapper


# ----------------------------------------------------------------- messages
@_guarded
def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over all ranks (a new tensor; ``t`` itself when alone)."""
    if world_size() == 1:
        return t
    out = t.clone()
    td.all_reduce(out, op=td.ReduceOp.SUM)
    return out


@_guarded
def all_gather(t: Tensor, size: int) -> list[Tensor]:
    """Every rank's ``t`` (all of one shape), in rank order."""
    parts = [torch.empty_like(t) for _ in range(size)]
    td.all_gather(parts, t)
    return parts


@_guarded
def send(t: Tensor, dst: int) -> td.Work:
    """Start sending ``t`` to rank ``dst``; ``t`` must stay unchanged until :func:`wait`."""
    return td.isend(t, dst)


@_guarded
def wait(work: td.Work) -> None:
    """Wait until a :func:`send` has finished."""
    work.wait()


@_guarded
def recv(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, src: int) -> Tensor:
    """Receive a tensor of ``shape`` and ``dtype`` from rank ``src``."""
    out = torch.empty(shape, dtype=dtype, device=device)
    td.recv(out, src)
    return out


@_guarded
def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled: only between this run's own ranks)."""
    if world_size() == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


@_guarded
def gather_object(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the other ranks."""
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    td.gather_object(obj, out, dst=0)
    return out


def on_main(fn: Callable[[], T], share: bool = False) -> T | None:
    """Run ``fn`` on rank 0 only; its library error is raised on every rank.

    Rank 0 runs first and the others wait, so, e.g., a download happens once. Returns
    ``fn()``'s value on rank 0 and, with ``share``, on every rank (else None elsewhere).
    """
    value, error = None, None
    if is_main():
        try:
            value = fn()
        except ForwardForwardError as err:
            error = err
    if world_size() == 1:
        if error is not None:
            raise error
        return value

    sent = broadcast_object((type(error).__name__, str(error)) if error else None)
    if error is not None:
        raise error
    if sent is not None:
        klass = getattr(errors, sent[0], ForwardForwardError)
        raise klass(f"{sent[1]} (on rank 0)")
    return broadcast_object(value) if share else value


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its nested dicts, lists and tuples copied to the host."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


# ----------------------------------------------------------------- replicas
@dataclass(frozen=True)
class Replicas:
    """The data-parallel replicas: each trains on its slice of every global batch.

    Replica ``k`` of ``W`` takes rows :math:`[\\lfloor kn/W \\rfloor,
    \\lfloor (k+1)n/W \\rfloor)` of a batch of ``n``. A layer's loss is a mean over its
    batch, so the gradient of the whole batch is the row-weighted mean of the replicas'

    .. math:: \\nabla L = \\frac{\\sum_k n_k \\nabla L_k}{\\sum_k n_k},

    which :meth:`average_gradients` forms with one all-reduce; each replica then takes
    the same optimizer step, so the replicas stay equal to one process on the whole batch.

    Args:
        index: this replica's rank.
        size: the number of replicas ``W`` (1: no data parallelism).
    """

    index: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Replicas:
        """One replica per rank of the process group."""
        return cls(rank(), world_size())

    def rows(self, n: int) -> slice:
        """This replica's rows of a batch of ``n``."""
        return slice(self.index * n // self.size, (self.index + 1) * n // self.size)

    def shard(self, t: Tensor) -> Tensor:
        """This replica's rows of ``t``, shape ``(n_k, ...)``."""
        return t if self.size == 1 else t[self.rows(t.shape[0])]

    def share(self, n: int) -> float:
        """This replica's fraction ``n_k / n`` of a batch of ``n``."""
        rows = self.rows(n)
        return (rows.stop - rows.start) / n

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the replicas."""
        return t if self.size == 1 else all_reduce_sum(t)

    def average_gradients(self, params: Iterable[torch.nn.Parameter], weight: int) -> None:
        """Replace each gradient by the mean over replicas weighted by their rows ``weight``.

        The gradients travel as one flat buffer with the weight as its last element, so
        one all-reduce gives both :math:`\\sum_k n_k \\nabla L_k` and :math:`\\sum_k n_k`.
        """
        if self.size == 1:
            return
        # Limitation: blocking, one layer at a time; not overlapped with the next layer's
        # arithmetic, so every layer's step waits for the slowest replica.
        params = list(params)
        for p in params:
            if p.grad is None:  # every replica must send the same layout
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])  # (P,)
        flat = torch.cat([flat * weight, flat.new_tensor([weight])])  # (P + 1,)

        flat = all_reduce_sum(flat)
        flat = flat[:-1] / flat[-1]
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_rows(self, t: Tensor, n: int) -> Tensor:
        """Every replica's :meth:`shard` of a batch of ``n``, stacked in order: ``(n, ...)``."""
        if self.size == 1:
            return t
        most = -(-n // self.size)  # shards differ by at most one row; pad to the largest
        padded = t.new_zeros((most, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = all_gather(padded, self.size)
        sizes = [(k + 1) * n // self.size - k * n // self.size for k in range(self.size)]
        return torch.cat([p[:m] for p, m in zip(parts, sizes, strict=True)])
