"""``forwardforward identities``: the measured table, the plot, and bad --plot paths."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forwardforward import identities
from forwardforward.cli import main
from forwardforward.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def rows() -> list[identities.IdentityRow]:
    return identities.measure_identities()


def test_every_identity_is_measured_in_float32_and_float64(rows):
    assert len(rows) == 2 * len(identities.IDENTITIES)
    assert {r.dtype for r in rows} == {"float32", "float64"}
    assert len({r.identity for r in rows}) >= 9


def test_our_side_of_every_identity_is_finite_and_within_2_5_ulp(rows):
    for r in rows:
        assert r.ours_bad == 0, r
        assert r.ours_ulp <= 2.5, r


def test_textbook_forms_overflow_where_ours_do_not(rows):
    by = {(r.naive, r.dtype): r for r in rows}
    overflowing = [
        "log(1 + exp(x))",
        "grad of log(1 + exp(x))",
        "log(sigmoid(x))",
        "log(1 - sigmoid(x))",
        "log(exp(y) - 1)",
        "-log(softmax((0, z))[1])",
        "F.soft_margin_loss",
        "log(1 + exp(g - theta))",
    ]
    for name in overflowing:
        for dtype in ("float32", "float64"):
            assert by[name, dtype].naive_bad > 0, (name, dtype)

    # float32's exp overflows just past 88.72
    assert abs(by["log(1 + exp(x))", "float32"].naive_first_bad) == 89.0
    assert by["log(1 + exp(g - theta))", "float32"].naive_first_bad > 90.7
    # finite but wrong: BCE clamps its log at -100, threshold 20 drops 7.6e-10 at x = 21
    assert by["F.binary_cross_entropy", "float32"].naive_ulp > 1e6
    assert by["F.softplus, threshold 20", "float64"].naive_ulp > 1e5


def test_standard_grid_reaches_1e4_and_holds_distinct_numbers_of_the_dtype():
    x = identities.standard_grid(torch.float32)
    assert x.dtype == torch.float32
    assert x.min().item() == -1e4 and x.max().item() == 1e4
    assert (x == 0).any() and len(torch.unique(x)) == len(x)


def test_format_table_has_a_header_and_one_line_per_row(rows):
    lines = identities.format_table(rows).splitlines()
    assert len(lines) == len(rows) + 2
    assert "ours ulp" in lines[0] and "textbook form" in lines[0]


def test_command_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "zeta.png"
    assert main(["identities", "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "zeta(x) - zeta(-x) = x" in printed and "float64" in printed
    assert f"wrote {out}" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    "make_path,message",
    [
        (lambda d: d / "missing" / "zeta.png", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: d / "zeta.notanimage", "unknown image type"),
    ],
)
def test_bad_plot_path_is_a_config_error_and_exit_code_2(tmp_path, capsys, make_path, message):
    path = make_path(tmp_path)
    with pytest.raises(ConfigError, match=message):
        identities.run(argparse.Namespace(plot=str(path), device="cpu"))

    assert main(["identities", "--plot", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="device"):
        identities.run(argparse.Namespace(plot=None, device="warp-drive"))


def test_python_m_forwardforward_identities_runs_as_a_subprocess():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "forwardforward", "identities"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "softplus_loss" in done.stdout
