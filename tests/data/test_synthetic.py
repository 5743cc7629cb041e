"""The synthetic data set: deterministic, realistic in its statistics, moving, and learnable."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast.config import SyntheticConfig
from nowcast.data.store import UNDETECT_DBZ, Store
from nowcast.data.synthetic import iter_synthetic_frames, write_synthetic_store
from nowcast.units import dbz_to_rain

SIZE = 64
DAY = SyntheticConfig(frames=288, height=SIZE, width=SIZE, seed=0)  # 24 hours of 5 minutes


def _generate(cfg: SyntheticConfig, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(iter_synthetic_frames(cfg, chunk=chunk))
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


@pytest.fixture(scope="module")
def day() -> np.ndarray:
    return _generate(DAY)[0]


def _rain(frames_dbz: np.ndarray) -> np.ndarray:
    """mm/h with 0 for no echo and NaN for no data."""
    return np.where(frames_dbz <= UNDETECT_DBZ, 0.0, dbz_to_rain(frames_dbz))


def test_same_seed_same_frames_whatever_the_block_size():
    cfg = SyntheticConfig(frames=30, height=24, width=32, seed=1)
    frames, times = _generate(cfg, chunk=7)
    again, times_again = _generate(cfg, chunk=256)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(times, times_again)
    other, _ = _generate(SyntheticConfig(frames=30, height=24, width=32, seed=2))
    assert not np.array_equal(np.nan_to_num(frames), np.nan_to_num(other))


def test_shapes_times_and_no_data_outside_the_coverage_disc(day):
    frames, times = _generate(SyntheticConfig(frames=5, height=24, width=32, seed=0), chunk=2)
    assert frames.shape == (5, 24, 32) and frames.dtype == np.float32
    assert times[0] == np.datetime64("2024-06-01T00:00:00", "s").astype(np.int64)
    np.testing.assert_array_equal(np.diff(times), 300)

    rows, cols = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2
    outside = np.hypot(rows, cols) > 0.48 * SIZE
    assert np.all(np.isnan(day[:, outside]))
    assert not np.any(np.isnan(day[:, ~outside]))
    assert np.all((day[:, ~outside] == UNDETECT_DBZ) | (day[:, ~outside] >= 7.0))  # >= 0.1 mm/h


def test_rain_rates_are_realistic(day):
    rain = _rain(day)
    covered = rain[~np.isnan(rain)]
    wet = covered[covered >= 0.1]
    assert 0.03 < wet.size / covered.size < 0.7
    assert 0.2 < np.median(wet) < 2.0  # heavy tail: median well below the mean
    assert np.median(wet) < 0.6 * wet.mean()
    # Between the real days of docs/data.md (a stratiform and a convective one), not a climate
    # of heavy storms: >= 10 mm/h on 0.01-0.2 % of valid pixels, wet 99th percentile 4.5-11.5.
    assert 3.0 < np.percentile(wet, 99) < 15.0
    assert 20.0 < covered.max() <= 150.0
    assert 1e-4 < np.mean(covered >= 10.0) < 5e-3
    per_frame = np.nanmean(rain >= 0.1, axis=(1, 2))
    assert per_frame.min() < 0.05 < 0.3 < per_frame.max()  # dry and wet spells


MAX_SHIFT = 10
LAG = 2  # frames: 10 minutes, up to 10 px at 60 km/h


def _displacement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(dy, dx) shift that best maps frame a onto frame b within the coverage disc.

    Brute-force search of the smallest squared dBZ difference over a central box that stays
    inside the disc for every shift (no echo counts as 0 dBZ).
    """
    a, b = np.maximum(a, 0.0), np.maximum(b, 0.0)
    box = slice(SIZE // 2 - 10, SIZE // 2 + 10)
    target = b[box, box]
    best, best_error = None, np.inf
    for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
        for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
            rows = slice(box.start - dy, box.stop - dy)
            cols = slice(box.start - dx, box.stop - dx)
            error = np.mean((a[rows, cols] - target) ** 2)
            if error < best_error:
                best, best_error = np.array([dy, dx]), error
    return best


def _wet_times(frames: np.ndarray) -> list[int]:
    """Times t with echo over 20 dBZ on more than 5 % of the disc at t - LAG, t and t + LAG."""
    wet = np.nanmean(frames > 20.0, axis=(1, 2)) > 0.05
    return [t for t in range(LAG, len(frames) - LAG) if wet[t - LAG] and wet[t] and wet[t + LAG]]


def test_motion_varies_over_time(day):
    times = _wet_times(day)[::4]
    shifts = np.array([_displacement(day[t - LAG], day[t]) for t in times])
    assert len(shifts) >= 8
    speeds_px = np.hypot(*shifts.T) / LAG
    assert np.median(speeds_px) > 1.0  # 20-60 km/h is 1.7-5 px per 5 minutes
    # Not one constant vector: a steady wind gives a 10-90 % range of about 2-3 px (noise).
    spread = np.percentile(shifts, 90, axis=0) - np.percentile(shifts, 10, axis=0)
    assert spread.max() >= 5


def test_extrapolation_beats_persistence(day):
    """Shifting the last frame by the motion of the previous 10 min is a far better forecast
    of the next 10 min than persistence: the motion is learnable and persistence is poor."""
    box = slice(SIZE // 2 - 10, SIZE // 2 + 10)
    errors = {"persistence": [], "extrapolation": []}
    for t in _wet_times(day)[::4]:
        past, now, future = (np.maximum(day[i], 0.0) for i in (t - LAG, t, t + LAG))
        shift = _displacement(past, now)
        forecasts = {"persistence": now, "extrapolation": np.roll(now, tuple(shift), axis=(0, 1))}
        for name, forecast in forecasts.items():
            errors[name].append(np.mean((forecast - future)[box, box] ** 2))
    assert len(errors["persistence"]) >= 8
    assert np.mean(errors["extrapolation"]) < 0.7 * np.mean(errors["persistence"])


def test_write_synthetic_store(tmp_path):
    cfg = SyntheticConfig(frames=20, height=16, width=24, seed=5, pixel_km=2.0)
    path = write_synthetic_store(tmp_path / "synthetic.h5", cfg)
    frames, times = _generate(cfg)
    with Store(path) as store:
        assert store.shape == (20, 16, 24)
        np.testing.assert_array_equal(store.times, times)
        stored = store.read(0, 20)
        assert store.zr == (200.0, 1.6)
        grid = store.grid
    assert grid["xscale"] == grid["yscale"] == 2000.0
    assert (grid["xsize"], grid["ysize"]) == (24, 16)
    assert "+proj=aeqd" in grid["projdef"]
    # 48 km x 32 km around (5 E, 52 N): about 0.70 degrees of longitude, 0.29 of latitude.
    np.testing.assert_allclose(
        [grid["ll_lon"], grid["ur_lon"], grid["ll_lat"], grid["ur_lat"]],
        [5.0 - 0.35, 5.0 + 0.35, 52.0 - 0.144, 52.0 + 0.144],
        atol=0.003,
    )
    np.testing.assert_array_equal(np.isnan(stored), np.isnan(frames))
    np.testing.assert_allclose(stored, frames, atol=0.25 + 1e-5)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write_synthetic_store(path, cfg)


@pytest.mark.parametrize(
    "change, match",
    [({"frames": 0}, "frames must be an integer >= 1"), ({"pixel_km": 0}, "pixel_km must be > 0")],
)
def test_config_is_validated(change, match):
    cfg = SyntheticConfig(**({"frames": 4, "height": 16, "width": 16} | change))
    with pytest.raises(ValueError, match=match):
        next(iter_synthetic_frames(cfg))
