"""tf.data pipeline: window contents, normalisation, no-data handling, shapes and order."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from nowcast.config import DataConfig, NormalisationConfig
from nowcast.data.pipeline import (
    WindowReader,
    make_dataset,
    select_windows,
    valid_windows,
    whole_frame_batch_size,
)
from nowcast.data.store import Store, write_store
from nowcast.units import normalise

N_IN, N_OUT, H, W = 3, 2, 16, 12
NORM = NormalisationConfig(dbz_min=0.0, dbz_max=70.0)


@pytest.fixture
def store_path(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.uniform(-5.0, 65.0, size=(20, H, W)).astype(np.float32)
    frames[:, :2, :] = np.nan  # no data in every frame
    frames[7] = np.nan  # a frame (almost) without data
    frames[:, 5, 5] = -np.inf  # no echo
    # Frame k holds k dBZ at pixel (4, 4), so a window shows which frames it holds.
    frames[:, 4, 4] = np.arange(20)
    times = np.arange(20, dtype=np.int64) * 300
    return write_store(tmp_path / "s.h5", frames, times, grid={}, minutes_per_frame=5)


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def _first_frames(batches) -> list[int]:
    """The index of the first frame of every window, from pixel (4, 4)."""
    return [int(round(v)) for x, _ in batches for v in x[:, 0, 4, 4, 0] * 70.0]


def _dataset(path, starts, *, batch_size, n_in=N_IN, n_out=N_OUT, seed=0, weights=None,
             augment=False, patch_size=None, shuffle=False, **dataset_kwargs):  # fmt: skip
    reader = WindowReader(
        path, np.asarray(starts), n_in=n_in, n_out=n_out, norm=NORM, seed=seed, weights=weights,
        augment=augment, patch_size=patch_size,
    )  # fmt: skip
    return make_dataset(reader, batch_size=batch_size, shuffle=shuffle, **dataset_kwargs)


def test_windows_hold_the_normalised_store_frames(store_path):
    starts = np.array([0, 4, 9, 15])
    dataset = _dataset(store_path, starts, batch_size=3)
    batches = _batches(dataset)
    assert [x.shape for x, _ in batches] == [(3, N_IN, H, W, 1), (1, N_IN, H, W, 1)]
    assert [y.shape for _, y in batches] == [(3, N_OUT, H, W, 1), (1, N_OUT, H, W, 1)]
    assert all(x.dtype == np.float32 and y.dtype == np.float32 for x, y in batches)

    inputs = np.concatenate([x for x, _ in batches])[..., 0]
    targets = np.concatenate([y for _, y in batches])[..., 0]
    with Store(store_path) as store:
        for k, start in enumerate(starts):
            expected = normalise(store.read(start, start + N_IN + N_OUT), NORM)
            np.testing.assert_array_equal(inputs[k], np.nan_to_num(expected[:N_IN], nan=0.0))
            np.testing.assert_array_equal(targets[k], expected[N_IN:])
    assert _first_frames(batches) == starts.tolist()


def test_no_data_is_zero_in_inputs_and_nan_in_targets(store_path):
    dataset = _dataset(store_path, [5], batch_size=1)
    ((inputs, targets),) = _batches(dataset)  # frames 5-7 in, 8-9 out; frame 7 all no data
    assert np.all(inputs[0, :, :2] == 0.0)
    frame_7 = inputs[0, 2, ..., 0]
    assert np.count_nonzero(frame_7) == 1 and frame_7[4, 4] == np.float32(7 / 70)
    assert not np.any(np.isnan(inputs))
    assert np.all(np.isnan(targets[0, :, :2]))
    assert not np.any(np.isnan(targets[0, :, 2:]))
    assert np.all(targets[0, :, 5, 5] == 0.0)  # no echo is 0, not NaN
    assert inputs.min() >= 0.0 and inputs.max() <= 1.0


def test_static_shapes_for_keras(store_path):
    dataset = _dataset(store_path, np.arange(10), batch_size=4, shuffle=True, drop_remainder=True)
    inputs_spec, targets_spec = dataset.element_spec
    assert tuple(inputs_spec.shape) == (4, N_IN, H, W, 1)
    assert tuple(targets_spec.shape) == (4, N_OUT, H, W, 1)
    assert len(_batches(dataset)) == 2


def _order(store_path, seed, epochs=1):
    dataset = _dataset(
        store_path,
        np.arange(15),
        batch_size=4,
        seed=seed,
        shuffle=True,
        shuffle_buffer=8,
        repeat=epochs > 1,
        drop_remainder=True,
    )
    return _first_frames(_batches(dataset.take(3 * epochs)))


def test_shuffled_order_is_deterministic_for_a_seed(store_path):
    first = _order(store_path, seed=1)
    assert first == _order(store_path, seed=1)
    assert first != sorted(first)
    assert first != _order(store_path, seed=2)
    assert len(set(first)) == len(first) == 12


def test_repeat_reshuffles_each_epoch(store_path):
    two_epochs = _order(store_path, seed=1, epochs=2)
    assert two_epochs == _order(store_path, seed=1, epochs=2)
    assert two_epochs[:12] != two_epochs[12:]


@pytest.mark.parametrize("starts", [[16], [-1], []])
def test_windows_outside_the_store_are_rejected(store_path, starts):
    with pytest.raises(ValueError, match="starts"):
        _dataset(store_path, np.array(starts, dtype=np.int64), batch_size=1)


# ----- weights and augmentation ------------------------------------------------------------------

SQUARE = 8


@pytest.fixture
def square_store(tmp_path):
    frames = np.random.default_rng(1).uniform(1.0, 69.0, size=(40, SQUARE, SQUARE))
    times = np.arange(40, dtype=np.int64) * 300
    return write_store(tmp_path / "sq.h5", frames, times, grid={}, minutes_per_frame=5)


def _symmetries(window: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of a (T, H, W) window, in make_dataset's numbering."""
    turned = [np.rot90(window, k, axes=(1, 2)) for k in range(4)]
    return turned + [t[:, :, ::-1] for t in turned]


