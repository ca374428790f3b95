"""Test error against wall time for a training setting (by default the paper's 4×2000).

Trains with the bundled ``paper-mnist`` setting (or ``--config``), measuring the test
error every ``--eval-every`` epochs, and writes a CSV (epoch, wall seconds, training
seconds, test error, train error) and a plot of test error against wall time. Wall time
counts everything after the data is loaded, evaluations included.

Example::

    python benchmarks/accuracy_vs_time.py --data-dir ../shared/data/mnist \\
        --out benchmarks/results/accuracy_vs_time
"""

from __future__ import annotations

import argparse
import csv
import logging
import resource
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from forwardforward.cli import resolve_config_file  # noqa: E402
from forwardforward.config import load_toml  # noqa: E402
from forwardforward.runner import load_run_data  # noqa: E402
from forwardforward.train import EpochResult, Trainer, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="paper-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override the setting's")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy_vs_time"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = load_toml(resolve_config_file(args.config))
    train = {"eval_every": args.eval_every}
    if args.epochs:
        train["epochs"] = args.epochs
    if args.precision:
        train["precision"] = args.precision
    data_table = {"data_dir": args.data_dir, "train_eval_size": 2000}
    config = config.replace(train=train, data=data_table)
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_run_data(config, resolve_device(config.train.device), progress=False)
    trainer = Trainer(config, data.in_features, data.num_classes)
    rows: list[dict] = []
    start = time.perf_counter()
    train_seconds = 0.0

    def record(result: EpochResult) -> None:
        nonlocal train_seconds
        train_seconds += result.seconds
        rows.append({
            "epoch": result.epoch,
            "wall_seconds": round(time.perf_counter() - start, 2),
            "train_seconds": round(train_seconds, 2),
            "test_error": result.test_error,
            "train_error": result.train_error,
        })
        write(rows, args.out)

    trainer.fit(data.tensors, callback=record, progress=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    logging.info("peak resident memory %.0f MiB; wrote %s", peak_mib, args.out)


def write(rows: list[dict], out: Path) -> None:
    """Write the CSV and the plot of test error against wall time so far."""
    with open(out / "accuracy_vs_time.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    pts = [(r["wall_seconds"] / 60, 100 * r["test_error"]) for r in rows if r["test_error"]]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*pts, strict=True), marker="o", label="forwardforward")
    ax.axhline(1.36, color="gray", ls="--", label="paper, 60 epochs (1.36%)")
    ax.set(xlabel="wall time (min)", ylabel="MNIST test error (%)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_time.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
