"""The published Forward-Forward variants, each pinned by the property that defines it."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from forwardforward.cli import main, resolve_config_file
from forwardforward.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_toml
from forwardforward.data import load_dataset
from forwardforward.errors import ConfigError
from forwardforward.functional import ff_loss
from forwardforward.idx import write_idx
from forwardforward.model import FFNet, PeerNorm, Readout, goodness, peer_penalty
from forwardforward.negatives import (
    MAX_BLURS,
    blur_masks,
    blur_matrix,
    hybrid_images,
    mask_from_bits,
    partner_index,
    sample_wrong_labels,
)
from forwardforward.runner import load_run_data
from forwardforward.train import Trainer

MNIST_DIR = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST folder absent")


def _config(model: dict | None = None, train: dict | None = None, **data) -> RunConfig:
    train = {"device": "cpu", "precision": "fp32", "epochs": 1, **(train or {})}
    return RunConfig(DataConfig(**data), ModelConfig(**(model or {})), TrainConfig(**train))


def _oracle_mask(bits: np.ndarray, blurs: int) -> np.ndarray:
    """The paper's recipe in float64 with scipy: blur by [1/4, 1/2, 1/4], threshold at 0.5."""
    v = bits.astype(np.float64)
    for _ in range(blurs):
        v = ndimage.correlate1d(v, [0.25, 0.5, 0.25], axis=-1, mode="nearest")
        v = ndimage.correlate1d(v, [0.25, 0.5, 0.25], axis=-2, mode="nearest")
    return (v > 0.5) | ((v == 0.5) & (bits > 0))


# --- hybrid masks -----------------------------------------------------------------------------

@pytest.mark.parametrize("blurs", [0, 1, 2, 5, 10, MAX_BLURS])
def test_mask_equals_the_float64_recipe_of_blurring_and_thresholding(blurs):
    bits = torch.randint(0, 2, (40, 28, 28), generator=torch.Generator().manual_seed(blurs))

    mask = mask_from_bits(bits, blurs)

    assert mask.dtype == torch.bool and mask.shape == (40, 28, 28)
    np.testing.assert_array_equal(mask.numpy(), _oracle_mask(bits.numpy(), blurs))


def test_mask_with_no_blur_is_the_random_bit_image_itself():
    bits = torch.randint(0, 2, (3, 7, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask_from_bits(bits, 0), bits.bool())


def test_mask_of_the_complement_bits_is_the_complement_mask():
    bits = torch.randint(0, 2, (200, 10, 8), generator=torch.Generator().manual_seed(1))
    for blurs in (1, 3, 10):
        assert torch.equal(mask_from_bits(1 - bits, blurs), ~mask_from_bits(bits, blurs))


def test_blur_matrix_keeps_a_constant_image_constant():
    for n, k in ((28, 10), (8, 13), (1, 4)):
        rows = blur_matrix(n, k).sum(dim=1)
        assert torch.equal(rows, torch.full((n,), 4.0**k, dtype=torch.float64))


def test_mask_is_half_ones_and_made_of_a_few_large_regions():
    g = torch.Generator().manual_seed(2)
    masks = blur_masks(400, (28, 28), 10, generator=g)
    bits = torch.randint(0, 2, (400, 28, 28), generator=g).bool()

    def agreement(m):  # fraction of neighbouring pixel pairs that agree
        rows = (m[:, 1:] == m[:, :-1]).float().mean()
        cols = (m[:, :, 1:] == m[:, :, :-1]).float().mean()
        return ((rows + cols) / 2).item()

    regions = [ndimage.label(m)[1] + ndimage.label(~m)[1] for m in masks.numpy()[:100]]
    assert abs(masks.float().mean().item() - 0.5) < 0.03
    assert agreement(masks) > 0.88 and abs(agreement(bits) - 0.5) < 0.01
    assert np.mean(regions) < 12  # random bits: about 150 regions


def test_mask_blurs_outside_the_exact_range_are_refused():
    bits = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="blurs must be in 0..13"):
        mask_from_bits(bits, MAX_BLURS + 1)
    with pytest.raises(ConfigError, match="mask-blurs"):
        TrainConfig(mask_blurs=MAX_BLURS + 1)


