"""tf.data pipeline: window contents, normalisation, no-data handling, shapes and order."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast.config import NormalisationConfig
from nowcast.data.pipeline import make_dataset, window_valid_fraction
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


def test_windows_hold_the_normalised_store_frames(store_path):
    starts = np.array([0, 4, 9, 15])
    dataset = make_dataset(
        store_path, starts, n_in=N_IN, n_out=N_OUT, batch_size=3, norm=NORM, shuffle=False, seed=0
    )
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
    dataset = make_dataset(
        store_path, [5], n_in=N_IN, n_out=N_OUT, batch_size=1, norm=NORM, shuffle=False, seed=0
    )
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
    dataset = make_dataset(
        store_path,
        np.arange(10),
        n_in=N_IN,
        n_out=N_OUT,
        batch_size=4,
        norm=NORM,
        shuffle=True,
        seed=0,
        drop_remainder=True,
    )
    inputs_spec, targets_spec = dataset.element_spec
    assert tuple(inputs_spec.shape) == (4, N_IN, H, W, 1)
    assert tuple(targets_spec.shape) == (4, N_OUT, H, W, 1)
    assert len(_batches(dataset)) == 2


def _order(store_path, seed, epochs=1):
    dataset = make_dataset(
        store_path,
        np.arange(15),
        n_in=N_IN,
        n_out=N_OUT,
        batch_size=4,
        norm=NORM,
        shuffle=True,
        seed=seed,
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


def test_window_valid_fraction(store_path):
    starts = np.array([0, 3, 5, 15])
    length = N_IN + N_OUT
    with Store(store_path) as store:
        expected = [np.mean(~np.isnan(store.read(s, s + length))) for s in starts]
        np.testing.assert_allclose(window_valid_fraction(store, starts, length), expected)
    np.testing.assert_allclose(window_valid_fraction(store_path, starts, length), expected)


@pytest.mark.parametrize("starts", [[16], [-1], []])
def test_windows_outside_the_store_are_rejected(store_path, starts):
    with pytest.raises(ValueError, match="starts"):
        make_dataset(
            store_path,
            np.array(starts, dtype=np.int64),
            n_in=N_IN,
            n_out=N_OUT,
            batch_size=1,
            norm=NORM,
            shuffle=False,
            seed=0,
        )
