"""Compare the published Forward-Forward variants on the same data, layers, epochs and seed.

Each variant is the default run configuration with a few fields changed. Every variant
trains from the same seed on the same training set and is measured on the same test set
and fixed training subset. The table (test error, train error, seconds) is printed and
written to a CSV beside the published figure for the variant, with its setting and source.

    OMP_NUM_THREADS=1 python benchmarks/variants.py --data-dir /work/shared/data/mnist \\
        --layers 500,500 --epochs 5 --threads 1 --out benchmarks/variants.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forwardforward.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from forwardforward.runner import load_run_data
from forwardforward.train import Trainer, resolve_device, resolve_precision


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str  # what differs from the baseline, as a formula or a rule
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    published: str = ""  # published MNIST test error, e.g. "1.36%"
    setting: str = ""  # the published run's setting
    source: str = ""


VARIANTS = (
    Variant("baseline", "zeta(theta - g+) + zeta(g- - theta), g = sum h^2, theta = width, "
            "uniform wrong label, goodness of every label",
            published="1.36%", setting="4x2000, 60 epochs", source="Hinton (2022)"),
    Variant("softmax-readout", "one pass with a neutral label; linear softmax on layers 2..L",
            train={"predict": "softmax"}),
    Variant("hard-negatives", "wrong label drawn in proportion to the model's probability",
            train={"negatives": "hard"}),
    Variant("symba", "zeta(-alpha (g+ - g-)), alpha = 4", model={"loss": "symba"}),
    Variant("peer-norm", "+ 0.03 mean_j (m_j - mean_k m_k)^2, m: running mean of h+ "
            "(momentum 0.9)", model={"peer_norm": 0.03},
            published="1.45%", setting="3x1000, 100 epochs, SGD, softmax read-out",
            source="loeweX/Forward-Forward README"),
    Variant("mean-goodness", "g = mean h^2, theta = 2 fixed",
            model={"goodness": "mean", "threshold": 2.0, "threshold_scale": "fixed"},
            published="6.84%", setting="2x500, full batch, 1000 steps per layer",
            source="mohammadpz/pytorch_forward_forward README"),
    Variant("unsupervised", "no label; negatives: hybrids through blurred masks; "
            "softmax on the last three layers",
            model={"mode": "unsupervised"}, train={"predict": "softmax"},
            published="1.37%", setting="4x2000, 100 epochs", source="Hinton (2022)"),
)

COLUMNS = ("variant", "test_error_pct", "train_error_pct", "train_seconds", "eval_seconds",
           "published_test_error", "published_setting", "source", "summary")


def run_variant(variant: Variant, base: RunConfig, data) -> dict[str, Any]:
    """Train one variant from the shared seed; returns its CSV row."""
    config = base.replace(model=variant.model, train=variant.train)
    trainer = Trainer(config, data.in_features, data.num_classes, data.image_shape)
    results = trainer.fit(data.tensors, progress=False)

    last = results[-1]
    return {
        "variant": variant.name,
        "test_error_pct": round(100 * last.test_error, 2),
        "train_error_pct": round(100 * last.train_error, 2),
        "train_seconds": round(sum(r.seconds for r in results), 1),
        "eval_seconds": round(sum(r.extra["eval_seconds"] for r in results), 1),
        "published_test_error": variant.published,
        "published_setting": variant.setting,
        "source": variant.source,
        "summary": variant.summary,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown, measured figures beside the published ones."""
    lines = ["| variant | test error | train error | train s | published (setting, source) |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        pub = (f"{r['published_test_error']} ({r['published_setting']}; {r['source']})"
               if r["published_test_error"] else "—")
        lines.append(f"| {r['variant']} | {r['test_error_pct']:.2f}% | "
                     f"{r['train_error_pct']:.2f}% | {r['train_seconds']:.1f} | {pub} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist", "digits"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--layers", default="500,500")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--only", default=None, help="comma-separated variant names")
    p.add_argument("--out", type=Path, default=Path("variants.csv"), help="CSV to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else [v.name for v in VARIANTS]
    unknown = set(names) - {v.name for v in VARIANTS}
    if unknown:
        sys.exit(f"unknown variant(s) {sorted(unknown)}; known: {[v.name for v in VARIANTS]}")

    base = RunConfig(
        DataConfig(args.dataset, args.data_dir, args.limit_train),
        ModelConfig(layers=tuple(int(w) for w in args.layers.split(","))),
        TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, device=args.device, precision=args.precision,
                    eval_every=args.epochs),
    )
    device = resolve_device(args.device)
    dtype = str(resolve_precision(args.precision, device)).removeprefix("torch.")
    data = load_run_data(base, device, progress=False)
    print(f"{args.dataset}: {data.tensors['x_train'].shape[0]} train, "
          f"{data.tensors['x_test'].shape[0]} test; layers {args.layers}, "
          f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}, "
          f"{device} {dtype}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")

    rows = []
    start = time.perf_counter()
    for variant in (v for v in VARIANTS if v.name in names):
        rows.append(run_variant(variant, base, data))
        r = rows[-1]
        print(f"{r['variant']:<16} test {r['test_error_pct']:6.2f}%  "
              f"train {r['train_error_pct']:6.2f}%  {r['train_seconds']:7.1f} s train  "
              f"{r['eval_seconds']:6.1f} s eval", flush=True)

    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{markdown(rows)}\n\nwrote {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