def test_weights_come_with_each_window(store_path):
    dataset = _dataset(
        store_path, np.array([0, 4, 9]), batch_size=2, weights=np.array([1.0, 0.25, 1.0])
    )
    batches = [tuple(t.numpy() for t in batch) for batch in dataset]
    assert [len(b) for b in batches] == [3, 3]
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), [1.0, 0.25, 1.0])
    assert _first_frames([b[:2] for b in batches]) == [0, 4, 9]


def _augmented(path, seed, starts, n_in=2, n_out=2, positions=None):
    dataset = _dataset(
        path, starts, batch_size=1, n_in=n_in, n_out=n_out, seed=seed, augment=True,
        positions=positions,
    )  # fmt: skip
    return [np.concatenate([x[0, ..., 0], y[0, ..., 0]]) for x, y in dataset.as_numpy_iterator()]


def test_augmentation_applies_one_symmetry_to_each_whole_window(square_store):
    starts = np.arange(36)
    windows = _augmented(square_store, 3, starts)
    with Store(square_store) as store:
        originals = [normalise(store.read(s, s + 4), NORM) for s in starts]
    used = []
    for got, original in zip(windows, originals, strict=True):
        matches = [k for k, t in enumerate(_symmetries(original)) if np.array_equal(got, t)]
        assert len(matches) == 1  # inputs and targets turned alike
        used.append(matches[0])
    assert set(used) == set(range(8))
    again = _augmented(square_store, 3, starts)
    assert all(np.array_equal(a, b) for a, b in zip(windows, again, strict=True))
    other = _augmented(square_store, 4, starts)
    assert not all(np.array_equal(a, b) for a, b in zip(windows, other, strict=True))


def test_augmentation_follows_the_window_positions_given(square_store):
    """A stream's tail, read alone with its positions, is flipped as in the whole stream."""
    starts = np.arange(20)
    whole = _augmented(square_store, 3, starts)
    tail = _augmented(square_store, 3, starts[12:], positions=np.arange(12, 20))
    assert all(np.array_equal(a, b) for a, b in zip(whole[12:], tail, strict=True))
    restarted = _augmented(square_store, 3, starts[12:])
    assert not all(np.array_equal(a, b) for a, b in zip(whole[12:], restarted, strict=True))
    with pytest.raises(ValueError, match=r"positions must have one value per window \(8,\)"):
        _augmented(square_store, 3, starts[12:], positions=np.arange(3))


