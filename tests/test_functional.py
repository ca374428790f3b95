"""The softplus family against mpmath, PyTorch where it is right, and its own identities."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

from forwardforward import functional as FF

F32, F64 = torch.float32, torch.float64
FLOATS = (torch.float16, torch.bfloat16, F32, F64)
PROPS = settings(max_examples=80, deadline=None)
wide = st.floats(-1e4, 1e4, allow_nan=False)
mpmath.mp.dps = 50


# ----------------------------------------------------------------------------- oracle


def zeta_mp(v):
    return mpmath.log1p(mpmath.exp(v))


def ulp_mp(v, dtype: torch.dtype):
    """Spacing of ``dtype``'s numbers at the exact value ``v`` (subnormal spacing below)."""
    prec, emin = {F64: (53, -1022), F32: (24, -126)}[dtype]
    e = emin if v == 0 else max(int(mpmath.floor(mpmath.log(abs(v), 2))), emin)
    return mpmath.ldexp(1, e - prec + 1)


def worst_ulp(fn, oracle, xs, dtype: torch.dtype) -> float:
    """Largest error of ``fn`` over ``xs`` (rounded to ``dtype``) in ulp at the exact value."""
    x = torch.tensor(np.asarray(xs, dtype=np.float64)).to(dtype)
    out = fn(x).double().tolist()
    worst = 0.0
    for xi, yi in zip(x.double().tolist(), out, strict=True):
        exact = oracle(mpmath.mpf(xi))
        err = abs(mpmath.mpf(yi) - exact) / ulp_mp(exact, dtype) if math.isfinite(yi) else 1e300
        worst = max(worst, float(err))
    return worst


def x_grid() -> np.ndarray:
    mags = np.logspace(-20, 4, 60)
    return np.concatenate([[0.0], mags, -mags, np.linspace(-40, 40, 81), [88.7, -100.9, 745.0]])


def y_grid(dtype: torch.dtype) -> np.ndarray:
    tiny = 1e-44 if dtype == F32 else 5e-323
    mags = np.logspace(math.log10(tiny), 4, 60)
    return np.concatenate([mags, np.linspace(0.3, 2.5, 45), [1e-30, math.log(2.0)]])


def t(values, dtype=F64, grad=False) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def grad_of(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


def ulp(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return torch.nextafter(a, torch.full_like(a, math.inf)) - a


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("beta", [1.0, 3.0, 0.1, 0.5])
def test_softplus_is_within_2_ulp_of_mpmath(dtype, beta):
    b = mpmath.mpf(beta)
    err = worst_ulp(lambda x: FF.softplus(x, beta), lambda v: zeta_mp(b * v) / b, x_grid(), dtype)
    assert err <= (0.51 if dtype == F32 and beta != 1.0 else 2.0)


@pytest.mark.parametrize("beta", [3.0, 0.1, 0.5])
def test_float32_compensated_path_for_devices_without_float64_is_within_2_2_ulp(beta):
    b = mpmath.mpf(beta)

    def fn(x):
        return FF._softplus_compensated(x, beta)[1]

    # Limitation: the float32 kernel's 1.4 ulp, scaled by 1/beta, can reach 2.1 ulp
    assert worst_ulp(fn, lambda v: zeta_mp(b * v) / b, x_grid(), F32) <= 2.2
    inv = worst_ulp(
        lambda y: FF._inverse_compensated(y, beta),
        lambda v: mpmath.log(mpmath.expm1(b * v)) / b,
        y_grid(F32),
        F32,
    )
    assert inv <= 4.0
    with pytest.raises(ValueError, match="normal range"):
        FF._softplus_compensated(torch.ones(1), 1e-40)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_log_sigmoids_are_within_2_ulp_of_mpmath(dtype):
    assert worst_ulp(FF.log_sigmoid, lambda v: -zeta_mp(-v), x_grid(), dtype) <= 2.0
    assert worst_ulp(FF.log1m_sigmoid, lambda v: -zeta_mp(v), x_grid(), dtype) <= 2.0


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_inverse_softplus_is_within_4_ulp_of_mpmath_down_to_subnormals(dtype, beta):
    b = mpmath.mpf(beta)
    err = worst_ulp(
        lambda y: FF.inverse_softplus(y, beta),
        lambda v: mpmath.log(mpmath.expm1(b * v)) / b,
        y_grid(dtype),
        dtype,
    )
    assert err <= 4.0


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.45, 0.7, 1.0])
def test_softplus_loss_of_probabilities_is_within_2_ulp_of_mpmath(dtype, p):
    pm = mpmath.mpf(float(torch.tensor(p, dtype=dtype)))

    def loss(z):
        q = torch.full_like(z, p)
        return FF.softplus_loss(z, q, target_format="probability", reduction="none")

    err = worst_ulp(loss, lambda v: pm * zeta_mp(-v) + (1 - pm) * zeta_mp(v), x_grid(), dtype)
    assert err <= 2.0


