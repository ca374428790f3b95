"""Training and evaluation throughput against this machine's matmul peak, in one run.

For the given layer sizes, batch size and precision it measures, back to back:

(a) the peak rate of the matrix products a training step does, at the network's shapes
    and dtype: per layer the forward product ``(2B, in) @ (in, out)`` and the weight
    gradient ``(out, 2B) @ (2B, in)``;
(b) the rate of real training steps (``Trainer.train_step``) and of all-label
    evaluation (``Trainer.predictions``) on random data.

FLOPs are counted as the algorithm needs them: per training sample and layer, the
forward pass on positive and negative data 2·(2·in·out) plus the weight gradient
2·(2·in·out); per evaluated image, 2·in·out per layer for each of the C labels, except
the first layer, which computes the image once and adds a column per label
(``FFNet.first_layer_all_labels``), so it is counted once.

Example::

    python benchmarks/throughput.py --layers 2000,2000,2000,2000 --batch-size 256 \\
        --precision bf16
"""

from __future__ import annotations

import argparse
import time

import torch

from forwardforward.config import ModelConfig, RunConfig, TrainConfig
from forwardforward.train import Trainer

C = 10  # labels


def _timed(fn, min_seconds: float) -> float:
    """Seconds per call of ``fn``, after one warm-up call, over at least ``min_seconds``."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def peak_gflops(widths: list[int], batch: int, dtype: torch.dtype, seconds: float) -> float:
    """Rate of the training step's matrix products alone, in GFLOP/s."""
    mats = []
    for d_in, d_out in zip(widths[:-1], widths[1:], strict=True):
        x = torch.randn(2 * batch, d_in, dtype=dtype)
        w = torch.randn(d_out, d_in, dtype=dtype)
        dh = torch.randn(2 * batch, d_out, dtype=dtype)
        mats.append((x, w, dh))

    def step() -> None:
        for x, w, dh in mats:
            x @ w.t()  # forward (2B, out)
            dh.t() @ x  # weight gradient (out, in)

    flops = sum(2 * 2 * (2 * batch) * x.shape[1] * w.shape[0] for x, w, _ in mats)
    return flops / _timed(step, seconds) / 1e9


def step_seconds(trainer: Trainer, batch: int, in_features: int, seconds: float):
    """Seconds per training step on ``batch`` images, and per evaluation of 1000 images."""
    x = torch.rand(batch, in_features, device=trainer.device)
    y = torch.randint(0, C, (batch,), device=trainer.device)
    x_eval = torch.rand(1000, in_features, device=trainer.device)
    layers = range(len(trainer.net.layers))

    def train() -> None:
        trainer.train_step(x, y, layers).sum().item()  # .item(): wait for the device

    def evaluate() -> None:
        trainer.predictions(x_eval).sum().item()

    return _timed(train, seconds), _timed(evaluate, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="2000,2000,2000,2000")
    parser.add_argument("--in-features", type=int, default=784)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 256, 1024])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    layers = tuple(int(w) for w in args.layers.split(","))
    widths = [args.in_features, *layers]
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))

    print(f"layers {args.layers}, input {args.in_features}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'precision':>9} {'batch':>6} {'what':>6} {'samples/s':>10} {'GFLOP/s':>9} "
          f"{'peak':>8} {'ratio':>6}")
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for batch in args.batch_size:
            config = RunConfig(
                model=ModelConfig(layers=layers),
                train=TrainConfig(batch_size=batch, precision=precision, device=args.device,
                                  compile=args.compile),
            )
            trainer = Trainer(config, args.in_features, C)
            peak = peak_gflops(widths, batch, dtype, args.seconds)
            t_train, t_eval = step_seconds(trainer, batch, args.in_features, args.seconds)
            train_rate, eval_rate = batch / t_train, 1000 / t_eval
            train_gflops = train_rate * 8 * macs / 1e9
            eval_macs = widths[0] * widths[1] + C * (macs - widths[0] * widths[1])
            eval_gflops = eval_rate * 2 * eval_macs / 1e9
            for what, rate, gf in (("train", train_rate, train_gflops),
                                   ("eval", eval_rate, eval_gflops)):
                print(f"{precision:>9} {batch:>6} {what:>6} {rate:>10,.0f} {gf:>9,.0f} "
                      f"{peak:>8,.0f} {gf / peak:>6.2f}")


if __name__ == "__main__":
    main()