# --- hybrid images ----------------------------------------------------------------------------

def test_partner_index_is_a_permutation_with_no_image_paired_with_itself():
    g = torch.Generator().manual_seed(3)
    for B in (2, 3, 100):
        for _ in range(20):
            j = partner_index(B, generator=g)
            assert torch.equal(j.sort().values, torch.arange(B))
            assert not torch.any(j == torch.arange(B))


def test_every_hybrid_pixel_comes_from_the_image_or_its_one_partner():
    B, H, W = 50, 28, 28
    x = torch.arange(B, dtype=torch.float32)[:, None].expand(B, H * W).contiguous()  # row i: i

    neg = hybrid_images(x, (H, W), 10, generator=torch.Generator().manual_seed(4))

    for i in range(B):
        sources = set(neg[i].unique().long().tolist())
        assert i in sources and len(sources) == 2  # own pixels and one other image's
    partners = torch.tensor([(set(neg[i].long().tolist()) - {i}).pop() for i in range(B)])
    assert torch.equal(partners.sort().values, torch.arange(B))


def test_hybrid_images_keep_dtype_and_copy_pixels_without_averaging():
    x = torch.rand(16, 80, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    neg = hybrid_images(x, (10, 8), 3, generator=torch.Generator().manual_seed(6))
    assert neg.dtype == torch.bfloat16 and neg.shape == x.shape
    assert torch.all(torch.isin(neg, x))


def test_hybrid_images_refuse_a_single_image_and_a_wrong_shape():
    with pytest.raises(ValueError, match="at least 2 images"):
        hybrid_images(torch.rand(1, 784), (28, 28), 10)
    with pytest.raises(ValueError, match="28x27 does not fit 784"):
        hybrid_images(torch.rand(4, 784), (28, 27), 10)


# --- unsupervised mode ------------------------------------------------------------------------

def test_unsupervised_positives_are_the_bare_images_with_no_label_written():
    cfg = _config({"layers": (20,), "mode": "unsupervised"}, {"predict": "softmax"})
    trainer = Trainer(cfg, 80, 10, image_shape=(10, 8))
    x = torch.rand(32, 80, generator=torch.Generator().manual_seed(7)) + 0.5  # no pixel is 0
    y = torch.zeros(32, dtype=torch.int64)

    h = trainer.positives_negatives(x, y)

    assert torch.equal(h[:32], x)
    assert torch.all(torch.isin(h[32:], x))  # hybrids: pixels of real images, no label pixel
    assert not torch.equal(h[32:], x)


def test_supervised_positives_carry_the_true_label_in_the_first_pixels():
    trainer = Trainer(_config({"layers": (20,)}), 80, 10)
    x = torch.rand(8, 80, generator=torch.Generator().manual_seed(8))
    y = torch.arange(8)

    h = trainer.positives_negatives(x, y)

    assert torch.equal(h[:8, :10].argmax(dim=1), y) and torch.equal(h[:8, 10:], x[:, 10:])
    assert not torch.any(h[8:, :10].argmax(dim=1) == y)


@pytest.mark.parametrize(
    ("layers", "mode", "width"),
    [((30, 20, 10, 5, 7), "unsupervised", 10 + 5 + 7), ((30, 20), "unsupervised", 30 + 20),
     ((30, 20, 10, 5, 7), "supervised", 20 + 10 + 5 + 7), ((30,), "supervised", 30)],
)
def test_readout_reads_the_last_three_layers_unsupervised_and_all_but_the_first_supervised(
    layers, mode, width
):
    net = FFNet(784, ModelConfig(layers=layers, mode=mode))
    readout = Readout(net)
    assert readout.linear.in_features == width
    assert readout.features(net, torch.rand(4, 784)).shape == (4, width)


def test_unsupervised_readout_sees_the_image_unchanged_where_supervised_overwrites_the_label():
    x = torch.rand(4, 784, generator=torch.Generator().manual_seed(9))
    x2 = x.clone()
    x2[:, :10] = torch.rand(4, 10)  # differ only where the label goes

    for mode, differ in (("unsupervised", True), ("supervised", False)):
        torch.manual_seed(0)
        net = FFNet(784, ModelConfig(layers=(16, 16), mode=mode))
        readout = Readout(net)
        same = torch.equal(readout.features(net, x), readout.features(net, x2))
        assert same is not differ


def test_unsupervised_net_has_no_label_scores():
    net = FFNet(784, ModelConfig(layers=(16,), mode="unsupervised"))
    with pytest.raises(ValueError, match="supervised mode"):
        net.label_scores(torch.rand(2, 784))


@pytest.mark.parametrize(
    ("train", "words"),
    [({"predict": "goodness"}, "--predict softmax"),
     ({"predict": "softmax", "negatives": "hard"}, "needs labels"),
     ({"predict": "softmax", "batch_size": 1}, "batch-size >= 2")],
)
def test_unsupervised_config_refuses_what_needs_labels_naming_the_fix(train, words):
    with pytest.raises(ConfigError, match=words):
        RunConfig(model=ModelConfig(mode="unsupervised"), train=TrainConfig(**train))


def test_unsupervised_trainer_needs_the_image_shape():
    cfg = _config({"layers": (20,), "mode": "unsupervised"}, {"predict": "softmax"})
    with pytest.raises(ConfigError, match="image shape"):
        Trainer(cfg, 80, 10)
    with pytest.raises(ConfigError, match="image shape"):
        Trainer(cfg, 80, 10, image_shape=(9, 8))


def test_cli_unsupervised_without_softmax_prediction_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", "--mode", "unsupervised", "--out", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--predict softmax" in err and len(err.splitlines()) == 1


def test_cli_trains_unsupervised_on_digits_and_saves_the_mode(tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--mode", "unsupervised", "--predict",
                 "softmax", "--layers", "40,40", "--epochs", "2", "--batch-size", "50",
                 "--mask-blurs", "4", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    saved = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert saved.model.mode == "unsupervised" and saved.train.mask_blurs == 4
    assert main(["evaluate", str(out), "--no-progress"]) == 0


@needs_mnist
def test_unsupervised_training_on_mnist_separates_hybrids_and_classifies():
    cfg = _config({"layers": (200, 200), "mode": "unsupervised"},
                  {"predict": "softmax", "epochs": 2, "lr": 3e-3},
                  dataset="mnist", data_dir=str(MNIST_DIR), limit_train=3000,
                  limit_test=1000, train_eval_size=1000)
    data = load_run_data(cfg, torch.device("cpu"), progress=False)
    trainer = Trainer(cfg, data.in_features, data.num_classes, data.image_shape)

    results = trainer.fit(data.tensors, progress=False)

    first, last = results
    assert all(a > b for a, b in zip(first.loss, last.loss, strict=True))
    assert all(gp > gn for gp, gn in zip(last.goodness_pos, last.goodness_neg, strict=True))
    assert last.test_error < 0.4  # chance: 0.9; the read-out had 60 steps


# --- hard negatives ---------------------------------------------------------------------------

def test_hard_negatives_never_carry_the_true_label_even_when_the_model_is_sure_of_it():
    B, C = 5000, 10
    y = torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(10))
    logits = torch.full((B, C), -1e4).scatter(1, y[:, None], 1e4)  # p(true) rounds to 1

    y_neg = sample_wrong_labels(logits, y, generator=torch.Generator().manual_seed(11))

    assert not torch.any(y_neg == y)
    assert y_neg.min() >= 0 and y_neg.max() < C


def test_hard_negatives_follow_the_models_probabilities_of_the_wrong_labels():
    z = torch.tensor([2.0, 0.0, 1.0, -1.0, 3.0])  # true label 4 holds the most probability
    N = 40_000
    y_neg = sample_wrong_labels(z.expand(N, 5), torch.full((N,), 4),
                                generator=torch.Generator().manual_seed(12))

    p = np.exp(z.double().numpy())
    p /= p.sum()
    expected = p / (1 - p[4])
    expected[4] = 0.0
    counts = torch.bincount(y_neg, minlength=5).numpy()
    sigma = np.sqrt(N * expected * (1 - expected))
    assert counts[4] == 0
    assert np.all(np.abs(counts - N * expected) < 5 * sigma + 1e-9)


@pytest.mark.parametrize("predict", ["goodness", "softmax"])
def test_trainer_hard_negatives_sample_from_the_models_own_logits(predict, monkeypatch):
    trainer = Trainer(_config({"layers": (20,)}, {"negatives": "hard", "predict": predict}),
                      80, 10)
    x, y = torch.rand(64, 80), torch.arange(64) % 10
    assert trainer.class_logits(x).shape == (64, 10)

    favourite = (y + 3) % 10  # the model's most probable wrong label
    logits = torch.zeros(64, 10).scatter(1, favourite[:, None], 50.0)
    monkeypatch.setattr(trainer, "class_logits", lambda _x: logits)
    assert torch.equal(trainer.negative_labels(x, y), favourite)


def test_random_negatives_are_uniform_over_the_wrong_labels():
    trainer = Trainer(_config({"layers": (20,)}), 80, 10)
    y = torch.full((45_000,), 7)
    counts = torch.bincount(trainer.negative_labels(torch.zeros(45_000, 80), y), minlength=10)
    assert counts[7] == 0
    assert torch.all((counts[torch.arange(10) != 7] - 5000).abs() < 5 * math.sqrt(5000))


# --- SymBa ------------------------------------------------------------------------------------

def test_symba_loss_depends_only_on_the_gap_and_matches_a_float64_oracle():
    g = torch.Generator().manual_seed(13)
    gp, gn = torch.randn(256, generator=g) * 5, torch.randn(256, generator=g) * 5
    alpha = 4.0
    delta = (gp - gn).double()
    oracle = torch.log1p(torch.exp(-alpha * delta)).mean()  # zeta(-alpha (g+ - g-))

    base = ff_loss(gp, gn, 1.0, kind="symba", alpha=alpha)
    shifted = ff_loss(gp + 100.0, gn + 100.0, 1.0, kind="symba", alpha=alpha)
    other_theta = ff_loss(gp, gn, 500.0, kind="symba", alpha=alpha)

    torch.testing.assert_close(base.double(), oracle, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(shifted, base, rtol=1e-5, atol=1e-5)
    assert torch.equal(other_theta, base)


def test_symba_gradient_is_alpha_sigmoid_of_minus_alpha_gap_and_opposite_for_negatives():
    gp = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64, requires_grad=True)
    gn = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    alpha = 4.0

    (3 * ff_loss(gp, gn, 0.0, kind="symba", alpha=alpha)).backward()  # the sum of 3 pairs

    expected = -alpha * torch.sigmoid(-alpha * (gp - gn)).detach()
    torch.testing.assert_close(gp.grad, expected)
    torch.testing.assert_close(gn.grad, -expected)
    assert gp.grad[0].item() == -2.0  # at equal goodness: alpha / 2


# --- peer normalization -----------------------------------------------------------------------

def test_peer_penalty_is_zero_exactly_when_all_unit_means_are_equal():
    assert peer_penalty(torch.full((50,), 0.37)).item() == 0.0
    m = torch.full((50,), 0.37, dtype=torch.float64)
    m[17] += 1e-3
    assert peer_penalty(m).item() > 0


def test_peer_penalty_is_the_mean_squared_deviation_from_the_layer_mean():
    m = torch.rand(300, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    expected = np.mean((m.numpy() - m.numpy().mean()) ** 2)
    assert peer_penalty(m).item() == pytest.approx(expected, rel=1e-12)


def test_peer_running_mean_follows_the_momentum_over_positive_batches():
    g = torch.Generator().manual_seed(15)
    h1, h2 = torch.rand(8, 6, generator=g), torch.rand(8, 6, generator=g)
    peer = PeerNorm(6, momentum=0.9)

    peer(h1)
    p2 = peer(h2)

    m = 0.9 * (0.1 * h1.mean(0)) + 0.1 * h2.mean(0)
    torch.testing.assert_close(peer.running_mean, m)
    torch.testing.assert_close(p2, peer_penalty(m))


def test_peer_gradient_reaches_the_layer_through_this_batch_only():
    h = torch.rand(10, 5, dtype=torch.float64, requires_grad=True)
    peer = PeerNorm(5, momentum=0.9).double()
    peer(torch.rand(10, 5, dtype=torch.float64))  # an earlier batch, now a constant

    peer(h).backward()

    m = peer.running_mean
    expected = (0.1 / 10) * (2 / 5) * (m - m.mean())  # dP/dm_j * dm_j/dh_bj
    torch.testing.assert_close(h.grad, expected.expand(10, 5))


def test_peer_penalty_does_not_depend_on_the_running_means_start_value():
    h = torch.rand(10, 7, generator=torch.Generator().manual_seed(16))
    zero, half = PeerNorm(7), PeerNorm(7)
    half.running_mean.fill_(0.5)  # the published start
    for _ in range(3):
        torch.testing.assert_close(zero(h), half(h))


def test_trainer_peer_normalization_sees_positives_only_and_is_checkpointed():
    cfg = _config({"layers": (12,), "peer_norm": 0.03, "peer_momentum": 0.5})
    trainer = Trainer(cfg, 80, 10)
    h = torch.rand(16, 80, generator=torch.Generator().manual_seed(17))
    with torch.no_grad():
        out = trainer.net.layers[0](h)  # before the step changes the weights

    trainer._layer_step(0, h, 8)  # rows 0..7 positive, 8..15 negative

    torch.testing.assert_close(trainer.net.peer[0].running_mean, 0.5 * out[:8].mean(0))
    assert "peer.0.running_mean" in trainer.state_dict()["net"]
    assert FFNet(80, ModelConfig(layers=(12,))).peer is None


def test_peer_momentum_outside_0_to_1_is_refused():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="peer-momentum"):
            ModelConfig(peer_momentum=bad)


# --- goodness and threshold -------------------------------------------------------------------

def test_mean_goodness_is_the_sum_of_squares_over_the_width():
    h = torch.randn(6, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    s = (h.numpy() ** 2).sum(axis=1)
    np.testing.assert_allclose(goodness(h, "sum").numpy(), s, rtol=1e-6)
    np.testing.assert_allclose(goodness(h, "mean").numpy(), s / 37, rtol=1e-6)


def test_threshold_is_proportional_to_width_or_fixed():
    width = ModelConfig(layers=(500, 2000), threshold=1.5, threshold_scale="width")
    fixed = ModelConfig(layers=(500, 2000), threshold=1.5, threshold_scale="fixed")
    assert FFNet(784, width).thetas == [750.0, 3000.0]
    assert FFNet(784, fixed).thetas == [1.5, 1.5]


# --- Fashion-MNIST ----------------------------------------------------------------------------

@pytest.fixture
def idx_set(tmp_path):
    """A folder of the four IDX files of a 28x28 set: 300 train, 100 test images."""
    rng = np.random.default_rng(19)
    d = tmp_path / "fashion"
    d.mkdir()
    for split, n in (("train", 300), ("t10k", 100)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28),
                  dtype=np.uint8), compress=True)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8),
                  compress=True)
    return d


def test_fashion_mnist_is_read_by_the_mnist_path_from_the_same_idx_files(idx_set):
    fashion = load_dataset("fashion-mnist", idx_set, download=False, progress=False)
    mnist = load_dataset("mnist", idx_set, download=False, progress=False)
    assert fashion.image_shape == (28, 28) and fashion.name == "fashion-mnist"
    assert torch.equal(fashion.x_train, mnist.x_train) and torch.equal(fashion.y_test,
                                                                       mnist.y_test)


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_cli_trains_fashion_mnist_in_both_modes(idx_set, tmp_path, mode):
    out = tmp_path / mode
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(idx_set), "--mode",
                 mode, "--predict", "softmax", "--layers", "30,30", "--epochs", "1",
                 "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0 and (out / "metrics.json").is_file()


def test_bundled_unsupervised_paper_setting_is_valid():
    config = load_toml(resolve_config_file("paper-unsupervised-mnist"))
    assert config.model.mode == "unsupervised" and config.model.layers == (2000,) * 4
    assert config.train.predict == "softmax" and config.train.epochs == 100
