"""SEVIR reader: events, times from the catalog, VIL levels and their kg/m^2 scale, errors."""

from __future__ import annotations

from datetime import datetime, timezone

import h5py
import numpy as np
import pytest
from radar_files import write_sevir

from nowcast.data.sevir import scan_sevir, vil_kg_m2_to_level, vil_level_to_kg_m2
from nowcast.data.sources import SourceError

SIZE = 6


def _vil(n_events: int, seed: int = 0) -> np.ndarray:
    vil = np.random.default_rng(seed).integers(0, 255, size=(n_events, SIZE, SIZE, 49))
    vil = vil.astype(np.uint8)
    vil[:, 0, 0, :] = 255  # missing
    return vil


def test_events_frames_times_and_levels(tmp_path):
    vil = _vil(2)
    path = write_sevir(
        tmp_path, vil, ["S1001", "R2002"], ["2019-06-01 18:35:00", "2019-06-01 19:00:00"]
    )
    frames = scan_sevir(path, catalog=None)  # CATALOG.csv found two folders up
    assert len(frames) == 2 * 49
    assert {f.event for f in frames} == {"S1001", "R2002"}
    assert all(f.quantity == "VIL" and f.shape == (SIZE, SIZE) for f in frames)
    first = datetime(2019, 6, 1, 16, 35, tzinfo=timezone.utc).timestamp()  # time_utc - 120 min
    times = [f.time for f in frames if f.event == "S1001"]
    np.testing.assert_array_equal(np.diff(times), 300)
    assert times[0] == first
    frame = next(f for f in frames if f.event == "R2002" and f.label.endswith("frame 7"))
    levels = frame.read()
    assert np.isnan(levels[0, 0])
    np.testing.assert_array_equal(levels.ravel()[1:], vil[1, :, :, 7].ravel()[1:])
    assert frames[0].grid == {
        "projdef": frames[0].grid["projdef"],
        "xscale": 1000.0,
        "yscale": 1000.0,
    }


def test_vil_scale_round_trip():
    levels = np.array([0.0, 5.0, 6.0, 10.0, 18.0, 19.0, 100.0, 254.0])
    vil = vil_level_to_kg_m2(levels)
    assert vil[0] == vil[1] == 0.0
    assert vil[2] == pytest.approx(4 / 90.66) and vil[6] == pytest.approx(np.exp(16.1 / 38.9))
    np.testing.assert_allclose(vil_kg_m2_to_level(vil[2:]), levels[2:], rtol=1e-9)
    assert np.all(np.diff(vil[1:]) > 0)


def test_no_catalog_means_unknown_times(tmp_path):
    path = write_sevir(tmp_path, _vil(1), ["S1"], ["2019-06-01 18:35:00"])
    (tmp_path / "CATALOG.csv").rename(tmp_path / "elsewhere.csv")
    with pytest.raises(SourceError, match=r"_0630.h5: no CATALOG.csv found .* pass catalog="):
        scan_sevir(path, catalog=None)
    assert len(scan_sevir(path, catalog=tmp_path / "elsewhere.csv")) == 49


@pytest.mark.parametrize(
    "ids, times_utc, edit, match",
    [
        (["S1"], ["01/06/2019 18:35"], None, r"event S1: cannot read the times .*time_utc="),
        (["S1"], ["2019-06-01 18:35:00"], "ids", r"event 0 is S9 in the file but S1 in"),
        (["S1"], ["2019-06-01 18:35:00"], "vil", r"has no \(N, H, W, T\) /vil dataset"),
    ],
    ids=["bad-time", "id-mismatch", "no-vil"],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path, ids, times_utc, edit, match):
    path = write_sevir(tmp_path, _vil(1), ids, times_utc)
    with h5py.File(path, "a") as f:
        if edit == "ids":
            f["id"][0] = b"S9"
        elif edit == "vil":
            del f["vil"]
    with pytest.raises(SourceError, match=match):
        scan_sevir(path, catalog=None)
