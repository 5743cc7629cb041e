"""`describe_store`: frames, grid, time range, units and rain statistics of a store."""

from __future__ import annotations

import numpy as np

from nowcast.data.info import describe_store
from nowcast.data.store import write_store
from nowcast.units import dbz_to_rain, rain_to_dbz

GRID = {"projdef": "+proj=aeqd +lat_0=52 +lon_0=5", "xscale": 2000.0, "yscale": 2000.0}


def _store(folder, quantity="DBZH", value=30.0):
    frames = np.full((10, 4, 5), -np.inf, np.float32)
    frames[4:, :2, :4] = value  # 6 wet frames of 10 wet pixels
    frames[4:, 2, :2] = value
    frames[:, :, 4] = np.nan  # a column outside coverage
    times = 1_717_200_000 + 300 * np.delete(np.arange(12), [3, 4])  # 2 frames missing
    folder.mkdir(exist_ok=True)
    return write_store(
        folder / "s.h5", frames, times, grid=GRID, minutes_per_frame=5, quantity=quantity
    )


def test_reflectivity_store(tmp_path):
    text = describe_store(_store(tmp_path))
    lines = text.splitlines()
    assert lines[1] == "frames      10 of 4 x 5 pixels of 2 x 2 km, every 5 min"
    assert (
        lines[2]
        == "time        2024-06-01T00:00:00Z to 2024-06-01T00:55:00Z; 1 gap (2 frames missing)"
    )
    assert "DBZH in dBZ: -31.5 to 95 in steps of 0.5; no echo reads -32" in text
    assert "projdef = +proj=aeqd +lat_0=52 +lon_0=5" in text
    assert "coverage    80.00 % of pixels have data" in text
    assert "Z-R: Z = 200 R^1.6 (Marshall-Palmer, not recorded)" in text
    assert ">= 1 mm/h (23.0 dBZ)              37.50 % of valid pixels" in text
    assert ">= 10 mm/h (39.0 dBZ)              0.00 % of valid pixels" in text
    assert "dry frames (no pixel >= 0.1 mm/h)    40.00 %" in text
    rain = dbz_to_rain(30.0)
    assert f"median {rain:.2f}, 99th percentile {rain:.2f}, max {rain:.2f} mm/h" in text


def test_vil_store(tmp_path):
    text = describe_store(_store(tmp_path, quantity="VIL", value=140.0))
    assert "VIL in VIL level: 1 to 254 in steps of 1; no echo reads 0" in text
    assert ">= 133 (" in text and "37.50 % of valid pixels" in text
    assert ">= 160 (" in text and "kg/m2)" in text


def test_implausible_rain_rates_are_flagged_as_likely_clutter(tmp_path):
    assert "warning" not in describe_store(_store(tmp_path / "rain"))
    clutter = float(rain_to_dbz(8647.0))
    text = describe_store(_store(tmp_path / "clutter", value=clutter))
    warning = text.splitlines()[-1].strip()
    peak = dbz_to_rain(np.round(clutter * 2) / 2)  # as the store's 0.5 dBZ steps hold it
    assert warning == (
        f"warning: max {peak:.0f} mm/h is above 150 mm/h (37.5000 % of valid pixels): likely "
        "clutter; convert with max_rain_mmh=150 or, for ODIM, min_quality= (QIND masking)"
    )
    assert "warning" not in describe_store(_store(tmp_path / "vil", quantity="VIL", value=254.0))
