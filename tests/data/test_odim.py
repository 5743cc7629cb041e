"""ODIM_H5 reader: scaling, no data and no echo, quantities, time, grid, and one-line errors."""

from __future__ import annotations

import importlib.util
from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf
from radar_files import ODIM_PROJDEF, write_odim

from nowcast.config import ConvertCommandConfig
from nowcast.data.convert import convert
from nowcast.data.info import describe_store
from nowcast.data.odim import scan_odim
from nowcast.data.sources import SourceError
from nowcast.units import rain_to_dbz

WHEN = datetime(2024, 6, 1, 12, 5, tzinfo=timezone.utc)
RAW = np.array([[0, 1, 64, 255], [100, 0, 254, 255], [20, 40, 60, 80]], np.uint8)
ZR = {"zr_a": 200.0, "zr_b": 1.6}


def _scan(path, quantity=None):
    (frame,) = scan_odim(path, quantity=quantity, **ZR)
    return frame


@pytest.mark.parametrize("scaling_in", ["data", "dataset", "root"])
def test_reflectivity_with_scaling_wherever_the_product_puts_it(tmp_path, scaling_in):
    path = write_odim(tmp_path / "c.h5", RAW, WHEN, scaling_in=scaling_in)
    frame = _scan(path)
    assert frame.time == int(WHEN.timestamp())
    assert (frame.quantity, frame.shape) == ("DBZH", (3, 4))
    dbz = frame.read()
    assert dbz.dtype == np.float32
    expected = RAW * 0.5 - 32.0
    valid = (RAW != 255) & (RAW != 0)
    np.testing.assert_array_equal(dbz[valid], expected[valid])
    assert np.all(np.isnan(dbz[RAW == 255]))  # nodata: outside coverage
    assert np.all(np.isneginf(dbz[RAW == 0]))  # undetect: no echo
    assert frame.grid["projdef"] == ODIM_PROJDEF
    assert (frame.grid["xsize"], frame.grid["ysize"], frame.grid["xscale"]) == (4, 3, 2000.0)
    assert frame.grid["LL_lon"] == -10.434


def test_rain_rate_and_accumulation_become_dbz_with_the_zr_relation(tmp_path):
    rate = write_odim(tmp_path / "rate.h5", RAW, WHEN, quantity="RATE", gain=0.1, offset=0.0)
    acrr = write_odim(
        tmp_path / "acrr.h5", RAW, WHEN, quantity="ACRR", gain=0.1 / 12, offset=0.0
    )  # the same rain as mm in 5 minutes
    for path in (rate, acrr):
        dbz = _scan(path).read()
        echo = (RAW != 255) & (RAW != 0)
        np.testing.assert_allclose(dbz[echo], rain_to_dbz(RAW[echo] * 0.1), rtol=1e-5)
        assert np.all(np.isneginf(dbz[RAW == 0])) and np.all(np.isnan(dbz[RAW == 255]))


def test_float_data_without_scaling_uses_nan_for_no_data(tmp_path):
    values = np.array([[np.nan, 12.5], [-4.0, 40.0]])
    path = write_odim(
        tmp_path / "f.h5", values, WHEN, gain=None, offset=None, nodata=None, undetect=None
    )
    np.testing.assert_array_equal(_scan(path).read(), values.astype(np.float32))


def test_grid_may_sit_in_the_dataset(tmp_path):
    path = write_odim(tmp_path / "c.h5", RAW, WHEN, where_in="dataset")
    assert _scan(path).grid["projdef"] == ODIM_PROJDEF


def test_quantity_picks_among_several_data(tmp_path):
    path = write_odim(
        tmp_path / "c.h5", RAW, WHEN, quantity="VRADH", extra_data={"TH": RAW, "DBZH": RAW}
    )
    assert _scan(path).quantity == "TH"  # the first known quantity
    assert _scan(path, quantity="DBZH").quantity == "DBZH"
    with pytest.raises(SourceError, match=r"c.h5 holds no RATE data \(found: VRADH, TH, DBZH\)"):
        _scan(path, quantity="RATE")