@pytest.mark.parametrize("dtype", [F32, F64])
def test_softplus_loss_of_signs_is_within_2_ulp_of_mpmath(dtype):
    def loss(z):
        return FF.softplus_loss(z, -torch.ones_like(z), reduction="none")

    assert worst_ulp(loss, zeta_mp, x_grid(), dtype) <= 2.0


def test_log2_constants_split_log2_exactly():
    for dtype, (hi, lo) in FF._LN2.items():
        assert float(torch.tensor(hi, dtype=dtype)) == hi
        assert abs(mpmath.mpf(hi) + mpmath.mpf(lo) - mpmath.log(2)) < mpmath.mpf(2) ** -70


# ----------------------------------------------------------------------------- known failures


@pytest.mark.parametrize("dtype", [F32, F64])
def test_soft_margin_is_finite_with_gradient_minus_one_at_margins_minus_100_to_minus_1e4(dtype):
    z = t([-100.0, -500.0, -1000.0, -1e4], dtype, grad=True)
    y = torch.ones_like(z)
    loss = FF.softplus_loss(z, y, reduction="none")
    loss.sum().backward()
    assert loss.tolist() == [100.0, 500.0, 1000.0, 1e4]
    assert z.grad.tolist() == [-1.0] * 4

    one = FF.softplus_loss(t([-100.0], dtype), t([1.0], dtype))  # mean of a single term
    assert float(one) == 100.0


@pytest.mark.parametrize("dtype", [F32, F64])
def test_ff_loss_is_linear_with_gradient_one_far_past_the_threshold(dtype):
    g_neg = t([100.0, 1000.0, 1e4], dtype, grad=True)
    g_pos = t([-1e4, -1000.0, -98.0], dtype, grad=True)
    loss_pos, loss_neg = FF.ff_loss(g_pos, g_neg, 2.0, reduction="none")
    (loss_pos.sum() + loss_neg.sum()).backward()
    assert loss_neg.tolist() == [98.0, 998.0, 9998.0]
    assert loss_pos.tolist() == [10002.0, 1002.0, 100.0]
    assert g_neg.grad.tolist() == [1.0, 1.0, 1.0]
    assert g_pos.grad.tolist() == [-1.0, -1.0, -1.0]


@pytest.mark.parametrize("dtype", [F32, F64])
def test_softplus_is_x_for_large_x_even_with_a_large_threshold(dtype):
    x = t([50.0, 100.0, 1000.0, 1e4], dtype)
    for threshold in (None, 100.0, 1e9, math.inf):
        out = FF.softplus(x, threshold=threshold)
        assert torch.isfinite(out).all()
        assert (out - x).abs().le(ulp(x)).all()


