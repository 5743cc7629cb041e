"""KNMI HDF5 reader on files of the real RAD_NL25_RAP_5min layout: calibration, no data, time,
grid, refused products, one-line errors, and a folder converted end to end."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf
from radar_files import KNMI_PROJ4, write_knmi

from nowcast.config import ConvertCommandConfig
from nowcast.data.convert import convert
from nowcast.data.knmi import scan_knmi
from nowcast.data.sources import SourceError
from nowcast.data.store import Store
from nowcast.units import rain_to_dbz

END = datetime(2010, 8, 26, 2, 55, tzinfo=timezone.utc)
ZR = {"zr_a": 200.0, "zr_b": 1.6}
MISSING = 65535  # calibration_missing_data and calibration_out_of_image of RAP files
PIXELS = np.array(
    [[0, 1, 50, MISSING], [245, 100, 0, MISSING], [12, 0, 3, 7]], np.uint16
)  # PV in 0.01 mm per 5 minutes; 245 is the 2010-08-26 maximum (29.4 mm/h)
REFLECTIVITY_PRODUCT = {  # RAD_NL25_PCP_NA
    "geo_parameter": "REFLECTIVITY_[DBZ]",
    "formula": "GEO = 0.500000 * PV + -32.000000",
    "missing_data": 0,
    "out_of_image": 255,
}


def _scan(path, quantity=None):
    (frame,) = scan_knmi(path, quantity=quantity, **ZR)
    return frame


def _expected_dbz(pixels: np.ndarray) -> np.ndarray:
    """What the reader should make of RAP pixels: mm in 5 minutes x 12 -> mm/h -> dBZ."""
    dbz = rain_to_dbz(pixels * 0.01 * 12.0)  # PV 0: 0 mm/h, -inf (no echo)
    dbz[pixels == MISSING] = np.nan
    return dbz


def test_real_layout_reads_as_a_rain_rate_through_zr(tmp_path):
    frame = _scan(write_knmi(tmp_path / "RAD_NL25_RAP_5min_201008260255.h5", PIXELS, END))
    assert frame.time == int(END.timestamp())  # product_datetime_end, as in the file name
    assert (frame.quantity, frame.shape) == ("ACRR", (3, 4))
    dbz = frame.read()
    assert dbz.dtype == np.float32
    assert np.all(np.isneginf(dbz[PIXELS == 0]))  # a measured 0 mm: dry, no echo
    assert np.all(np.isnan(dbz[PIXELS == MISSING]))
    np.testing.assert_allclose(dbz, _expected_dbz(PIXELS), rtol=1e-6)
    assert dbz[1, 0] == pytest.approx(rain_to_dbz(29.4), abs=1e-4)
    grid = frame.grid
    assert grid["projdef"] == KNMI_PROJ4
    assert (grid["xsize"], grid["ysize"], grid["xscale"], grid["yscale"]) == (4, 3, 1000.0, 1000.0)
    assert grid["geo_row_offset"] == 3650.0 and len(grid["geo_product_corners"]) == 8


def test_reflectivity_product_reads_its_own_calibration(tmp_path):
    pixels = np.array([[0, 1, 100, 255], [64, 128, 200, 255]], np.uint8)
    frame = _scan(write_knmi(tmp_path / "RAD_NL25_PCP_NA.h5", pixels, END, **REFLECTIVITY_PRODUCT))
    assert frame.quantity == "DBZH"
    dbz = frame.read()
    no_data = (pixels == 0) | (pixels == 255)  # this product says 0 is missing
    assert np.all(np.isnan(dbz[no_data]))
    np.testing.assert_array_equal(dbz[~no_data], pixels[~no_data] * 0.5 - 32.0)


def test_accumulation_interval_comes_from_the_file(tmp_path):
    path = write_knmi(tmp_path / "k.h5", PIXELS, END, interval_minutes=60)
    np.testing.assert_allclose(_scan(path).read()[0, 2], rain_to_dbz(0.5), rtol=1e-6)  # mm/h


def test_several_image_groups_are_refused_in_one_line(tmp_path):
    path = write_knmi(tmp_path / "RAD_NL25_RAC_FM_201008260255.h5", PIXELS, END, image_groups=25)
    with pytest.raises(SourceError) as caught:
        _scan(path)
    message = str(caught.value)
    assert message.startswith(f"{path} holds 25 image groups (/overview number_image_groups)")
    assert "forecasts" in message and "\n" not in message


def test_quantity_option_when_the_file_does_not_say(tmp_path):
    path = write_knmi(tmp_path / "k.h5", PIXELS, END, geo_parameter=None)
    with pytest.raises(
        SourceError, match=r"k.h5: /image1 has no image_geo_parameter .* quantity="
    ):
        _scan(path)
    assert _scan(path, quantity="ACRR").quantity == "ACRR"


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
            lambda f: f["geographic"].attrs.__setitem__(
                "geo_number_rows", np.array([765], np.int32)
            ),
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


def test_a_folder_of_real_layout_files_converts_end_to_end(tmp_path):
    folder = tmp_path / "knmi"
    folder.mkdir()
    frames = [np.roll(PIXELS, k, axis=1) for k in range(4)]
    for k, pixels in enumerate(frames):
        end = END + timedelta(minutes=5 * k)
        write_knmi(folder / f"RAD_NL25_RAP_5min_{end:%Y%m%d%H%M}.h5", pixels, end)
    cfg = ConvertCommandConfig(format="knmi", input=str(folder), output=str(tmp_path / "s.h5"))
    result = convert(OmegaConf.structured(cfg))
    assert (result.frames, result.height, result.width, result.minutes_per_frame) == (4, 3, 4, 5)
    store = Store(result.path)
    np.testing.assert_array_equal(store.times, [int(END.timestamp()) + 300 * k for k in range(4)])
    assert store.zr == (200.0, 1.6) and store.grid["projdef"] == KNMI_PROJ4
    stored = store.read(0, 4)
    for pixels, frame in zip(frames, stored, strict=True):
        assert np.all(np.isnan(frame[pixels == MISSING]))
        assert np.all(frame[pixels == 0] == store.undetect_value)
        rain = (pixels > 0) & (pixels != MISSING)
        np.testing.assert_allclose(frame[rain], _expected_dbz(pixels)[rain], atol=0.25 + 1e-6)
