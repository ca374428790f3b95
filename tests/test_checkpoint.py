"""Checkpoints: exact round trips, atomic replacement, and a clear refusal of every bad file."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from forwardforward import checkpoint
from forwardforward.checkpoint import FORMAT, atomic_write, load_checkpoint, save_checkpoint
from forwardforward.errors import CheckpointError

CONFIG = {"data": {"dataset": "digits"}, "model": {"layers": [4, 3]}, "train": {"lr": 0.001}}


def trained_state() -> dict:
    """A small net's state after two AdamW steps, with a generator, as a trainer keeps it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
    gen = torch.Generator().manual_seed(7)
    torch.randn(3, generator=gen)
    return {"net": net.state_dict(), "optimizers": [opt.state_dict()],
            "generator": gen.get_state(), "epoch": 3, "flags": [True, None, 0.5, "x"]}


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_checkpoint_round_trips_weights_optimizer_generator_and_config_exactly(tmp_path):
    state = trained_state()
    path = tmp_path / "model.safetensors"

    save_checkpoint(path, state, CONFIG)
    loaded, config = load_checkpoint(path)

    assert_same(loaded, state)  # int keys of the optimizer state stay int
    assert config == CONFIG
    assert list(loaded["optimizers"][0]["state"]) == [0, 1, 2, 3]


def test_round_tripped_optimizer_and_generator_continue_identically(tmp_path):
    state = trained_state()
    save_checkpoint(tmp_path / "c.safetensors", state, CONFIG)
    loaded, _ = load_checkpoint(tmp_path / "c.safetensors")
    a, b = torch.Generator(), torch.Generator()

    a.set_state(state["generator"])
    b.set_state(loaded["generator"])

    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    assert loaded["optimizers"][0]["state"][0]["step"].item() == 2.0


def test_checkpoint_keeps_bfloat16_and_scalar_tensors(tmp_path):
    state = {"w": torch.randn(3, 2).to(torch.bfloat16), "step": torch.tensor(5.0)}

    save_checkpoint(tmp_path / "c.safetensors", state, {})

    assert_same(load_checkpoint(tmp_path / "c.safetensors")[0], state)


def test_checkpoint_header_is_json_with_the_format_and_config(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, trained_state(), CONFIG)

    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])

    assert header["__metadata__"]["format"] == FORMAT
    assert json.loads(header["__metadata__"]["config"]) == CONFIG


def test_saving_an_object_that_is_not_data_is_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store object"):
        save_checkpoint(tmp_path / "c.safetensors", {"x": object()}, {})
    assert list(tmp_path.iterdir()) == []


# --- atomic writes -------------------------------------------------------------------------

def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")

    atomic_write(path, "new")

    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


@pytest.mark.parametrize("stage", ["fsync", "replace"])
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_midway_keeps_the_old_file_and_no_temporary(
    tmp_path, monkeypatch, stage, error
):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, CONFIG)
    before = path.read_bytes()

    def fail(*args):
        raise error

    monkeypatch.setattr(checkpoint.os, stage, fail)
    with pytest.raises(type(error)):
        save_checkpoint(path, {"w": torch.zeros(2)}, CONFIG)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert torch.equal(load_checkpoint(path)[0]["w"], torch.ones(2))


# --- refusals --------------------------------------------------------------------------------

def refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_a_missing_checkpoint_or_a_folder_is_refused(tmp_path):
    assert "does not exist or is not a file" in refusal(tmp_path / "none.safetensors")
    assert "does not exist or is not a file" in refusal(tmp_path)


@pytest.mark.parametrize("keep", [0, 7, 8, 100, -1])
def test_a_truncated_checkpoint_is_refused(tmp_path, keep):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, trained_state(), CONFIG)
    raw = path.read_bytes()
    path.write_bytes(raw[: keep % len(raw)])

    assert "is truncated or not a safetensors file" in refusal(path)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(os.urandom(4096))

    assert "is truncated or not a safetensors file" in refusal(path)


def test_a_pickle_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "c.safetensors"
    torch.save({"w": torch.ones(2), "payload": _Exploit(marker)}, path)

    assert "is truncated or not a safetensors file" in refusal(path)
    assert not marker.exists()
    copy = tmp_path / "c.pt"  # torch.load of a .safetensors name would not unpickle
    copy.write_bytes(path.read_bytes())
    torch.load(copy, weights_only=False)  # what unpickling would have done
    assert marker.exists()


class _Exploit:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("metadata, words", [
    (None, "unknown format None"),
    ({"format": "forwardforward-checkpoint-v0"}, "unknown format 'forwardforward-checkpoint-v0'"),
    ({"format": FORMAT, "config": "{}"}, "damaged header"),
    ({"format": FORMAT, "config": "{", "skeleton": "{}"}, "damaged header"),
    ({"format": FORMAT, "config": "{}", "skeleton": '{"__tensor__": "missing"}'},
     "damaged header"),
])
def test_a_safetensors_file_not_written_by_us_is_refused(tmp_path, metadata, words):
    path = tmp_path / "c.safetensors"
    path.write_bytes(st_save({"w": torch.ones(2)}, metadata=metadata))

    assert words in refusal(path)
