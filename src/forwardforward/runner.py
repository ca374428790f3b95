"""A training run on disk: its folder, output files, checkpoints and resumption.

A run folder holds ``config.json`` (the resolved config), ``metrics.csv`` (a row per
epoch), ``metrics.json`` (the final figures), ``model.safetensors`` (the checkpoint of
the last finished epoch, with optimizer state and config) and ``curves.png``. Every file
is replaced atomically after each epoch, so an interrupted run keeps all finished epochs.

After each epoch ``metrics.csv`` is written before the checkpoint, so it never holds
fewer rows than the checkpoint has epochs; a resumed run drops any rows past the
checkpoint's epoch. SIGINT is held back while these files are written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forwardforward import distributed as dist
from forwardforward.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from forwardforward.config import RunConfig
from forwardforward.data import load_dataset
from forwardforward.errors import CheckpointError, ConfigError, DataError, TrainingError
from forwardforward.guard import is_out_of_memory, memory_error, run_lock, sigint_held, writing
from forwardforward.pipeline import PipelineTrainer, check_pipeline, share_data
from forwardforward.plots import plot_curves
from forwardforward.train import EpochResult, Trainer, resolve_device

log = logging.getLogger(__name__)

CHECKPOINT = "model.safetensors"
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", CHECKPOINT, "curves.png")
PLOT_EVERY = 30.0  # seconds between redraws of curves.png (also drawn at the end)


class Interrupted(Exception):
    """Training was stopped by SIGINT; the last finished epoch is saved."""


@dataclass
class RunData:
    """A data set's tensors on the training device."""

    tensors: dict[str, torch.Tensor]
    in_features: int
    num_classes: int
    image_shape: tuple[int, int] | None = None  # (H, W); needed by unsupervised mode


def load_run_data(config: RunConfig, device: torch.device, progress: bool = True) -> RunData:
    """Load the configured data set, apply its limits and move it to ``device`` once."""
    dc = config.data
    ds = load_dataset(dc.dataset, dc.data_dir, progress=progress)
    D, C = ds.x_train.shape[1], ds.num_classes
    if D <= C or len(ds.x_train) == 0:
        raise DataError(f"{dc.dataset} in {dc.data_dir}: {len(ds.x_train)} training images of "
                        f"{D} pixels; training needs some, each with more than the {C} label "
                        "pixels")
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
    return RunData(tensors, ds.x_train.shape[1], ds.num_classes, ds.image_shape)


def check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse an ``--out`` that cannot hold a run, or a run folder that would be overwritten.

    Raises:
        ConfigError: ``out`` is a file or lies under one, or ``--resume`` finds no
            checkpoint there, or ``out`` holds a run and neither ``--resume`` nor
            ``--force`` was given.
    """
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: pick one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a folder path")
    parent = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ConfigError(f"--out {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: no permission to write in {parent}")

    existing = [name for name in RUN_FILES if (out / name).exists()]
    if resume and not (out / CHECKPOINT).exists():
        fix = "start over with --force" if existing else "start without --resume"
        raise ConfigError(
            f"--resume: {out} holds no checkpoint {CHECKPOINT} (no epoch of a run finished "
            f"there); {fix}"
        )
    if existing and not resume and not force:
        raise ConfigError(
            f"--out {out} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or --force to overwrite it"
        )


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv``, numbers parsed, empty cells as None."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
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
    """Writes a run's files after each epoch (rank 0 only when distributed).

    ``metrics.csv`` first, then the checkpoint; ``curves.png`` at most every
    :data:`PLOT_EVERY` seconds and after the last epoch. SIGINT waits until all are written.
    """

    def __init__(self, out: Path, trainer: Trainer, rows: list[dict[str, Any]]) -> None:
        self.out, self.trainer, self.rows = out, trainer, rows
        self.saved_epoch = trainer.epoch  # epoch of the checkpoint on disk
        self.plotted = len(rows)  # rows drawn in curves.png
        self.last_plot = time.monotonic()

    def __call__(self, result: EpochResult) -> None:
        state = self.trainer.state_dict()  # on every rank: a pipeline gathers it to rank 0
        if not dist.is_main():
            return
        with sigint_held(), writing(self.out):
            self.rows.append(result.row())
            write_metrics_csv(self.out / "metrics.csv", self.rows)
            state = state | {"device": self.trainer.device.type}
            save_checkpoint(self.out / CHECKPOINT, state, self.trainer.config.to_dict())
            self.saved_epoch = result.epoch

            last = result.epoch == self.trainer.total_epochs
            if last or time.monotonic() - self.last_plot >= PLOT_EVERY:
                self.plot()

    def plot(self) -> None:
        """Redraw ``curves.png`` from the rows, if any are new (atomically).

        A failure only warns: the picture matters less than the run.
        """
        if not dist.is_main() or self.plotted == len(self.rows):
            return
        tmp = self.out / ".curves.tmp.png"
        try:
            plot_curves(self.rows, tmp)
            os.replace(tmp, self.out / "curves.png")
        except Exception as err:  # matplotlib raises many kinds
            log.warning("could not draw %s: %s", self.out / "curves.png", err)
            tmp.unlink(missing_ok=True)
        self.plotted, self.last_plot = len(self.rows), time.monotonic()

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
    equal the checkpoint's. With ``force``, the files of an earlier run in ``out`` are
    deleted once the data has loaded.

    Raises:
        ConfigError: ``out`` is unusable.
        CheckpointError: the checkpoint or ``metrics.csv`` to resume from is unusable, its
            config differs, or a run file cannot be written (finished epochs are kept).
        TrainingError: a loss, goodness or weight became non-finite (finished epochs are
            kept).
        Interrupted: SIGINT arrived (finished epochs are kept).
    """
    out = Path(out)
    config, state = dist.on_main(lambda: _open_run(config, out, resume, force), share=True)
    pipelined = config.train.parallel == "pipeline" and dist.world_size() > 1
    if pipelined:
        check_pipeline(config, dist.world_size())
    data = _load_data(config, pipelined, progress)
    klass = PipelineTrainer if pipelined else Trainer
    try:
        trainer = klass(config, data.in_features, data.num_classes, data.image_shape)
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise _memory_error(err, config) from None
        raise
    rows: list[dict[str, Any]] = []
    if resume:
        _load_state(trainer, state, out / CHECKPOINT)
        rows = _resume_rows(out / "metrics.csv", trainer.epoch)
        log.info("resuming %s after epoch %d of %d%s", out, trainer.epoch, trainer.total_epochs,
                 "" if trainer.epoch < trainer.total_epochs else ": finished, nothing to train")
    log.info("training on %s in %s (%s)", trainer.device,
             str(trainer.dtype).removeprefix("torch."), _precision_reason(trainer))

    if not dist.is_main():
        return _train(trainer, data, out, rows, progress)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        with writing(out):
            if force:
                for name in (*RUN_FILES, "eval.json"):
                    (out / name).unlink(missing_ok=True)
            atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        return _train(trainer, data, out, rows, progress)