def test_augmentation_keeps_the_shape_of_non_square_frames(store_path):
    windows = _augmented(store_path, 0, np.arange(12))
    assert all(w.shape == (4, H, W) for w in windows)


# ----- which windows a run uses -----------------------------------------------------------------


def _patches(path, seed, starts, patch_size, augment=False, positions=None):
    dataset = _dataset(
        path, starts, batch_size=1, n_in=2, n_out=2, seed=seed, augment=augment,
        patch_size=patch_size, positions=positions,
    )  # fmt: skip
    return [np.concatenate([x[0, ..., 0], y[0, ..., 0]]) for x, y in dataset.as_numpy_iterator()]


def test_patches_are_one_crop_of_each_whole_window_at_a_place_drawn_per_position(square_store):
    starts = np.arange(36)
    patches = _patches(square_store, 3, starts, patch_size=5)
    with Store(square_store) as store:
        originals = [normalise(store.read(s, s + 4), NORM) for s in starts]
    places = []
    for got, original in zip(patches, originals, strict=True):
        assert got.shape == (4, 5, 5)
        crops = [(top, left) for top in range(4) for left in range(4)
                 if np.array_equal(got, original[:, top : top + 5, left : left + 5])]  # fmt: skip
        assert len(crops) == 1  # inputs and targets cut at the same place
        places += crops
    assert len(set(places)) > 8  # drawn anew for each window, over the whole frame
    again = _patches(square_store, 3, starts, patch_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(patches, again, strict=True))
    tail = _patches(square_store, 3, starts[30:], patch_size=5, positions=np.arange(30, 36))
    assert all(np.array_equal(a, b) for a, b in zip(patches[30:], tail, strict=True))


def test_patches_are_placed_where_the_radars_see(tmp_path):
    """A composite with data in its right quarter only: every patch lies at least half in it."""
    frames = np.full((12, 16, 16), np.nan, np.float32)
    frames[:, :, 12:] = 20.0
    frames[5, 0, 15] = np.nan  # a pixel missing in one frame counts as missing in its windows
    path = write_store(tmp_path / "edge.h5", frames, np.arange(12) * 300, grid={},
                       minutes_per_frame=5)  # fmt: skip
    patches = _patches(path, 0, np.repeat(np.arange(8), 5), patch_size=6)
    valid_shares = [np.mean(~np.isnan(p[-1])) for p in patches]
    assert min(valid_shares) >= 0.5 and max(valid_shares) > 0.6  # drawn among the places
    # No place with enough data: anywhere, as before.
    patches = _patches(path, 0, np.arange(8), patch_size=12)
    assert min(np.mean(~np.isnan(p[-1])) for p in patches) < 0.5


def test_patches_of_non_square_frames_are_square_and_must_fit(store_path):
    flipped = _patches(store_path, 0, np.arange(16), patch_size=W - 2, augment=True)
    assert all(w.shape == (4, W - 2, W - 2) for w in flipped)
    with pytest.raises(ValueError, match=rf"patch_size={H} is larger than the {H} x {W} frames"):
        _patches(store_path, 0, np.arange(12), patch_size=H)


def _data_config(path, **overrides):
    cfg = OmegaConf.structured(DataConfig(name="test", path=str(path)))
    cfg.n_in, cfg.n_out, cfg.batch_size = 2, 2, 1
    cfg.split.block_hours = 1.0
    cfg.split.val_fraction = cfg.split.test_fraction = 0.2
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture
def day_store(tmp_path):
    """Ten hours of 5-minute frames: rain in the first half of every hour, dry in the rest."""
    frames = np.full((120, 6, 6), -np.inf, np.float32)
    wet = (np.arange(120) % 12) < 6
    frames[wet, :3, :] = 30.0  # half of the pixels at 30 dBZ
    frames[:, 5, 5] = np.nan
    times = np.arange(120, dtype=np.int64) * 300
    return Store(write_store(tmp_path / "day.h5", frames, times, grid={}, minutes_per_frame=5))


