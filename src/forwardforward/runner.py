"""A training run on disk: its folder, output files, checkpoints and resumption.

A run folder holds ``config.json`` (the resolved config), ``metrics.csv`` (a row per
epoch), ``metrics.json`` (the final figures), ``model.safetensors`` (the checkpoint of
the last finished epoch, with optimizer state and config) and ``curves.png``. Every file
is replaced atomically after each epoch, so an interrupted run keeps all finished epochs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forwardforward import distributed as dist
from forwardforward.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from forwardforward.config import RunConfig
from forwardforward.data import load_dataset
from forwardforward.errors import CheckpointError, ConfigError, TrainingError
from forwardforward.pipeline import PipelineTrainer, check_pipeline, share_data
from forwardforward.plots import plot_curves
from forwardforward.train import EpochResult, Trainer, resolve_device

log = logging.getLogger(__name__)

CHECKPOINT = "model.safetensors"
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", CHECKPOINT, "curves.png")


class Interrupted(Exception):
    """Training was stopped by SIGINT; the last finished epoch is saved."""


@dataclass
class RunData:
    """A data set's tensors on the training device."""

    tensors: dict[str, torch.Tensor]
    in_features: int
    num_classes: int


def load_run_data(config: RunConfig, device: torch.device, progress: bool = True) -> RunData:
    """Load the configured data set, apply its limits and move it to ``device`` once."""
    dc = config.data
    ds = load_dataset(dc.dataset, dc.data_dir, progress=progress)
    x_train, y_train = ds.x_train[: dc.limit_train], ds.y_train[: dc.limit_train]
    x_test, y_test = ds.x_test[: dc.limit_test], ds.y_test[: dc.limit_test]
    pin = device.type == "cuda"

    def put(t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        return t.pin_memory().to(device, non_blocking=True) if pin else t.to(device)

    tensors = {
        "x_train": put(x_train),
        "y_train": put(y_train),
        "x_test": put(x_test),
        "y_test": put(y_test),
    }
    tensors["x_train_eval"] = tensors["x_train"][: dc.train_eval_size]
    tensors["y_train_eval"] = tensors["y_train"][: dc.train_eval_size]
    return RunData(tensors, ds.x_train.shape[1], ds.num_classes)


def check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse an ``--out`` that is a file, or a run folder that would be overwritten."""
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: pick one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a folder path")
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: no checkpoint {out / CHECKPOINT}; start without it")
        return
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"--out {out} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or --force to overwrite it"
        )


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv``, numbers parsed, empty cells as None."""
    if not path.is_file():
        return []
    rows = []
    for raw in csv.DictReader(path.open()):
        rows.append({k: (None if v == "" else float(v)) for k, v in raw.items()})
        rows[-1]["epoch"] = int(rows[-1]["epoch"])
    return rows


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


class RunWriter:
    """Writes a run's files after each epoch (rank 0 only when distributed)."""

    def __init__(self, out: Path, trainer: Trainer, rows: list[dict[str, Any]]) -> None:
        self.out, self.trainer, self.rows = out, trainer, rows

    def __call__(self, result: EpochResult) -> None:
        state = self.trainer.state_dict()  # on every rank: a pipeline gathers it to rank 0
        if not dist.is_main():
            return
        self.rows.append(result.row())
        config = self.trainer.config.to_dict()
        save_checkpoint(self.out / CHECKPOINT, state, config)
        write_metrics_csv(self.out / "metrics.csv", self.rows)
        plot_curves(self.rows, self.out / "curves.png")

    def final(self) -> dict[str, Any]:
        """``metrics.json``: the last evaluated errors and throughput of the whole run."""
        evaluated = [r for r in self.rows if r.get("test_error") is not None]
        last = evaluated[-1] if evaluated else {}
        seconds = sum(r["seconds"] for r in self.rows)
        samples = sum(r["seconds"] * r["samples_per_second"] for r in self.rows)
        return {
            "test_error": last.get("test_error"),
            "train_error": last.get("train_error"),
            "epochs": len(self.rows),
            "seconds": seconds,
            "eval_seconds": sum(r.get("eval_seconds") or 0.0 for r in self.rows),
            "train_samples_per_second": samples / seconds if seconds else None,
            "world_size": dist.world_size(),
            "device": str(self.trainer.device),
            "precision": str(self.trainer.dtype).removeprefix("torch."),
        }


def train_run(
    config: RunConfig | None, out: str | Path, *, resume: bool = False, force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train as configured, writing the run folder ``out``; returns ``metrics.json``'s dict.

    With ``resume``, ``config`` may be None (use the checkpoint's) and must otherwise
    equal the checkpoint's.

    Raises:
        ConfigError: ``out`` is unusable, or the checkpoint's config differs.
        TrainingError: a loss or goodness became non-finite (finished epochs are kept).
        Interrupted: SIGINT arrived (finished epochs are kept).
    """
    out = Path(out)
    config, state = dist.on_main(lambda: _open_run(config, out, resume, force), share=True)
    pipelined = config.train.parallel == "pipeline" and dist.world_size() > 1
    if pipelined:
        check_pipeline(config, dist.world_size())
    data = _load_data(config, pipelined, progress)
    klass = PipelineTrainer if pipelined else Trainer
    trainer = klass(config, data.in_features, data.num_classes)
    rows: list[dict[str, Any]] = []
    if resume:
        _load_state(trainer, state, out)
        rows = read_metrics_csv(out / "metrics.csv")[: trainer.epoch]
        log.info("resuming %s after epoch %d of %d", out, trainer.epoch, trainer.total_epochs)
    log.info("training on %s in %s (%s)", trainer.device,
             str(trainer.dtype).removeprefix("torch."), _precision_reason(trainer))

    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    writer = RunWriter(out, trainer, rows)
    start = time.perf_counter()
    try:
        trainer.fit(data.tensors, callback=writer, progress=progress)
    except KeyboardInterrupt:
        raise Interrupted(_stopped(out, trainer, "interrupted")) from None
    except TrainingError as err:
        raise TrainingError(f"{err}; {_stopped(out, trainer, 'stopped')}") from None

    final = writer.final() | {"wall_seconds": time.perf_counter() - start}
    if dist.is_main():
        atomic_write(out / "metrics.json", json.dumps(final, indent=2) + "\n")
    return final


def _open_run(
    config: RunConfig | None, out: Path, resume: bool, force: bool
) -> tuple[RunConfig, dict[str, Any] | None]:
    """Check ``out``; when resuming, read its checkpoint. Returns the config and state."""
    check_out_dir(out, resume, force)
    state = None
    if resume:
        state, saved = load_checkpoint(out / CHECKPOINT)
        config = _resume_config(config, saved, out)
    if config is None:
        raise ConfigError("a config is needed unless resuming")
    return config, state


def _load_data(config: RunConfig, pipelined: bool, progress: bool) -> RunData:
    """The run's data: rank 0 loads first (and downloads once), then the other ranks.

    In a pipeline only rank 0 holds the data; the others get its shapes.
    """
    device = resolve_device(config.train.device)
    data = dist.on_main(lambda: load_run_data(config, device, progress))
    if pipelined:
        meta = dist.on_main(lambda: (data.in_features, data.num_classes), share=True)
        return RunData(share_data(data.tensors if data else None), *meta)
    return data if data is not None else load_run_data(config, device, progress)


def _precision_reason(trainer: Trainer) -> str:
    if trainer.config.train.precision != "auto":
        return "as asked"
    if trainer.dtype == torch.bfloat16:
        return "auto: this device multiplies bf16 natively; --precision fp32 to change"
    return "auto: no native bf16 matrix products on this device"


def _stopped(out: Path, trainer: Trainer, how: str) -> str:
    if trainer.epoch == 0:
        return f"{how} before the first epoch finished; nothing to resume"
    return (
        f"{how}; last good checkpoint {out / CHECKPOINT} (epoch {trainer.epoch}); "
        f"continue with: forwardforward train --resume --out {out}"
    )


def _resume_config(config: RunConfig | None, saved: dict[str, Any], out: Path) -> RunConfig:
    """The checkpoint's config; a differing one given by the caller is refused."""
    try:
        stored = RunConfig.from_dict(saved, source=str(out / CHECKPOINT))
    except ConfigError as err:
        raise CheckpointError(f"checkpoint config is invalid: {err}") from None
    if config is not None and config != stored:
        raise CheckpointError(
            f"checkpoint {out / CHECKPOINT} was made with a different config; resume with "
            "the same options (or only --resume --out), or start a new --out"
        )
    return stored


def _load_state(trainer: Trainer, state: dict[str, Any], out: Path) -> None:
    try:
        trainer.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {out / CHECKPOINT} does not fit this model: {first}"
        ) from None


def evaluate_run(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Reload a run's checkpoint and measure its test error and confusion matrix.

    Writes ``eval.json`` into the run folder and returns its dict: ``test_error``,
    ``confusion`` (rows: true label, columns: predicted), ``epoch``, ``samples``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist; pass the --out of a training run")
    state, saved = load_checkpoint(run_dir / CHECKPOINT)
    try:
        config = RunConfig.from_dict(saved, source=str(run_dir / CHECKPOINT))
    except ConfigError as err:
        raise CheckpointError(f"checkpoint config is invalid: {err}") from None

    data = load_run_data(config, resolve_device(config.train.device), progress)
    trainer = Trainer(config, data.in_features, data.num_classes)
    _load_state(trainer, state, run_dir)
    x, y = data.tensors["x_test"], data.tensors["y_test"]
    C = data.num_classes

    pred = trainer.predictions(x)  # (N,)
    confusion = torch.bincount(y * C + pred, minlength=C * C).view(C, C)  # (C, C)
    result = {
        "test_error": (pred != y).sum().item() / max(1, x.shape[0]),
        "confusion": confusion.tolist(),
        "epoch": trainer.epoch,
        "samples": x.shape[0],
        "predict": config.train.predict,
    }
    atomic_write(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result
