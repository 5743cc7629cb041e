"""KNMI HDF5 reader: calibration formula, no-data values, quantities, time, grid, errors."""

from __future__ import annotations

from datetime import datetime, timezone

import h5py
import numpy as np
import pytest
from radar_files import KNMI_PROJ4, write_knmi

from nowcast.data.knmi import scan_knmi
from nowcast.data.sources import SourceError
from nowcast.units import rain_to_dbz

END = datetime(2010, 8, 26, 2, 55, tzinfo=timezone.utc)
ZR = {"zr_a": 200.0, "zr_b": 1.6}
PIXELS = np.array([[0, 1, 100, 255], [64, 128, 200, 255], [10, 20, 30, 40]], np.uint8)


def _scan(path, quantity=None):
    (frame,) = scan_knmi(path, quantity=quantity, **ZR)
    return frame


def test_reflectivity_composite(tmp_path):
    frame = _scan(write_knmi(tmp_path / "RAD_NL25_PCP_NA_201008260255.h5", PIXELS, END))
    assert frame.time == int(END.timestamp())  # product_datetime_end
    assert (frame.quantity, frame.shape) == ("DBZH", (3, 4))
    dbz = frame.read()
    no_data = (PIXELS == 0) | (PIXELS == 255)  # calibration_missing_data, _out_of_image
    assert np.all(np.isnan(dbz[no_data]))
    np.testing.assert_array_equal(dbz[~no_data], PIXELS[~no_data] * 0.5 - 32.0)
    grid = frame.grid
    assert grid["projdef"] == KNMI_PROJ4
    assert (grid["xsize"], grid["ysize"]) == (4, 3)
    assert grid["xscale"] == pytest.approx(1000.0035) and grid["yscale"] == pytest.approx(
        1000.0048
    )
    assert grid["geo_row_offset"] == 3650.0 and len(grid["geo_product_corners"]) == 8


def test_accumulation_is_mm_per_interval(tmp_path):
    pixels = np.array([[0, 1, 50], [65534, 65535, 1000]], np.uint16)  # 0.01 mm steps
    path = write_knmi(
        tmp_path / "RAD_NL25_RAC_RT_201008260255.h5",
        pixels,
        END,
        geo_parameter="ACCUMULATION_[MM]",
        formula="GEO=0.010000*PV+0.000000",
        missing_data=65534,
        out_of_image=65535,
    )
    dbz = _scan(path).read()
    assert np.isneginf(dbz[0, 0])  # 0 mm: no echo
    assert np.all(np.isnan(dbz[1, :2]))
    rain_mmh = np.array([0.01, 0.5, 10.0]) * 12  # mm in 5 minutes -> mm/h
    np.testing.assert_allclose(dbz[[0, 0, 1], [1, 2, 2]], rain_to_dbz(rain_mmh), rtol=1e-5)


def test_quantity_option_when_the_file_does_not_say(tmp_path):
    path = write_knmi(tmp_path / "k.h5", PIXELS, END, geo_parameter=None)
    with pytest.raises(
        SourceError, match=r"k.h5: /image1 has no image_geo_parameter .* quantity="
    ):
        _scan(path)
    assert _scan(path, quantity="DBZH").quantity == "DBZH"


def _edit(path, action):
    with h5py.File(path, "a") as f:
        action(f)
    return path


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda f: f["image1"].attrs.__setitem__(
                "image_geo_parameter", np.bytes_("QUALITY_[-]")
            ),
            r"k.h5: quantity 'QUALITY_\[-\]' is not one nowcast reads",
        ),
        (
            lambda f: f["image1"].__delitem__("image_data"),
            r"k.h5 has no /image1/image_data dataset; is it a KNMI HDF5 composite",
        ),
        (
            lambda f: f["image1/calibration"].attrs.__delitem__("calibration_formulas"),
            r"k.h5: /image1/calibration has no calibration_formulas attribute",
        ),
        (
            lambda f: f["image1/calibration"].attrs.__setitem__(
                "calibration_formulas", np.bytes_("DBZ=PV/2-32")
            ),
            r"k.h5: cannot read the calibration formula 'DBZ=PV/2-32'",
        ),
        (
            lambda f: f["overview"].attrs.__setitem__(
                "product_datetime_end", np.bytes_("yesterday")
            ),
            r"k.h5: cannot read the time from /overview product_datetime_end='yesterday'",
        ),
        (
            lambda f: f["overview"].attrs.__delitem__("product_datetime_end"),
            r"k.h5: /overview has no product_datetime_end attribute",
        ),
        (
            lambda f: f["geographic"].attrs.__setitem__("geo_number_rows", np.array([765])),
            r"k.h5: /geographic geo_number_rows=765 differs from the image's 3x4",
        ),
    ],
    ids=[
        "unknown-quantity",
        "no-data",
        "no-formula",
        "bad-formula",
        "bad-time",
        "no-time",
        "grid",
    ],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path, edit, match):
    path = _edit(write_knmi(tmp_path / "k.h5", PIXELS, END), edit)
    with pytest.raises(SourceError, match=match) as caught:
        _scan(path)
    assert "\n" not in str(caught.value)
