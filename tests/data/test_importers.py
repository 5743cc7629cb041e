"""Formats read through pysteps' importers (FMI PGM, MeteoSwiss GIF, BoM netCDF, any importer by
name), on tiny files of the real layouts: units to dBZ, no data apart from no echo, times from
the files and their names, the grid, the missing-extra message, and the ODIM pixel size from
the corners."""

from __future__ import annotations

import importlib.util
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomllib
from omegaconf import OmegaConf
from radar_files import (
    ODIM_PROJDEF,
    write_bom_netcdf,
    write_fmi_pgm,
    write_knmi,
    write_mch_gif,
    write_odim,
)

from nowcast.cli import data_main
from nowcast.config import ConvertCommandConfig, PredictConfig
from nowcast.data.convert import convert
from nowcast.data.importers import FORMAT_IMPORTERS, name_time
from nowcast.data.sources import FORMATS_EXTRA, SourceError
from nowcast.data.store import Store
from nowcast.units import rain_to_dbz

T0 = datetime(2016, 9, 28, 14, 45, tzinfo=timezone.utc)
ZR = {"zr_a": 200.0, "zr_b": 1.6}
FLOOR = -32.0  # what the store reads no echo as
HALF_STEP = 0.25  # the store rounds dBZ to its 0.5 dB steps


def _config(**options):
    return OmegaConf.structured(ConvertCommandConfig(**options))


def _convert(fmt: str, folder: Path, tmp_path: Path, **options) -> Store:
    output = tmp_path / "store.h5"
    return Store(
        convert(_config(format=fmt, input=str(folder), output=str(output), **options)).path
    )


def _stored_like(dbz: np.ndarray) -> np.ndarray:
    """dBZ as a store reads them back: no echo and anything under the floor at the floor."""
    return np.where(np.isnan(dbz), np.nan, np.maximum(dbz, FLOOR))


def _assert_store_frames(store: Store, expected_dbz: list[np.ndarray]) -> None:
    frames = store.read(0, len(store))
    for frame, expected in zip(frames, expected_dbz, strict=True):
        expected = _stored_like(expected)
        np.testing.assert_array_equal(np.isnan(frame), np.isnan(expected))  # no data
        np.testing.assert_array_equal(frame == FLOOR, expected < FLOOR + HALF_STEP)  # no echo
        np.testing.assert_allclose(frame, expected, atol=HALF_STEP + 1e-6)


# ----- FMI: gzipped PGM, reflectivity in dBZ -----------------------------------------------------

FMI_RAW = np.array([[255, 255, 0, 64], [0, 100, 129, 255], [1, 64, 0, 140]], np.uint8)


