r"""The softplus family, exact and stable.

Notation: :math:`\zeta(x) = \log(1 + e^x)` is the softplus, :math:`\sigma(x) = 1/(1 + e^{-x})`
the logistic sigmoid, and :math:`\zeta_\beta(x) = \zeta(\beta x)/\beta` the softplus of
sharpness :math:`\beta > 0`. Every function below refers to these identities by number.

(S1) Stable form. :math:`\zeta(x) = \max(x, 0) + \operatorname{log1p}(e^{-|x|})`. The
     exponent is never positive, so nothing overflows; PyTorch's ``logsigmoid`` kernel
     computes exactly this, and :math:`\zeta(x) = -\log\sigma(-x)` is how it is called here.

(S2) Reflection. :math:`\zeta(x) - \zeta(-x) = x`, so :math:`\zeta(x) \to x` as
     :math:`x \to \infty`, :math:`\zeta(x) \approx e^x` as :math:`x \to -\infty`, and
     :math:`\zeta(0) = \log 2`.

(S3) Derivative. :math:`\zeta'(x) = \sigma(x)` and :math:`\zeta_\beta'(x) = \sigma(\beta x)`;
     in particular the gradient at 0 is exactly 1/2.

(S4) Log-sigmoids. :math:`\log\sigma(x) = -\zeta(-x)` and :math:`\log(1 - \sigma(x)) =
     -\zeta(x)`.

(S5) Inverse. For :math:`y > 0`, :math:`\zeta^{-1}(y) = \log(e^y - 1) = \log\operatorname{expm1}(y)
     = y + \log(-\operatorname{expm1}(-y)) = \operatorname{log1p}(2\operatorname{expm1}(y - \log
     2))`, and :math:`\zeta_\beta^{-1}(y) = \zeta^{-1}(\beta y)/\beta`. The first form is
     accurate for small :math:`y`, the second for large :math:`y`, the third near
     :math:`y = \log 2`, where the result crosses zero. Its derivative is
     :math:`1/\sigma(\zeta^{-1}(y)) = 1/(1 - e^{-y})`.

(S6) Binary cross-entropy. For logits :math:`z` and a probability :math:`p` of the
     positive class, :math:`-p\log\sigma(z) - (1 - p)\log(1 - \sigma(z)) = p\,\zeta(-z) +
     (1 - p)\,\zeta(z) = \zeta(z) - p z`. With labels :math:`y = 2p - 1 \in \{-1, +1\}` it is
     :math:`\zeta(-y z)`, the soft margin.

(S7) Softmax. The two-class cross-entropy of the logits :math:`(0, z)` for class 1 is
     :math:`-\log(e^z / (1 + e^z)) = \zeta(-z)`.

(S8) Forward-Forward. A layer calls an input positive with probability
     :math:`\sigma(g - \theta)`, :math:`g` its goodness and :math:`\theta` the threshold; the
     log-loss of a positive is :math:`\zeta(\theta - g^+)` and of a negative
     :math:`\zeta(g^- - \theta)`. SymBa scores a pair by :math:`\zeta(-\alpha(g^+ - g^-))`.

Numerics shared by all functions: float16 and bfloat16 inputs are computed in float32 and
rounded once; float32 and float64 are computed in their own dtype. A sharpness
:math:`\beta` other than a power of two makes :math:`\beta x` and the division by
:math:`\beta` inexact; their rounding errors are recovered exactly (Dekker's product,
Knuth's TwoSum) and added back to first order, which keeps the result accurate even where
:math:`\zeta` is ill-conditioned (:math:`\beta x \ll 0`). Measured worst errors are in
docs/functional.md. This module is pure: no state, no logging, no I/O.
"""

from __future__ import annotations

import decimal
import math
import struct
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ff_loss",
    "inverse_softplus",
    "log1m_sigmoid",
    "log_sigmoid",
    "softplus",
    "softplus_loss",
]

