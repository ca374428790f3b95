"""The run folder: exact resumption, the order of writes, held SIGINT, refused folders."""

import dataclasses
import json
import os
import signal

import pytest
import torch

from forwardforward import runner
from forwardforward.checkpoint import load_checkpoint, save_checkpoint
from forwardforward.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from forwardforward.errors import CheckpointError, ConfigError, DataError
from forwardforward.guard import sigint_held
from forwardforward.runner import Interrupted, check_out_dir, train_run
from runfolders import metrics_rows, single_thread, write_idx_set

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_set(tmp_path_factory.mktemp("data") / "mnist", n_train=200)


def small_config(data_dir, epochs: int = 3, **train) -> RunConfig:
    """8 steps per epoch on 8x8 images; fp32 on the CPU so that runs are bit-reproducible."""
    return RunConfig(
        data=DataConfig(dataset="mnist", data_dir=str(data_dir)),
        model=ModelConfig(layers=(12, 12)),
        train=TrainConfig(epochs=epochs, batch_size=25, device="cpu", precision="fp32", **train),
    )


def stop_after(monkeypatch, epoch: int) -> None:
    """Raise KeyboardInterrupt once the files of ``epoch`` are written, as Ctrl-C would."""
    write = runner.RunWriter.__call__

    def then_stop(self, result):
        write(self, result)
        if result.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.RunWriter, "__call__", then_stop)


def assert_same_weights(a_dir, b_dir) -> None:
    a, _ = load_checkpoint(a_dir / runner.CHECKPOINT)
    b, _ = load_checkpoint(b_dir / runner.CHECKPOINT)
    for part in ("net", "readout"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    for oa, ob in zip(a["optimizers"], b["optimizers"], strict=True):
        for i in oa["state"]:
            for key in oa["state"][i]:
                assert torch.equal(oa["state"][i][key], ob["state"][i][key])
    assert torch.equal(a["generator"], b["generator"])


# --- exact resumption ------------------------------------------------------------------------

@pytest.mark.parametrize("train", [
    {},
    {"schedule": "sequential", "epochs": 2, "lr_schedule": "linear"},
    {"predict": "softmax", "negatives": "hard", "weight_decay": 0.01, "eval_every": 2},
    {"predict": "softmax", "model": {"mode": "unsupervised", "peer_norm": 0.03}},
], ids=["default", "sequential", "softmax-hard", "unsupervised-peer"])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    data_dir, tmp_path, monkeypatch, train
):
    train = dict(train)
    model = train.pop("model", {})
    config = small_config(data_dir, **({"epochs": 3} | train)).replace(model=model)
    train_run(config, tmp_path / "ref", progress=False)
    stop_after(monkeypatch, 1)

    with pytest.raises(Interrupted, match=r"\(epoch 1\); continue with: forwardforward train"):
        train_run(config, tmp_path / "run", progress=False)
    monkeypatch.undo()
    final = train_run(None, tmp_path / "run", resume=True, progress=False)

    assert_same_weights(tmp_path / "run", tmp_path / "ref")
    assert metrics_rows(tmp_path / "run" / "metrics.csv") == \
        metrics_rows(tmp_path / "ref" / "metrics.csv")
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert final["epochs"] == ref["epochs"] and final["test_error"] == ref["test_error"]


def test_checkpoint_holds_the_config_and_the_optimizer_step_count(data_dir, tmp_path):
    config = small_config(data_dir, epochs=2)
    train_run(config, tmp_path / "run", progress=False)

    state, saved = load_checkpoint(tmp_path / "run" / runner.CHECKPOINT)

    assert RunConfig.from_dict(saved) == config
    assert saved == json.loads((tmp_path / "run" / "config.json").read_text())
    assert state["epoch"] == 2 and state["device"] == "cpu"
    steps = [s["step"].item() for s in state["optimizers"][0]["state"].values()]
    assert steps == [2 * 200 / 25] * 2  # weight and bias of layer 1, 8 steps an epoch


