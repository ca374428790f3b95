"""Worst-case error in ulp of the softplus family against an mpmath oracle.

For each function and dtype the inputs are a grid of that dtype's numbers reaching +-1e4
(log-spaced from tiny magnitudes, plus a dense linear part around 0, plus the switch
points of the formulas); the exact result is computed with mpmath at ``--dps`` digits and
the error is measured in ulp of the dtype at the exact value (the spacing of the dtype's
numbers there, subnormal spacing below the normal range). Prints a Markdown table, with
``torch.nn.functional.softplus`` and the textbook form beside ours for comparison.

    PYTHONPATH=src python benchmarks/ulp.py            # about a minute on 2 cores
    PYTHONPATH=src python benchmarks/ulp.py --points 500 --dps 40
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import mpmath
import numpy as np
import torch
import torch.nn.functional as F

from forwardforward import functional as FF

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# (precision in bits, exponent of the smallest normal number)
FORMAT = {
    torch.float64: (53, -1022),
    torch.float32: (24, -126),
    torch.float16: (11, -14),
    torch.bfloat16: (8, -126),
}


def ulp(v: mpmath.mpf, dtype: torch.dtype) -> mpmath.mpf:
    """Spacing of ``dtype``'s numbers at the exact value ``v``."""
    prec, emin = FORMAT[dtype]
    e = emin if v == 0 else max(int(mpmath.floor(mpmath.log(abs(v), 2))), emin)
    return mpmath.ldexp(1, e - prec + 1)