def _train(
    trainer: Trainer, data: RunData, out: Path, rows: list[dict[str, Any]], progress: bool
) -> dict[str, Any]:
    """Fit, writing each epoch; a stop says what is kept. Returns ``metrics.json``'s dict."""
    config = trainer.config
    writer = RunWriter(out, trainer, rows)
    start = time.perf_counter()
    try:
        trainer.fit(data.tensors, callback=writer, progress=progress)
    except KeyboardInterrupt:
        writer.plot()
        raise Interrupted(f"interrupted; {_kept(out, writer.saved_epoch, resumable=True)}") \
            from None
    except TrainingError as err:
        writer.plot()
        tc = config.train
        lower = f"--lr (now {tc.lr:g})"
        if tc.predict == "softmax":
            lower += f" or --readout-lr (now {tc.readout_lr:g})"
        raise TrainingError(
            f"{err}; {_kept(out, writer.saved_epoch)}; lower {lower} and start a new run"
        ) from None
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {_kept(out, writer.saved_epoch)}") from None
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise _memory_error(err, config, f"; {_kept(out, writer.saved_epoch)}") from None
        raise

    final = writer.final() | {"wall_seconds": time.perf_counter() - start}
    if dist.is_main():
        with writing(out):
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
        sizes = (data.in_features, data.num_classes, data.image_shape) if data else None
        return RunData(share_data(data.tensors if data else None), *dist.broadcast_object(sizes))
    return data if data is not None else load_run_data(config, device, progress)


def _precision_reason(trainer: Trainer) -> str:
    if trainer.config.train.precision != "auto":
        return "as asked"
    if trainer.dtype == torch.bfloat16:
        return "auto: this device multiplies bf16 natively; --precision fp32 to change"
    return "auto: no native bf16 matrix products on this device"


def _memory_error(err: RuntimeError, config: RunConfig, kept: str = "") -> ConfigError:
    device = resolve_device(config.train.device)
    message = memory_error(err, device, config.model.layers, config.train.batch_size)
    return ConfigError(f"{message}{kept}")


def _kept(out: Path, saved_epoch: int, resumable: bool = False) -> str:
    """What a stopped run leaves: its last checkpoint, and how to continue."""
    if saved_epoch == 0:
        return "no epoch had finished, so nothing was saved"
    kept = (f"{saved_epoch} finished epoch(s) kept, last good checkpoint {out / CHECKPOINT} "
            f"(epoch {saved_epoch})")
    if resumable:
        return f"{kept}; continue with: forwardforward train --resume --out {out}"
    return kept


def _stored_config(saved: dict[str, Any], path: Path) -> RunConfig:
    try:
        return RunConfig.from_dict(saved, source=str(path))
    except ConfigError as err:
        raise CheckpointError(f"checkpoint config is invalid: {err}") from None


