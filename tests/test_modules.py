"""The nn.Module wrappers: same values as the functions, options checked once, buffers kept."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forwardforward import functional as FF
from forwardforward.modules import FFLoss, Softplus, SoftplusLoss


def test_softplus_module_equals_the_function_and_is_exact_by_default():
    x = torch.linspace(-200, 200, 101, dtype=torch.float64)
    assert torch.equal(Softplus()(x), FF.softplus(x))
    assert torch.equal(Softplus(beta=3.0, threshold=20.0)(x), FF.softplus(x, 3.0, 20.0))
    assert Softplus()(torch.tensor([100.0])).item() == 100.0
    assert "beta=3" in repr(Softplus(beta=3.0))


def test_softplus_module_trains_inside_a_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), Softplus(beta=2.0), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softplus_loss_module_matches_bce_with_logits_loss(reduction):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 3, generator=gen, dtype=torch.float64) * 4
    t = torch.randint(0, 2, (16, 3), generator=gen).double()
    w = torch.rand(16, 3, generator=gen, dtype=torch.float64)
    pw = torch.rand(3, generator=gen, dtype=torch.float64) * 2
    ours = SoftplusLoss(target_format="binary", weight=w, pos_weight=pw, reduction=reduction)
    ref = nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction=reduction)
    assert torch.allclose(ours(z, t), ref(z, t), rtol=1e-13, atol=1e-13)


def test_softplus_loss_module_keeps_weights_as_buffers_that_follow_to():
    loss = SoftplusLoss(weight=torch.ones(3), pos_weight=torch.full((3,), 2.0))
    assert set(loss.state_dict()) == {"weight", "pos_weight"}
    loss = loss.to(torch.float64)
    assert loss.weight.dtype == loss.pos_weight.dtype == torch.float64
    assert list(SoftplusLoss().state_dict()) == []


def test_ff_loss_module_equals_the_function():
    g_pos, g_neg = torch.tensor([0.5, 3.0]), torch.tensor([100.0, 1.0])
    assert torch.equal(FFLoss(2.0)(g_pos, g_neg), FF.ff_loss(g_pos, g_neg, 2.0))
    symba = FFLoss(kind="symba", alpha=5.0, reduction="sum")
    ref = FF.ff_loss(g_pos, g_neg, 0.0, kind="symba", alpha=5.0, reduction="sum")
    assert torch.equal(symba(g_pos, g_neg), ref)
    _, loss_neg = FFLoss(2.0, reduction="none")(g_pos, g_neg)
    assert loss_neg[0].item() == 98.0
    assert "kind='symba'" in repr(symba)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Softplus(beta=0.0), "beta"),
        (lambda: Softplus(threshold=math.nan), "threshold"),
        (lambda: SoftplusLoss(target_format="logit"), "target_format"),
        (lambda: SoftplusLoss(reduction="avg"), "reduction"),
        (lambda: SoftplusLoss(weight=[1.0, 2.0]), "weight"),
        (lambda: SoftplusLoss(beta=-1.0), "beta"),
        (lambda: FFLoss(math.inf), "threshold"),
        (lambda: FFLoss(2.0, kind="hinge"), "kind"),
        (lambda: FFLoss(2.0, alpha=0.0), "alpha"),
        (lambda: FFLoss(2.0, reduction="max"), "reduction"),
    ],
)
def test_bad_options_fail_at_construction_with_a_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
