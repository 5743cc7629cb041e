"""nowcast.data.climate and scripts/compare_climate.py on small stores with known answers."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from nowcast.data.climate import MAX_LAG, Climate, compute_climate, format_climates
from nowcast.data.store import Store, write_store
from nowcast.units import dbz_to_rain, rain_to_dbz

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_climate.py"
START = 1_717_200_000  # 2024-06-01T00:00:00Z
RUN = MAX_LAG + 1


def _write(path: Path, rain_mmh: np.ndarray, *, pixel_km: float = 1.0, times=None) -> Path:
    """A store of (T, H, W) rain rates (mm/h; 0 = no echo, NaN = no data), Marshall-Palmer."""
    if times is None:
        times = START + 300 * np.arange(len(rain_mmh))
    grid = {"projdef": "+proj=aeqd", "xscale": 1000.0 * pixel_km, "yscale": 1000.0 * pixel_km}
    dbz = rain_to_dbz(rain_mmh).astype(np.float32)  # 0 mm/h -> -inf: no echo
    return write_store(
        path, dbz, times, grid=grid, minutes_per_frame=5, zr_a=200.0, zr_b=1.6, overwrite=True
    )


def _climate(path: Path, frames: int = 288) -> Climate:
    with Store(path) as store:
        return compute_climate(store, frames=frames)


def _noise(rng: np.random.Generator, size: int, slope: float) -> np.ndarray:
    """(size, size) periodic noise with a power spectrum ~ k^slope, mean 0, std 1."""
    k = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    k[0, 0] = np.inf  # no power at wavenumber 0
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * k ** (slope / 2)).real
    return (field - field.mean()) / field.std()


def _rain(dbr: np.ndarray) -> np.ndarray:
    return 10.0 ** (dbr / 10.0)


def test_shares_percentiles_and_dry_frames_are_exact(tmp_path):
    rain = np.zeros((10, 4, 5))
    # Each of frames 4..9: 16 valid pixels, 11 wet: 4 at 0.5, 4 at 2, 2 at 7, 1 at 20 mm/h.
    rain[4:, :, :4] = np.array([0.5] * 4 + [2.0] * 4 + [7.0] * 2 + [20.0] + [0.0] * 5).reshape(
        4, 4
    )
    rain[:, :, 4] = np.nan  # a column outside coverage
    climate = _climate(_write(tmp_path / "s.h5", rain))
    assert climate.valid_share == pytest.approx(0.8)
    assert climate.wet_shares == pytest.approx(
        {0.1: 66 / 160, 1.0: 42 / 160, 5.0: 18 / 160, 10.0: 6 / 160}
    )
    assert climate.dry_frames == pytest.approx(0.4)
    stored = dbz_to_rain(np.round(rain_to_dbz(np.array([2.0, 7.0, 20.0])) * 2) / 2)  # 0.5 dBZ
    assert climate.rain_percentiles == pytest.approx(
        dict(zip((50.0, 90.0, 99.0), stored, strict=True))
    )
    # Too small for a spectrum, too short for a lifetime run: "n/a", not an error.
    assert math.isnan(climate.spectrum_slope) and climate.lifetime_runs == 0
    assert "n/a" in format_climates([climate])


@pytest.mark.parametrize("slope", [-2.0, -3.0])
def test_spectrum_slope_of_power_law_noise(tmp_path, slope):
    rng = np.random.default_rng(0)
    dbr = np.stack([10.0 + 3.0 * _noise(rng, 128, slope) for _ in range(4)])  # all > -10 dBR
    climate = _climate(_write(tmp_path / "noise.h5", _rain(dbr), pixel_km=2.0))
    assert climate.spectrum_frames == 4 and climate.spectrum_side == 128
    assert climate.spectrum_slope == pytest.approx(slope, abs=0.3)


def test_spectrum_square_lies_inside_the_coverage(tmp_path):
    rng = np.random.default_rng(1)
    rain = np.stack([_rain(10.0 + 3.0 * _noise(rng, 160, -3.0)) for _ in range(2)])
    rain[:, :, :60] = np.nan  # coverage: columns 60..159, a 100-pixel square at most
    climate = _climate(_write(tmp_path / "edge.h5", rain))
    assert climate.spectrum_side == 100
    assert climate.spectrum_slope == pytest.approx(-3.0, abs=0.3)


def test_field_that_does_not_change_keeps_its_correlation_and_does_not_move(tmp_path):
    dbr = 5.0 + 5.0 * _noise(np.random.default_rng(2), 64, -3.0)
    climate = _climate(_write(tmp_path / "still.h5", np.repeat(_rain(dbr)[None], RUN + 1, 0)))
    assert climate.lifetime_runs == 2
    np.testing.assert_allclose(climate.correlations, 1.0, atol=1e-9)
    assert math.isinf(climate.lifetime_minutes) and climate.correlation_30min == pytest.approx(1)
    assert "> 60 min" in format_climates([climate])
    assert climate.speed_percentiles[90.0] < 1.0  # km/h


def test_field_redrawn_every_frame_decorrelates_at_the_first_lag(tmp_path):
    rng = np.random.default_rng(3)
    # White noise: smooth fields drawn independently can still correlate by chance.
    dbr = np.stack([5.0 + 5.0 * _noise(rng, 64, 0.0) for _ in range(RUN)])
    climate = _climate(_write(tmp_path / "redrawn.h5", _rain(dbr)))
    assert climate.lifetime_runs == 1
    assert np.all(np.abs(climate.correlations[1:]) < 0.1)
    # Linear from 1 at lag 0 to ~0 at lag 1 (5 min): 1/e at ~5 (1 - 1/e) = 3.2 min.
    assert climate.lifetime_minutes == pytest.approx(5 * (1 - 1 / math.e), abs=0.6)
    assert abs(climate.correlation_30min) < 0.1


def test_lifetime_runs_never_span_a_time_gap(tmp_path):
    rng = np.random.default_rng(4)
    # 11 redrawn frames, a 10-minute gap, then 13 copies of one field: only the copies make a run.
    redrawn = [_rain(5.0 + 5.0 * _noise(rng, 32, -3.0)) for _ in range(11)]
    still = [_rain(5.0 + 5.0 * _noise(rng, 32, -3.0))] * RUN
    times = START + 300 * np.concatenate([np.arange(11), np.arange(12, 12 + RUN)])
    climate = _climate(_write(tmp_path / "gap.h5", np.stack(redrawn + still), times=times))
    assert climate.lifetime_runs == 1
    np.testing.assert_allclose(climate.correlations, 1.0, atol=1e-9)


def test_motion_of_a_translated_field(tmp_path):
    dbr = 5.0 + 5.0 * _noise(np.random.default_rng(5), 64, -3.0)
    # 2 pixels along x and 1 along y per 5-minute frame, of 2 km: sqrt(5) * 2 km * 12 / h.
    frames = np.stack([np.roll(dbr, (t, 2 * t), axis=(0, 1)) for t in range(6)])
    climate = _climate(_write(tmp_path / "moving.h5", _rain(frames), pixel_km=2.0))
    expected = math.sqrt(5) * 2.0 * 12
    assert climate.motion_triples == 4
    assert climate.speed_percentiles[50.0] == pytest.approx(expected, rel=0.05)
    assert climate.speed_percentiles[90.0] == pytest.approx(expected, rel=0.05)


def test_frames_bounds_the_samples(tmp_path):
    rng = np.random.default_rng(6)
    dbr = np.stack([5.0 + 5.0 * _noise(rng, 32, -3.0) for _ in range(40)])
    climate = _climate(_write(tmp_path / "many.h5", _rain(dbr)), frames=6)
    assert (climate.spectrum_frames, climate.lifetime_runs, climate.motion_triples) == (6, 1, 2)


def test_vil_store_is_refused(tmp_path):
    path = write_store(
        tmp_path / "vil.h5",
        np.full((2, 4, 4), 100.0, np.float32),
        START + 300 * np.arange(2),
        grid={"xscale": 1000.0, "yscale": 1000.0},
        minutes_per_frame=5,
        quantity="VIL",
    )
    with pytest.raises(ValueError, match=r"vil\.h5 holds VIL .*not reflectivity"):
        _climate(path)


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("nowcast_compare_climate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prints_a_column_per_store(script, tmp_path, capsys):
    rain = np.repeat(_rain(5.0 + 5.0 * _noise(np.random.default_rng(7), 32, -3.0))[None], 4, 0)
    (tmp_path / "a").mkdir()
    paths = [_write(tmp_path / "s.h5", rain), _write(tmp_path / "a" / "s.h5", rain)]
    assert script.main([*map(str, paths), "--markdown", "--frames", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Same file names: the columns are named by the whole paths.
    assert lines[0] == f"| statistic | {paths[0]} | {paths[1]} |"
    assert lines[1] == "| --- | ---: | ---: |"
    assert "| valid (radar-covered) share of the grid | 100.00 % | 100.00 % |" in lines


@pytest.mark.parametrize("kind", ["missing", "text", "hdf5"])
def test_script_fails_with_one_line_naming_the_file(script, tmp_path, capsys, kind):
    import h5py

    path = tmp_path / "bad.h5"
    if kind == "text":
        path.write_text("not a store")
    elif kind == "hdf5":
        with h5py.File(path, "w") as f:
            f["x"] = 1
    assert script.main([str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and str(path) in captured.err