def test_select_windows_without_dry_handling_keeps_every_whole_window(day_store):
    selection = select_windows(day_store, _data_config(day_store.path))
    assert selection.train_weights is None
    total = sum(len(s) for s in selection.starts.values())
    assert total > 80 and all(len(s) for s in selection.starts.values())


def test_dry_training_windows_are_skipped_or_down_weighted(day_store):
    base = select_windows(day_store, _data_config(day_store.path))
    dry_rule = {"min_wet_fraction": 0.2, "wet_threshold": 20.0}
    skipped = select_windows(day_store, _data_config(day_store.path, **dry_rule))
    frames_wet = (np.arange(120) % 12) < 6
    wet_share = np.array([frames_wet[s : s + 4].mean() * 0.5 for s in base.starts["train"]])
    np.testing.assert_array_equal(skipped.starts["train"], base.starts["train"][wet_share >= 0.2])
    for name in ("val", "test"):  # scores see every kind of weather
        np.testing.assert_array_equal(skipped.starts[name], base.starts[name])

    weighted = select_windows(day_store, _data_config(day_store.path, dry_weight=0.1, **dry_rule))
    np.testing.assert_array_equal(weighted.starts["train"], base.starts["train"])
    np.testing.assert_allclose(weighted.train_weights, np.where(wet_share >= 0.2, 1.0, 0.1))


def test_mostly_no_data_store_is_one_line_naming_it(tmp_path):
    frames = np.full((40, 4, 4), np.nan, np.float32)
    frames[:, 0, 0] = 20.0
    store = Store(write_store(tmp_path / "empty.h5", frames, np.arange(40) * 300, grid={},
                              minutes_per_frame=5))  # fmt: skip
    with pytest.raises(ValueError, match=r"every window of .*empty.h5 is mostly no-data"):
        select_windows(store, _data_config(store.path))


def test_too_few_windows_for_a_batch_names_the_store(day_store):
    with pytest.raises(
        ValueError, match=r"the train split of .*day.h5 has \d+ windows, fewer than"
    ):
        select_windows(day_store, _data_config(day_store.path, batch_size=200))


def test_a_validation_split_smaller_than_a_batch_is_still_scored(day_store):
    cfg = _data_config(day_store.path, batch_size=20, **{"split.val_fraction": 0.1})
    starts = select_windows(day_store, cfg).starts
    assert 0 < len(starts["val"]) < 20 <= len(starts["train"])


@pytest.fixture
def composite_store(tmp_path):
    """A composite whose radars see 30 % of the grid; in frames 20-29 most radars are down."""
    frames = np.full((40, 10, 10), np.nan, np.float32)
    frames[:, :3, :] = 25.0  # 30 pixels of 100 covered
    frames[20:30, :3, :] = np.nan
    frames[20:30, 0, :5] = 25.0  # 5 of the 30 left
    return Store(write_store(tmp_path / "composite.h5", frames, np.arange(40) * 300, grid={},
                             minutes_per_frame=5))  # fmt: skip


def test_valid_fraction_of_the_grid_or_of_the_radars_coverage(composite_store):
    with pytest.raises(ValueError, match=r"radars cover at most 30 % of its grid: set "
                                         r"data.valid_fraction_of=coverage"):  # fmt: skip
        valid_windows(composite_store, _data_config(composite_store.path))
    cfg = _data_config(composite_store.path, valid_fraction_of="coverage")
    # A window of 4 frames needs half of the coverage: at most two frames with a sixth of it.
    expected = [s for s in range(37) if sum(20 <= f < 30 for f in range(s, s + 4)) <= 2]
    np.testing.assert_array_equal(valid_windows(composite_store, cfg), expected)
    assert 18 in expected and 19 not in expected and 28 in expected
    with pytest.raises(ValueError, match="valid_fraction_of must be grid or coverage"):
        valid_windows(composite_store, _data_config(composite_store.path, valid_fraction_of="x"))


def test_whole_frames_run_in_smaller_batches_than_patches():
    assert whole_frame_batch_size(8, 128 * 128) == 8  # the synthetic set: the run's batch
    assert whole_frame_batch_size(8, 512 * 512) == 2
    assert whole_frame_batch_size(8, 760 * 696) == 1  # a KNMI composite: one window at a time
    assert whole_frame_batch_size(4, 64 * 64) == 4