def test_softplus_at_21_is_exact_where_torch_threshold_20_is_not():
    exact = float(zeta_mp(mpmath.mpf(21)))
    assert FF.softplus(t([21.0])).item() == exact
    # PyTorch's convention on request: x itself past the threshold
    assert FF.softplus(t([21.0]), threshold=20.0).item() == 21.0
    assert FF.softplus(t([19.0]), threshold=20.0).item() == float(zeta_mp(mpmath.mpf(19)))
    assert FF.softplus(t([7.0]), beta=3.0, threshold=20.0).item() == 7.0


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("beta", [1.0, 3.0, 0.1, 2.0])
def test_softplus_gradient_at_zero_is_exactly_one_half(dtype, beta):
    assert grad_of(lambda v: FF.softplus(v, beta), t([0.0], dtype)).item() == 0.5


def test_log_sigmoid_gradients_at_zero_are_exactly_plus_and_minus_one_half():
    assert grad_of(FF.log_sigmoid, t([0.0])).item() == 0.5
    assert grad_of(FF.log1m_sigmoid, t([0.0])).item() == -0.5


@pytest.mark.parametrize("dtype", [F32, F64])
def test_gradients_are_finite_everywhere_including_infinities(dtype):
    x = torch.tensor(np.concatenate([x_grid(), -x_grid(), [math.inf, -math.inf]])).to(dtype)
    fns = [
        FF.softplus,
        lambda v: FF.softplus(v, 3.0),
        lambda v: FF.softplus(v, 0.1),
        lambda v: FF.softplus(v, threshold=20.0),
        FF.log_sigmoid,
        FF.log1m_sigmoid,
        lambda v: FF.inverse_softplus(v.abs() + 1e-30),
        lambda v: FF.inverse_softplus(v.abs() + 1e-30, 3.0),
    ]
    for fn in fns:
        assert torch.isfinite(grad_of(fn, x)).all()


@pytest.mark.parametrize("dtype", [F32, F64])
def test_inverse_softplus_is_finite_and_exact_at_100_and_1e_minus_30(dtype):
    out = FF.inverse_softplus(t([100.0, 1e-30, 1e4], dtype))
    assert out[0].item() == 100.0
    assert out[1].item() == pytest.approx(-69.07755278982137, rel=2**-23 if dtype == F32 else 0)
    assert out[2].item() == 1e4


def test_inverse_softplus_is_log_y_for_all_tiny_y():
    y = torch.logspace(-300, -17, 50, dtype=F64)
    assert torch.equal(FF.inverse_softplus(y), torch.log(y))


def test_inverse_softplus_is_nan_for_y_at_or_below_zero():
    out = FF.inverse_softplus(t([0.0, -1.0, -math.inf, math.nan, 1.0]))
    assert torch.isnan(out[:4]).all() and torch.isfinite(out[4])
    assert torch.isnan(FF.inverse_softplus(t([0.0, -2.0]), beta=3.0)).all()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("fmt", ["binary", "probability"])
def test_bce_of_probabilities_is_not_clamped_at_100(dtype, fmt):
    z = t([200.0, 1000.0, 1e4], dtype)
    zero = torch.zeros_like(z)
    assert FF.softplus_loss(z, zero, target_format=fmt, reduction="none").tolist() == z.tolist()
    half = FF.softplus_loss(z, zero + 0.5, target_format="probability", reduction="none")
    assert half.tolist() == (z / 2).tolist()