def _fmi_folder(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    for k in range(count):
        when = T0 + timedelta(minutes=5 * k)
        name = f"{when:%Y%m%d%H%M}_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
        write_fmi_pgm(folder / name, np.roll(FMI_RAW, k, axis=1), when)
    (folder / "SHA256SUMS").write_text("not a radar file\n")  # left out: not .pgm.gz
    return folder


def test_fmi_pgm_folder_keeps_dbz_no_data_and_the_grid(tmp_path):
    pytest.importorskip("pyproj")
    store = _convert("fmi", _fmi_folder(tmp_path / "fmi"), tmp_path)
    assert store.times.tolist() == [
        int((T0 + timedelta(minutes=5 * k)).timestamp()) for k in (0, 1, 2)
    ]
    raws = [np.roll(FMI_RAW, k, axis=1) for k in range(3)]
    # pysteps: dBZ = (raw - 64) / 2, 255 no data, the lowest value (raw 0, -32 dBZ) no echo.
    _assert_store_frames(store, [np.where(r == 255, np.nan, (r - 64.0) / 2) for r in raws])
    grid = store.grid
    assert grid["projdef"].startswith("+proj=stere") and "+lon_0=25E" in grid["projdef"]
    assert (grid["xscale"], grid["yscale"]) == (999.674053, 999.62859)
    assert (grid["xsize"], grid["ysize"]) == (4, 3)
    assert store.minutes_per_frame == 5.0


def test_fmi_time_comes_from_the_header_before_the_name(tmp_path):
    pytest.importorskip("pyproj")
    folder = tmp_path / "fmi"
    folder.mkdir()
    for k in range(2):  # names one hour off: the header's obstime wins
        when = T0 + timedelta(minutes=5 * k)
        write_fmi_pgm(folder / f"{when + timedelta(hours=1):%Y%m%d%H%M}_fmi.pgm.gz", FMI_RAW, when)
    assert _convert("fmi", folder, tmp_path).times[0] == int(T0.timestamp())


# ----- MeteoSwiss: palette GIF, 5-minute accumulation in mm --------------------------------------

MCH_RAW = np.array([[255, 255, 0, 1], [2, 71, 100, 251], [150, 0, 255, 30]], np.uint8)


def _mch_mm(raw: np.ndarray) -> np.ndarray:
    """pysteps' AQC lookup table: mm in 5 minutes; 0-1 and 251-254 no rain, 255 no data."""
    mm = (10.0 ** ((raw - 71.5) / 20.0) / 316.0) ** (1.0 / 1.5)
    mm[(raw < 2) | ((raw > 250) & (raw < 255))] = 0.0
    return np.where(raw == 255, np.nan, mm)


def _mch_folder(folder: Path, *, comments: bool = True) -> Path:
    folder.mkdir()
    for k in range(3):
        when = T0 + timedelta(minutes=5 * k)
        name = f"AQC{when:%y%j%H%M}F_00005.801.gif"
        write_mch_gif(folder / name, np.roll(MCH_RAW, k, axis=0), when if comments else None)
    return folder


@pytest.mark.parametrize("comments", [True, False], ids=["time-in-comment", "time-in-name"])
def test_mch_gif_accumulation_becomes_dbz_through_the_stores_zr(tmp_path, comments):
    pytest.importorskip("PIL")
    store = _convert("mch", _mch_folder(tmp_path / "mch", comments=comments), tmp_path)
    assert store.times[0] == int(T0.timestamp()) and len(store) == 3
    assert store.zr == (ZR["zr_a"], ZR["zr_b"])  # the store's, not MeteoSwiss's 316/1.5
    expected = [rain_to_dbz(_mch_mm(np.roll(MCH_RAW, k, axis=0)) * 12.0) for k in range(3)]
    _assert_store_frames(store, expected)  # 0 mm: -inf dBZ, no echo; 255: no data
    grid = store.grid
    assert grid["projdef"].startswith("+proj=somerc") and grid["xscale"] == 1000.0
    assert (grid["x1"], grid["y2"]) == (255000.0, 480000.0)


def test_mch_gif_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("PIL")
    folder = _mch_folder(tmp_path / "mch")
    output = tmp_path / "store.h5"
    data_main(["convert", "format=mch", f"input={folder}", f"output={output}"])
    assert f"Wrote {output}: 3 frames of 3 x 4 pixels, every 5 min" in capsys.readouterr().out


# ----- BoM: netCDF, 10-minute accumulation in mm -------------------------------------------------

BOM_T0 = datetime(2020, 10, 31, 0, 0, tzinfo=timezone.utc)  # on the 10-minute clock
BOM_RAW = np.array([[-1, 0, 1, 2], [0, 40, 100, -1], [7, 0, 0, 20]], np.int16)  # 0.05 mm


def _bom_folder(folder: Path, *, valid_time: bool = True) -> Path:
    """Three files of 10-minute accumulations named as BoM's, 66_20201031_000000.prcp-c10.nc."""
    folder.mkdir()
    for k in range(3):
        end = BOM_T0 + timedelta(minutes=10 * k)
        name = f"66_{end:%Y%m%d_%H%M%S}.prcp-c10.nc"
        write_bom_netcdf(folder / name, np.roll(BOM_RAW, k, axis=1), end, valid_time=valid_time)
    return folder


def test_bom_netcdf_accumulation_over_its_own_period(tmp_path):
    pytest.importorskip("netCDF4")
    store = _convert("bom", _bom_folder(tmp_path / "bom"), tmp_path)
    assert store.minutes_per_frame == 10.0 and store.times[0] == int(BOM_T0.timestamp())
    mm = [np.where(r == -1, np.nan, 0.05 * r) for r in (np.roll(BOM_RAW, k, 1) for k in range(3))]
    _assert_store_frames(store, [rain_to_dbz(m * 6.0) for m in mm])  # 10 minutes: x6 for mm/h
    grid = store.grid
    assert grid["projdef"].startswith("+proj=aea") and (grid["xscale"], grid["yscale"]) == (
        500.0,
        500.0,
    )
    assert (grid["x1"], grid["x2"]) == (-750.0, 750.0)  # pixel centres -0.75 to 0.75 km


def test_an_accumulation_without_its_period_is_refused(tmp_path):
    pytest.importorskip("netCDF4")
    folder = _bom_folder(tmp_path / "bom", valid_time=False)
    with pytest.raises(SourceError, match=r"66_20201031_000000.prcp-c10.nc: no time found in the"):
        _convert("bom", folder, tmp_path)
    with pytest.raises(
        SourceError,
        match=r"66_20201031_000000.prcp-c10.nc: pysteps' import_bom_rf3 gives an accumulation "
        r"\(mm\) with no accumulation period \(accutime=None\)",
    ):
        _convert("bom", folder, tmp_path, fn_pattern="66_%Y%m%d_%H%M%S")


# ----- any importer by name: format=pysteps ------------------------------------------------------


def test_pysteps_importer_by_name_with_its_arguments_and_the_odim_time(tmp_path):
    pytest.importorskip("pyproj")
    folder = tmp_path / "odim"
    folder.mkdir()
    raw = np.array([[255, 0, 64], [100, 255, 10]], np.uint8)
    for k in range(2):
        write_odim(folder / f"comp_{k}.h5", raw, T0 + timedelta(minutes=5 * k))
    store = _convert(
        "pysteps", folder, tmp_path, importer="odim_hdf5", importer_kwargs={"qty": "DBZH"}
    )
    assert store.times[0] == int(T0.timestamp())  # from /what date and time
    # pysteps' odim_hdf5 reads undetect (raw 0) as -30 dBZ, the lowest value here: no echo.
    dbz = np.where(raw == 255, np.nan, np.where(raw == 0, -np.inf, raw * 0.5 - 32.0))
    _assert_store_frames(store, [dbz, dbz])
    assert store.grid["projdef"] == ODIM_PROJDEF and store.grid["xscale"] == 2000.0


def test_rows_from_the_south_are_flipped_and_names_give_the_time(tmp_path):
    folder = tmp_path / "knmi"
    folder.mkdir()
    pixels = np.array([[0, 1, 65535], [245, 12, 3]], np.uint16)
    for k in range(2):
        end = T0 + timedelta(minutes=5 * k)
        path = write_knmi(folder / f"RAD_NL25_RAP_5min_{end:%Y%m%d%H%M}.h5", pixels, end)
        with h5py.File(path, "a") as f:  # a positive pixel height: rows run from the south
            f["geographic"].attrs["geo_pixel_size_y"] = np.array([1.0], np.float32)
    store = _convert("pysteps", folder, tmp_path, importer="knmi_hdf5")
    assert store.times.tolist() == [int(T0.timestamp()), int(T0.timestamp()) + 300]
    dbz = rain_to_dbz(np.where(pixels == 65535, np.nan, pixels * 0.01 * 12.0))
    _assert_store_frames(store, [dbz[::-1], dbz[::-1]])
    assert (store.grid["xscale"], store.grid["yscale"]) == (1000.0, 1000.0)  # km in pysteps


def test_fn_pattern_reads_the_time_from_other_names(tmp_path):
    pytest.importorskip("PIL")
    folder = tmp_path / "mch"
    folder.mkdir()
    for k in range(2):
        when = T0 + timedelta(minutes=5 * k)
        write_mch_gif(folder / f"swiss_{when:%Y-%m-%d_%H%M}.gif", MCH_RAW, None)
    with pytest.raises(
        SourceError, match=r"swiss_2016-09-28_1445.gif: no time found in the file nor in its name"
    ):
        _convert("mch", folder, tmp_path)
    store = _convert("mch", folder, tmp_path, fn_pattern="swiss_%Y-%m-%d_%H%M")
    assert store.times.tolist() == [int(T0.timestamp()), int(T0.timestamp()) + 300]


@pytest.mark.parametrize(
    "name, pattern, expected",
    [
        ("AQC151351545F_00005.801.gif", "???%y%j%H%M", datetime(2015, 5, 15, 15, 45)),
        ("66_20201031_001000.prcp-c10.nc", "*_%Y%m%d_%H%M%S", datetime(2020, 10, 31, 0, 10)),
        (
            "201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz",
            "%Y%m%d%H%M_fmi.radar.composite.lowest_FIN_SUOMI1",
            datetime(2016, 9, 28, 14, 45),
        ),
        (
            "RAD_NL25_RAP_5min_201008260255.h5",
            "RAD_NL25_RAP_5min_%Y%m%d%H%M",
            datetime(2010, 8, 26, 2, 55),
        ),
        ("README.md", "???%y%j%H%M", None),
        ("radar_201609281445.pgm", "%Y%m%d%H%M", None),  # the time must start the name
    ],
)
def test_name_time_reads_pysteps_archive_patterns(name, pattern, expected):
    found = name_time(name, pattern)
    if expected is None:
        assert found is None
    else:
        assert found == int(expected.replace(tzinfo=timezone.utc).timestamp())


def test_a_pattern_without_time_or_with_other_directives_is_refused():
    with pytest.raises(ValueError, match=r"fn_pattern takes the time directives %Y %y"):
        name_time("x", "radar_%Y%m%d_%p")
    with pytest.raises(ValueError, match=r"fn_pattern has no time directive"):
        name_time("x", "radar_*")


# ----- options and bad input: one line -----------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        ({"format": "pysteps"}, r"format=pysteps needs importer=, one of bom_rf3, dwd_hdf5"),
        (
            {"format": "pysteps", "importer": "nexrad"},
            r"unknown pysteps importer, allowed: bom_rf3, .*Received: importer='nexrad'",
        ),
        (
            {"format": "fmi", "importer": "mch_gif"},
            r"format=fmi reads with pysteps' importer fmi_pgm; for another importer use "
            r"format=pysteps importer=<name>",
        ),
        (
            {"format": "odim", "fn_pattern": "%Y%m%d%H%M"},
            r"fn_pattern set how the formats read through pysteps \(fmi, mch, bom, pysteps\) "
            r"are read, not format=odim; drop it",
        ),
        ({"format": "mch", "quantity": "DBZH"}, r"format=mch reads quantity= \(not an option\)"),
    ],
)
def test_bad_options(tmp_path, options, match):
    folder = _mch_folder(tmp_path / "mch")
    with pytest.raises(ValueError, match=match) as caught:
        convert(_config(input=str(folder), output=str(tmp_path / "s.h5"), **options))
    assert "\n" not in str(caught.value) and not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize(
    "fmt, module, package",
    [("fmi", "pyproj", "pyproj"), ("bom", "netCDF4", "netCDF4"), ("mch", "PIL", "Pillow")],
)
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path, monkeypatch, capsys, fmt, module, package
):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == module else find_spec(name, *a),
    )
    argv = ["convert", f"format={fmt}", f"input={tmp_path}", f"output={tmp_path / 's.h5'}"]
    with pytest.raises(SystemExit) as exit:
        data_main(argv)
    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        f"nowcast: error: format={fmt} (pysteps' import_{FORMAT_IMPORTERS[fmt]}) needs {package}, "
        f"which is not installed; pip install -e '.[formats]' in nowcast's folder (or pip "
        f"install {package})\n"
    )


