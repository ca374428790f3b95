"""The command line under bad input, faults and interruption: one line, the right exit code.

Most tests call ``main([...])`` in-process on a tiny IDX set in a temporary folder; the
interruption tests and one bad-data test run the real ``python -m forwardforward``.
"""

import functools
import gzip
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import forwardforward
from forwardforward import runner
from forwardforward.checkpoint import load_checkpoint, save_checkpoint
from forwardforward.cli import main
from forwardforward.config import TrainConfig
from forwardforward.idx import write_idx
from runfolders import (
    IMAGES,
    LABELS,
    TEST_IMAGES,
    TEST_LABELS,
    metrics_rows,
    run_args,
    single_thread,
    write_idx_set,
)

SRC = Path(forwardforward.__file__).resolve().parents[1]
NO_NETWORK = "http://127.0.0.1:1/"  # a refused port: a download attempt fails at once


one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A download attempt goes to a refused local port, never through a proxy."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FORWARDFORWARD_MIRRORS", NO_NETWORK)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_set(tmp_path_factory.mktemp("data") / "mnist")


@pytest.fixture
def broken(tmp_path, data_dir):
    """A copy of the data set, to damage."""
    return Path(shutil.copytree(data_dir, tmp_path / "broken"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """A finished 2-epoch run folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert main(run_args(data_dir, out)) == 0
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def one_error_line(capsys) -> str:
    """The whole stderr, checked to be one line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("forwardforward"), err
    return lines[0]


# --- broken data files ---------------------------------------------------------------------

def _truncated_gz(d: Path) -> tuple[Path, str]:
    path = d / f"{IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:40])
    return path, "truncated"


def _wrong_magic(d: Path) -> tuple[Path, str]:
    path = d / f"{LABELS}.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x10\x01" + bytes(12)))
    return path, "magic number 0x00001001"


def _dims_disagree_with_size(d: Path) -> tuple[Path, str]:
    (d / f"{TEST_IMAGES}.gz").unlink()
    path = d / TEST_IMAGES  # raw: 50x8x8 declared, one byte short
    path.write_bytes(b"\x00\x00\x08\x03" + np.array([50, 8, 8], ">u4").tobytes()
                     + bytes(50 * 64 - 1))
    return path, "holds 3199 bytes"


def _counts_differ(d: Path) -> tuple[Path, str]:
    write_idx(d / f"{LABELS}.gz", np.zeros(7, np.uint8), compress=True)
    return d / f"{LABELS}.gz", "holds 400 images but"


def _label_out_of_range(d: Path) -> tuple[Path, str]:
    write_idx(d / f"{TEST_LABELS}.gz", np.array([1, 10] + [2] * 48, np.uint8), compress=True)
    return d / f"{TEST_LABELS}.gz", "label 10 at index 1 is outside 0..9"


def _directory_for_a_file(d: Path) -> tuple[Path, str]:
    path = d / f"{LABELS}.gz"
    path.unlink()
    path.mkdir()
    return path, "is a directory"


def _missing_file(d: Path) -> tuple[Path, str]:
    (d / f"{TEST_LABELS}.gz").unlink()  # fetched from NO_NETWORK, which refuses
    return d, f"could not download mnist ({NO_NETWORK}{TEST_LABELS}.gz"


BREAKERS = [_truncated_gz, _wrong_magic, _dims_disagree_with_size, _counts_differ,
            _label_out_of_range, _directory_for_a_file, _missing_file]


