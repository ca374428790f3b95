"""The command line: ``forwardforward train | evaluate | identities``.

Every field of the run configuration is a flag of ``train`` (kebab-case of its name);
``--config`` reads a TOML file, or one of the bundled settings by name, and flags given
beside it override its values. Errors the user can fix are one line on stderr and exit
code 2; an interrupted run exits 130; a diverged run exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from forwardforward import distributed as dist
from forwardforward.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_toml
from forwardforward.distributed import DEFAULT_TIMEOUT
from forwardforward.errors import ConfigError, DistributedError, ForwardForwardError, TrainingError

log = logging.getLogger("forwardforward")

TABLES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        if message.endswith("expected one argument"):  # argparse takes -1e-3 for a flag
            message += "; write a negative number as --flag=-1e-3"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def bundled_configs() -> list[str]:
    """Names of the settings shipped with the package (``--config NAME``)."""
    folder = resources.files("forwardforward") / "configs"
    names = (p.name for p in folder.iterdir())
    return sorted(n.removesuffix(".toml") for n in names if n.endswith(".toml"))


def resolve_config_file(name: str) -> Path:
    """A TOML path, or the bundled setting called ``name``."""
    if Path(name).suffix == ".toml" or Path(name).exists():
        return Path(name)
    if name in bundled_configs():
        return Path(str(resources.files("forwardforward") / "configs" / f"{name}.toml"))
    known = ", ".join(bundled_configs())
    raise ConfigError(f"--config {name}: no such file or bundled setting; bundled: {known}")


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of widths, e.g. 2000,2000"
        ) from None
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def _add_field(group: argparse._ArgumentGroup, table: str, f: dataclasses.Field) -> None:
    """Add the flag of one config field, defaulting to None (= not given)."""
    flag = "--" + f.name.replace("_", "-")
    kind = typing.get_type_hints(TABLES[table])[f.name]
    help_text = f"(default: {f.default!r})"
    kw: dict[str, Any] = {"dest": f"{table}.{f.name}", "default": None, "help": help_text}
    if f.name == "layers":
        kw |= {"type": _parse_layers, "metavar": "W1,W2,..."}
    elif kind is bool:
        kw |= {"action": argparse.BooleanOptionalAction}
    elif typing.get_origin(kind) is Literal:
        kw |= {"choices": typing.get_args(kind)}
    else:
        args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        kw |= {"type": args[0]}
    if f.name == "dataset":
        from forwardforward.config import DATASETS

        kw |= {"choices": DATASETS}
    group.add_argument(flag, **kw)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Forward-Forward network",
                       description="Train a Forward-Forward network and write a run folder.")
    p.add_argument("--config", help="TOML file, or a bundled setting: "
                   + ", ".join(bundled_configs()))
    p.add_argument("--out", type=Path, help="run folder (default: runs/<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true", help="overwrite the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before it "
                   f"stops with an error (default: {DEFAULT_TIMEOUT:g})")
    for table, klass in TABLES.items():
        group = p.add_argument_group(table)
        for f in dataclasses.fields(klass):
            _add_field(group, table, f)
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig | None, bool]:
    """The run config from ``--config`` and flags; None when resuming with no options.

    Returns the config and whether any option set it.
    """
    overrides: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            table, name = key.split(".", 1)
            overrides[table][name] = value
    given = any(overrides.values()) or args.config is not None
    if args.resume and not given:
        return None, False
    base = load_toml(resolve_config_file(args.config)) if args.config else RunConfig()
    config = base.replace(**overrides)
    if config.data.data_dir is not None:  # so that resume and evaluate work from anywhere
        absolute = Path(config.data.data_dir).expanduser().absolute()
        config = config.replace(data={"data_dir": str(absolute)})
    return config, given


def run_train(args: argparse.Namespace) -> int:
    from forwardforward.runner import Interrupted, train_run

    config, _ = config_from_args(args)
    out = args.out
    if out is None:
        if args.resume:
            raise ConfigError("--resume needs --out: the folder of the run to continue")
        import time

        out = Path("runs") / f"{config.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        with dist.process_group(args.dist_timeout):
            if not dist.is_main():  # rank 0 speaks for the run
                logging.getLogger("forwardforward").setLevel(logging.WARNING)
            final = train_run(config, out, resume=args.resume, force=args.force,
                              progress=not args.no_progress and dist.is_main())
            main_rank = dist.is_main()
    except Interrupted as err:
        print(f"forwardforward: {_one_line(err)}", file=sys.stderr)
        return 130
    except (TrainingError, DistributedError) as err:
        print(f"forwardforward: error: {_one_line(err)}", file=sys.stderr)
        return 1
    if main_rank:
        _report(final, out)
    return 0


def _report(final: dict[str, Any], out: Path) -> None:
    err = final.get("test_error")
    line = f"test error {100 * err:.2f}%" if err is not None else "no evaluation"
    rate = final.get("train_samples_per_second") or 0.0
    print(f"{line} after {final['epochs']} epochs, {final['seconds']:.1f} s training "
          f"({rate:,.0f} samples/s); run folder: {out}")


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reload a run's checkpoint and measure its test error")
    p.add_argument("run_dir", type=Path, help="the --out folder of a training run")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's device "
                   "where available, else auto)")
    p.add_argument("--data-dir", help="folder of the data set's files, if they moved")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from forwardforward.runner import evaluate_run

    result = evaluate_run(args.run_dir, progress=not args.no_progress, device=args.device,
                          data_dir=args.data_dir)
    C = len(result["confusion"])
    print(f"test error {100 * result['test_error']:.2f}% on {result['samples']} images "
          f"(epoch {result['epoch']}, {result['predict']} prediction)")
    print("confusion matrix (rows: true label, columns: predicted)")
    print("      " + "".join(f"{c:>6}" for c in range(C)))
    for c, row in enumerate(result["confusion"]):
        print(f"{c:>6}" + "".join(f"{v:>6}" for v in row))
    print(f"wrote {args.run_dir / 'eval.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="forwardforward", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(sub)
    add_evaluate_parser(sub)

    from forwardforward import identities

    identities.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return code
    except ForwardForwardError as err:
        print(f"forwardforward: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forwardforward: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left, as `| head` does: no traceback
        with contextlib.suppress(OSError, ValueError):  # quiet the flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n"))

