"""``forwardforward identities``: the softplus family's identities, measured.

:func:`measure_identities` evaluates both sides of each identity of
:mod:`forwardforward.functional` (S2-S8) over :func:`standard_grid`, in float32 and
float64, and returns one :class:`IdentityRow` per identity, textbook form and dtype: the
worst disagreement of our functions, and beside it the same identity with the textbook form
on the left, which overflows to inf, turns NaN, or is simply wrong. :func:`plot_family`
draws the family. ``run`` is the command: it prints the table and writes the plot.

The error of an identity ``lhs = rhs`` is ``|lhs - rhs|`` in ulp of its largest term
(the spacing of the dtype's numbers there): the rounding a sum of those terms cannot avoid.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from forwardforward import functional as FF
from forwardforward.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.float64)
BETAS = (0.5, 1.0, 2.0, 4.0)  # drawn by plot_family


@dataclass(frozen=True)
class IdentityRow:
    """The worst error of one identity in one dtype, ours and a textbook form's."""

    identity: str  # the identity, in ASCII
    dtype: str  # "float32" or "float64"
    ours_ulp: float  # worst |lhs - rhs| of our functions, in ulp of the largest term
    ours_bad: int  # entries where ours gave inf or NaN (every true value is finite)
    naive: str  # the textbook form put on the left instead
    naive_ulp: float  # its worst error where it is finite
    naive_bad: int  # entries where it gave inf or NaN
    naive_first_bad: float | None  # the input of least magnitude where it did


@dataclass(frozen=True)
class _Identity:
    name: str
    naive_name: str
    # x -> (lhs, rhs, largest term) with our functions, and the naive left-hand side
    ours: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    naive: Callable[[Tensor], Tensor]
    # the inputs where the identity can hold in the dtype (None: all of the grid)
    domain: Callable[[Tensor], Tensor] | None = None


def standard_grid(dtype: torch.dtype, device: str | torch.device = "cpu") -> Tensor:
    """Inputs reaching +-1e4: zero, log-spaced magnitudes, a dense middle, trouble spots.

    Returns:
        Sorted distinct numbers of ``dtype``, shape ``(N,)`` with N about 1600.
    """
    mags = torch.logspace(-6, 4, 400, dtype=torch.float64)
    special = torch.tensor([20.0, 21.0, 36.7, 88.7, 89.0, 100.0, 709.8, 710.0, 745.2, 1e4])
    middle = torch.linspace(-50.0, 50.0, 401, dtype=torch.float64)
    x = torch.cat([torch.zeros(1, dtype=torch.float64), mags, -mags, special, -special, middle])
    return torch.unique(x.to(dtype)).to(device)


def _grad(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


def _sigmoid(x: Tensor) -> Tensor:
    """sigma(x), also where ``torch.sigmoid`` flushes to 0: e^x / (1 + e^x) for x < 0."""
    ex = torch.exp(-x.abs())
    return torch.where(x < 0, ex / (1 + ex), 1 / (1 + ex))


def _zeta_pair(x: Tensor) -> Tensor:
    """The larger of zeta(x) and zeta(-x): the largest term of (S2)."""
    return FF.softplus(x.abs())


def _naive_softplus(x: Tensor) -> Tensor:
    return torch.log(1 + torch.exp(x))


def _bce_both(x: Tensor) -> tuple[Tensor, Tensor]:
    """Pair every x with p in {0, 0.1, 0.5, 0.9, 1}: logits and targets, shape (5N,)."""
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=x.dtype, device=x.device)
    return x.repeat(len(p)), p.repeat_interleave(len(x))


