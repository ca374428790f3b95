"""Run configuration: frozen dataclasses, one per concern, validated on construction.

A run is described by a :class:`RunConfig` holding a :class:`DataConfig`, a
:class:`ModelConfig` and a :class:`TrainConfig`. The command line maps its flags
(kebab-case of the field names) onto these fields, a TOML file may set any of them in
tables ``[data]``, ``[model]`` and ``[train]``, and the resolved configuration is saved
beside every run as ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from forwardforward.errors import ConfigError

DATASETS = ("digits", "mnist", "fashion-mnist")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # one of DATASETS
    data_dir: str | None = None  # folder of the IDX files; None: env var, then cache
    limit_train: int | None = None  # use only the first N training samples
    limit_test: int | None = None  # use only the first N test samples
    train_eval_size: int = 10_000  # fixed training subset on which train error is measured

    def __post_init__(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None:
                _positive(name.replace("_", "-"), value)
        _positive("train-eval-size", self.train_eval_size)


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple[int, ...] = (500, 500)  # hidden widths, input to output
    # supervised: label written into the input; unsupervised: no label, hybrid negatives
    mode: Literal["supervised", "unsupervised"] = "supervised"
    goodness: Literal["sum", "mean"] = "sum"  # g = sum or mean of squared activities
    threshold: float = 1.0  # theta; per unit of width when threshold_scale == "width"
    threshold_scale: Literal["width", "fixed"] = "width"  # theta * width, or theta as is
    norm_scale: Literal["sqrt-dim", "unit"] = "sqrt-dim"  # length of a layer's input
    loss: Literal["softplus", "symba"] = "softplus"  # ff_loss kind
    alpha: float = 4.0  # SymBa's margin scale
    peer_norm: float = 0.0  # weight of the peer-normalization penalty (0: off)
    peer_momentum: float = 0.9  # in [0, 1): momentum of each unit's running mean activity
    label_value: float = 1.0  # value written into the label pixel
    score_layers: Literal["skip-first", "all"] = "skip-first"  # goodness summed to predict

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(w) for w in self.layers))
        if not self.layers:
            raise ConfigError("layers must name at least one layer width, e.g. 500,500")
        for width in self.layers:
            if width <= 0:
                raise ConfigError(f"layer widths must be positive integers, got {width}")
        _choice("mode", self.mode, ("supervised", "unsupervised"))
        _choice("goodness", self.goodness, ("sum", "mean"))
        _choice("threshold-scale", self.threshold_scale, ("width", "fixed"))
        _choice("norm-scale", self.norm_scale, ("sqrt-dim", "unit"))
        _choice("loss", self.loss, ("softplus", "symba"))
        if not (isinstance(self.threshold, int | float) and math.isfinite(self.threshold)):
            raise ConfigError(f"threshold must be a finite number, got {self.threshold!r}")
        _positive("alpha", self.alpha)
        if not (math.isfinite(self.peer_norm) and self.peer_norm >= 0):
            raise ConfigError(f"peer-norm must be >= 0, got {self.peer_norm!r}")
        if not (isinstance(self.peer_momentum, int | float) and 0 <= self.peer_momentum < 1):
            raise ConfigError(f"peer-momentum must be in [0, 1), got {self.peer_momentum!r}")
        _positive("label-value", self.label_value)
        _choice("score-layers", self.score_layers, ("skip-first", "all"))

    def theta(self, width: int) -> float:
        """The threshold of a layer of ``width`` units."""
        return self.threshold * width if self.threshold_scale == "width" else self.threshold


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60  # passes over the training set (per layer when sequential)
    batch_size: int = 32  # examples per step (each gives one positive, one negative)
    lr: float = 3e-3  # Adam learning rate of the FF layers
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay to 0 over epochs
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay
    readout_lr: float = 1e-2  # learning rate of the softmax read-out
    schedule: Literal["simultaneous", "sequential"] = "simultaneous"
    # the wrong label of a negative (supervised mode): uniform, or sampled from the model
    negatives: Literal["random", "hard"] = "random"
    mask_blurs: int = 10  # 0..13: blurs of a hybrid negative's mask (unsupervised mode)
    predict: Literal["goodness", "softmax"] = "goodness"  # how test error is measured
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where fast
    eval_every: int = 1  # measure errors every N epochs (and always after the last)
    compile: bool = False  # torch.compile the layer step
    parallel: Literal["data", "pipeline"] = "data"  # how torchrun's ranks share the work

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs <= 0:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"batch-size must be a positive integer, got {self.batch_size!r}")
        _positive("lr", self.lr)
        _positive("readout-lr", self.readout_lr)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight-decay must be >= 0, got {self.weight_decay!r}")
        _choice("lr-schedule", self.lr_schedule, ("cosine", "linear", "constant"))
        _choice("schedule", self.schedule, ("simultaneous", "sequential"))
        _choice("negatives", self.negatives, ("random", "hard"))
        if not (isinstance(self.mask_blurs, int) and 0 <= self.mask_blurs <= 13):
            raise ConfigError(f"mask-blurs must be an integer in 0..13, got {self.mask_blurs!r}")
        _choice("predict", self.predict, ("goodness", "softmax"))
        _choice("precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("parallel", self.parallel, ("data", "pipeline"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if not isinstance(self.eval_every, int) or self.eval_every <= 0:
            raise ConfigError(f"eval-every must be a positive integer, got {self.eval_every!r}")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.mode == "unsupervised":
            if self.train.negatives != "random":
                raise ConfigError(
                    f"negatives={self.train.negatives!r} needs labels; unsupervised mode makes "
                    "hybrid images instead: leave --negatives at random"
                )
            if self.train.predict != "softmax":
                raise ConfigError(
                    "unsupervised mode writes no label, so it cannot predict by goodness; "
                    "add --predict softmax (a linear read-out of the last three layers)"
                )
            if self.train.batch_size < 2:
                raise ConfigError("unsupervised mode mixes pairs of images: batch-size >= 2")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = dataclasses.asdict(self)
        out["model"]["layers"] = list(self.model.layers)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        """Build a config from nested tables, refusing unknown tables and keys."""
        parts = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = set(raw) - set(parts)
        if unknown:
            raise ConfigError(f"{source}: unknown table(s) {sorted(unknown)}; use {list(parts)}")
        built = {}
        for name, klass in parts.items():
            table = raw.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [{name}] must be a table")
            known = {f.name for f in fields(klass)}
            bad = set(table) - known
            if bad:
                raise ConfigError(
                    f"{source}: unknown key(s) {sorted(bad)} in [{name}]; known: {sorted(known)}"
                )
            hints = typing.get_type_hints(klass)
            for key, value in table.items():
                if not _has_type(value, hints[key]):
                    raise ConfigError(f"{source}: [{name}] {key} must be {_type_name(hints[key])}"
                                      f", got {value!r}")
            try:
                built[name] = klass(**table)
            except (TypeError, ConfigError) as err:
                raise ConfigError(f"{source}: [{name}] {err}") from None
        return cls(**built)

    def replace(self, **tables: dict[str, Any]) -> RunConfig:
        """A copy with the given fields of each table replaced."""
        new = {n: dataclasses.replace(getattr(self, n), **v) for n, v in tables.items() if v}
        return dataclasses.replace(self, **new)


def _has_type(value: Any, kind: Any) -> bool:
    """Whether a TOML or JSON value fits a field's annotation (choices are checked later)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is types.UnionType:
        return any(_has_type(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_has_type(v, args[0]) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind in (str, type(None)):
        return isinstance(value, kind)
    return True


def _type_name(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if typing.get_origin(kind) is types.UnionType:
        return " or ".join(_type_name(a) for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is tuple:
        return "a list of integers"
    return names.get(kind, str(kind))


def load_toml(path: str | Path) -> RunConfig:
    """Read a run configuration from a TOML file with ``[data]``, ``[model]``, ``[train]``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist or is not a file")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    return RunConfig.from_dict(raw, source=str(path))
