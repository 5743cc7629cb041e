"""Several stores read as one sequence: windows, splits and reads never cross a store."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from nowcast.config import DataConfig
from nowcast.data.pipeline import WindowReader, select_windows, valid_windows
from nowcast.data.store import StoreError, write_store
from nowcast.data.store_set import StoreSet, configured_paths

STEP = 300


def _store(path, frames: int, shape=(8, 8), *, start=0, minutes=5, value=30.0, **kwargs):
    data = np.full((frames, *shape), value, np.float32)
    data += np.arange(frames, dtype=np.float32)[:, None, None] * 0.5  # frame k reads 30 + k/2
    times = start + np.arange(frames) * minutes * 60
    return write_store(path, data, times, grid={}, minutes_per_frame=minutes, **kwargs)


def _data_cfg(**overrides) -> DataConfig:
    cfg = OmegaConf.structured(DataConfig(name="radar_hdf5", path="unused"))
    cfg.merge_with(overrides)
    return cfg


@pytest.fixture
def two_stores(tmp_path):
    first = _store(tmp_path / "a.h5", 48)  # 4 hours
    second = _store(tmp_path / "b.h5", 36, (16, 12), start=10 * 86400)  # 3 hours, 10 days on
    return first, second


def test_a_set_lays_stores_end_to_end_and_reads_within_one(two_stores):
    with StoreSet(two_stores) as stores:
        assert len(stores) == 84 and stores.offsets.tolist() == [0, 48, 84]
        assert stores.shapes == [(8, 8), (16, 12)] and stores.frame_shape is None
        assert stores.locate(50) == (1, 2)
        np.testing.assert_allclose(stores.read(50, 52)[:, 0, 0], [31.0, 31.5])
        with pytest.raises(ValueError, match="cross from .*a.h5 into the next store"):
            stores.read(46, 50)


def test_windows_never_cross_a_store(two_stores):
    cfg = _data_cfg(n_in=3, n_out=3)
    with StoreSet(two_stores) as stores:
        starts = valid_windows(stores, cfg)
        assert starts.size == (48 - 5) + (36 - 5)
        segments = stores.segments
        assert np.all(segments[starts] == segments[starts + 5])


def test_the_split_deals_each_stores_blocks_and_holds_out_whole_stores(two_stores):
    cfg = _data_cfg(n_in=3, n_out=3, batch_size=2, split={"block_hours": 1.0})
    with StoreSet(two_stores) as stores:
        splits = select_windows(stores, cfg).starts
        for name in ("train", "val", "test"):
            assert splits[name].size > 0, name
        frames = {
            name: {int(f) for start in chosen for f in range(start, start + 6)}
            for name, chosen in splits.items()
        }
        assert not frames["train"] & (frames["val"] | frames["test"])
        assert not frames["val"] & frames["test"]
        # Blocks of each store, counted from its own first frame: the second store, ten days
        # later, is three blocks, not one that goes whole to a split.
        assert set(stores.segments[splits["train"]].tolist()) == {0, 1}
        assert set(stores.segments[splits["test"]].tolist()) == {1}
    cfg.split.test_fraction = 0.0
    with StoreSet(two_stores, holdout=1) as stores:
        selection = select_windows(stores, cfg)
        test = selection.starts["test"]
        assert np.all(stores.segments[test] == 1) and test.size == 36 - 5
        for name in ("train", "val"):
            assert np.all(stores.segments[selection.starts[name]] == 0)


def test_the_block_length_is_chosen_when_not_given(two_stores, caplog):
    cfg = _data_cfg(n_in=3, n_out=3, batch_size=2)
    with StoreSet(two_stores) as stores, caplog.at_level("INFO"):
        selection = select_windows(stores, cfg)
    assert selection.block_hours == 1.5  # two stores of 3-4 hours: 24 h down to 2 h do not do
    assert (
        "Split by blocks of 1.5 h, the longest that gives every split its windows" in caplog.text
    )


def test_a_store_left_out_of_training_is_named(two_stores, caplog):
    split = {"block_hours": 6.0, "val_fraction": 0.5, "test_fraction": 0.0}
    cfg = _data_cfg(n_in=3, n_out=3, batch_size=2, split=split)
    with StoreSet(two_stores) as stores, caplog.at_level("WARNING"):
        selection = select_windows(stores, cfg)  # one block a store: train, then val
    assert np.all(stores.segments[selection.starts["train"]] == 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{two_stores[1]} gives no training windows")
    assert "shorter data.split.block_hours" in warnings[0]


def test_a_reader_of_whole_frames_refuses_stores_of_two_sizes(two_stores):
    norm = _data_cfg().normalisation
    with pytest.raises(ValueError, match=r"grids of different sizes \(8 x 8, 16 x 12\)"):
        WindowReader(list(two_stores), np.array([0, 50]), n_in=2, n_out=2, norm=norm, seed=0)
    reader = WindowReader(
        list(two_stores), np.array([0, 50]), n_in=2, n_out=2, norm=norm, seed=0, patch_size=8
    )
    inputs, targets = reader.read(50, 0)
    assert inputs.shape == (2, 8, 8, 1) and targets.shape == (2, 8, 8, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"minutes": 10}, r"b.h5 has a time step of 10 min, but .*a.h5 has 5 min"),
        ({"quantity": "VIL"}, r"b.h5 has quantity VIL, but .*a.h5 has DBZH"),
    ],
)
def test_stores_of_another_step_or_quantity_are_refused(tmp_path, kwargs, match):
    first = _store(tmp_path / "a.h5", 12)
    second = _store(tmp_path / "b.h5", 12, **kwargs)
    with pytest.raises(StoreError, match=match):
        StoreSet([first, second])


def test_configured_paths_take_one_store_or_a_list():
    assert configured_paths(_data_cfg(path="a.h5")) == (["a.h5"], [])
    both = _data_cfg(path=["a.h5", "b.h5", "c.h5"], holdout=["c.h5"])
    assert configured_paths(both) == (["a.h5", "b.h5"], ["c.h5"])
    with pytest.raises(ValueError, match="data.path names a store twice"):
        configured_paths(_data_cfg(path=["a.h5", "a.h5"]))
    with pytest.raises(ValueError, match="every store of data.path is held out"):
        configured_paths(_data_cfg(path=["a.h5"], holdout=["a.h5"]))