def dtype_inputs(grid: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The grid rounded to ``dtype``: distinct finite numbers of that dtype."""
    x = torch.tensor(grid, dtype=torch.float64).to(dtype)
    return torch.unique(x[torch.isfinite(x)])


def exact(oracle: Callable[[mpmath.mpf], mpmath.mpf], x: torch.Tensor) -> list[mpmath.mpf]:
    return [oracle(mpmath.mpf(v)) for v in x.double().tolist()]


def worst_ulp(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    truth: list[mpmath.mpf],
    device: str,
) -> tuple[float, float]:
    """Largest error of ``fn`` on ``x`` against the exact values, and the input where."""
    dtype = x.dtype
    out = fn(x.to(device)).cpu().double().tolist()
    biggest = float(torch.finfo(dtype).max)

    worst, at = 0.0, math.nan
    for xi, yi, ex in zip(x.double().tolist(), out, truth, strict=True):
        if abs(ex) > biggest:
            continue  # the exact value is not a finite number of this dtype
        err = float(abs(mpmath.mpf(yi) - ex) / ulp(ex, dtype)) if math.isfinite(yi) else math.inf
        if err > worst:
            worst, at = err, xi
    return worst, at


def x_grid(points: int, rng: np.random.Generator) -> np.ndarray:
    """Zero, +-[1e-30, 1e4] log-spaced, [-60, 60] linear and random, and trouble spots."""
    mags = np.logspace(-30, 4, points)
    special = [20.0, 21.0, 30.0, 36.7, 88.7, 100.0, 709.8, 745.2, 1e4]
    lin = np.linspace(-60.0, 60.0, 2 * points + 1)
    rand = np.concatenate([rng.uniform(-60, 60, 2 * points), rng.uniform(-800, 800, points)])
    return np.concatenate([[0.0], mags, -mags, lin, rand, special, np.negative(special)])


def y_grid(points: int, dtype: torch.dtype, rng: np.random.Generator) -> np.ndarray:
    """Positive inputs of the inverse: the dtype's tiniest up to 1e4, dense around log 2."""
    tiny = max(float(torch.finfo(dtype).smallest_normal) * 2.0 ** -FORMAT[dtype][0], 5e-324)
    mags = np.logspace(math.log10(tiny), 4, points)
    near = np.concatenate([np.linspace(0.2, 3.0, 2 * points + 1), rng.uniform(0, 5, 2 * points)])
    special = [tiny, 1e-30, 0.35, math.log(2.0), 2.0, 100.0, 1e4]
    return np.concatenate([mags, near, special])


def zeta(v: mpmath.mpf) -> mpmath.mpf:
    return mpmath.log1p(mpmath.exp(v))


@dataclass(frozen=True)
class Case:
    name: str
    ours: Callable[[torch.Tensor], torch.Tensor]
    oracle: Callable[[mpmath.mpf], mpmath.mpf]
    grid: np.ndarray
    ref_name: str  # PyTorch's function or the textbook form, measured beside ours
    ref: Callable[[torch.Tensor], torch.Tensor]


def _loss(z: torch.Tensor, q: float, fmt: str) -> torch.Tensor:
    return FF.softplus_loss(z, torch.full_like(z, q), target_format=fmt, reduction="none")


def cases(points: int, dtype: torch.dtype, seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    xs = x_grid(points, rng)
    out = []
    for beta in (1.0, 3.0, 0.1):
        b = mpmath.mpf(beta)
        out.append(
            Case(
                f"softplus, beta={beta:g}",
                lambda x, beta=beta: FF.softplus(x, beta),
                lambda v, b=b: zeta(b * v) / b,
                xs,
                "F.softplus",
                lambda x, beta=beta: F.softplus(x, beta),
            )
        )
    out.append(
        Case("log_sigmoid", FF.log_sigmoid, lambda v: -zeta(-v), xs, "F.logsigmoid", F.logsigmoid)
    )
    out.append(
        Case(
            "log1m_sigmoid",
            FF.log1m_sigmoid,
            lambda v: -zeta(v),
            xs,
            "log1p(-sigmoid(x))",
            lambda x: torch.log1p(-torch.sigmoid(x)),
        )
    )
    for beta in (1.0, 3.0):
        b = mpmath.mpf(beta)
        out.append(
            Case(
                f"inverse_softplus, beta={beta:g}",
                lambda y, beta=beta: FF.inverse_softplus(y, beta),
                lambda v, b=b: mpmath.log(mpmath.expm1(b * v)) / b,
                y_grid(points, dtype, rng),
                "log(expm1(beta y)) / beta",
                lambda y, beta=beta: torch.log(torch.expm1(beta * y)) / beta,
            )
        )
    out.append(
        Case(
            "softplus_loss, sign, y = -1",
            lambda z: _loss(z, -1.0, "sign"),
            zeta,
            xs,
            "F.soft_margin_loss",
            lambda z: F.soft_margin_loss(z, -torch.ones_like(z), reduction="none"),
        )
    )
    for p in (0.1, 0.3, 0.7, 0.999):
        pm = mpmath.mpf(float(torch.tensor(p, dtype=dtype)))  # p as the dtype holds it
        out.append(
            Case(
                f"softplus_loss, probability, p = {p}",
                lambda z, p=p: _loss(z, p, "probability"),
                lambda v, pm=pm: pm * zeta(-v) + (1 - pm) * zeta(v),
                xs,
                "F.binary_cross_entropy_with_logits",
                lambda z, p=p: F.binary_cross_entropy_with_logits(
                    z, torch.full_like(z, p), reduction="none"
                ),
            )
        )
    if dtype == torch.float32:  # the path taken on devices without float64 (Apple MPS)
        b = mpmath.mpf(3.0)
        out.append(
            Case(
                "softplus, beta=3, float32 compensated (no-float64 devices)",
                lambda x: FF._softplus_compensated(x, 3.0)[1],
                lambda v: zeta(b * v) / b,
                xs,
                "F.softplus",
                lambda x: F.softplus(x, 3.0),
            )
        )
        out.append(
            Case(
                "inverse_softplus, beta=3, float32 compensated (no-float64 devices)",
                lambda y: FF._inverse_compensated(y, 3.0),
                lambda v: mpmath.log(mpmath.expm1(b * v)) / b,
                y_grid(points, dtype, rng),
                "log(expm1(beta y)) / beta",
                lambda y: torch.log(torch.expm1(3.0 * y)) / 3.0,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000, help="log-spaced points per side")
    parser.add_argument("--dps", type=int, default=60, help="mpmath decimal digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = parser.parse_args()
    mpmath.mp.dps = args.dps

    start = time.perf_counter()
    print(
        f"worst error in ulp; {args.points} points per side, mpmath at {args.dps} digits, "
        f"device {args.device}, torch {torch.__version__}\n"
    )
    print("| function | dtype | ours (ulp) | at input | reference form | its ulp |")
    print("|---|---|---:|---:|---|---:|")
    for name in args.dtypes:
        dtype = DTYPES[name]
        for case in cases(args.points, dtype):
            x = dtype_inputs(case.grid, dtype)
            truth = exact(case.oracle, x)
            w, at = worst_ulp(case.ours, x, truth, args.device)
            r, _ = worst_ulp(case.ref, x, truth, args.device)
            print(
                f"| {case.name} | {name} | {w:.3f} | {at:.6g} | {case.ref_name} | {r:.3g} |",
                flush=True,
            )
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
