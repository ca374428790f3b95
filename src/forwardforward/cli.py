"""The command line: ``forwardforward train | evaluate | identities``."""

from __future__ import annotations

import argparse
import logging
import sys

from forwardforward.errors import ForwardForwardError

log = logging.getLogger("forwardforward")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forwardforward", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from forwardforward import identities

    identities.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ForwardForwardError as err:
        print(f"forwardforward: error: {err}", file=sys.stderr)
        return 2
