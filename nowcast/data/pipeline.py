"""tf.data input pipeline: window start indices -> batches of (inputs, targets) from a store.

The only module of `nowcast.data` that imports TensorFlow. Windows are read lazily from the
HDF5 store (one window per read, never the whole store) and put on the model's normalised
scale (nowcast.units.normalise): dBZ mapped linearly from [dbz_min, dbz_max] to [0, 1], no echo
at 0.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from nowcast.config import NormalisationConfig
from nowcast.data.store import Store
from nowcast.units import normalise


def window_valid_fraction(
    store: Store | str | os.PathLike, starts: np.ndarray, window_length: int
) -> np.ndarray:
    """Fraction of pixels that are not no-data in each window, to skip mostly-empty windows.

    Uses the store's per-frame fractions (stored at write time), so no frame is read.

    Args:
        store: an open Store or the path of one.
        starts: (N,) window start indices.
        window_length: frames per window (n_in + n_out).

    Returns:
        (N,) float64 in [0, 1].
    """
    if not isinstance(store, Store):
        store = Store(store)
    starts = np.asarray(starts, dtype=np.int64)
    _check_starts(starts, window_length, len(store))
    # Every frame has H*W pixels, so the window's fraction is the mean of its frames' fractions.
    cumulative = np.concatenate([[0.0], np.cumsum(store.valid_fraction)])
    return (cumulative[starts + window_length] - cumulative[starts]) / window_length


def _check_starts(starts: np.ndarray, window_length: int, n_frames: int) -> None:
    if starts.ndim != 1 or starts.size == 0:
        raise ValueError(f"starts must be a non-empty 1-D array, Received: shape={starts.shape}")
    if starts.min() < 0 or starts.max() + window_length > n_frames:
        raise ValueError(
            f"windows of {window_length} frames must lie inside the store's {n_frames} frames, "
            f"Received: starts from {starts.min()} to {starts.max()}"
        )


def make_dataset(
    store_path: str | os.PathLike,
    starts: np.ndarray,
    *,
    n_in: int,
    n_out: int,
    batch_size: int,
    norm: NormalisationConfig,
    shuffle: bool,
    seed: int,
    shuffle_buffer: int = 256,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of (inputs, targets) windows read lazily from a store.

    Window k covers frames `starts[k] : starts[k] + n_in + n_out`. The start indices (not the
    frames) are shuffled in a bounded buffer, reshuffled each epoch; for a given seed the order
    of every epoch is the same from run to run. Reads run in parallel, in a fixed order.

    Args:
        store_path: the store (nowcast.data.store layout).
        starts: (N,) window start indices (from nowcast.data.windows).
        n_in, n_out: input and target frames per window.
        batch_size: windows per batch.
        norm: the dBZ <-> [0, 1] normalisation.
        shuffle: shuffle the window order (training) or keep it (evaluation).
        seed: shuffle seed.
        shuffle_buffer: size of the shuffle buffer (window indices).
        repeat: repeat the epochs forever.
        drop_remainder: drop a last, smaller batch.

    Returns:
        A dataset of `(inputs, targets)`:
        inputs (B, n_in, H, W, 1) float32 on [0, 1], no-data pixels set to 0;
        targets (B, n_out, H, W, 1) float32 on [0, 1], no-data pixels NaN (losses and metrics
        mask them).
    """
    for name, value in (("n_in", n_in), ("n_out", n_out), ("batch_size", batch_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, Received: {name}={value}")
    if shuffle and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, Received: {shuffle_buffer=}")
    store = Store(store_path)
    length = n_in + n_out
    starts = np.asarray(starts, dtype=np.int64)
    _check_starts(starts, length, len(store))
    _, height, width = store.shape

    def read_window(start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = normalise(store.read(int(start), int(start) + length), norm)  # (T, H, W)
        inputs = np.nan_to_num(frames[:n_in], nan=0.0)
        return inputs[..., None], frames[n_in:, ..., None]

    def load(start: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        inputs, targets = tf.numpy_function(
            read_window, [start], [tf.float32, tf.float32], stateful=False
        )
        return (
            tf.ensure_shape(inputs, (n_in, height, width, 1)),
            tf.ensure_shape(targets, (n_out, height, width, 1)),
        )

    dataset = tf.data.Dataset.from_tensor_slices(starts)
    if shuffle:
        dataset = dataset.shuffle(
            min(shuffle_buffer, starts.size), seed=seed, reshuffle_each_iteration=True
        )
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)
