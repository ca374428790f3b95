"""Shared by the run-folder tests: a tiny MNIST-like IDX set and the options of a small run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from forwardforward.idx import write_idx

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
TIMING = ("seconds", "samples_per_second", "eval_seconds")


def write_idx_set(folder: Path, n_train: int = 400, n_test: int = 50, side: int = 8) -> Path:
    """Four gzipped IDX files of ``side`` x ``side`` images whose row 2 shows the label."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for (img, lab), n in (((IMAGES, LABELS), n_train), ((TEST_IMAGES, TEST_LABELS), n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 128, (n, side, side)).astype(np.uint8)
        x[:, :2] = 0  # the label pixels are blank, as on MNIST
        x[np.arange(n), 2, y % side] = 255
        write_idx(folder / f"{img}.gz", x, compress=True)
        write_idx(folder / f"{lab}.gz", y, compress=True)
    return folder


def run_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """``forwardforward train`` options of a small, deterministic CPU run."""
    return ["train", "--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(out),
            "--layers", "16,16", "--batch-size", "50", "--epochs", "2", "--device", "cpu",
            "--precision", "fp32", "--no-progress", *extra]


def metrics_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as text, without the columns that measure time."""
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def single_thread():
    """One intra-op thread while a module runs, as in the subprocesses the tests start, so
    in-process runs are bit-comparable with them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