@pytest.mark.parametrize(
    "fmt,pos,neg", [("sign", 1.0, -1.0), ("binary", 1.0, 0.0), ("probability", 1.0, 0.0)]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_infinite_logits_give_the_limit_and_finite_gradients(fmt, pos, neg, weighted):
    kw = {"weight": t([2.0, 2.0]), "pos_weight": t([3.0])} if weighted else {}
    z = t([math.inf, -math.inf], grad=True)
    loss = FF.softplus_loss(z, t([pos, neg]), target_format=fmt, reduction="none", **kw)
    loss.sum().backward()
    assert loss.tolist() == [0.0, 0.0]
    assert z.grad.tolist() == [0.0, 0.0]

    wrong = FF.softplus_loss(
        t([math.inf, -math.inf]), t([neg, pos]), target_format=fmt, reduction="none", **kw
    )
    assert wrong.tolist() == [math.inf, math.inf]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_rounded_once(dtype):
    assert FF.softplus(t([12.0], dtype)).item() == 12.0

    # every finite number of the dtype: the float64 result rounded once, but for double
    # rounding through float32 (at most one ulp, rarely)
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[torch.isfinite(x)]
    for fn in (FF.softplus, FF.log_sigmoid, FF.log1m_sigmoid, lambda v: FF.softplus(v, 3.0)):
        out = fn(x)
        ref = fn(x.double()).to(dtype)
        assert out.dtype == dtype
        off = out != ref
        assert int(off.sum()) <= 2
        assert (out[off].double() - ref[off].double()).abs().le(ulp(ref[off]).double()).all()
    y = x[x > 0]
    assert torch.equal(FF.inverse_softplus(y), FF.inverse_softplus(y.double()).to(dtype))


# ----------------------------------------------------------------------------- identities


def _close_in_ulp(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, n: float) -> bool:
    return bool(((a - b).abs() <= n * ulp(scale)).all())


@PROPS
@given(wide)
def test_derivative_of_softplus_is_sigmoid_by_autograd(x):
    for beta in (1.0, 3.0):
        g = grad_of(lambda v, beta=beta: FF.softplus(v, beta), t([x])).item()
        # the oracle takes beta*x exactly: sigma(beta*x) with beta*x rounded first is off
        # by up to |beta*x| ulp in relative terms, which a correct gradient need not match
        exact = 1 / (1 + mpmath.exp(-mpmath.mpf(beta) * mpmath.mpf(x)))
        if exact < 1e-300:
            continue
        assert abs(mpmath.mpf(g) - exact) <= 4 * ulp_mp(exact, F64)


@PROPS
@given(st.floats(-60, 60))
def test_derivative_of_softplus_is_sigmoid_by_finite_differences(x):
    h = 1e-5
    fd = (FF.softplus(t([x + h])) - FF.softplus(t([x - h]))) / (2 * h)
    assert fd.item() == pytest.approx(torch.sigmoid(t([x])).item(), rel=1e-8, abs=1e-10)


@PROPS
@given(wide)
def test_log_sigmoid_is_minus_softplus_of_minus_x(x):
    v = t([x])
    assert torch.equal(FF.log_sigmoid(v), -FF.softplus(-v))
    assert torch.equal(FF.log1m_sigmoid(v), -FF.softplus(v))


@PROPS
@given(wide, st.sampled_from([1.0, 3.0, 0.1]))
def test_softplus_minus_softplus_of_minus_x_is_x(x, beta):
    v = t([x])
    a, b = FF.softplus(v, beta), FF.softplus(-v, beta)
    assert _close_in_ulp(a - b, v, torch.maximum(a, b), 2)


@PROPS
@given(wide, st.sampled_from([1.0, 3.0]))
def test_inverse_softplus_undoes_softplus(x, beta):
    v = t([x])
    y = FF.softplus(v, beta)
    assume(y.item() >= torch.finfo(F64).smallest_normal)  # else the digits of x are gone
    assert _close_in_ulp(FF.inverse_softplus(y, beta), v, v.abs().clamp(min=1.0), 4)


@PROPS
@given(wide, st.floats(0, 1))
def test_bce_of_sigmoid_is_softplus_loss(z, p):
    zt, pt = t([z]), t([p])
    ours = FF.softplus_loss(zt, pt, target_format="probability")
    pos, neg = -pt * FF.log_sigmoid(zt), -(1 - pt) * FF.log1m_sigmoid(zt)
    assert _close_in_ulp(ours, pos + neg, torch.maximum(pos, neg), 4)
    if abs(z) <= 15:  # where sigmoid and 1 - sigmoid keep their digits in float64
        torch_bce = F.binary_cross_entropy(torch.sigmoid(zt), pt)
        assert ours.item() == pytest.approx(torch_bce.item(), rel=1e-9, abs=1e-12)


@PROPS
@given(wide)
def test_two_class_softmax_cross_entropy_is_softplus_of_minus_z(z):
    zt = t([z])
    logits = torch.stack([torch.zeros_like(zt), zt], dim=1)  # (1, 2)
    ce1 = F.cross_entropy(logits, torch.ones(1, dtype=torch.long))
    ce0 = F.cross_entropy(logits, torch.zeros(1, dtype=torch.long))
    # log-softmax subtracts terms of size |z|: agreement within the rounding of those
    assert _close_in_ulp(ce1, FF.softplus(-zt)[0], zt.abs().clamp(min=1), 2)
    assert _close_in_ulp(ce0, FF.softplus(zt)[0], zt.abs().clamp(min=1), 2)


@PROPS
@given(wide, st.sampled_from([-1.0, 1.0]), st.sampled_from([1.0, 2.0]))
def test_sign_binary_and_probability_formats_agree(z, y, beta):
    zt, yt = t([z]), t([y])
    sign = FF.softplus_loss(zt, yt, beta=beta)
    binary = FF.softplus_loss(zt, (yt + 1) / 2, target_format="binary", beta=beta)
    prob = FF.softplus_loss(zt, (yt + 1) / 2, target_format="probability", beta=beta)
    assert torch.equal(sign, binary)
    assert torch.equal(sign, FF.softplus(-yt * zt, beta)[0])
    assert _close_in_ulp(prob, sign, sign, 2)


# ----------------------------------------------------------------------------- gradcheck


def _grid64(lo=-30.0, hi=30.0, n=15) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=F64, requires_grad=True)


