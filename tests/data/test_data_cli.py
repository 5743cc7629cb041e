"""`nowcast-data convert|info|synthetic`: the commands as users run them."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from radar_files import write_odim

from nowcast.cli import data_main

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
BIN = Path(sys.executable).parent


def _odim_folder(folder: Path, n: int = 6) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        raw = rng.integers(0, 120, size=(16, 16)).astype(np.uint8)
        write_odim(folder / f"T_PAAH21_C_EUOC_{k:02d}.h5", raw, T0 + timedelta(minutes=5 * k))
    return folder


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        data_main(list(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_then_info(tmp_path, capsys):
    source = _odim_folder(tmp_path / "odim")
    out = tmp_path / "store.h5"
    code, stdout, _ = _run(
        capsys, "convert", "format=odim", f"input={source}/*.h5", f"output={out}",
        "crop.height=12", "crop.width=12", "downsample=2",
    )  # fmt: skip
    assert code == 0
    assert f"Wrote {out}: 6 frames of 6 x 6 pixels, every 5 min" in stdout
    code, stdout, _ = _run(capsys, "info", f"input={out}")
    assert code == 0
    for expected in (
        "frames      6 of 6 x 6 pixels of 4 x 4 km, every 5 min",
        "time        2024-06-01T12:00:00Z to 2024-06-01T12:25:00Z; no gaps",
        "DBZH in dBZ",
        "downsample = 2",
        ">= 1 mm/h (23.0 dBZ)",
    ):
        assert expected in stdout


def test_info_flags_clutter_that_convert_max_rain_mmh_masks(tmp_path, capsys):
    source = tmp_path / "odim"
    source.mkdir()
    raw = np.full((8, 8), 144, np.uint8)  # 40 dBZ
    raw[0, 0] = 244  # 90 dBZ: clutter
    for k in range(3):
        write_odim(source / f"comp_{k}.h5", raw, T0 + timedelta(minutes=5 * k))
    out = tmp_path / "store.h5"
    for cap, flagged in (("null", True), ("150", False)):
        arguments = (f"input={source}", f"output={out}", "overwrite=true", f"max_rain_mmh={cap}")
        assert _run(capsys, "convert", "format=odim", *arguments)[0] == 0
        code, stdout, _ = _run(capsys, "info", f"input={out}")
        assert code == 0 and ("likely clutter; convert with max_rain_mmh=150" in stdout) == flagged


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synthetic"], "nowcast: error: nowcast-data synthetic needs output=; usage: "),
        (["convert", "format=odim"], "nowcast: error: nowcast-data convert needs input=, output="),
        (["info"], "nowcast: error: nowcast-data info needs input=; usage: nowcast-data info"),
    ],
)
def test_missing_arguments_are_one_line(capsys, argv, message):
    code, _, stderr = _run(capsys, *argv)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith(message)


def test_bad_input_is_one_line_without_traceback(tmp_path):
    source = _odim_folder(tmp_path / "odim", n=3)
    (source / "T_PAAH21_C_EUOC_01.h5").write_text("not radar")
    out = tmp_path / "store.h5"
    done = subprocess.run(
        [str(BIN / "nowcast-data"), "convert", "format=odim", f"input={source}", f"output={out}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"nowcast: error: {source}/T_PAAH21_C_EUOC_01.h5 is not an HDF5 file; check the input= "
        "files and format="
    )
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odim"]


def test_help_lists_every_command(capsys):
    code, stdout, _ = _run(capsys, "--help")
    assert code == 0
    commands = [line.split("nowcast-data ")[1].split()[0] for line in stdout.splitlines()]
    assert commands == ["synthetic", "convert", "info"]


def test_typo_in_a_key_is_one_line(capsys):
    code, _, stderr = _run(
        capsys, "convert", "format=odim", "input=a", "output=b", "crop.hieght=8"
    )
    assert code == 2
    assert stderr == (
        "nowcast: error: Could not override 'crop.hieght': Key 'hieght' not in 'CropConfig' "
        "(usage: nowcast-data --help)\n"
    )