def test_the_formats_extra_is_what_pyproject_installs():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    names = [spec.split(">")[0].split("=")[0].strip() for spec in extras["formats"]]
    assert names == list(FORMATS_EXTRA)
    assert set(FORMATS_EXTRA) <= {spec.split(">")[0].strip() for spec in extras["dev"]}


def test_a_file_on_another_grid_is_refused_when_read_and_nothing_is_written(tmp_path):
    pytest.importorskip("PIL")
    folder = _mch_folder(tmp_path / "mch")
    write_mch_gif(folder / "AQC162721500F_00005.801.gif", MCH_RAW[:, :3], T0 + timedelta(hours=1))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        SourceError, match=r"AQC16272150.*grid of 3x3 pixels differs from the 3x4 of"
    ):
        convert(_config(format="mch", input=str(folder), output=str(out / "s.h5")))
    assert list(out.iterdir()) == []


def test_a_file_pysteps_cannot_read_is_one_line_naming_it(tmp_path):
    pytest.importorskip("PIL")
    folder = _mch_folder(tmp_path / "mch")
    (folder / "AQC162721500F_00005.801.gif").write_bytes(b"GIF89a, but no image")
    with pytest.raises(SourceError) as caught:
        _convert("mch", folder, tmp_path)
    message = str(caught.value)
    assert "AQC162721500F_00005.801.gif" in message and "\n" not in message


def test_predict_reads_the_newest_frames_of_a_format_read_through_pysteps(tmp_path):
    pytest.importorskip("PIL")
    from nowcast.prediction import read_latest_frames
    from nowcast.run import ModelGrid

    folder = _mch_folder(tmp_path / "mch")
    store = _convert("mch", folder, tmp_path)
    grid = ModelGrid(store.path, store.grid, store.quantity, 5.0, store.zr, None)
    source = OmegaConf.structured(PredictConfig(run="run", input=str(folder), format="mch"))
    latest = read_latest_frames(source, grid, 2, fmt=source.format)
    np.testing.assert_array_equal(latest.times, store.times[-2:])
    assert latest.grid == store.grid and latest.labels[-1].endswith("AQC162721455F_00005.801.gif")
    np.testing.assert_allclose(
        _stored_like(latest.frames), store.read(1, 3), atol=HALF_STEP + 1e-6
    )
