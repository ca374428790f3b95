"""Training and evaluation throughput against this machine's matmul peak, in one run.

For the given layer sizes, batch size and precision it measures, back to back:

(a) the peak rate of the matrix products a training step does, at the network's shapes
    and dtype: per layer the forward product ``(2B, in) @ (in, out)`` and the weight
    gradient ``(out, 2B) @ (2B, in)``;
(b) the rate of real training steps (``Trainer.train_step``) and of all-label
    evaluation (``Trainer.predictions``) on random data.

The three are timed in interleaved rounds and each keeps its fastest round, so load
from other processes on a shared machine disturbs the ratio less than the rates.

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
import dataclasses
import time

import torch

from forwardforward.config import ModelConfig, RunConfig, TrainConfig
from forwardforward.train import Trainer, flush_denormals

C = 10  # labels


def _fastest(fns: dict, seconds: float, rounds: int) -> dict:
    """Fastest seconds per call of each function, measured in interleaved rounds.

    Each round times every function for ``seconds / rounds``; the best round counts, so a
    burst of load from other processes hits the peak and the step alike.
    """
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds or calls == 0:
                fn()
                calls += 1
            best[name] = min(best[name], elapsed / calls)
    return best


def matmul_step(widths: list[int], batch: int, dtype: torch.dtype, device: str):
    """The training step's matrix products alone, and their FLOPs."""
    mats = []
    for d_in, d_out in zip(widths[:-1], widths[1:], strict=True):
        x = torch.randn(2 * batch, d_in, dtype=dtype, device=device)
        w = torch.randn(d_out, d_in, dtype=dtype, device=device)
        dh = torch.randn(2 * batch, d_out, dtype=dtype, device=device)
        mats.append((x, w, dh))

    def step() -> None:
        for x, w, dh in mats:
            x @ w.t()  # forward (2B, out)
            out = dh.t() @ x  # weight gradient (out, in)
        out.sum().item()  # wait for the device

    flops = sum(2 * 2 * (2 * batch) * x.shape[1] * w.shape[0] for x, w, _ in mats)
    return step, flops


def trainer_steps(trainer: Trainer, batch: int, in_features: int):
    """A training step on ``batch`` images, and an evaluation of 1000 images."""
    x = torch.rand(batch, in_features, device=trainer.device)
    y = torch.randint(0, C, (batch,), device=trainer.device)
    x_eval = torch.rand(1000, in_features, device=trainer.device)
    layers = range(len(trainer.net.layers))

    def train() -> None:
        trainer.train_step(x, y, layers).sum().item()  # .item(): wait for the device

    def evaluate() -> None:
        trainer.predictions(x_eval).sum().item()

    return train, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="2000,2000,2000,2000")
    parser.add_argument("--in-features", type=int, default=784)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 256, 1024])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile'd training step")
    args = parser.parse_args()
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
                train=TrainConfig(batch_size=batch, precision=precision, device=args.device),
            )
            trainer = Trainer(config, args.in_features, C)
            matmuls, flops = matmul_step(widths, batch, dtype, args.device)
            train, evaluate = trainer_steps(trainer, batch, args.in_features)
            fns = {"peak": matmuls, "train": train, "eval": evaluate}
            if args.compile:
                compiled = Trainer(dataclasses.replace(
                    config, train=dataclasses.replace(config.train, compile=True)
                ), args.in_features, C)
                fns["compiled"] = trainer_steps(compiled, batch, args.in_features)[0]
            with flush_denormals():
                t = _fastest(fns, args.seconds, args.rounds)
            peak = flops / t["peak"] / 1e9
            train_rate, eval_rate = batch / t["train"], 1000 / t["eval"]
            train_gflops = train_rate * 8 * macs / 1e9
            eval_macs = widths[0] * widths[1] + C * (macs - widths[0] * widths[1])
            eval_gflops = eval_rate * 2 * eval_macs / 1e9
            for what, rate, gf in (("train", train_rate, train_gflops),
                                   ("eval", eval_rate, eval_gflops)):
                print(f"{precision:>9} {batch:>6} {what:>6} {rate:>10,.0f} {gf:>9,.0f} "
                      f"{peak:>8,.0f} {gf / peak:>6.2f}")
            if args.compile:
                ratio = t["train"] / t["compiled"]
                print(f"{precision:>9} {batch:>6} torch.compile'd training step: {ratio:.2f}x")


if __name__ == "__main__":
    main()