@pytest.mark.parametrize("damage", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_broken_data_file_is_one_stderr_line_naming_it_and_exit_2(
    damage, broken, tmp_path, capsys
):
    path, what = damage(broken)
    out = tmp_path / "run"

    code = main(run_args(broken, out))

    line = one_error_line(capsys)
    assert code == 2
    assert str(path) in line and what in line, line
    assert not out.exists()


def test_a_file_given_as_data_dir_is_named_with_exit_2(data_dir, tmp_path, capsys):
    code = main(run_args(data_dir / f"{LABELS}.gz", tmp_path / "run"))

    line = one_error_line(capsys)
    assert code == 2 and f"{LABELS}.gz: is a file" in line and "--data-dir" in line, line


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_download_failing_its_checksum_is_named_with_exit_2(
    broken, tmp_path, capsys, monkeypatch
):
    (broken / f"{TEST_LABELS}.gz").unlink()
    www = tmp_path / "www"
    www.mkdir()
    write_idx(www / f"{TEST_LABELS}.gz", np.zeros(50, np.uint8), compress=True)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www))
    )
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("FORWARDFORWARD_MIRRORS", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    try:
        code = main(run_args(broken, tmp_path / "run"))
    finally:
        server.shutdown()
        server.server_close()

    line = one_error_line(capsys)
    assert code == 2 and f"{TEST_LABELS}.gz downloaded from" in line, line
    assert "fails its checksum" in line
    assert not (broken / f"{TEST_LABELS}.gz").exists()


# --- impossible options ----------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--epochs", "-3"], "epochs must be a positive integer, got -3"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--layers", "16,0"], "layer widths must be positive"),
    (["--layers", "16,x"], "not a comma-separated list of widths"),
    (["--batch-size", "0"], "batch-size must be a positive integer, got 0"),
    (["--lr", "0"], "lr must be a positive finite number, got 0.0"),
    (["--lr=-1e-3"], "lr must be a positive finite number, got -0.001"),
    (["--lr", "-1e-3"], "argument --lr: expected one argument; write a negative number as"),
    (["--lr", "nan"], "lr must be a positive finite number, got nan"),
    (["--lr", "inf"], "lr must be a positive finite number, got inf"),
    (["--threshold", "nan"], "threshold must be a finite number, got nan"),
    (["--threshold=-inf"], "threshold must be a finite number, got -inf"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--limit-train", "0"], "limit-train must be a positive finite number"),
    (["--eval-every", "0"], "eval-every must be a positive integer"),
    (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N; got 'tpu'"),
])
def test_impossible_option_is_refused_before_any_work(flags, words, data_dir, tmp_path, capsys):
    out = tmp_path / "run"

    code = main(run_args(data_dir, out, *flags))

    line = one_error_line(capsys)
    assert code == 2 and words in line, line
    assert not out.exists()


@pytest.mark.parametrize("text, words", [
    (None, "does not exist or is not a file"),
    ("[train\nepochs = 2\n", "is not valid TOML"),
    ("[train]\nepoch = 2\n", "unknown key(s) ['epoch'] in [train]"),
    ("[optimizer]\nlr = 0.1\n", "unknown table(s) ['optimizer']"),
    ("[model]\nlayers = \"abc\"\n", "[model] layers must be a list of integers, got 'abc'"),
    ("[model]\nlayers = [16, 0]\n", "layer widths must be positive integers, got 0"),
    ("[train]\nseed = \"x\"\n", "[train] seed must be an integer, got 'x'"),
    ("[train]\nepochs = 2.5\n", "[train] epochs must be an integer, got 2.5"),
    ("[train]\ndevice = 5\n", "[train] device must be a string, got 5"),
    ("[data]\ndataset = \"cifar\"\n", "dataset must be one of digits, mnist, fashion-mnist"),
])
def test_bad_config_file_is_one_line_naming_it(text, words, data_dir, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "run"

    code = main(["train", "--config", str(path), "--out", str(out)])

    line = one_error_line(capsys)
    assert code == 2 and words in line and str(path) in line, line
    assert not out.exists()


def test_unknown_config_name_lists_the_bundled_ones(tmp_path, capsys):
    code = main(["train", "--config", "no-such-setting", "--out", str(tmp_path / "run")])

    line = one_error_line(capsys)
    assert code == 2 and "no such file or bundled setting" in line and "mnist-2x500" in line


# --- where the run goes ----------------------------------------------------------------------

def test_out_pointing_at_a_file_is_refused(data_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("keep me")

    code = main(run_args(data_dir, tmp_path / "f"))

    assert code == 2 and "is an existing file" in one_error_line(capsys)
    assert (tmp_path / "f").read_text() == "keep me"


def test_out_below_a_file_is_refused(data_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("keep me")

    code = main(run_args(data_dir, tmp_path / "f" / "run"))

    line = one_error_line(capsys)
    assert code == 2 and "cannot be created" in line and "is a file" in line


def test_out_holding_a_run_is_not_overwritten_without_resume_or_force(
    finished, data_dir, tmp_path, capsys
):
    run = copy_run(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    code = main(run_args(data_dir, run))

    line = one_error_line(capsys)
    assert code == 2 and "already holds a run" in line and "--resume" in line
    assert "--force" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_force_replaces_the_old_run_and_its_stale_files(finished, data_dir, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "eval.json").write_text("{}")

    code = main(run_args(data_dir, run, "--force", "--epochs", "1"))

    assert code == 0
    assert not (run / "eval.json").exists()
    assert len(metrics_rows(run / "metrics.csv")) == 1
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("flags, words", [
    (["--resume", "--force"], "--resume and --force exclude each other"),
    (["--resume"], "holds no checkpoint model.safetensors"),
])
def test_resume_flags_that_cannot_work_are_refused(flags, words, data_dir, tmp_path, capsys):
    code = main(run_args(data_dir, tmp_path / "nothing-here", *flags))

    line = one_error_line(capsys)
    assert code == 2 and words in line, line
    assert not (tmp_path / "nothing-here").exists()


def test_resume_without_out_is_refused(capsys):
    code = main(["train", "--resume"])

    assert code == 2 and "--resume needs --out" in one_error_line(capsys)


def test_resume_of_a_run_stopped_before_its_first_epoch_says_to_start_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")

    code = main(["train", "--resume", "--out", str(run)])

    line = one_error_line(capsys)
    assert code == 2 and "holds no checkpoint" in line and "start over with --force" in line


def test_out_without_write_permission_is_refused(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a user, not root

    code = main(run_args(data_dir, tmp_path / "run"))

    line = one_error_line(capsys)
    assert code == 2 and f"no permission to write in {tmp_path}" in line, line


def test_a_second_run_on_a_folder_in_use_is_refused_and_changes_nothing(
    finished, data_dir, tmp_path, capsys
):
    import fcntl

    run = copy_run(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    with (run / ".lock").open("w") as held:  # as the running process holds it
        fcntl.flock(held, fcntl.LOCK_EX)

        code = main(run_args(data_dir, run, "--force"))

    line = one_error_line(capsys)
    assert code == 2 and "is in use by another forwardforward run" in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before


def test_layers_too_wide_for_memory_are_one_line_naming_the_options(data_dir, tmp_path, capsys):
    # 10^13 units of 64 inputs: 2.5 PB, beyond any address space, so it fails at once
    code = main(run_args(data_dir, tmp_path / "run", "--layers", "10000000000000"))

    line = one_error_line(capsys)
    assert code == 2, line
    assert "out of memory on cpu with --layers 10000000000000 and --batch-size 50" in line
    assert not (tmp_path / "run").exists()


# --- divergence ------------------------------------------------------------------------------

def _poison_after_epoch_1(monkeypatch, part):
    """Fill the weight of ``part(trainer)`` with NaN once epoch 1 has been written."""
    write = runner.RunWriter.__call__

    def poisoned(self, result):
        write(self, result)
        if result.epoch == 1:
            with torch.no_grad():
                part(self.trainer).weight.fill_(float("nan"))

    monkeypatch.setattr(runner.RunWriter, "__call__", poisoned)


@pytest.mark.parametrize("negatives", ["random", "hard"])
def test_non_finite_goodness_stops_with_epoch_layer_and_last_checkpoint_keeping_epoch_1(
    negatives, data_dir, tmp_path, capsys, monkeypatch
):
    _poison_after_epoch_1(monkeypatch, lambda t: t.net.layers[1].linear)
    out = tmp_path / "run"

    code = main(run_args(data_dir, out, "--negatives", negatives))

    line = one_error_line(capsys)
    assert code == 1
    assert "non-finite loss or goodness in epoch 2, layer 2" in line, line
    assert f"last good checkpoint {out / 'model.safetensors'} (epoch 1)" in line
    assert f"lower --lr (now {TrainConfig().lr:g})" in line
    state, _ = load_checkpoint(out / "model.safetensors")
    assert state["epoch"] == 1
    assert all(t.isfinite().all() for t in state["net"].values())
    assert [r["epoch"] for r in metrics_rows(out / "metrics.csv")] == ["1"]
    assert (out / "curves.png").is_file() and (out / "config.json").is_file()
    assert not (out / "metrics.json").exists()


def test_non_finite_read_out_weights_are_caught_at_the_end_of_the_epoch(
    data_dir, tmp_path, capsys, monkeypatch
):
    _poison_after_epoch_1(monkeypatch, lambda t: t.readout.linear)
    out = tmp_path / "run"

    code = main(run_args(data_dir, out, "--predict", "softmax"))

    line = one_error_line(capsys)
    assert code == 1
    assert "non-finite weights in epoch 2, the softmax read-out" in line, line
    assert f"--readout-lr (now {TrainConfig().readout_lr:g})" in line
    state, _ = load_checkpoint(out / "model.safetensors")
    assert state["epoch"] == 1 and state["readout"]["linear.weight"].isfinite().all()


def test_a_huge_learning_rate_diverges_in_epoch_1_and_says_nothing_was_saved(
    data_dir, tmp_path, capsys
):
    out = tmp_path / "run"

    code = main(run_args(data_dir, out, "--lr", "1e30"))

    line = one_error_line(capsys)
    assert code == 1 and "in epoch 1, layer 1" in line and "nothing was saved" in line, line
    assert not (out / "model.safetensors").exists()


def test_a_full_disk_stops_the_run_keeping_the_last_checkpoint(
    data_dir, tmp_path, capsys, monkeypatch
):
    save = runner.save_checkpoint

    def fail_in_epoch_2(path, state, config):
        if state["epoch"] == 2:
            raise OSError(28, "No space left on device")
        save(path, state, config)

    monkeypatch.setattr(runner, "save_checkpoint", fail_in_epoch_2)
    out = tmp_path / "run"

    code = main(run_args(data_dir, out))

    line = one_error_line(capsys)
    assert code == 2 and f"cannot write the run files in {out}: No space left" in line, line
    assert "(epoch 1)" in line
    assert load_checkpoint(out / "model.safetensors")[0]["epoch"] == 1


# --- resume ----------------------------------------------------------------------------------

def test_resume_with_other_options_names_the_differences(finished, data_dir, tmp_path, capsys):
    run = copy_run(finished, tmp_path)

    code = main(run_args(data_dir, run, "--resume", "--epochs", "3", "--lr", "0.5"))

    line = one_error_line(capsys)
    assert code == 2 and "--epochs 2 there, 3 now" in line, line
    assert f"--lr {TrainConfig().lr!r} there, 0.5 now" in line


def test_resume_of_a_finished_run_trains_nothing_more(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    weights = (run / "model.safetensors").read_bytes()

    code = main(["train", "--resume", "--out", str(run), "--no-progress"])

    assert code == 0
    assert (run / "model.safetensors").read_bytes() == weights
    assert metrics_rows(run / "metrics.csv") == metrics_rows(finished / "metrics.csv")


@pytest.mark.parametrize("damage, words", [
    (lambda run: (run / "metrics.csv").unlink(), "metrics.csv is missing"),
    (lambda run: (run / "metrics.csv").write_text("epoch,loss_1\n1,abc\n"), "is damaged"),
    (lambda run: (run / "metrics.csv").write_text("epoch,loss_1\n1,0.5\n"), "has 1 row(s)"),
    (lambda run: (run / "model.safetensors").write_bytes(
        (run / "model.safetensors").read_bytes()[:1000]), "is truncated"),
    (lambda run: (run / "model.safetensors").write_bytes(b"not a checkpoint"), "is truncated"),
])
def test_resume_from_a_damaged_run_folder_is_one_line(damage, words, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    damage(run)

    code = main(["train", "--resume", "--out", str(run)])

    line = one_error_line(capsys)
    assert code == 2 and words in line, line


def test_resume_refuses_a_checkpoint_whose_shapes_do_not_fit_its_config(
    finished, data_dir, tmp_path, capsys
):
    other = tmp_path / "other"
    assert main(run_args(data_dir, other, "--layers", "8,8", "--epochs", "1")) == 0
    run = copy_run(finished, tmp_path)
    state, _ = load_checkpoint(other / "model.safetensors")
    _, config = load_checkpoint(run / "model.safetensors")
    save_checkpoint(run / "model.safetensors", state, config)
    capsys.readouterr()

    code = main(["train", "--resume", "--out", str(run)])

    line = one_error_line(capsys)
    assert code == 2 and "does not fit this model" in line and "size mismatch" in line, line


def test_resume_refuses_a_checkpoint_written_on_another_kind_of_device(
    finished, tmp_path, capsys
):
    run = copy_run(finished, tmp_path)
    state, config = load_checkpoint(run / "model.safetensors")
    save_checkpoint(run / "model.safetensors", state | {"device": "cuda"}, config)

    code = main(["train", "--resume", "--out", str(run)])

    line = one_error_line(capsys)
    assert code == 2 and "was written on cuda, this run is on cpu" in line, line


# --- evaluate --------------------------------------------------------------------------------

def test_evaluate_reproduces_the_final_test_error_of_the_run(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)

    code = main(["evaluate", str(run), "--no-progress"])

    result = json.loads((run / "eval.json").read_text())
    final = json.loads((run / "metrics.json").read_text())
    assert code == 0 and result["epoch"] == 2 and result["samples"] == 50
    assert result["test_error"] == final["test_error"]
    assert sum(map(sum, result["confusion"])) == 50


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluate_of_a_gpu_run_on_a_machine_without_one_falls_back_to_auto(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    state, config = load_checkpoint(run / "model.safetensors")
    config["train"]["device"] = "cuda"
    save_checkpoint(run / "model.safetensors", state | {"device": "cuda"}, config)

    code = main(["evaluate", str(run), "--no-progress"])

    result = json.loads((run / "eval.json").read_text())
    assert code == 0
    assert result["test_error"] == json.loads((run / "metrics.json").read_text())["test_error"]


def test_evaluate_on_data_of_another_image_size_is_refused(finished, tmp_path, capsys):
    small = write_idx_set(tmp_path / "six", side=6)

    code = main(["evaluate", str(finished), "--data-dir", str(small)])

    line = one_error_line(capsys)
    assert code == 2 and "does not fit this model" in line and "36 features" in line, line


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: p.mkdir(), "holds no checkpoint model.safetensors"),
])
def test_evaluate_without_a_run_folder_is_one_line(make, words, tmp_path, capsys):
    path = tmp_path / "run"
    make(path)

    code = main(["evaluate", str(path)])

    line = one_error_line(capsys)
    assert code == 2 and words in line and str(path) in line, line


class _ClosedPipe(io.StringIO):
    """stdout whose reader has gone, as after ``| head -1``."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise io.UnsupportedOperation("no file descriptor")


def test_evaluate_into_a_closed_pipe_exits_141_quietly_after_writing_eval_json(
    finished, tmp_path, capsys, monkeypatch
):
    run = copy_run(finished, tmp_path)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())

    code = main(["evaluate", str(run), "--no-progress"])

    assert code == 141 and capsys.readouterr().err == ""
    assert json.loads((run / "eval.json").read_text())["epoch"] == 2


def test_evaluate_never_unpickles_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"x": _Exploit(str(marker))}, run / "model.safetensors")

    code = main(["evaluate", str(run)])

    line = one_error_line(capsys)
    assert code == 2 and "not a safetensors file" in line, line
    assert not marker.exists()


class _Exploit:
    """Unpickling this would create ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# --- the real entry point: interruption and resume -------------------------------------------

KILL_ARGS = ("--epochs", "3", "--batch-size", "2")  # 200 steps per epoch


def _spawn(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """``python -m forwardforward ARGS`` with SIGINT at its default, output to files."""
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "stdout").open("w") as out, (tmp_path / "stderr").open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "forwardforward", *args], env=env, stdout=out, stderr=err,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, epoch: int,
                         deadline_s: float = 120.0) -> None:
    """Poll until the checkpoint at ``path`` holds ``epoch``; fail if the run ends first."""
    end, seen = time.monotonic() + deadline_s, None
    while time.monotonic() < end:
        assert proc.poll() is None, "the run ended before it could be stopped"
        stamp = path.stat().st_mtime_ns if path.exists() else None
        if stamp != seen:
            seen = stamp
            if load_checkpoint(path)[0]["epoch"] >= epoch:
                return
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"no checkpoint of epoch {epoch} within {deadline_s} s")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """The reference: the same run as the interrupted ones, in one go (in-process)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(run_args(data_dir, out, *KILL_ARGS)) == 0
    return out


def _assert_same_run(run: Path, reference: Path) -> None:
    a, _ = load_checkpoint(run / "model.safetensors")
    b, _ = load_checkpoint(reference / "model.safetensors")
    for part in ("net", "readout"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    assert a["epoch"] == b["epoch"] == 3
    assert metrics_rows(run / "metrics.csv") == metrics_rows(reference / "metrics.csv")


def test_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(
    data_dir, tmp_path, uninterrupted
):
    out = tmp_path / "run"
    proc = _spawn(run_args(data_dir, out, *KILL_ARGS), tmp_path)
    try:
        _wait_for_checkpoint(proc, out / "model.safetensors", epoch=1)
        proc.kill()
    finally:
        proc.wait(timeout=60)

    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "model.safetensors")[0]["epoch"] == 1
    assert not (out / "metrics.json").exists()
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    _assert_same_run(out, uninterrupted)


def test_sigint_mid_epoch_keeps_the_finished_epoch_says_how_to_resume_and_exits_130(
    data_dir, tmp_path, uninterrupted
):
    out = tmp_path / "run"
    proc = _spawn(run_args(data_dir, out, *KILL_ARGS), tmp_path)
    try:
        _wait_for_checkpoint(proc, out / "model.safetensors", epoch=1)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()

    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last == (f"forwardforward: interrupted; 1 finished epoch(s) kept, last good checkpoint "
                    f"{out / 'model.safetensors'} (epoch 1); continue with: forwardforward "
                    f"train --resume --out {out}")
    assert [r["epoch"] for r in metrics_rows(out / "metrics.csv")] == ["1"]
    assert (out / "curves.png").is_file() and not (out / "metrics.json").exists()
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    _assert_same_run(out, uninterrupted)


def test_entry_point_prints_only_one_line_for_a_broken_file(broken, tmp_path):
    path, what = _wrong_magic(broken)

    proc = _spawn(run_args(broken, tmp_path / "run"), tmp_path)
    proc.wait(timeout=120)

    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 2
    assert err.count("\n") == 1 and str(path) in err and what in err, err
    assert (tmp_path / "stdout").read_text() == ""
