"""The training loop: exact hand-written gradients, learning, schedules, determinism."""

import pytest
import torch

from forwardforward.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from forwardforward.runner import evaluate_run, read_metrics_csv, train_run
from forwardforward.train import Trainer, lr_factor


def _trainer(model=None, train=None, in_features=40) -> Trainer:
    config = RunConfig(
        model=ModelConfig(**({"layers": (30, 20)} | (model or {}))),
        train=TrainConfig(**({"batch_size": 16, "precision": "fp32"} | (train or {}))),
    )
    return Trainer(config, in_features)


@pytest.mark.parametrize("loss", ["softplus", "symba"])
@pytest.mark.parametrize("kind", ["sum", "mean"])
def test_hand_written_layer_gradient_equals_autograd(loss, kind):
    torch.set_default_dtype(torch.float64)
    try:
        model = {"loss": loss, "goodness": kind, "threshold": 0.5}
        fast, slow = _trainer(model), _trainer(model)
        slow.step_fn = slow._layer_step
        gen = torch.Generator().manual_seed(0)
        x, y = torch.rand(16, 40, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        for _ in range(3):
            stats_fast = fast.train_step(x, y, range(2))
            stats_slow = slow.train_step(x, y, range(2))
    finally:
        torch.set_default_dtype(torch.float32)
    assert fast.step_fn == fast._fast_layer_step
    for p, q in zip(fast.net.parameters(), slow.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats_fast, stats_slow, rtol=1e-12, atol=1e-12)


def test_training_lowers_the_loss_and_separates_goodness():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 40, generator=gen)
    y = (x[:, 10:20].sum(dim=1) > x[:, 20:30].sum(dim=1)).long()  # a learnable rule
    trainer = _trainer(train={"lr": 3e-3})
    first = trainer.train_step(x[:16], y[:16], range(2))
    for _ in range(30):
        for s in range(0, 256, 16):
            last = trainer.train_step(x[s : s + 16], y[s : s + 16], range(2))
    assert (last[:, 0] < first[:, 0]).all()  # loss per layer fell
    assert (last[:, 1] > last[:, 2]).all()  # positive goodness above negative


def test_sequential_schedule_trains_one_layer_per_block_of_epochs():
    trainer = _trainer(train={"schedule": "sequential", "epochs": 2})
    assert trainer.total_epochs == 4
    assert [list(trainer.active_layers(e)) for e in range(4)] == [[0], [0], [1], [1]]
    before = [p.clone() for p in trainer.net.layers[1].parameters()]
    x, y = torch.rand(16, 40), torch.randint(0, 10, (16,))
    stats = trainer.train_step(x, y, trainer.active_layers(0))
    assert stats[1].abs().sum() == 0
    for p, q in zip(before, trainer.net.layers[1].parameters(), strict=True):
        assert torch.equal(p, q)


def test_lr_schedules_start_at_one_and_decay_to_zero():
    assert lr_factor("cosine", 0.0) == 1.0 and lr_factor("linear", 0.0) == 1.0
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("linear", 1.0) == 0.0 and lr_factor("constant", 0.9) == 1.0


def _digits(tmp_path, name, **train):
    config = RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(layers=(100, 100)),
        train=TrainConfig(**({"epochs": 5, "precision": "fp32"} | train)),
    )
    return train_run(config, tmp_path / name, progress=False)


def test_same_seed_same_metrics_and_evaluate_reproduces_the_test_error(tmp_path):
    a = _digits(tmp_path, "a")
    b = _digits(tmp_path, "b")
    rows_a = read_metrics_csv(tmp_path / "a" / "metrics.csv")
    rows_b = read_metrics_csv(tmp_path / "b" / "metrics.csv")
    timing = {"seconds", "samples_per_second", "eval_seconds"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in rows_a + rows_b]
    assert strip[:5] == strip[5:]
    assert a["test_error"] == b["test_error"] < 0.85  # chance is 0.9
    assert evaluate_run(tmp_path / "a", progress=False)["test_error"] == a["test_error"]
    for name in ("config.json", "metrics.csv", "metrics.json", "model.safetensors", "curves.png"):
        assert (tmp_path / "a" / name).is_file()