@pytest.mark.parametrize("beta,threshold", [(1.0, None), (3.0, None), (0.1, None), (1.0, 5.0)])
def test_softplus_passes_gradcheck_and_gradgradcheck(beta, threshold):
    x = _grid64(-29.9, 30.1)  # not on the threshold's kink

    def fn(v):
        return FF.softplus(v, beta, threshold)

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_log_sigmoids_pass_gradcheck():
    assert gradcheck(FF.log_sigmoid, (_grid64(),))
    assert gradcheck(FF.log1m_sigmoid, (_grid64(),))


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_inverse_softplus_passes_gradcheck_and_gradgradcheck(beta):
    y = torch.logspace(-2, 2, 15, dtype=F64, requires_grad=True)

    def fn(v):
        return FF.inverse_softplus(v, beta)

    assert gradcheck(fn, (y,))
    assert gradgradcheck(fn, (y,))


@pytest.mark.parametrize("fmt", ["sign", "binary", "probability"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softplus_loss_passes_gradcheck_in_logits_and_weights(fmt, reduction):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, dtype=F64, generator=gen).mul(5).requires_grad_()
    if fmt == "sign":
        y = torch.randint(0, 2, (4, 3), generator=gen).double() * 2 - 1
    elif fmt == "binary":
        y = torch.randint(0, 2, (4, 3), generator=gen).double()
    else:
        y = torch.rand(4, 3, dtype=F64, generator=gen)
    w = torch.rand(4, 3, dtype=F64, generator=gen).requires_grad_()
    pw = torch.rand(3, dtype=F64, generator=gen).add(0.5).requires_grad_()

    def fn(z, w, pw):
        return FF.softplus_loss(
            z, y, target_format=fmt, weight=w, pos_weight=pw, reduction=reduction
        )

    assert gradcheck(fn, (z, w, pw))


@pytest.mark.parametrize("kind", ["softplus", "symba"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ff_loss_passes_gradcheck(kind, reduction):
    g_pos = torch.linspace(0, 8, 6, dtype=F64, requires_grad=True)
    g_neg = torch.linspace(8, 0.5, 6, dtype=F64, requires_grad=True)
    theta = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def fn(a, b, th):
        return FF.ff_loss(a, b, th, kind=kind, alpha=3.0, reduction=reduction)

    assert gradcheck(fn, (g_pos, g_neg, theta) if kind == "softplus" else (g_pos, g_neg, 2.0))


# ----------------------------------------------------------------------------- PyTorch's BCE


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("fmt", ["binary", "probability", "sign"])
def test_softplus_loss_agrees_with_bce_with_logits_for_random_weights(reduction, dtype, fmt):
    gen = torch.Generator().manual_seed(1)
    z = (torch.randn(64, 5, generator=gen) * 8).to(dtype)
    q = torch.rand(64, 5, generator=gen).to(dtype)
    if fmt != "probability":
        q = q.round()
    weight = torch.rand(64, 5, generator=gen).to(dtype)
    pos_weight = (torch.rand(5, generator=gen) * 3).to(dtype)
    targets = q * 2 - 1 if fmt == "sign" else q
    for kw in (
        {},
        {"weight": weight},
        {"pos_weight": pos_weight},
        {"weight": weight, "pos_weight": pos_weight},
    ):
        ours = FF.softplus_loss(z, targets, target_format=fmt, reduction=reduction, **kw)
        ref = F.binary_cross_entropy_with_logits(z, q, reduction=reduction, **kw)
        assert ours.shape == ref.shape
        assert ours.dtype == dtype
        tol = 1e-5 if dtype == F32 else 1e-13
        assert torch.allclose(ours, ref, rtol=tol, atol=tol)


def test_softplus_loss_broadcasts_like_torch():
    z = torch.randn(4, 3, dtype=F64)
    y = torch.tensor([1.0, -1.0, 1.0], dtype=F64)  # (3,) against (4, 3)
    out = FF.softplus_loss(z, y, reduction="none")
    assert out.shape == (4, 3)
    assert torch.equal(out, FF.softplus(-y * z))
    with pytest.raises(ValueError, match="broadcast"):
        FF.softplus_loss(z, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="weight"):
        FF.softplus_loss(z, y, weight=torch.ones(2, 4, 3, dtype=F64))


# ----------------------------------------------------------------------------- ff_loss


def test_ff_loss_mean_averages_all_2n_terms_and_sum_adds_them():
    g_pos = t([0.0, 1.0, 5.0])
    g_neg = t([4.0, 0.5])  # a different count of negatives is allowed
    lp, ln = FF.ff_loss(g_pos, g_neg, 2.0, reduction="none")
    assert lp.shape == (3,) and ln.shape == (2,)
    assert torch.equal(lp, FF.softplus(2.0 - g_pos))
    assert torch.equal(ln, FF.softplus(g_neg - 2.0))
    total = lp.sum() + ln.sum()
    assert FF.ff_loss(g_pos, g_neg, 2.0, reduction="sum").item() == pytest.approx(total.item())
    assert FF.ff_loss(g_pos, g_neg, 2.0).item() == pytest.approx(total.item() / 5)


def test_ff_loss_symba_is_softplus_of_scaled_pair_difference():
    g_pos, g_neg = t([3.0, 0.0, 10.0]), t([1.0, 2.0, 10.0])
    out = FF.ff_loss(g_pos, g_neg, 2.0, kind="symba", alpha=4.0, reduction="none")
    assert torch.equal(out, FF.softplus(-4.0 * (g_pos - g_neg)))
    mean = FF.ff_loss(g_pos, g_neg, 2.0, kind="symba", alpha=4.0)
    assert mean.item() == pytest.approx(out.mean().item())
    big = FF.ff_loss(t([0.0]), t([1e4]), 2.0, kind="symba", alpha=4.0)
    assert big.item() == 4e4


@pytest.mark.parametrize("dtype", FLOATS)
def test_ff_loss_keeps_the_goodness_dtype(dtype):
    g = torch.linspace(0, 5, 8).to(dtype)
    assert FF.ff_loss(g, g.flip(0), 2.0).dtype == dtype
    lp, ln = FF.ff_loss(g, g, 2.0, reduction="none")
    assert lp.dtype == ln.dtype == dtype


@pytest.mark.parametrize("kind", ["softplus", "symba"])
def test_ff_loss_steps_push_positive_goodness_above_negative(kind):
    g_pos = torch.full((8,), 1.0, requires_grad=True)
    g_neg = torch.full((8,), 3.0, requires_grad=True)
    first = None
    for _ in range(30):
        loss = FF.ff_loss(g_pos, g_neg, 2.0, kind=kind, reduction="sum")
        first = loss.item() if first is None else first
        d_pos, d_neg = torch.autograd.grad(loss, (g_pos, g_neg))
        with torch.no_grad():  # plain gradient descent, step 0.5
            g_pos -= 0.5 * d_pos
            g_neg -= 0.5 * d_neg
    assert loss.item() < first / 4
    assert (g_pos > g_neg).all()
    if kind == "softplus":
        assert (g_pos > 2.0).all() and (g_neg < 2.0).all()


# ----------------------------------------------------------------------------- shapes, errors


@pytest.mark.parametrize("dtype", FLOATS)
def test_functions_keep_shape_and_dtype(dtype):
    x = torch.randn(2, 3, 4).to(dtype)
    for fn in (
        FF.softplus,
        FF.log_sigmoid,
        FF.log1m_sigmoid,
        FF.inverse_softplus,
        lambda v: FF.softplus(v, 3.0),
        lambda v: FF.inverse_softplus(v, 3.0),
    ):
        out = fn(x)
        assert out.shape == x.shape and out.dtype == dtype


@pytest.mark.parametrize("beta", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_bad_beta_is_a_value_error(beta):
    with pytest.raises(ValueError, match="beta"):
        FF.softplus(t([1.0]), beta)
    with pytest.raises(ValueError, match="beta"):
        FF.inverse_softplus(t([1.0]), beta)
    with pytest.raises(ValueError, match="beta"):
        FF.softplus_loss(t([1.0]), t([1.0]), beta=beta)


def test_bad_arguments_are_value_errors_that_name_the_argument():
    x = t([1.0])
    cases = [
        (lambda: FF.softplus(x, threshold=math.nan), "threshold"),
        (lambda: FF.softplus(torch.ones(2, dtype=torch.long)), "float dtype"),
        (lambda: FF.softplus([1.0]), "torch.Tensor"),
        (lambda: FF.softplus_loss(x, x, target_format="logits"), "target_format"),
        (lambda: FF.softplus_loss(x, x, reduction="avg"), "reduction"),
        (lambda: FF.softplus_loss(x, t([0.0])), "-1 or \\+1"),
        (lambda: FF.softplus_loss(x, t([0.5]), target_format="binary"), "0 or 1"),
        (lambda: FF.softplus_loss(x, t([1.5]), target_format="probability"), "\\[0, 1\\]"),
        (lambda: FF.ff_loss(x, x, 2.0, kind="hinge"), "kind"),
        (lambda: FF.ff_loss(x, x, 2.0, reduction="max"), "reduction"),
        (lambda: FF.ff_loss(x, x, 2.0, kind="symba", alpha=0.0), "alpha"),
        (lambda: FF.ff_loss(x, x, math.nan), "threshold"),
        (lambda: FF.ff_loss(x, x, math.inf), "threshold"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_ff_loss_and_softplus_trace_into_one_graph_with_no_data_dependent_branch():
    # a host sync or a branch on tensor values would break fullgraph tracing
    g_pos, g_neg = torch.rand(16) * 4, torch.rand(16) * 4
    ff = torch.compile(FF.ff_loss, backend="eager", fullgraph=True)
    for kind in ("softplus", "symba"):
        assert torch.equal(
            ff(g_pos, g_neg, 2.0, kind=kind), FF.ff_loss(g_pos, g_neg, 2.0, kind=kind)
        )
    sp = torch.compile(FF.softplus, backend="eager", fullgraph=True)
    x = g_pos.double() - 2
    assert torch.equal(sp(x, 3.0), FF.softplus(x, 3.0))