def _ours_bce(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    z, p = _bce_both(x)
    pos, neg = -p * FF.log_sigmoid(z), -(1 - p) * FF.log1m_sigmoid(z)
    rhs = FF.softplus_loss(z, p, target_format="probability", reduction="none")
    return pos + neg, rhs, torch.maximum(pos, neg)


def _naive_bce(x: Tensor) -> Tensor:
    z, p = _bce_both(x)
    return F.binary_cross_entropy(torch.sigmoid(z), p, reduction="none")


def _two_class(x: Tensor) -> Tensor:
    return torch.stack([torch.zeros_like(x), x], dim=1)  # (N, 2)


def _ours_margin(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    y = torch.ones_like(x)
    lhs = FF.softplus_loss(x, -y, reduction="none")
    rhs = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    return lhs, rhs, torch.maximum(x.abs(), lhs)  # PyTorch's form adds terms of size z


def _ours_ff(g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _, lhs = FF.ff_loss(g, g, 2.0, reduction="none")
    rhs = -FF.log1m_sigmoid(g - 2.0)
    return lhs, rhs, torch.maximum(g, rhs)  # g - theta rounds in ulp of g


IDENTITIES = (
    _Identity(
        "zeta(x) - zeta(-x) = x",
        "log(1 + exp(x))",
        lambda x: (FF.softplus(x) - FF.softplus(-x), x, _zeta_pair(x)),
        lambda x: _naive_softplus(x) - _naive_softplus(-x),
    ),
    _Identity(
        "zeta(x) - zeta(-x) = x",
        "F.softplus, threshold 20",
        lambda x: (FF.softplus(x) - FF.softplus(-x), x, _zeta_pair(x)),
        lambda x: F.softplus(x) - F.softplus(-x),
    ),
    _Identity(
        "d zeta(x)/dx = sigma(x)",
        "grad of log(1 + exp(x))",
        lambda x: (_grad(FF.softplus, x), _sigmoid(x), _sigmoid(x)),
        lambda x: _grad(_naive_softplus, x),
    ),
    _Identity(
        "log sigma(x) = -zeta(-x)",
        "log(sigmoid(x))",
        lambda x: (FF.log_sigmoid(x), -FF.softplus(-x), FF.softplus(-x)),
        lambda x: torch.log(torch.sigmoid(x)),
    ),
    _Identity(
        "log(1 - sigma(x)) = -zeta(x)",
        "log(1 - sigmoid(x))",
        lambda x: (FF.log1m_sigmoid(x), -FF.softplus(x), FF.softplus(x)),
        lambda x: torch.log(1 - torch.sigmoid(x)),
    ),
    _Identity(
        "zeta^-1(zeta(x)) = x",
        "log(exp(y) - 1)",
        lambda x: (
            FF.inverse_softplus(FF.softplus(x)),
            x,
            torch.maximum(x.abs(), FF.softplus(x)),
        ),
        lambda x: torch.log(torch.exp(FF.softplus(x)) - 1),
        # zeta(x) must be a normal number: a subnormal has lost the digits that carry x
        domain=lambda x: FF.softplus(x) >= torch.finfo(x.dtype).smallest_normal,
    ),
    _Identity(
        "BCE(sigma(z), p) = softplus_loss(z, p)",
        "F.binary_cross_entropy",
        _ours_bce,
        _naive_bce,
    ),
    _Identity(
        "softmax CE((0, z), 1) = zeta(-z)",
        "-log(softmax((0, z))[1])",
        lambda x: (
            F.cross_entropy(_two_class(x), torch.ones_like(x, dtype=torch.long), reduction="none"),
            FF.softplus(-x),
            torch.maximum(x.abs(), FF.softplus(-x)),  # log-softmax subtracts terms of size z
        ),
        lambda x: -torch.log(torch.softmax(_two_class(x), dim=1)[:, 1]),
    ),
    _Identity(
        "zeta(-y z) = BCE-with-logits(z, y=-1)",
        "F.soft_margin_loss",
        _ours_margin,
        lambda x: F.soft_margin_loss(x, -torch.ones_like(x), reduction="none"),
    ),
    _Identity(
        "FF: zeta(g - theta) = -log(1 - sigma(g - theta))",
        "log(1 + exp(g - theta))",
        _ours_ff,
        lambda g: _naive_softplus(g - 2.0),
        domain=lambda g: g >= 0,  # goodness, a sum of squares; theta = 2
    ),
)


def _spacing(s: Tensor) -> Tensor:
    """Spacing of the dtype's numbers at |s|, in float64."""
    a = s.abs()
    return (torch.nextafter(a, torch.full_like(a, math.inf)) - a).double()


def _errors(lhs: Tensor, rhs: Tensor, scale: Tensor) -> tuple[float, Tensor]:
    """Worst finite error in ulp of ``scale``, and the mask of non-finite entries."""
    bad = ~(torch.isfinite(lhs) & torch.isfinite(rhs))
    err = (lhs.double() - rhs.double()).abs() / _spacing(scale)
    err = err[~bad]
    return (float(err.max()) if err.numel() else math.nan), bad


def _input_of(x: Tensor, n: int) -> Tensor:
    """The grid input behind each of ``n`` entries (identities may tile the grid)."""
    return x.repeat(n // len(x))


def measure_identities(
    dtypes: tuple[torch.dtype, ...] = DTYPES, device: str | torch.device = "cpu"
) -> list[IdentityRow]:
    """Measure every identity over :func:`standard_grid` in each dtype.

    Returns:
        One :class:`IdentityRow` per identity, textbook form and dtype, in that order.
    """
    rows = []
    for dtype in dtypes:
        grid = standard_grid(dtype, device)
        for ident in IDENTITIES:
            x = grid if ident.domain is None else grid[ident.domain(grid)]
            lhs, rhs, scale = (t.detach() for t in ident.ours(x))
            ours_ulp, ours_bad = _errors(lhs, rhs, scale)
            naive = ident.naive(x).detach()
            naive_ulp, naive_bad = _errors(naive, rhs, scale)

            first = None
            if naive_bad.any():
                inputs = _input_of(x, len(naive))[naive_bad]
                first = float(inputs[inputs.abs() == inputs.abs().min()].max())
            rows.append(
                IdentityRow(
                    identity=ident.name,
                    dtype=str(dtype).removeprefix("torch."),
                    ours_ulp=ours_ulp,
                    ours_bad=int(ours_bad.sum()),
                    naive=ident.naive_name,
                    naive_ulp=naive_ulp,
                    naive_bad=int(naive_bad.sum()),
                    naive_first_bad=first,
                )
            )
        log.debug("measured %d identities in %s over %d inputs", len(IDENTITIES), dtype, len(grid))
    return rows


def check_plot_path(path: str | Path) -> Path:
    """Return ``path`` if a figure can be written there, else raise ConfigError."""
    from matplotlib.figure import Figure

    path = Path(path)
    formats = Figure().canvas.get_supported_filetypes()
    if path.is_dir():
        raise ConfigError(f"--plot {path} is a directory; name a file in it, e.g. {path}/zeta.png")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {path}: folder {path.parent} does not exist; create it first")
    if path.suffix.lstrip(".").lower() not in formats:
        raise ConfigError(
            f"--plot {path}: unknown image type {path.suffix!r}; use one of "
            + ", ".join(f".{k}" for k in sorted(formats))
        )
    return path


def plot_family(path: str | Path, betas: tuple[float, ...] = BETAS) -> Path:
    """Draw softplus of several sharpness beside ReLU, and its derivative, the sigmoid.

    Uses matplotlib's Agg canvas directly (no display, no global backend change).

    Returns:
        The path written.

    Raises:
        ConfigError: the directory is missing, the path is a directory, or the file type
            is not one matplotlib writes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_plot_path(path)
    x = torch.linspace(-4.0, 4.0, 401, dtype=torch.float64)
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    for beta in betas:
        y = FF.softplus(x, beta)
        dy = _grad(lambda v, beta=beta: FF.softplus(v, beta), x)  # sigma(beta x), (S3)
        left.plot(x, y, label=rf"$\zeta_\beta$, $\beta$ = {beta:g}")
        right.plot(x, dy, label=rf"$\sigma({beta:g}\,x)$")
    left.plot(x, x.clamp(min=0), "k--", label="ReLU")
    right.plot(x, (x > 0).double(), "k--", label="ReLU' (step)")

    left.set(title=r"softplus $\zeta_\beta(x) = \log(1 + e^{\beta x})/\beta$", xlabel="x")
    right.set(title=r"its derivative $\sigma(\beta x)$", xlabel="x")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.savefig(path, dpi=120)
    return path


def format_table(rows: list[IdentityRow]) -> str:
    """The rows as a fixed-width text table, one line per row."""
    head = (
        f"{'identity':<48} {'dtype':<8} {'ours ulp':>9} {'inf/nan':>7}   "
        f"{'textbook form':<26} {'its ulp':>9} {'inf/nan':>7} {'first at':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        first = "" if r.naive_first_bad is None else f"{r.naive_first_bad:g}"
        lines.append(
            f"{r.identity:<48} {r.dtype:<8} {r.ours_ulp:>9.3g} {r.ours_bad:>7}   "
            f"{r.naive:<26} {r.naive_ulp:>9.3g} {r.naive_bad:>7} {first:>9}"
        )
    return "\n".join(lines)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r} is not a device name ({err})") from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ConfigError(f"--device {name!r} is not available here: {err}") from None
    return device


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``identities`` subcommand on the command line's subparsers."""
    p = sub.add_parser(
        "identities",
        help="measure the softplus family's identities against textbook forms",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="also draw softplus for several beta beside ReLU, and its derivative",
    )
    p.add_argument("--device", default="cpu", help="torch device to measure on (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table of identities; write the plot if asked. Returns the exit code."""
    device = _device(args.device)
    if args.plot is not None:
        check_plot_path(args.plot)  # fail before the measuring, not after

    rows = measure_identities(device=device)
    print("Worst error of each identity over the standard grid (|x| <= 1e4), in ulp of its")
    print(f"largest term; {len(standard_grid(torch.float64))} inputs, device {device}.")
    print("inf/nan: inputs where that side gave inf or NaN (every true value is finite);")
    print("first at: the input of least magnitude where the textbook form did.\n")
    print(format_table(rows))

    if args.plot is not None:
        path = plot_family(args.plot)
        print(f"\nwrote {path}")
    return 0
