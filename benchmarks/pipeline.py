"""Speed of pipelined and data-parallel training on one machine, against one process.

Trains the same network four ways, every process limited to one thread
(``OMP_NUM_THREADS=1``): one process; ``--nproc`` separate one-process runs at once (the
throughput the machine gives that many processes now, the ceiling of the next two);
``torchrun`` with ``--nproc`` ranks and ``--parallel pipeline``; the same with
``--parallel data``. Each run's ``metrics.json`` gives its training seconds (the epochs'
sum, evaluation excluded; for the pipeline each epoch runs from rank 0's first step to
the last rank's last step, so the pipeline's fill and drain are counted). The table
shows the median of ``--repeat`` runs, the speed-up over one process in samples per
second (the ideal is ``--nproc``) and the largest difference of any weight from the
one-process run's (the modes train the same network).

Usage::

    python benchmarks/pipeline.py --layers 500,500,500,500 --limit-train 20000 --epochs 2

Needs MNIST in ``--data-dir`` (default: the shared folder beside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from forwardforward.checkpoint import load_checkpoint  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, args: argparse.Namespace, nproc: int, parallel: str) -> subprocess.Popen:
    """Start one training run: a single process, or torchrun with ``nproc`` ranks."""
    flags = ["--out", str(out), "--no-progress", "--dataset", "mnist",
             "--data-dir", str(args.data_dir), "--layers", args.layers,
             "--limit-train", str(args.limit_train), "--limit-test", "1000",
             "--train-eval-size", "1000", "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--precision", args.precision,
             "--eval-every", str(args.epochs), "--parallel", parallel]
    launcher = [sys.executable, "-m", "forwardforward", "train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                    "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                    "-m", "forwardforward", "train"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([*launcher, *flags], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def train(out: Path, args: argparse.Namespace, nproc: int, mode: str) -> dict:
    """One measurement; returns metrics.json, the command's seconds and the weights.

    ``mode`` is ``pipeline`` or ``data`` (torchrun with ``nproc`` ranks), or
    ``separate``: ``nproc`` independent one-process runs at once, whose summed
    throughput is the most any ``nproc``-process method can reach on this machine now.
    """
    start = time.perf_counter()
    if mode == "separate":
        outs = [out / str(k) for k in range(nproc)]
        procs = [launch(o, args, 1, "data") for o in outs]
    else:
        outs, procs = [out], [launch(out, args, nproc, mode)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"run failed ({mode}):\n{err[-2000:]}")
    wall = time.perf_counter() - start

    runs = [json.loads((o / "metrics.json").read_text()) for o in outs]
    state, _ = load_checkpoint(outs[0] / "model.safetensors")
    samples = sum(m["seconds"] * m["train_samples_per_second"] for m in runs)
    seconds = statistics.mean(m["seconds"] for m in runs)
    return {"seconds": seconds, "rate": samples / seconds, "command_seconds": wall,
            "net": state["net"]}


def largest_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two runs' weights."""
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--layers", default="500,500,500,500")
    p.add_argument("--limit-train", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    args = p.parse_args()

    n = args.nproc
    modes = [("one process", 1, "data"), (f"{n} separate", n, "separate"),
             ("pipeline", n, "pipeline"), ("data-parallel", n, "data")]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):  # interleaved, so a slow spell hits every mode alike
            for name, nproc, parallel in modes:
                out = Path(tmp) / f"{parallel}-{nproc}-{r}"
                results[name].append(train(out, args, nproc, parallel))
                one = results["one process"][r]["net"]
                results[name][r]["diff"] = largest_difference(one, results[name][r]["net"])

    print(f"MNIST, layers {args.layers}, {args.limit_train} examples x {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.precision}, 1 thread per process, "
          f"median of {args.repeat}")
    print(f"'{n} separate': {n} independent one-process runs at once, the most {n} processes "
          "can give on this machine now")
    base = statistics.median(m["rate"] for m in results["one process"])
    print(f"{'mode':<14}{'procs':>6}{'train s':>10}{'samples/s':>11}{'speed-up':>10}"
          f"{'command s':>11}{'max |dw|':>10}")
    for name, nproc, _ in modes:
        runs = results[name]
        seconds = statistics.median(m["seconds"] for m in runs)
        rate = statistics.median(m["rate"] for m in runs)
        command = statistics.median(m["command_seconds"] for m in runs)
        diff = max(m["diff"] for m in runs)
        print(f"{name:<14}{nproc:>6}{seconds:>10.2f}{rate:>11,.0f}{rate / base:>9.2f}x"
              f"{command:>11.1f}{diff:>10.1e}")


if __name__ == "__main__":
    main()
