"""Guards of a training run: held SIGINT, one run per folder, and faults as typed errors.

A run writes its folder only through these guards, so that Ctrl-C never lands between
two files of one epoch, two runs never write one folder, and a full disk or an exhausted
memory ends the run with one line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from forwardforward.errors import CheckpointError, ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold SIGINT back while the block runs; raise KeyboardInterrupt after it if one came.

    Only in the main thread with Python's own handler installed; elsewhere a no-op.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if not callable(previous):  # ignored, default, foreign, or not the main thread
        yield
        return

    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Turn a failed write in ``folder`` (disk full, permissions) into a CheckpointError."""
    try:
        yield
    except OSError as err:
        raise CheckpointError(
            f"cannot write the run files in {folder}: {err.strerror or err}"
        ) from None


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while the block runs.

    The operating system drops the lock when the process ends, however it ends, so a
    killed run never leaves a stale lock behind.

    Raises:
        ConfigError: another process holds the lock.

    Note:
        Limitation: a no-op where ``fcntl`` is missing (Windows), and unreliable on some
        network file systems, which may not implement ``flock``.
    """
    if fcntl is None:
        yield
        return
    with writing(folder):
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{folder} is in use by another forwardforward run; wait for it to finish or "
                "stop it, or pick another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failed allocation (CUDA's OutOfMemoryError, or the CPU's)."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def memory_error(err: BaseException, device: torch.device, layers: tuple[int, ...],
                 batch_size: int) -> ConfigError:
    """A failed allocation as one line, naming the options that set the memory used."""
    detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return ConfigError(
        f"out of memory on {device} with --layers {','.join(map(str, layers))} and "
        f"--batch-size {batch_size} ({detail[:200]}); use narrower layers or a smaller batch"
    )