def _edit(path, action):
    with h5py.File(path, "a") as f:
        action(f)
    return path


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda f: f["dataset1/data1/what"].attrs.__setitem__("quantity", np.bytes_("VRADH")),
            r"c.h5: quantity 'VRADH' is not one nowcast reads \(known: DBZH, TH, RATE, ACRR\)",
        ),
        (
            lambda f: f["dataset1/data1/what"].attrs.__delitem__("quantity"),
            r"c.h5 has no quantity attribute in /dataset1/data1/what",
        ),
        (
            lambda f: f["dataset1/data1"].__delitem__("data"),
            r"c.h5 has no /datasetN/dataM/data dataset; is it an ODIM_H5 file",
        ),
        (
            lambda f: f["what"].attrs.__setitem__("date", np.bytes_("2024-06-01")),
            r"c.h5: cannot read the time from date='2024-06-01' time='120500'",
        ),
        (
            lambda f: (
                f["what"].attrs.__delitem__("date"),
                f["what"].attrs.__delitem__("time"),
                f["dataset1/what"].attrs.__delitem__("enddate"),
                f["dataset1/what"].attrs.__delitem__("endtime"),
            ),
            r"c.h5 has no date/time attributes in /what",
        ),
        (
            lambda f: f["where"].attrs.__setitem__("xsize", np.int64(5)),
            r"c.h5: /where xsize=5 differs from the data's 3x4",
        ),
        (
            lambda f: f["dataset1/data1/what"].attrs.__setitem__("gain", np.bytes_("half")),
            r"c.h5: /dataset1/data1 attribute gain='half' is not a number",
        ),
    ],
    ids=["unknown-quantity", "no-quantity", "no-data", "bad-time", "no-time", "grid", "gain"],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path, edit, match):
    path = _edit(write_odim(tmp_path / "c.h5", RAW, WHEN), edit)
    with pytest.raises(SourceError, match=match) as caught:
        _scan(path)
    assert "\n" not in str(caught.value)


def test_accumulation_needs_its_interval(tmp_path):
    path = write_odim(tmp_path / "c.h5", RAW, WHEN, quantity="ACRR", accumulation_minutes=0)
    with pytest.raises(SourceError, match="c.h5: ACRR needs the accumulation interval"):
        _scan(path)