def test_metrics_rows_past_the_checkpoint_are_dropped_on_resume(data_dir, tmp_path, monkeypatch):
    config = small_config(data_dir)
    train_run(config, tmp_path / "ref", progress=False)
    save = runner.save_checkpoint

    def killed_in_epoch_2(path, state, cfg):  # metrics.csv of epoch 2 is already written
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        save(path, state, cfg)

    monkeypatch.setattr(runner, "save_checkpoint", killed_in_epoch_2)
    with pytest.raises(Interrupted, match=r"\(epoch 1\)"):
        train_run(config, tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert len(metrics_rows(tmp_path / "run" / "metrics.csv")) == 2

    train_run(None, tmp_path / "run", resume=True, progress=False)

    assert metrics_rows(tmp_path / "run" / "metrics.csv") == \
        metrics_rows(tmp_path / "ref" / "metrics.csv")
    assert_same_weights(tmp_path / "run", tmp_path / "ref")


def test_metrics_csv_is_written_before_the_checkpoint(data_dir, tmp_path, monkeypatch):
    seen = []
    save = runner.save_checkpoint

    def save_and_look(path, state, cfg):
        seen.append((state["epoch"], len(metrics_rows(path.parent / "metrics.csv"))))
        save(path, state, cfg)

    monkeypatch.setattr(runner, "save_checkpoint", save_and_look)
    train_run(small_config(data_dir, epochs=2), tmp_path / "run", progress=False)

    assert seen == [(1, 1), (2, 2)]


# --- SIGINT ----------------------------------------------------------------------------------

def test_sigint_inside_sigint_held_waits_for_the_block_then_interrupts():
    done = []

    with pytest.raises(KeyboardInterrupt):
        with sigint_held():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("rest of the block")

    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_held_leaves_an_ignored_sigint_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigint_held():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigint_while_the_run_files_are_written_saves_that_epoch_first(
    data_dir, tmp_path, monkeypatch
):
    save = runner.save_checkpoint

    def ctrl_c_then_save(path, state, cfg):
        os.kill(os.getpid(), signal.SIGINT)
        save(path, state, cfg)

    monkeypatch.setattr(runner, "save_checkpoint", ctrl_c_then_save)

    with pytest.raises(Interrupted, match=r"\(epoch 1\)"):
        train_run(small_config(data_dir), tmp_path / "run", progress=False)

    assert load_checkpoint(tmp_path / "run" / runner.CHECKPOINT)[0]["epoch"] == 1
    assert len(metrics_rows(tmp_path / "run" / "metrics.csv")) == 1


# --- refusals --------------------------------------------------------------------------------

def test_check_out_dir_accepts_a_new_or_empty_folder_and_refuses_a_run(tmp_path):
    check_out_dir(tmp_path / "new" / "deeper", resume=False, force=False)
    check_out_dir(tmp_path, resume=False, force=False)
    (tmp_path / "metrics.csv").write_text("epoch\n")

    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.csv\)"):
        check_out_dir(tmp_path, resume=False, force=False)
    check_out_dir(tmp_path, resume=False, force=True)


def test_resume_refuses_optimizer_state_of_the_wrong_shape(data_dir, tmp_path, monkeypatch):
    config = small_config(data_dir)
    stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train_run(config, tmp_path / "run", progress=False)
    path = tmp_path / "run" / runner.CHECKPOINT
    state, saved = load_checkpoint(path)
    state["optimizers"][1]["state"][0]["exp_avg"] = torch.zeros(3, 3)
    save_checkpoint(path, state, saved)

    with pytest.raises(CheckpointError, match=r"optimizer state exp_avg of shape \(3, 3\) "
                                              r"for a parameter of shape \(12, 12\)"):
        train_run(None, tmp_path / "run", resume=True, progress=False)


def test_resume_refuses_a_checkpoint_config_that_is_invalid(data_dir, tmp_path, monkeypatch):
    stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train_run(small_config(data_dir), tmp_path / "run", progress=False)
    path = tmp_path / "run" / runner.CHECKPOINT
    state, saved = load_checkpoint(path)
    saved["train"]["epochs"] = 0
    save_checkpoint(path, state, saved)

    with pytest.raises(CheckpointError, match="checkpoint config is invalid: .*epochs must be"):
        train_run(None, tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize("n_train, side, words", [
    (20, 3, "20 training images of 9 pixels"),
    (0, 8, "0 training images of 64 pixels"),
])
def test_data_that_cannot_train_is_a_data_error(tmp_path, n_train, side, words):
    d = write_idx_set(tmp_path / "d", n_train=n_train, side=side)
    config = small_config(d)

    with pytest.raises(DataError, match=words):
        train_run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_missing_cuda_device_is_a_config_error_before_any_file(data_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    config = small_config(data_dir)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, device="cuda"))

    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        train_run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()



# --- curves.png ------------------------------------------------------------------------------

@pytest.mark.parametrize("every, drawn", [(3600.0, [3]), (0.0, [1, 2, 3])])
def test_curves_are_redrawn_at_most_every_plot_every_seconds_and_at_the_end(
    data_dir, tmp_path, monkeypatch, every, drawn
):
    rows_drawn = []
    monkeypatch.setattr(runner, "PLOT_EVERY", every)
    monkeypatch.setattr(runner, "plot_curves",
                        lambda rows, path: rows_drawn.append(len(rows)) or path.write_bytes(b""))

    train_run(small_config(data_dir), tmp_path / "run", progress=False)

    assert rows_drawn == drawn
    assert (tmp_path / "run" / "curves.png").is_file()


def test_a_plot_that_fails_only_warns_and_the_run_finishes(data_dir, tmp_path, monkeypatch,
                                                            caplog):
    def broken(rows, path):
        path.write_bytes(b"half a png")
        raise ValueError("no positive values to draw on a log scale")

    monkeypatch.setattr(runner, "plot_curves", broken)

    final = train_run(small_config(data_dir, epochs=1), tmp_path / "run", progress=False)

    assert final["epochs"] == 1
    assert "could not draw" in caplog.text and "log scale" in caplog.text
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == \
        [".lock", "config.json", "metrics.csv", "metrics.json", "model.safetensors"]