def _resume_config(config: RunConfig | None, saved: dict[str, Any], out: Path) -> RunConfig:
    """The checkpoint's config; a differing one given by the caller is refused."""
    stored = _stored_config(saved, out / CHECKPOINT)
    if config is None or config == stored:
        return stored

    before, after = stored.to_dict(), config.to_dict()
    diffs = [
        f"--{key.replace('_', '-')} {before[t][key]!r} there, {after[t][key]!r} now"
        for t in before for key in before[t] if before[t][key] != after[t][key]
    ]
    raise CheckpointError(
        f"checkpoint {out / CHECKPOINT} was made with other options ({'; '.join(diffs)}); "
        f"resume with only --resume --out {out}, or start a new --out"
    )


def _resume_rows(path: Path, epoch: int) -> list[dict[str, Any]]:
    """The rows of ``metrics.csv`` up to the checkpoint's ``epoch``; later ones are dropped."""
    try:
        rows = read_metrics_csv(path)
    except (ValueError, KeyError, TypeError, csv.Error, OSError) as err:
        raise CheckpointError(f"--resume: {path} is damaged ({err}); start over with --force") \
            from None
    if len(rows) < epoch or [r["epoch"] for r in rows[:epoch]] != list(range(1, epoch + 1)):
        found = f"has {len(rows)} row(s)" if path.is_file() else "is missing"
        raise CheckpointError(
            f"--resume: {path} {found}, but the checkpoint is at epoch {epoch}; restore it, "
            "or start over with --force"
        )
    return rows[:epoch]


def _fit_error(err: Exception, path: Path, trainer: Trainer) -> CheckpointError:
    """A load failure as one line, with the widths the model expects."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    detail = " ".join(lines)
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    return CheckpointError(
        f"checkpoint {path} does not fit this model and data ({detail}); this data set has "
        f"{trainer.net.layers[0].linear.in_features} features per image and the config "
        f"asks for layers {','.join(map(str, trainer.config.model.layers))}"
    )


_LOAD_ERRORS = (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError)


def _load_state(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Load the whole training state (weights, optimizers, generator, epoch) to resume."""
    device = state.get("device") if isinstance(state, dict) else None
    if device not in (None, trainer.device.type):
        raise CheckpointError(
            f"checkpoint {path} was written on {device}, this run is on {trainer.device.type}: "
            "an exact resume needs the same kind of device; evaluate it, or start a new --out"
        )
    try:
        trainer.load_state_dict(state)
        _check_optimizer_shapes(trainer)
    except _LOAD_ERRORS as err:
        raise _fit_error(err, path, trainer) from None


def _check_optimizer_shapes(trainer: Trainer) -> None:
    """torch loads optimizer state without comparing shapes; a mismatch would fail later."""
    for opt in (*trainer.optimizers, trainer.readout_opt):
        for group in opt.param_groups:
            for p in group["params"]:
                for name, t in opt.state.get(p, {}).items():
                    if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape != p.shape:
                        raise ValueError(f"optimizer state {name} of shape {tuple(t.shape)} "
                                         f"for a parameter of shape {tuple(p.shape)}")


def evaluate_run(
    run_dir: str | Path, progress: bool = True, *, device: str | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Reload a run's checkpoint and measure its test error and confusion matrix.

    Writes ``eval.json`` into the run folder and returns its dict: ``test_error``,
    ``confusion`` (rows: true label, columns: predicted), ``epoch``, ``samples``.

    Args:
        run_dir: the ``--out`` folder of a training run.
        device: where to evaluate; default the run's device, or ``auto`` when that is
            not available here (a GPU run evaluated on a laptop).
        data_dir: where the data set's files are, if not where the run found them.

    Raises:
        ConfigError: ``run_dir`` is not a folder.
        CheckpointError: no usable checkpoint there, or it does not fit the data.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise ConfigError(f"run folder {run_dir} {what}; pass the --out folder of a training run")
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{run_dir} holds no checkpoint {CHECKPOINT}; pass the --out "
                              "folder of a run that finished at least one epoch")
    state, saved = load_checkpoint(path)
    config = _eval_config(_stored_config(saved, path), device, data_dir)

    data = load_run_data(config, resolve_device(config.train.device), progress)
    trainer = Trainer(config, data.in_features, data.num_classes, data.image_shape)
    try:  # the weights only: the optimizer and generator state belong to the device trained on
        trainer.net.load_state_dict(state["net"])
        trainer.readout.load_state_dict(state["readout"])
        trainer.epoch = int(state["epoch"])
    except _LOAD_ERRORS as err:
        raise _fit_error(err, path, trainer) from None
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
    with writing(run_dir):
        atomic_write(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def _eval_config(config: RunConfig, device: str | None, data_dir: str | Path | None) -> RunConfig:
    """The run's config with the device and data folder of this evaluation."""
    if device is None:
        try:
            resolve_device(config.train.device)
            device = config.train.device
        except ConfigError:
            log.info("the run's device %s is not available here; evaluating on auto",
                     config.train.device)
            device = "auto"
    data = {"data_dir": str(data_dir)} if data_dir is not None else {}
    return config.replace(train={"device": device}, data=data)