Reduction = Literal["mean", "sum", "none"]
TargetFormat = Literal["sign", "binary", "probability"]
FFKind = Literal["softplus", "symba"]

REDUCTIONS = ("mean", "sum", "none")
TARGET_FORMATS = ("sign", "binary", "probability")
FF_KINDS = ("softplus", "symba")

# log 2 = hi + lo per dtype, hi exact in that dtype (checked against mpmath in tests)
_LN2 = {
    torch.float32: (0.6931471824645996, -1.904654299957768e-09),
    torch.float64: (0.6931471805599453, 2.3190468138462996e-17),
}
# (S5) switches forms at these points of beta * y
_INV_SMALL, _INV_LARGE = 0.35, 2.0
# below this beta * y, log(expm1(beta y)) = log(beta) + log(y) to every digit of float64
_INV_TINY = 2.0**-60
# below this beta * x, zeta(beta x) = exp(beta x) to every digit of float64
_EXP_ONLY = -40.0


# ----------------------------------------------------------------------------- validation


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and positive."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_threshold(threshold: float | None) -> float | None:
    """Return ``threshold`` (None or a float), or raise ValueError if it is not a number."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number or None, got {threshold!r}")
    if math.isnan(threshold):
        raise ValueError("threshold must be a number or None, got nan")
    return float(threshold)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value``, or raise ValueError naming the allowed ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_float(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a float dtype, got {x.dtype}; cast it with .float()")


def _has_float64(device: torch.device) -> bool:
    """Whether the device computes in float64 (Apple's MPS does not)."""
    return device.type != "mps"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 are computed in float32 and rounded once at the end."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ----------------------------------------------------------------------------- kernels


def _zeta(t: Tensor) -> Tensor:
    """(S1) through PyTorch's log-sigmoid kernel; its backward gives sigma(t), 1/2 at 0."""
    return 0.0 - F.logsigmoid(-t)  # 0 - (-0) is +0: zeta is never -0


# ----------------------------------------------------------------------------- exact beta
# A sharpness that is not a power of two makes beta * x and z / beta inexact. The helpers
# below recover those rounding errors exactly (Dekker's product with Veltkamp's splitting,
# Knuth's TwoSum) and add them back to first order, so that a result sees one rounding
# more than the beta = 1 kernel, not three.


@dataclass(frozen=True)
class _Beta:
    """A sharpness split into parts for error-free arithmetic in float32 or float64."""

    b1: float  # beta rounded to the dtype: what ``x * beta`` multiplies by
    b2: float  # beta - b1 rounded to the dtype (0 in float64)
    hi: float  # b1 = hi + lo, each with at most half the dtype's bits
    lo: float
    log_hi: float  # log(beta) = log_hi + log_lo, to twice the dtype's precision
    log_lo: float
    split: float  # Veltkamp's splitting constant 2^s + 1
    exact: bool  # a power of two: products and quotients by beta are exact


def _beta_parts(beta: float, dtype: torch.dtype) -> _Beta:
    return _Beta(*_beta_numbers(beta, dtype == torch.float32))


# NOTE: a pure function of Python numbers; torch.compile may fold it to constants
@torch.compiler.assume_constant_result
def _beta_numbers(
    beta: float, single: bool
) -> tuple[float, float, float, float, float, float, float, bool]:
    tiny, huge = (1.2e-38, 3.4e38) if single else (2.3e-308, 1.7e308)
    if not tiny <= beta <= huge:
        dtype = "float32" if single else "float64"
        raise ValueError(f"beta={beta!r} is outside the normal range of {dtype}")
    rnd = (lambda v: struct.unpack("f", struct.pack("f", v))[0]) if single else float
    keep, split = (12, 4097.0) if single else (26, 134217729.0)

    b1 = rnd(beta)
    m, ex = math.frexp(b1)
    hi = math.ldexp(round(math.ldexp(m, keep)), ex - keep)
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        log = decimal.Decimal(beta).ln()
        log_hi = rnd(float(log))
        log_lo = rnd(float(log - decimal.Decimal(log_hi)))
    return b1, rnd(beta - b1), hi, b1 - hi, log_hi, log_lo, split, math.frexp(beta)[0] == 0.5


def _finite(e: Tensor) -> Tensor:
    """A correction term, or 0 where its computation overflowed."""
    return torch.where(torch.isfinite(e), e, 0.0)


def _two_prod_err(a: Tensor, p: Tensor, bp: _Beta) -> Tensor:
    """``a * b1 - p`` exactly, for ``p = fl(a * b1)`` (Dekker; 0 where it overflows)."""
    c = a * bp.split
    a_hi = c - (c - a)
    a_lo = a - a_hi
    err = ((a_hi * bp.hi - p) + a_hi * bp.lo + a_lo * bp.hi) + a_lo * bp.lo
    return _finite(err)


def _scale(x: Tensor, bp: _Beta) -> tuple[Tensor, Tensor | None]:
    """``t = fl(beta x)`` (differentiable) and ``e = beta x - t`` (None if exact, no grad)."""
    t = x * bp.b1
    if bp.exact:
        return t, None
    with torch.no_grad():
        return t, _finite(_two_prod_err(x, t, bp) + x * bp.b2)


def _div_beta(z: Tensor, c: Tensor | None, bp: _Beta) -> Tensor:
    """``(z + c) / beta`` with one rounding after the correction (``c`` has no grad)."""
    q = z / bp.b1
    if bp.exact:
        return q if c is None else q + c / bp.b1

    with torch.no_grad():
        p = q * bp.b1
        r = (z - p) - _two_prod_err(q, p, bp)  # z - q * b1, exactly
        corr = r - q * bp.b2 if c is None else (r - q * bp.b2) + c
        corr = _finite(corr / bp.b1)
    return q + corr


def _exp_minus_log(t: Tensor, e: Tensor | None, bp: _Beta) -> Tensor:
    """``exp(t + e - log beta)``: zeta(beta x) / beta where ``t < _EXP_ONLY``.

    Dividing a subnormal ``exp(t)`` by beta would carry its coarse rounding into the
    result; subtracting log(beta) in the exponent (TwoSum for its rounding) does not.
    Entries with ``t >= _EXP_ONLY`` get a finite stand-in value, to be discarded.
    """
    t = torch.where(t < _EXP_ONLY, t, _EXP_ONLY)
    s = t - bp.log_hi

    with torch.no_grad():
        b = s - t  # TwoSum: s + err == t - log_hi exactly
        err = (t - (s - b)) + (-bp.log_hi - b)
        corr = err - bp.log_lo if e is None else (err - bp.log_lo) + e
        corr = _finite(corr)

    big = torch.exp(s)
    return big + big * corr


# ----------------------------------------------------------------------------- the family


def softplus(x: Tensor, beta: float = 1.0, threshold: float | None = None) -> Tensor:
    r"""Softplus of sharpness ``beta``, exact everywhere unless a ``threshold`` is given.

    .. math::
        \zeta_\beta(x) = \frac{1}{\beta} \log(1 + e^{\beta x})

    Computed as (S1) on :math:`t = \beta x`, which never exponentiates a positive number.
    For :math:`\beta \ne 1`, float32 is computed in float64 and rounded once; float64 (and
    float32 on devices without float64) adds the first-order corrections for the rounding
    of :math:`\beta x` and of the division by :math:`\beta`, and takes
    :math:`e^{t - \log\beta}` where :math:`t < -40`, so no subnormal step loses digits.
    The gradient is (S3), :math:`\sigma(\beta x)`, exactly 1/2 at 0.

    Args:
        x: input of any shape and float dtype.
        beta: sharpness :math:`\beta > 0`, finite.
        threshold: None (exact everywhere), or a number: where :math:`\beta x` exceeds it
            the result is ``x`` itself (PyTorch's convention for ``F.softplus``).

    Returns:
        Tensor of the shape, dtype and device of ``x``.

    Raises:
        ValueError: ``beta`` not positive and finite, ``threshold`` NaN, ``x`` not float.

    Note:
        Within 1.5 ulp of the exact value for :math:`\beta = 1`; for other :math:`\beta`
        within 0.5 ulp in float32 and 2 ulp in float64 (docs/functional.md). The
        compensated float64 path costs about 60 elementwise ops against 2 for
        :math:`\beta = 1`. Limitation: on devices without float64 (Apple MPS), float32
        with :math:`\beta \ne 1` is compensated in float32: up to 2.1 ulp, since the
        log-sigmoid kernel's own 1.4 ulp is scaled by :math:`1/\beta`, and :math:`\beta`
        must lie in float32's normal range.
    """
    _check_float(x, "x")
    beta = check_positive("beta", beta)
    threshold = check_threshold(threshold)
    xc = x.to(_compute_dtype(x.dtype))

    if beta == 1.0:
        t, out = xc, _zeta(xc)
    elif xc.dtype == torch.float32 and _has_float64(xc.device):
        # NOTE: float64 carries 29 bits more than a float32 result needs, so the plain
        # formula there, rounded once, is within 0.5 ulp: cheaper than compensating
        t = xc.double() * beta
        out = (_zeta(t) / beta).float()
    else:
        t, out = _softplus_compensated(xc, beta)

    if threshold is not None:
        out = torch.where(t > threshold, xc, out)
    return out.to(x.dtype)


def log_sigmoid(x: Tensor) -> Tensor:
    r"""Log of the sigmoid, :math:`\log\sigma(x) = -\zeta(-x)` (S4).

    Computed by PyTorch's log-sigmoid kernel, which evaluates (S1): finite for every finite
    input, :math:`\approx x` as :math:`x \to -\infty`, gradient :math:`\sigma(-x)`.

    Args:
        x: input of any shape and float dtype.

    Returns:
        Tensor of the shape, dtype and device of ``x``, all values :math:`\le 0`.
    """
    _check_float(x, "x")
    return F.logsigmoid(x.to(_compute_dtype(x.dtype))).to(x.dtype)


def log1m_sigmoid(x: Tensor) -> Tensor:
    r"""Log of one minus the sigmoid, :math:`\log(1 - \sigma(x)) = -\zeta(x)` (S4).

    Computed as :math:`\log\sigma(-x)`, which never forms :math:`1 - \sigma(x)` and so never
    loses it to cancellation: finite for every finite input, :math:`\approx -x` as
    :math:`x \to \infty`.

    Args:
        x: input of any shape and float dtype.

    Returns:
        Tensor of the shape, dtype and device of ``x``, all values :math:`\le 0`.
    """
    _check_float(x, "x")
    return F.logsigmoid(-x.to(_compute_dtype(x.dtype))).to(x.dtype)


def inverse_softplus(y: Tensor, beta: float = 1.0) -> Tensor:
    r"""Inverse of the softplus: the :math:`x` with :math:`\zeta_\beta(x) = y`.

    .. math::
        \zeta_\beta^{-1}(y) = \frac{1}{\beta} \log(e^{\beta y} - 1), \qquad y > 0

    Computed by the three forms of (S5) on :math:`u = \beta y`: ``log(expm1(u))`` below
    0.35, ``log1p(2 expm1(u - log 2))`` (with :math:`\log 2` in two parts) up to 2, and
    ``u + log(-expm1(-u))`` above, so nothing overflows and no digit cancels. Each form sees
    only inputs in its own range, which keeps the gradients of the unused forms finite.
    For :math:`\beta \ne 1` the rounding of :math:`\beta y` is corrected to first order,
    and below :math:`u = 2^{-60}` the result is :math:`(\log y + \log\beta)/\beta`, which
    does not lose digits where :math:`\beta y` is subnormal.

    Args:
        y: input of any shape and float dtype.
        beta: sharpness :math:`\beta > 0`, finite.

    Returns:
        Tensor of the shape, dtype and device of ``y``.

    Note:
        The inverse exists only for :math:`y > 0`: the result is NaN for :math:`y \le 0`
        (and NaN input), with gradient 0 there. Within 4 ulp of the exact value in float32
        and float64, from the smallest subnormal to the largest finite input; for
        :math:`\beta \ne 1` float32 is computed in float64 and rounded once.
    """
    _check_float(y, "y")
    beta = check_positive("beta", beta)
    yc = y.to(_compute_dtype(y.dtype))
    inside = yc > 0
    if beta == 1.0:
        x = _inverse_zeta(yc)
    elif yc.dtype == torch.float32 and _has_float64(yc.device):
        x = _inverse_compensated(yc.double(), beta).float()  # rounded once, as in softplus
    else:
        x = _inverse_compensated(yc, beta)

    x = torch.where(inside, x, math.nan)
    return x.to(y.dtype)


def _softplus_compensated(x: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """``(t, zeta(t + e) / beta)`` for ``beta * x = t + e``, in the dtype of ``x``."""
    bp = _beta_parts(beta, x.dtype)
    t, e = _scale(x, bp)
    c = None if e is None else torch.sigmoid(t.detach()) * e  # zeta(t + e) - zeta(t)
    out = _div_beta(_zeta(t), c, bp)
    out = torch.where(t < _EXP_ONLY, _exp_minus_log(t, e, bp), out)
    out = torch.where((t == math.inf) & torch.isfinite(x), x, out)  # beta x overflowed
    return t, out


def _inverse_compensated(y: Tensor, beta: float) -> Tensor:
    """``zeta^-1(beta y) / beta`` with the rounding of ``beta y`` corrected (``y > 0``)."""
    inside = y > 0
    bp = _beta_parts(beta, y.dtype)
    u, e = _scale(y, bp)
    z, c = _inverse_zeta(u), None
    if e is not None:
        with torch.no_grad():  # zeta^-1(u + e) - zeta^-1(u) = e / sigma(x), (S5)
            c = e / -torch.expm1(-torch.where(inside, u, 1.0))

    # tiny u: beta * y may have lost digits to underflow, so take logs of the factors
    tiny = u < _INV_TINY
    z = torch.where(tiny, torch.log(torch.where(tiny & inside, y, 1.0)) + bp.log_hi, z)
    c_tiny = torch.full_like(z, bp.log_lo)
    c = c_tiny if c is None else torch.where(tiny, c_tiny, c)

    x = _div_beta(z, c, bp)
    return torch.where((u == math.inf) & torch.isfinite(y), y, x)  # beta y overflowed


def _inverse_zeta(u: Tensor) -> Tensor:
    """(S5) in three forms, each fed only inputs of its own range (finite gradients)."""
    small = u < _INV_SMALL
    large = u >= _INV_LARGE

    u_small = torch.where(small & (u > 0), u, _INV_SMALL)
    u_mid = torch.where(small | large, 1.0, u)
    u_large = torch.where(large, u, _INV_LARGE)
    x_small = torch.log(torch.expm1(u_small))
    ln2_hi, ln2_lo = _LN2[u.dtype]
    x_mid = torch.log1p(2.0 * torch.expm1((u_mid - ln2_hi) - ln2_lo))
    x_large = u_large + torch.log(-torch.expm1(-u_large))

    return torch.where(small, x_small, torch.where(large, x_large, x_mid))


# ----------------------------------------------------------------------------- losses


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _xmul(q: Tensor, v: Tensor) -> Tensor:
    """``q * v`` with 0 * inf taken as 0: a term of zero weight adds nothing, even at inf."""
    return q * torch.where(q == 0, 0.0, v)


def _check_targets(q: Tensor, target_format: str) -> None:
    """Raise ValueError unless the targets hold values their format allows (one host sync)."""
    if target_format == "sign":
        ok, allowed = ((q == 1) | (q == -1)).all(), "-1 or +1"
    elif target_format == "binary":
        ok, allowed = ((q == 0) | (q == 1)).all(), "0 or 1"
    else:
        ok, allowed = ((q >= 0) & (q <= 1)).all(), "probabilities in [0, 1]"
    if not bool(ok):
        raise ValueError(
            f"targets for target_format={target_format!r} must be {allowed}; "
            "pick the format that matches your labels"
        )


def softplus_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    target_format: TargetFormat = "sign",
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    beta: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Binary cross-entropy of logits, written with the softplus (S6).

    .. math::
        \ell = w \left[ w_+ \, q \, \zeta_\beta(-z) + (1 - q)\, \zeta_\beta(z) \right]

    with :math:`q` the probability of the positive class: :math:`(1 + y)/2` for signs
    :math:`y \in \{-1, +1\}`, :math:`t` for binary labels :math:`t \in \{0, 1\}`, :math:`p`
    for probabilities. For labels this is one softplus, :math:`w\,w_+^{[y=1]}
    \zeta_\beta(-y z)`; for probabilities the two terms are both non-negative, so their sum
    is accurate where the equal form :math:`\zeta(z) - p z` would cancel. At
    :math:`\beta = 1` this is ``binary_cross_entropy_with_logits``, with the same meaning of
    ``weight``, ``pos_weight`` and ``reduction``.

    Args:
        logits: :math:`z`, shape ``(*)``, float dtype.
        targets: shape broadcastable with ``logits``; values as ``target_format`` says.
        target_format: ``"sign"`` (:math:`y \in \{-1, +1\}`), ``"binary"``
            (:math:`t \in \{0, 1\}`), or ``"probability"`` (:math:`p \in [0, 1]`).
        weight: :math:`w`, broadcastable to the loss, or None.
        pos_weight: :math:`w_+`, the weight of positive terms, broadcastable along the last
            dimensions (one per class), or None.
        beta: sharpness of the softplus, :math:`\beta > 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The loss: a scalar, or for ``"none"`` the broadcast shape of logits and targets.

    Raises:
        ValueError: an unknown option, targets outside their format's values (checked with
            one host sync), or shapes that do not broadcast.

    Note:
        Infinite logits give the limit: :math:`z = +\infty` with :math:`y = +1` costs 0,
        with :math:`y = -1` costs :math:`+\infty`; gradients stay finite.
    """
    _check_float(logits, "logits")
    check_choice("target_format", target_format, TARGET_FORMATS)
    check_choice("reduction", reduction, REDUCTIONS)
    beta = check_positive("beta", beta)
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    for name, w in (("weight", weight), ("pos_weight", pos_weight)):
        if w is not None and not isinstance(w, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    try:
        shape = torch.broadcast_shapes(logits.shape, targets.shape)
        for name, w in (("weight", weight), ("pos_weight", pos_weight)):
            if w is not None and torch.broadcast_shapes(w.shape, shape) != shape:
                raise ValueError(f"{name} of shape {tuple(w.shape)} is larger than the loss")
    except RuntimeError as err:
        raise ValueError(f"logits, targets and weights do not broadcast: {err}") from None

    dtype = _compute_dtype(logits.dtype)
    z = logits.to(dtype)
    q = targets.to(dtype)
    _check_targets(q, target_format)

    if target_format == "probability" and pos_weight is None:
        # (S6) as zeta(-|z|) + (1 - p) z for z > 0, + p |z| for z <= 0: no cancellation
        right = z > 0
        a = torch.where(right, -z, z)
        c = 1.0 - q
        c_err = (1.0 - c) - q  # c + c_err == 1 - q exactly (Fast2Sum)
        m = torch.where(right, _xmul(c, z) + _xmul(c_err, z), _xmul(q, -z))
        loss = softplus(a, beta) + m
    elif target_format == "probability":
        pos = softplus(-z, beta) * pos_weight.to(dtype)
        loss = _xmul(q, pos) + _xmul(1.0 - q, softplus(z, beta))
    else:
        y = q if target_format == "sign" else 2.0 * q - 1.0
        loss = softplus(-y * z, beta)  # (S6): the soft margin
        if pos_weight is not None:
            t = q if target_format == "binary" else 0.5 * (y + 1.0)
            loss = loss * (t * pos_weight.to(dtype) + (1.0 - t))  # exact for t in {0, 1}

    if weight is not None:
        loss = loss * weight.to(dtype)
    return _reduce(loss, reduction).to(logits.dtype)


def ff_loss(
    goodness_pos: Tensor,
    goodness_neg: Tensor,
    threshold: float | Tensor,
    *,
    kind: FFKind = "softplus",
    alpha: float = 4.0,
    reduction: Reduction = "mean",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Forward-Forward layer loss on the goodness of positive and negative inputs (S8).

    .. math::
        \text{softplus:}\quad \ell^+_i = \zeta(\theta - g^+_i), \quad
        \ell^-_j = \zeta(g^-_j - \theta); \qquad
        \text{symba:}\quad \ell_i = \zeta(-\alpha (g^+_i - g^-_i))

    Each term is one call of PyTorch's log-sigmoid kernel (S1), :math:`\zeta(a) =
    -\log\sigma(-a)`: finite for any finite goodness (:math:`\zeta(98) = 98`, gradient 1),
    with no branch on tensor values and no host sync. float32 and float64 are computed in
    place; float16 and bfloat16 in float32.

    Args:
        goodness_pos: :math:`g^+`, shape ``(B,)`` (or any shape), float dtype.
        goodness_neg: :math:`g^-`, shape ``(B',)``; for ``"symba"`` broadcastable with
            ``goodness_pos``, one negative per positive.
        threshold: :math:`\theta`, a number or a tensor broadcastable with the goodness;
            unused by ``"symba"``.
        kind: ``"softplus"`` (Hinton's loss) or ``"symba"`` (the symmetric pair loss).
        alpha: :math:`\alpha > 0`, the SymBa scale; unused by ``"softplus"``.
        reduction: ``"mean"`` (of all :math:`B + B'` terms, or of the pairs), ``"sum"``, or
            ``"none"``: the pair ``(loss_pos, loss_neg)`` for ``"softplus"``, one tensor of
            pair losses for ``"symba"``.

    Returns:
        A scalar, or for ``"none"`` the term tensors, in the goodness's dtype.
    """
    check_choice("kind", kind, FF_KINDS)
    check_choice("reduction", reduction, REDUCTIONS)
    _check_float(goodness_pos, "goodness_pos")
    _check_float(goodness_neg, "goodness_neg")
    dtype = goodness_pos.dtype
    g_pos = goodness_pos.to(_compute_dtype(dtype))
    g_neg = goodness_neg.to(_compute_dtype(dtype))

    if kind == "symba":
        alpha = check_positive("alpha", alpha)
        loss = -F.logsigmoid(alpha * (g_pos - g_neg))  # (B,)
        return _reduce(loss, reduction).to(dtype)

    theta = threshold
    if not isinstance(theta, Tensor) and (check_threshold(theta) is None or math.isinf(theta)):
        raise ValueError(f"threshold must be a finite number or a tensor, got {theta!r}")

    # log sigma(g+ - theta) and log sigma(theta - g-): minus the two loss terms
    ls_pos = F.logsigmoid(g_pos - theta)  # (B,)
    ls_neg = F.logsigmoid(theta - g_neg)  # (B',)

    if reduction == "none":
        return (-ls_pos).to(dtype), (-ls_neg).to(dtype)
    total = -(ls_pos.sum() + ls_neg.sum())
    if reduction == "mean":
        total = total / (ls_pos.numel() + ls_neg.numel())
    return total.to(dtype)
