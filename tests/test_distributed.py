"""Training across processes: data-parallel replicas, the layer pipeline, failed ranks.

The multi-process tests start real ranks on 127.0.0.1 with gloo, either through torchrun
(``python -m torch.distributed.run``) or, where one rank must be killed, as plain
processes given the environment torchrun gives its workers.
"""

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forwardforward import distributed as dist
from forwardforward.checkpoint import load_checkpoint
from forwardforward.cli import main
from forwardforward.config import ModelConfig, RunConfig, TrainConfig
from forwardforward.errors import ConfigError
from forwardforward.pipeline import check_pipeline, layer_costs, split_layers
from forwardforward.runner import evaluate_run

SRC = Path(__file__).parents[1] / "src"
MNIST_DIR = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST folder absent")
RUN_TIMEOUT = 120  # seconds any one multi-process run may take before the test fails


# ----------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)} | extra


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "forwardforward", "train", "--no-progress", *args]
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The trained parameters of a run: the FF layers' and the softmax read-out's."""
    state, _ = load_checkpoint(run / "model.safetensors")
    return state["net"] | {f"readout.{k}": v for k, v in state["readout"].items()}


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


# ----------------------------------------------------------------- replicas
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_replica_rows_cover_every_row_once_and_differ_by_at_most_one(size):
    for n in range(size, 60):
        parts = [dist.Replicas(k, size).rows(n) for k in range(size)]
        rows = [i for p in parts for i in range(n)[p]]
        assert rows == list(range(n))
        lengths = [p.stop - p.start for p in parts]
        assert max(lengths) - min(lengths) <= 1
        assert sum(dist.Replicas(k, size).share(n) for k in range(size)) == pytest.approx(1)


def test_one_replica_leaves_tensors_and_gradients_alone():
    one = dist.Replicas()
    x = torch.arange(6.0).view(3, 2)
    assert one.shard(x) is x and one.sum(x) is x and one.gather_rows(x, 3) is x
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([0.5, -1.0])
    one.average_gradients([p], weight=3)
    assert p.grad.tolist() == [0.5, -1.0]


# ----------------------------------------------------------------- pipeline split
def brute_force_split(costs: list[float], parts: int) -> float:
    best = float("inf")
    for cuts in itertools.combinations(range(1, len(costs)), parts - 1):
        bounds = (0, *cuts, len(costs))
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


def test_split_layers_gives_the_least_largest_block_of_all_contiguous_splits():
    rng = random.Random(3)
    for _ in range(200):
        L = rng.randint(1, 8)
        W = rng.randint(1, L)
        costs = [float(rng.randint(1, 100)) for _ in range(L)]
        blocks = split_layers(costs, W)
        assert [i for b in blocks for i in b] == list(range(L))
        assert all(len(b) > 0 for b in blocks)
        largest = max(sum(costs[i] for i in b) for b in blocks)
        assert largest == brute_force_split(costs, W)


def test_split_of_mnist_4x500_on_two_ranks_puts_the_wide_first_layer_alone_with_one():
    costs = layer_costs(784, (500, 500, 500, 500))
    assert costs == [392000.0, 250000.0, 250000.0, 250000.0]
    assert split_layers(costs, 2) == [range(0, 2), range(2, 4)]


def test_split_layers_refuses_more_blocks_than_layers():
    with pytest.raises(ValueError, match="cannot cut 2 layers into 3"):
        split_layers([1.0, 1.0], 3)


@pytest.mark.parametrize(
    ("train", "ranks", "message"),
    [
        ({"schedule": "sequential"}, 2, "--schedule simultaneous"),
        ({"negatives": "hard"}, 2, "--negatives random"),
        ({"predict": "softmax"}, 2, "--predict goodness"),
        ({}, 3, "3 ranks for 2 layers"),
    ],
)
def test_pipeline_refuses_what_needs_the_whole_net_on_one_rank(train, ranks, message):
    config = RunConfig(model=ModelConfig(layers=(20, 20)),
                       train=TrainConfig(parallel="pipeline", **train))
    with pytest.raises(ConfigError, match=message):
        check_pipeline(config, ranks)


def test_parallel_must_be_data_or_pipeline():
    with pytest.raises(ConfigError, match="parallel must be one of data, pipeline"):
        TrainConfig(parallel="model")


# ----------------------------------------------------------------- the group
def test_process_group_is_a_no_op_for_a_process_started_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with dist.process_group(timeout=1):
        assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()


def test_process_group_names_the_missing_launcher_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="RANK, MASTER_ADDR, MASTER_PORT is missing"):
        with dist.process_group(timeout=1):
            pass


def test_backend_errors_shrink_to_their_first_sentence():
    gloo = RuntimeError(
        "[/x/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:45237. "
        "This is typically caused by a remote worker crashing. GLHF!"
    )
    assert dist._first_line(gloo) == "Connection closed by peer [127.0.0.1]:45237"


# ----------------------------------------------------------------- multi-process runs
@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        # hard negatives gather every rank's read-out logits before the shared draw
        ["--negatives", "hard", "--predict", "softmax"],
        # hybrid negatives are made for the whole batch, then each rank takes its rows
        ["--mode", "unsupervised", "--predict", "softmax"],
    ],
    ids=["hard-negatives", "unsupervised"],
)
def test_two_data_parallel_ranks_give_the_weights_of_one_rank(tmp_path, mode):
    # batch 63 splits into uneven shards of 31 and 32; the read-out's gradients are
    # averaged like the layers'
    args = ["--dataset", "digits", "--layers", "40,30", "--epochs", "1", "--batch-size", "63",
            "--precision", "fp32", *mode]
    assert main(["train", "--no-progress", "--out", str(tmp_path / "one"), *args]) == 0
    torchrun(["--out", str(tmp_path / "two"), *args])

    assert_same_weights(tmp_path / "one", tmp_path / "two", atol=1e-5)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["test_error"] == pytest.approx(one["test_error"], abs=0.01)


@pytest.mark.slow
@needs_mnist
def test_pipeline_of_two_ranks_trains_mnist_like_one_process(tmp_path):
    args = ["--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--layers", "200,200",
            "--limit-train", "10000", "--limit-test", "2000", "--train-eval-size", "1000",
            "--epochs", "2", "--batch-size", "50", "--lr", "0.003", "--score-layers", "all",
            "--precision", "fp32"]
    assert main(["train", "--no-progress", "--out", str(tmp_path / "one"), *args]) == 0
    torchrun(["--out", str(tmp_path / "pipe"), "--parallel", "pipeline", *args])

    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    pipe = json.loads((tmp_path / "pipe" / "metrics.json").read_text())
    assert pipe["world_size"] == 2
    assert one["test_error"] < 0.4  # it learned: chance is 0.9
    assert abs(pipe["test_error"] - one["test_error"]) <= 0.02
    # each layer sees the same inputs in the same order as in one process
    assert_same_weights(tmp_path / "one", tmp_path / "pipe", atol=1e-6)

    # rank 0 gathered both blocks: one process reads the checkpoint and gets the same error
    evaluated = evaluate_run(tmp_path / "pipe", progress=False)
    assert evaluated["test_error"] == pytest.approx(pipe["test_error"], abs=1e-9)


def start_ranks(out: Path, extra: list[str], timeout: float) -> list[subprocess.Popen]:
    """Two ranks as plain processes with the environment torchrun gives its workers."""
    port = str(free_port())
    procs = []
    for r in range(2):
        env = child_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [sys.executable, "-m", "forwardforward", "train", "--no-progress",
               "--out", str(out), "--dataset", "digits", "--layers", "30,30",
               "--epochs", "10000", "--dist-timeout", str(timeout), *extra]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    return procs


def wait_for_first_epoch(proc: subprocess.Popen) -> None:
    """Read rank 0's log until its first epoch ends (end of file if it died first)."""
    for line in proc.stderr:
        if line.startswith("epoch 1:"):
            return
    pytest.fail("rank 0 ended before its first epoch finished")


