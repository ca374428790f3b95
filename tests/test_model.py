"""Forward-Forward layers and networks: rescaling, labels, goodness and prediction."""

import torch

from forwardforward.config import ModelConfig
from forwardforward.model import (
    FFNet,
    Readout,
    goodness,
    overlay_labels,
    overlay_neutral,
    rescale,
    wrong_labels,
)


def test_rescale_gives_mean_square_one_and_unit_length():
    x = torch.randn(5, 7, dtype=torch.float64) * 3
    assert torch.allclose(rescale(x).pow(2).mean(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(rescale(x, unit=True).norm(dim=1), torch.ones(5, dtype=torch.float64))


def test_rescale_of_all_zero_row_is_zero_with_finite_gradient():
    x = torch.zeros(2, 6, requires_grad=True)
    out = rescale(x)
    assert torch.equal(out, torch.zeros(2, 6))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_goodness_is_sum_or_mean_of_squares_in_float32():
    h = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 3.0]], dtype=torch.bfloat16)
    assert goodness(h).dtype == torch.float32
    assert goodness(h).tolist() == [9.0, 9.0]
    assert goodness(h, "mean").tolist() == [3.0, 3.0]


def test_overlay_writes_one_hot_into_first_pixels_only():
    x = torch.rand(4, 20)
    y = torch.tensor([0, 3, 9, 3])
    out = overlay_labels(x, y, 10, value=1.0)
    assert torch.equal(out[:, :10], torch.nn.functional.one_hot(y, 10).float())
    assert torch.equal(out[:, 10:], x[:, 10:])
    assert torch.equal(overlay_neutral(x, 10)[:, :10], torch.full((4, 10), 0.1))


def test_wrong_labels_never_carry_the_true_label_and_cover_the_others_uniformly():
    gen = torch.Generator().manual_seed(0)
    y = torch.full((90_000,), 4)  # a batch of one class: a permutation would always fail
    y_neg = wrong_labels(y, 10, gen)
    assert not (y_neg == y).any()
    counts = torch.bincount(y_neg, minlength=10).float()
    assert counts[4] == 0
    # each wrong label 1/9 of the draws: 10_000 expected, binomial sd ~94
    assert (counts[counts > 0] - 10_000).abs().max() < 500


def test_permuted_labels_would_carry_the_true_label_about_one_time_in_ten():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (100_000,), generator=gen)
    shuffled = y[torch.randperm(y.numel(), generator=gen)]
    same = (shuffled == y).float().mean().item()
    assert 0.09 < same < 0.11  # the pitfall wrong_labels avoids


def _net(layers=(30, 20), **kw) -> FFNet:
    torch.manual_seed(0)
    return FFNet(40, ModelConfig(layers=layers, **kw)).double()


def test_label_scores_in_one_pass_equal_a_loop_over_labels():
    net = _net((30, 20, 10))
    x = torch.rand(6, 40, dtype=torch.float64)
    scores = net.label_scores(x)  # (6, 10)
    scores_all = net.label_scores(x, first_layer=0)
    for c in range(10):
        xc = overlay_labels(x, torch.full((6,), c), 10)
        g = net.layer_goodness(xc)  # (L, B)
        torch.testing.assert_close(scores[:, c], g[1:].sum(dim=0))
        torch.testing.assert_close(scores_all[:, c], g.sum(dim=0))


def test_one_layer_net_scores_with_its_only_layer_and_all_counts_the_first():
    x = torch.rand(3, 40, dtype=torch.float64)
    one = _net((30,))
    assert torch.allclose(one.label_scores(x), one.label_scores(x, first_layer=0))
    two = _net((30, 20), score_layers="all")
    assert torch.allclose(two.label_scores(x), two.label_scores(x, first_layer=0))


def test_no_gradient_crosses_a_layer_boundary():
    net = _net((30, 20))
    x = torch.rand(8, 40, dtype=torch.float64)
    h1 = net.layers[0](x)
    g2 = goodness(net.layers[1](h1.detach()))
    g2.sum().backward()
    assert net.layers[0].linear.weight.grad is None
    assert net.layers[1].linear.weight.grad is not None


def test_readout_sees_detached_activities():
    net = _net((30, 20))
    readout = Readout(net).double()
    features = readout.features(net, torch.rand(5, 40, dtype=torch.float64))
    assert features.shape == (5, 20)  # layers 2..L
    readout(features).sum().backward()
    assert all(p.grad is None for p in net.parameters())
