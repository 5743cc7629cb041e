"""The HDF5 store: round trip, encoding, atomic writes and one-line errors for bad files."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from nowcast.data.store import (
    UNDETECT_DBZ,
    Store,
    StoreError,
    StoreWriter,
    open_store,
    write_store,
)

GRID = {
    "projdef": "+proj=aeqd +lat_0=52 +lon_0=5 +units=m",
    "xsize": 16,
    "ysize": 12,
    "xscale": 1000.0,
    "yscale": 1000.0,
    "ll_lon": 3.9,
    "flipped": False,
}


def _frames(n: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.uniform(-10.0, 60.0, size=(n, 12, 16)).astype(np.float32)
    frames[:, :3, :] = np.nan  # no data
    frames[:, 5, :4] = -np.inf  # no echo (0 mm/h)
    frames[:, 6, :4] = -40.0  # below the floor: no echo
    times = 1_717_200_000 + 300 * np.arange(n, dtype=np.int64)
    return frames, times


def test_round_trip_values_times_and_metadata(tmp_path):
    frames, times = _frames()
    events = np.repeat([3, 4], 5)
    path = write_store(
        tmp_path / "s.h5",
        frames,
        times,
        grid=GRID,
        minutes_per_frame=5,
        events=events,
        zr_a=200.0,
        zr_b=1.6,
    )
    with open_store(path) as store:
        assert store.shape == (10, 12, 16)
        assert len(store) == 10
        np.testing.assert_array_equal(store.times, times)
        np.testing.assert_array_equal(store.events, events)
        assert store.grid == GRID
        assert (store.units, store.quantity) == ("dBZ", "DBZH")
        assert store.minutes_per_frame == 5.0
        assert store.zr == (200.0, 1.6)
        assert store.undetect_value == UNDETECT_DBZ == -32.0
        np.testing.assert_allclose(store.valid_fraction, 1 - 3 / 12)
        got = store.read(2, 7)

    assert got.dtype == np.float32 and got.shape == (5, 12, 16)
    expected = frames[2:7]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    echo = np.isfinite(expected) & (expected > -31.75)
    # 0.5 dBZ quantisation.
    assert np.max(np.abs(got[echo] - expected[echo])) <= 0.25 + 1e-6
    assert np.all(got[:, 5:7, :4] == UNDETECT_DBZ)


def test_raw_encoding_follows_odim_conventions(tmp_path):
    frames = np.array([[[np.nan, -np.inf, -32.0, -31.5, 0.0, 200.0]]], dtype=np.float32)
    path = write_store(tmp_path / "s.h5", frames, np.array([0]), grid={}, minutes_per_frame=5)
    with h5py.File(path) as f:
        raw = f["frames"][0, 0]
        attrs = dict(f["frames"].attrs)
        assert f["frames"].chunks == (1, 1, 6)
        assert f["frames"].compression == "gzip"
        assert f.attrs["nowcast_store_version"] == 2
    assert raw.dtype == np.uint8
    assert raw.tolist() == [255, 0, 0, 1, 64, 254]
    assert (attrs["gain"], attrs["offset"], attrs["nodata"], attrs["undetect"]) == (
        0.5,
        -32.0,
        255,
        0,
    )
    with Store(path) as store:
        np.testing.assert_array_equal(
            store.read(0, 1)[0, 0], [np.nan, -32.0, -32.0, -31.5, 0.0, 95.0]
        )


def test_blocks_and_datetime64_times_equal_one_write(tmp_path):
    frames, times = _frames()
    write_store(tmp_path / "one.h5", frames, times, grid=GRID, minutes_per_frame=5)
    stamps = times.astype("datetime64[s]")
    with StoreWriter(
        tmp_path / "blocks.h5", height=12, width=16, grid=GRID, minutes_per_frame=5
    ) as writer:
        writer.append(frames[:4], stamps[:4])
        writer.append(frames[4:], stamps[4:])
    with Store(tmp_path / "one.h5") as one, Store(tmp_path / "blocks.h5") as blocks:
        np.testing.assert_array_equal(one.times, blocks.times)
        np.testing.assert_array_equal(one.read(0, 10), blocks.read(0, 10))
        assert blocks.events is None and blocks.zr is None


@pytest.mark.parametrize(
    "frames_shape, times, match",
    [
        ((3, 12, 15), [0, 300, 600], r"shape \(n, 12, 16\)"),
        ((3, 12, 16), [0, 300], r"times must have shape \(3,\)"),
        ((3, 12, 16), [0, 600, 600], "strictly increasing"),
        ((3, 12, 16), [0.0, 300.0, 600.0], "int64 seconds"),
    ],
)
def test_append_validates_input(tmp_path, frames_shape, times, match):
    with (
        pytest.raises(ValueError, match=match),
        StoreWriter(tmp_path / "s.h5", height=12, width=16, grid={}, minutes_per_frame=5) as w,
    ):
        w.append(np.zeros(frames_shape), np.array(times))
    assert list(tmp_path.iterdir()) == []


def test_times_must_increase_across_blocks(tmp_path):
    frames, times = _frames(4)
    with (
        pytest.raises(ValueError, match="strictly increasing"),
        StoreWriter(tmp_path / "s.h5", height=12, width=16, grid={}, minutes_per_frame=5) as w,
    ):
        w.append(frames[:2], times[2:])
        w.append(frames[2:], times[:2])


def test_grid_size_must_match_frames(tmp_path):
    with pytest.raises(ValueError, match="grid xsize must equal the frame size 16"):
        StoreWriter(
            tmp_path / "s.h5", height=12, width=16, grid={"xsize": 17}, minutes_per_frame=5
        )


def test_failed_write_leaves_no_file(tmp_path):
    frames, times = _frames()
    target = tmp_path / "s.h5"
    with (
        pytest.raises(RuntimeError, match="conversion failed"),
        StoreWriter(target, height=12, width=16, grid={}, minutes_per_frame=5) as writer,
    ):
        writer.append(frames[:5], times[:5])
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_store(tmp_path):
    frames, times = _frames()
    target = write_store(tmp_path / "s.h5", frames, times, grid={}, minutes_per_frame=5)
    with (
        pytest.raises(RuntimeError),
        StoreWriter(target, height=12, width=16, grid={}, minutes_per_frame=5, overwrite=True),
    ):
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [target]
    assert len(Store(target)) == 10


def test_existing_output_needs_overwrite(tmp_path):
    frames, times = _frames()
    target = write_store(tmp_path / "s.h5", frames, times, grid={}, minutes_per_frame=5)
    with pytest.raises(FileExistsError, match="s.h5 exists; pass overwrite=true to replace it"):
        write_store(target, frames[:2], times[:2], grid={}, minutes_per_frame=5)
    write_store(target, frames[:2], times[:2], grid={}, minutes_per_frame=5, overwrite=True)
    assert len(Store(target)) == 2


def test_missing_file(tmp_path):
    with pytest.raises(StoreError, match=r"nope.h5 does not exist; check the path"):
        Store(tmp_path / "nope.h5")


def test_text_file_is_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("time,dbz\n0,12\n")
    with pytest.raises(StoreError, match=r"notes.h5 is not an HDF5 file; convert"):
        Store(path)


def test_truncated_file(tmp_path):
    frames, times = _frames(40)
    path = write_store(tmp_path / "s.h5", frames, times, grid=GRID, minutes_per_frame=5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"s.h5 is truncated or corrupt .*; write it again"):
        Store(path)


def test_hdf5_without_frames_is_not_a_store(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["nowcast_store_version"] = 1
        f.attrs["minutes_per_frame"] = 5
        f["times"] = np.arange(3, dtype=np.int64)
    with pytest.raises(
        StoreError, match=r"other.h5 is not a nowcast store \(no /frames dataset\)"
    ):
        Store(path)


def test_hdf5_without_version_is_not_a_store(tmp_path):
    path = tmp_path / "odim.h5"
    with h5py.File(path, "w") as f:
        f["dataset1/data1/data"] = np.zeros((4, 4), np.uint8)
    with pytest.raises(StoreError, match="no nowcast_store_version attribute"):
        Store(path)


def test_store_pickles_and_reopens_lazily(tmp_path):
    frames, times = _frames()
    store = Store(write_store(tmp_path / "s.h5", frames, times, grid=GRID, minutes_per_frame=5))
    expected = store.read(0, 3)
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read(0, 3), expected)
    store.close()
    np.testing.assert_array_equal(store.read(0, 3), expected)  # reopens after close


def test_histograms_count_raw_values_and_give_coverage_and_wet_fractions(tmp_path):
    frames, times = _frames()
    frames[4] = np.nan
    path = write_store(tmp_path / "s.h5", frames, times, grid={}, minutes_per_frame=5)
    store = Store(path)
    with h5py.File(path) as f:
        histogram, raw = f["histogram"][...], f["frames"][...]
    assert histogram.shape == (10, 256) and histogram.dtype == np.uint32
    for k in range(10):
        np.testing.assert_array_equal(histogram[k], np.bincount(raw[k].ravel(), minlength=256))
    values = store.read(0, 10)
    valid = ~np.isnan(values)
    np.testing.assert_allclose(store.valid_fraction, valid.mean(axis=(1, 2)))
    assert store.valid_fraction[4] == 0.0
    wet = (np.nan_to_num(values, nan=-99) >= 20.0).sum(axis=(1, 2))
    expected = np.divide(wet, valid.sum(axis=(1, 2)), out=np.zeros(10), where=valid.any((1, 2)))
    np.testing.assert_allclose(store.wet_fraction(20.0), expected)


def test_version_1_store_without_histogram_is_read(tmp_path):
    """Stores written before /histogram existed: statistics are counted from the frames."""
    frames, times = _frames()
    path = write_store(tmp_path / "s.h5", frames, times, grid={}, minutes_per_frame=5)
    with Store(path) as store:
        expected = store.valid_fraction, store.wet_fraction(10.0), store.read(0, 10)
    with h5py.File(path, "a") as f:
        del f["histogram"]
        f.attrs["nowcast_store_version"] = 1
    old = Store(path)
    np.testing.assert_allclose(old.valid_fraction, expected[0])
    np.testing.assert_allclose(old.wet_fraction(10.0), expected[1])
    np.testing.assert_array_equal(old.read(0, 10), expected[2])


@pytest.mark.parametrize("start, stop", [(-1, 2), (3, 3), (5, 11)])
def test_read_range_is_checked(tmp_path, start, stop):
    frames, times = _frames()
    store = Store(write_store(tmp_path / "s.h5", frames, times, grid={}, minutes_per_frame=5))
    with pytest.raises(ValueError, match="expected 0 <= start < stop <= 10"):
        store.read(start, stop)


def test_events_may_overlap_in_time_but_not_go_back_within_one(tmp_path):
    frames, _ = _frames(6)
    times = np.array([0, 300, 600, 150, 450, 750])  # event 2 starts during event 1
    events = np.array([1, 1, 1, 2, 2, 2])
    path = write_store(
        tmp_path / "s.h5", frames, times, grid={}, minutes_per_frame=5, events=events
    )
    np.testing.assert_array_equal(Store(path).times, times)
    with pytest.raises(ValueError, match="strictly increasing within an event"):
        write_store(tmp_path / "t.h5", frames, times, grid={}, minutes_per_frame=5)
    assert not (tmp_path / "t.h5").exists()


def test_vil_store_keeps_sevir_levels(tmp_path):
    levels = np.array([[[np.nan, 0.0, 3.0, 16.4, 254.0, 300.0]]], np.float32)
    path = write_store(
        tmp_path / "v.h5", levels, np.array([0]), grid={}, minutes_per_frame=5, quantity="VIL"
    )
    store = Store(path)
    assert (store.quantity, store.units, store.undetect_value) == ("VIL", "VIL level", 0.0)
    np.testing.assert_array_equal(store.read(0, 1)[0, 0], [np.nan, 0.0, 3.0, 16.0, 254.0, 254.0])
    with pytest.raises(ValueError, match="unknown store quantity, allowed: DBZH, VIL"):
        write_store(tmp_path / "x.h5", levels, np.array([0]), grid={}, minutes_per_frame=5,
                    quantity="RATE")  # fmt: skip