@pytest.mark.parametrize("object_type", ["PVOL", "SCAN"])
def test_polar_volumes_and_scans_are_refused_in_one_line(tmp_path, object_type):
    path = write_odim(tmp_path / "c.h5", RAW, WHEN, object_type=object_type)
    with pytest.raises(SourceError) as caught:
        _scan(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is an ODIM {object_type} (/what object)")
    assert "composites and images (object COMP, IMAGE, CVOL)" in message and "\n" not in message


@pytest.mark.parametrize("object_type", ["COMP", "IMAGE", "CVOL"])
def test_gridded_objects_are_read(tmp_path, object_type):
    assert _scan(write_odim(tmp_path / "c.h5", RAW, WHEN, object_type=object_type)).shape == (3, 4)


def test_the_frame_says_which_of_several_readable_fields_it_read(tmp_path):
    assert _scan(write_odim(tmp_path / "one.h5", RAW, WHEN)).choice is None
    path = write_odim(
        tmp_path / "c.h5", RAW, WHEN, quantity="VRADH", extra_data={"TH": RAW, "DBZH": RAW}
    )
    assert _scan(path).choice == "/dataset1/data2 (TH), not /dataset1/data3 (DBZH)"
    assert _scan(path, quantity="DBZH").choice is None  # the only DBZH
    _edit(path, lambda f: f.copy("dataset1", "dataset2"))
    assert (
        _scan(path, quantity="DBZH").choice == "/dataset1/data3 (DBZH), not /dataset2/data3 (DBZH)"
    )


QUALITY = np.array([[255, 0, 100, 255], [102, 255, 101, 0], [255, 255, 50, 200]], np.uint8)


@pytest.mark.parametrize("quality_in", ["data", "dataset"])
def test_min_quality_masks_pixels_of_lower_qind(tmp_path, quality_in):
    path = write_odim(tmp_path / "c.h5", RAW, WHEN, quality=QUALITY, quality_in=quality_in)
    (frame,) = scan_odim(path, quantity=None, min_quality=0.4, **ZR)
    dbz = frame.read()
    low = QUALITY * (1 / 255) < 0.4  # QIND's own gain, not the data's 0.5
    assert np.all(np.isnan(dbz[low]))
    np.testing.assert_array_equal(dbz[~low], _scan(path).read()[~low])
    assert not np.isnan(dbz[1, 0]) and np.isnan(dbz[1, 2])  # 102/255 = 0.4 is kept, 101 not


def test_unknown_quality_is_masked_and_a_missing_qind_is_one_line(tmp_path):
    path = write_odim(tmp_path / "c.h5", RAW, WHEN, quality=QUALITY)
    _edit(path, lambda f: f["dataset1/data1/quality1/what"].attrs.__setitem__("nodata", 255.0))
    (frame,) = scan_odim(path, quantity=None, min_quality=0.0, **ZR)
    np.testing.assert_array_equal(np.isnan(frame.read()), (QUALITY == 255) | (RAW == 255))
    bare = write_odim(tmp_path / "bare.h5", RAW, WHEN, quality_in=None)
    with pytest.raises(SourceError) as caught:
        scan_odim(bare, quantity=None, min_quality=0.5, **ZR)
    assert str(caught.value) == (
        f"{bare} has no QIND quality field for /dataset1/data1 (looked in "
        "/dataset1/data1/qualityK and /dataset1/qualityK); convert without min_quality="
    )


# RMI's composites give the projection and the corners but no xscale/yscale; a Lambert
# conformal projection of Belgium (Lambert 2008) stands in for theirs.
LAMBERT_PROJDEF = (
    "+proj=lcc +lat_0=50.797815 +lon_0=4.35921583333333 +lat_1=49.8333333333333 "
    "+lat_2=51.1666666666667 +x_0=649328 +y_0=665262 +ellps=GRS80 +units=m"
)


def _corners_only(path, pixel_m: float = 1000.0, projdef: str = LAMBERT_PROJDEF):
    """/where as RMI writes it: projdef and the outer corners of the grid's corner pixels for
    `pixel_m` pixels, no xscale or yscale."""
    pyproj = pytest.importorskip("pyproj")
    projection = pyproj.Proj(projdef)
    with h5py.File(path, "a") as f:
        where = f["where"]
        rows, cols = int(where.attrs["ysize"]), int(where.attrs["xsize"])
        del where.attrs["xscale"], where.attrs["yscale"]
        where.attrs["projdef"] = np.bytes_(projdef)
        left, bottom, right, top = 300e3, 400e3, 300e3 + cols * pixel_m, 400e3 + rows * pixel_m
        for corner, (x, y) in {
            "LL": (left, bottom),
            "UL": (left, top),
            "UR": (right, top),
            "LR": (right, bottom),
        }.items():
            lon, lat = projection(x, y, inverse=True)
            where.attrs[f"{corner}_lon"], where.attrs[f"{corner}_lat"] = lon, lat
    return path


@pytest.mark.parametrize("pixel_m", [1000.0, 250.0])
def test_pixel_size_from_the_projection_and_the_corners(tmp_path, pixel_m):
    frame = _scan(_corners_only(write_odim(tmp_path / "c.h5", RAW, WHEN), pixel_m))
    assert frame.grid["xscale"] == pytest.approx(pixel_m, rel=1e-9)
    assert frame.grid["yscale"] == pytest.approx(pixel_m, rel=1e-9)


def test_files_with_corners_only_convert_and_describe_their_pixels(tmp_path):
    folder = tmp_path / "rmi"
    folder.mkdir()
    for k in range(2):
        moment = WHEN + timedelta(minutes=5 * k)
        _corners_only(write_odim(folder / f"{moment:%Y%m%d%H%M}00.rad.best.comp.h5", RAW, moment))
    cfg = OmegaConf.structured(
        ConvertCommandConfig(format="odim", input=str(folder), output=str(tmp_path / "s.h5"))
    )
    result = convert(cfg)
    assert "3 x 4 pixels of 1 x 1 km, every 5 min" in describe_store(result.path)


def test_no_pixel_size_and_nothing_to_compute_it_from_is_one_line(tmp_path):
    path = _corners_only(write_odim(tmp_path / "c.h5", RAW, WHEN))
    _edit(
        path,
        lambda f: (
            f["where"].attrs.__delitem__("LL_lon"),
            f["where"].attrs.__delitem__("projdef"),
        ),
    )
    with pytest.raises(SourceError) as caught:
        _scan(path)
    assert str(caught.value) == (
        f"{path}: /where has no xscale/yscale (the pixel size in metres), nor projdef, LL_lon to "
        "compute it from the projection and the corners"
    )


def test_corners_that_are_not_a_rectangle_are_refused(tmp_path):
    path = _corners_only(write_odim(tmp_path / "c.h5", RAW, WHEN))
    _edit(path, lambda f: f["where"].attrs.__setitem__("UR_lon", f["where"].attrs["UR_lon"] + 0.5))
    with pytest.raises(
        SourceError,
        match=r"c.h5: /where has no xscale/yscale, and its corners are not a rectangle",
    ):
        _scan(path)


def test_pixel_size_from_the_corners_without_pyproj_names_the_extra(tmp_path, monkeypatch):
    path = _corners_only(write_odim(tmp_path / "c.h5", RAW, WHEN))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pyproj" else find_spec(name, *a),
    )
    with pytest.raises(ValueError) as caught:
        _scan(path)
    assert str(caught.value) == (
        f"{path}: /where: the pixel size from projdef and the corners needs pyproj, which is not "
        "installed; pip install -e '.[formats]' in nowcast's folder (or pip install pyproj)"
    )