def _survivor_stderr(tmp_path, parallel: str, timeout: int, hurt) -> str:
    """Start two ranks, ``hurt`` one after the first epoch; the survivor's exit and stderr."""
    survivor, victim = start_ranks(tmp_path / "run", ["--parallel", parallel], timeout=timeout)
    try:
        wait_for_first_epoch(survivor)
        hurt(victim)
        _, err = survivor.communicate(timeout=60)
    finally:
        for p in (survivor, victim):
            p.kill()
            p.wait()
    assert survivor.returncode == 1
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.slow
def test_killed_rank_makes_the_survivor_exit_with_a_one_line_error(tmp_path):
    # the survivor waits in a receive of the pipeline when its peer's socket closes
    last = _survivor_stderr(tmp_path, "pipeline", 30, lambda p: p.kill())
    assert last.startswith("forwardforward: error: rank 0 of 2 lost contact with the other")
    assert "failed or was killed" in last


@pytest.mark.slow
def test_stopped_rank_makes_the_survivor_give_up_after_the_dist_timeout(tmp_path):
    # the survivor waits in a data-parallel all-reduce that its frozen peer never joins;
    # SIGSTOP keeps the peer alive, holding its sockets, never answering
    last = _survivor_stderr(tmp_path, "data", 3, lambda p: p.send_signal(signal.SIGSTOP))
    assert "Timed out" in last and "--dist-timeout (3 s)" in last
