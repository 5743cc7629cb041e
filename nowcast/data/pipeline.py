"""Input pipeline: window start indices -> batches of (inputs, targets) from a store.

Two paths over the same windows: `make_dataset` (tf.data, the default under the TensorFlow
backend) and `WindowDataset` (a `keras.utils.PyDataset` with its own reader threads, for the
other backends and for evaluation). `input_batches` picks one by backend. Both read each window
with `WindowReader`, so they yield the same windows, normalisation, weights and flips in the same
order. Windows are read lazily from the HDF5 store (one window per read, never the whole store)
and put on the model's normalised scale (nowcast.units.normalise): dBZ mapped linearly from
[dbz_min, dbz_max] to [0, 1], no echo at 0. TensorFlow is imported only by `make_dataset`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np

from nowcast.config import DataConfig, NormalisationConfig
from nowcast.data.store import Store
from nowcast.data.store_set import StoreSet
from nowcast.data.windows import (
    check_positive_int,
    choose_block_hours,
    longest_run,
    make_windows,
    split_windows,
    stores_out_of_training,
    window_means,
)
from nowcast.units import normalise

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

# Dihedral transforms as (quarter turns, mirror) indices 0..7: k % 4 quarter turns, then a
# left-right mirror when k >= 4. Those with an odd number of quarter turns swap height and
# width, so non-square frames use only the four others.
_ALL_TRANSFORMS = np.arange(8)
_SHAPE_KEEPING_TRANSFORMS = np.array([0, 2, 4, 6])


# Whole frames at once, forward pass and scores: about this many pixels per batch.
PIXELS_PER_BATCH = 2**19


def whole_frame_batch_size(batch_size: int, frame_pixels: int) -> int:
    """The windows of whole frames run at once (validation, scoring): `batch_size`, cut to
    about `PIXELS_PER_BATCH` pixels.

    A batch of whole frames holds a dozen float fields (activations, forecasts, masks, sums);
    on 760 x 696 radar frames, 8 windows took 21 GB to score and 31 GB to validate, 1 window
    4 GB, and 1 window at a time was the fastest (docs/benchmarks.md).

    >>> whole_frame_batch_size(8, 128 * 128), whole_frame_batch_size(8, 512 * 512)
    (8, 2)
    >>> whole_frame_batch_size(8, 760 * 696)
    1
    """
    return max(1, min(batch_size, PIXELS_PER_BATCH // frame_pixels))


@dataclass
class WindowSelection:
    """The windows of a store that a run uses.

    Attributes:
        starts: split name ("train", "val", "test") -> (N,) int64 window start indices.
        train_weights: (N_train,) float32 sample weight of each training window, or None when
            every weight is 1 (no dry windows are down-weighted).
        block_hours: the length of the blocks of time the split was dealt in.
    """

    starts: dict[str, np.ndarray]
    train_weights: np.ndarray | None = None
    block_hours: float | None = None


def as_store_set(store: Store | StoreSet) -> StoreSet:
    """A store as a set of one; a set as it is."""
    return store if isinstance(store, StoreSet) else StoreSet([store])


def _coverage_share(store: Store, data_cfg: DataConfig) -> np.ndarray:
    fraction = store.valid_fraction
    if data_cfg.valid_fraction_of == "grid":
        return fraction
    if data_cfg.valid_fraction_of == "coverage":
        return fraction / max(float(fraction.max()), np.finfo(np.float32).tiny)
    raise ValueError(
        "data.valid_fraction_of must be grid or coverage. "
        f"Received: data.valid_fraction_of={data_cfg.valid_fraction_of!r}"
    )


def valid_fraction(store: Store | StoreSet, data_cfg: DataConfig) -> np.ndarray:
    """(T,) share of each frame's pixels that have data, as `data.valid_fraction_of` counts it.

    "grid": of all the frame's pixels. "coverage": of the radar network's coverage, taken as the
    largest share of any frame of the store (of each store, in a set), so a composite whose
    radars see a quarter of its rectangular grid counts a frame with every radar running as
    fully valid.
    """
    stores = as_store_set(store)
    return stores.per_frame([_coverage_share(member, data_cfg) for member in stores.members])


def _coverage_hint(coverage: float) -> str:
    """What to set when a store's radars cover only `coverage` of its grid."""
    return (
        f"the radars cover at most {100 * coverage:.0f} % of its grid: set "
        "data.valid_fraction_of=coverage to count the coverage's share instead"
    )


def valid_windows(store: Store | StoreSet, data_cfg: DataConfig) -> np.ndarray:
    """Start indices of every window of the store (or set) that never crosses a gap, an event
    or a store and has at least `min_valid_fraction` of its pixels valid (steps 1-2 of
    `select_windows`).

    Raises:
        ValueError: one line naming the store when it is too short for one window, has no
            evenly spaced run long enough, or is mostly no-data.
    """
    stores = as_store_set(store)
    length = data_cfg.n_in + data_cfg.n_out
    window_hint = f"data.n_in + data.n_out = {length}"
    if len(stores) < length:
        raise ValueError(
            f"{stores.path} has {len(stores)} frames, fewer than one window needs "
            f"({window_hint}); convert more frames or use shorter windows"
        )
    starts = make_windows(
        stores.times,
        n_in=data_cfg.n_in,
        n_out=data_cfg.n_out,
        stride=data_cfg.stride,
        minutes_per_frame=stores.minutes_per_frame,
        events=stores.events,
    )
    if starts.size == 0:
        run = longest_run(
            stores.times, minutes_per_frame=stores.minutes_per_frame, events=stores.events
        )
        raise ValueError(
            f"{stores.path} has no {length} consecutive frames {stores.minutes_per_frame:g} min "
            f"apart (the longest run is {run}), fewer than one window needs ({window_hint}); "
            "fill the gaps or use shorter windows"
        )
    valid = window_means(valid_fraction(stores, data_cfg), starts, length)
    kept = starts[valid >= data_cfg.min_valid_fraction]
    if kept.size == 0:
        coverage = max(float(member.valid_fraction.max()) for member in stores.members)
        hint = "lower data.min_valid_fraction"
        if data_cfg.valid_fraction_of == "grid" and coverage < 0.9:
            hint = f"{_coverage_hint(coverage)}, or {hint}"
        raise ValueError(
            f"every window of {stores.path} is mostly no-data (its best has "
            f"{100 * float(valid.max()):.0f} % of its pixels valid, less than "
            f"data.min_valid_fraction={data_cfg.min_valid_fraction} of the "
            f"{data_cfg.valid_fraction_of}); {hint}"
        )
    for member, store in enumerate(stores.members):
        if not np.any(stores.segments[kept] == member):
            coverage = float(store.valid_fraction.max())
            hint = ""
            if data_cfg.valid_fraction_of == "grid" and coverage < data_cfg.min_valid_fraction:
                hint = f"; {_coverage_hint(coverage)}"
            log.warning(
                "%s gives no window (too short, gaps, or mostly no-data); the other stores go "
                "on without it%s",
                store.path,
                hint,
            )
    return kept


def _split(
    stores: StoreSet, starts: np.ndarray, data_cfg: DataConfig, min_train: int
) -> tuple[dict[str, np.ndarray], float]:
    """The windows of the stores that are not held out, split by blocks of time (of the
    configured length, or of the longest that gives every split its windows, training at
    least `min_train`, and leaves every store in training where one does), and the length."""
    length = data_cfg.n_in + data_cfg.n_out
    split_cfg = data_cfg.split
    segments = stores.segments if len(stores.members) > 1 else None
    kwargs = dict(
        window_length=length,
        val_fraction=split_cfg.val_fraction,
        test_fraction=split_cfg.test_fraction,
        events=stores.split_events,
        segments=segments,
    )
    if split_cfg.block_hours is not None:
        hours = split_cfg.block_hours
        splits = split_windows(stores.times, starts, block_hours=hours, **kwargs)
    else:
        hours, splits = choose_block_hours(
            stores.times,
            starts,
            minutes_per_frame=stores.minutes_per_frame,
            min_train=min_train,
            **kwargs,
        )
    left_out = stores_out_of_training(segments, starts, splits["train"])
    if split_cfg.block_hours is None:
        log.info(
            "Split by blocks of %g h, the longest that gives every split its windows%s "
            "(data.split.block_hours=<hours> to choose): %s%s",
            hours,
            " and every store training windows"
            if segments is not None and left_out.size == 0
            else "",
            ", ".join(f"{name} {len(chosen)} windows" for name, chosen in splits.items()),
            ", and the held-out stores' windows to test" if stores.holdout else "",
        )
    for segment in left_out:
        log.warning(
            "%s gives no training windows: its windows went to validation or test in blocks "
            "of %g h, so the network does not train on it; set a shorter "
            "data.split.block_hours, or hold it out with data.holdout=[...] to score it",
            stores.members[segment].path,
            hours,
        )
    return splits, hours


def select_windows(store: Store | StoreSet, data_cfg: DataConfig) -> WindowSelection:
    """Window starts per split: never across a gap, an event or a store, mostly valid, dry ones
    handled.

    1. Windows of `n_in + n_out` evenly spaced frames, every `stride` frames (make_windows).
    2. Windows with less than `min_valid_fraction` of their pixels valid (of the grid or of the
       radars' coverage, `valid_fraction_of`) are left out.
    3. Split by blocks of `split.block_hours` (whole events for stores with events; each
       store's blocks apart in a set); unset, the longest block that gives every split its
       windows and, in a set, every store training windows where one does
       (nowcast.data.windows.choose_block_hours). Every window of a store held out
       whole (`data.holdout`) goes to the test split.
    4. Training windows whose mean fraction of wet pixels (valid pixels at or above
       `wet_threshold`, store units) is below `min_wet_fraction` are dry: left out when
       `dry_weight` is 0, else kept with that sample weight. Validation and test windows are
       all kept, so scores describe every kind of weather.

    Args:
        store: the open store, or a set of them (window starts then index the set's frames).
        data_cfg: the `data` config group (n_in, n_out, stride, batch_size, split, fractions).

    Raises:
        ValueError: one line naming the store when it is too short for one window, has no
            evenly spaced run long enough, is mostly no-data, or leaves the training split
            with fewer windows than one batch or the validation split with none.
    """
    stores = as_store_set(store)
    starts = valid_windows(stores, data_cfg)
    length = data_cfg.n_in + data_cfg.n_out
    held = stores.held_out[starts]
    if held.all():
        raise ValueError(
            f"every window of {stores.path} is in a held-out store (data.holdout); leave at "
            "least one store with windows to train on"
        )
    try:
        splits, block_hours = _split(stores, starts[~held], data_cfg, data_cfg.batch_size)
    except ValueError as err:
        raise ValueError(f"{stores.path}: {err}") from None
    if held.any():
        splits["test"] = np.sort(np.concatenate([splits["test"], starts[held]]))

    train_weights = None
    if data_cfg.min_wet_fraction > 0:
        train = splits["train"]
        wet = window_means(stores.wet_fraction(data_cfg.wet_threshold), train, length)
        dry = wet < data_cfg.min_wet_fraction
        if data_cfg.dry_weight == 0:
            splits["train"] = train[~dry]
        else:
            train_weights = np.where(dry, data_cfg.dry_weight, 1.0).astype(np.float32)
    # Training needs whole batches; validation scores whatever windows it has.
    batch = data_cfg.batch_size
    for name, needed, what in (
        ("train", batch, f"one batch (data.batch_size={batch})"),
        ("val", 1, "one"),
    ):
        if len(splits[name]) < needed:
            raise ValueError(
                f"the {name} split of {stores.path} has {len(splits[name])} windows, fewer "
                f"than {what}; use a longer store, a smaller data.split.block_hours, a smaller "
                "batch or a lower data.min_wet_fraction"
            )
    return WindowSelection(starts=splits, train_weights=train_weights, block_hours=block_hours)


def _check_starts(starts: np.ndarray, window_length: int, n_frames: int) -> None:
    if starts.ndim != 1 or starts.size == 0:
        raise ValueError(f"starts must be a non-empty 1-D array, Received: shape={starts.shape}")
    if starts.min() < 0 or starts.max() + window_length > n_frames:
        raise ValueError(
            f"windows of {window_length} frames must lie inside the store's {n_frames} frames, "
            f"Received: starts from {starts.min()} to {starts.max()}"
        )


class WindowReader:
    """Reads window k of a stream as the model takes it: what both input paths share.

    Checks the arguments once, then `read(start, position)` returns one window: normalised,
    flipped by the draw of its stream position (so a window gets a new flip each pass, and the
    same seed gives the same flips on either path), no-data inputs set to 0.

    Args:
        store_path: the store (nowcast.data.store layout), or a list of stores read as one
            sequence (nowcast.data.store_set.StoreSet; of one grid size, or read in patches).
        starts: (N,) window start indices (from nowcast.data.windows) into the store or the
            set; window k covers frames `starts[k] : starts[k] + n_in + n_out`.
        n_in, n_out: input and target frames per window.
        norm: the dBZ <-> [0, 1] normalisation.
        seed: draws the shuffle (make_dataset) and the flips.
        weights: optional (N,) sample weight per window (WindowSelection.train_weights); the
            batches then come as `(inputs, targets, weights)`, which Keras `fit` applies to
            each window's loss.
        augment: apply one random flip/rotation per window (the same to all its frames): any
            of the 8 symmetries of the square for square frames, identity, 180-degree turn
            and the two mirrors otherwise. For training only; drawn from `seed` and the
            window's position in the stream.
        patch_size: read a square patch of this many pixels from each window, at a place drawn
            from `seed` and the window's position (so a new place each pass), instead of the
            whole frames; None: whole frames. The place is drawn among those where at least
            `min_patch_valid` of the patch has data in every frame of the window (anywhere if
            there is no such place): a composite's radars cover a fraction of its grid, and a
            patch outside their range teaches the network nothing but the edge of coverage.
        min_patch_valid: that share, from 0 to 1.

    Attributes:
        starts: (N,) int64 window starts.
        weights: (N,) float32 sample weights (ones when none were given).
        with_weights: whether the batches carry the weights.
        frame_shape: (H, W) of the frames it reads (the patch's, with `patch_size`).
    """

    def __init__(
        self,
        store_path: str | os.PathLike,
        starts: np.ndarray,
        *,
        n_in: int,
        n_out: int,
        norm: NormalisationConfig,
        seed: int,
        weights: np.ndarray | None = None,
        augment: bool = False,
        patch_size: int | None = None,
        min_patch_valid: float = 0.5,
    ):
        check_positive_int(n_in, "n_in")
        check_positive_int(n_out, "n_out")
        paths = store_path if isinstance(store_path, (list, tuple)) else [store_path]
        self.store = StoreSet(paths) if len(paths) > 1 else Store(paths[0])
        self.n_in, self.n_out, self.length = n_in, n_out, n_in + n_out
        self.starts = np.asarray(starts, dtype=np.int64)
        _check_starts(self.starts, self.length, len(self.store))
        stores = as_store_set(self.store)
        # The stores these windows lie in.
        shapes = [stores.shapes[k] for k in np.unique(stores.segments[self.starts])]
        if patch_size is None and len(set(shapes)) > 1:
            raise ValueError(
                f"whole frames of {self.store.path} come on grids of different sizes "
                f"({', '.join(f'{h} x {w}' for h, w in shapes)}), which cannot share a batch; "
                "read one store at a time, or patches (data.patch_size)"
            )
        self.frame_shape = shapes[0]
        self.with_weights = weights is not None
        self.weights = np.ones(self.starts.shape, np.float32)
        if weights is not None:
            self.weights = np.asarray(weights, dtype=np.float32)
            if self.weights.shape != self.starts.shape:
                raise ValueError(
                    f"weights must have one value per window {self.starts.shape}, "
                    f"Received: shape={self.weights.shape}"
                )
        self.norm, self.seed, self.augment = norm, seed, augment
        self.patch_size = patch_size
        if patch_size is not None:
            check_positive_int(patch_size, "patch_size")
            for height, width in shapes:
                if patch_size > min(height, width):
                    raise ValueError(
                        f"patch_size={patch_size} is larger than the {height} x {width} frames "
                        f"of {self.store.path}"
                    )
            self.frame_shape = (patch_size, patch_size)
        if not 0 <= min_patch_valid <= 1:
            raise ValueError(f"min_patch_valid must be in [0, 1], Received: {min_patch_valid}")
        self.min_patch_valid = min_patch_valid
        height, width = self.frame_shape
        self.transforms = _ALL_TRANSFORMS if height == width else _SHAPE_KEEPING_TRANSFORMS

    def _patch_place(self, valid: np.ndarray, draws: np.random.Generator) -> tuple[int, int]:
        """(top, left) of a patch with enough data (see `patch_size`) in frames whose pixels
        have data where `valid` (T, H, W) is True."""
        size = self.patch_size
        valid = valid.all(axis=0)
        # Valid pixels of the patch at every (top, left), from a summed-area table.
        table = np.pad(valid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        counts = table[size:, size:] - table[:-size, size:] - table[size:, :-size]
        counts += table[:-size, :-size]
        places = np.flatnonzero(counts >= self.min_patch_valid * size * size)
        if places.size == 0:
            places = np.arange(counts.size)
        return divmod(int(places[draws.integers(places.size)]), counts.shape[1])

    def read(self, start: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs (n_in, H, W, 1), targets (n_out, H, W, 1)) of the window at `start`."""
        start = int(start)
        coded = self.store.read_coded(start, start + self.length)  # (T, H, W)
        draws = np.random.default_rng((self.seed, int(position)))
        transform = self.transforms[draws.integers(self.transforms.size)] if self.augment else 0
        if self.patch_size is None:
            frames = coded.decode()
        else:
            top, left = self._patch_place(coded.valid(), draws)
            size = self.patch_size
            frames = coded.decode(slice(top, top + size), slice(left, left + size))
        frames = normalise(frames, self.norm)
        if transform:
            frames = np.rot90(frames, k=transform % 4, axes=(1, 2))
            if transform >= 4:
                frames = frames[:, :, ::-1]
            frames = np.ascontiguousarray(frames)
        inputs = np.nan_to_num(frames[: self.n_in], nan=0.0)
        return inputs[..., None], frames[self.n_in :, ..., None]


def make_dataset(
    reader: WindowReader,
    *,
    batch_size: int,
    shuffle: bool,
    shuffle_buffer: int = 256,
    repeat: bool = False,
    drop_remainder: bool = False,
    positions: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of (inputs, targets) windows read lazily by `reader`.

    The start indices (not the frames) are shuffled in a bounded buffer, reshuffled each
    epoch; for a given seed the order of every epoch is the same from run to run. Reads run in
    parallel, in a fixed order, and prefetch; memory holds a few batches, whatever the size of
    the store.

    Args:
        reader: the windows, and how each is read.
        batch_size: windows per batch.
        shuffle: shuffle the window order (training, with the reader's seed) or keep it.
        shuffle_buffer: size of the shuffle buffer (window indices).
        repeat: repeat the epochs forever.
        drop_remainder: drop a last, smaller batch.
        positions: optional (N,) position of each window in the run's whole stream of
            windows, which draws its flip (default: the place in this stream, after shuffling
            and repeating): a resumed or sharded stream passes where its windows stand in the
            whole run, so they get the flips of the uninterrupted one-device run.

    Returns:
        A dataset of `(inputs, targets)`, or `(inputs, targets, weights)` when the reader has
        weights: inputs (B, n_in, H, W, 1) float32 on [0, 1], no-data pixels set to 0;
        targets (B, n_out, H, W, 1) float32 on [0, 1], no-data pixels NaN (losses and metrics
        mask them); weights (B,) float32.
    """
    import tensorflow as tf

    check_positive_int(batch_size, "batch_size")
    if shuffle and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, Received: {shuffle_buffer=}")
    starts = reader.starts
    height, width = reader.frame_shape

    def load(start: tf.Tensor, weight: tf.Tensor, position: tf.Tensor) -> tuple[tf.Tensor, ...]:
        inputs, targets = tf.numpy_function(
            reader.read, [start, position], [tf.float32, tf.float32], stateful=False
        )
        inputs = tf.ensure_shape(inputs, (reader.n_in, height, width, 1))
        targets = tf.ensure_shape(targets, (reader.n_out, height, width, 1))
        return (inputs, targets, weight) if reader.with_weights else (inputs, targets)

    dataset = tf.data.Dataset.from_tensor_slices((starts, reader.weights))
    if positions is not None:
        positions = _checked_positions(positions, starts.size)
        dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensor_slices(positions)))
    if shuffle:
        dataset = dataset.shuffle(
            min(shuffle_buffer, starts.size), seed=reader.seed, reshuffle_each_iteration=True
        )
    if repeat:
        dataset = dataset.repeat()
    if positions is None:
        # The position of each window in the stream, after shuffling, draws its flip.
        dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.counter()))
    dataset = dataset.map(
        lambda window, position: load(*window, position),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _checked_positions(positions, count: int) -> np.ndarray:
    """(count,) int64 stream positions, or a ValueError."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.shape != (count,):
        raise ValueError(
            f"positions must have one value per window ({count},), Received: "
            f"shape={positions.shape}"
        )
    return positions


class WindowDataset(keras.utils.PyDataset):
    """Batches of windows in the given order, read ahead by threads: the backend-free path.

    Yields what `make_dataset(reader, ..., shuffle=False)` yields, batch for batch.
    Batch i+1 .. i+`queue_size` are read by `workers` threads while batch i trains; at most
    `queue_size` batches wait in memory. Keras's own worker queue is not used: in Keras 3.15 it
    restarts at batch 0 after each epoch when `fit(steps_per_epoch=...)` stops mid-dataset,
    which would re-read the first windows instead of continuing the run's window order.

    Args:
        reader, batch_size, drop_remainder, positions: as for `make_dataset`.
        workers: reader threads.
        queue_size: most batches read ahead.
    """

    def __init__(
        self,
        reader: WindowReader,
        *,
        batch_size: int,
        drop_remainder: bool = False,
        positions: np.ndarray | None = None,
        workers: int = 2,
        queue_size: int = 4,
    ):
        super().__init__()
        check_positive_int(batch_size, "batch_size")
        if workers < 1 or queue_size < 1:
            raise ValueError(
                f"workers and queue_size must be >= 1, Received: {workers=}, {queue_size=}"
            )
        self.reader, self.batch_size = reader, batch_size
        count = reader.starts.size
        self.positions = (
            np.arange(count) if positions is None else _checked_positions(positions, count)
        )
        self._length = count // batch_size if drop_remainder else -(-count // batch_size)
        self._queue_size = queue_size
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nowcast-windows")
        self._pending: dict[int, Future] = {}

    def __len__(self) -> int:
        return self._length

    def _read_batch(self, index: int) -> tuple[np.ndarray, ...]:
        indices = range(
            index * self.batch_size, min((index + 1) * self.batch_size, len(self.reader.starts))
        )
        windows = [self.reader.read(self.reader.starts[k], self.positions[k]) for k in indices]
        batch = (np.stack([w[0] for w in windows]), np.stack([w[1] for w in windows]))
        return (
            (*batch, self.reader.weights[indices.start : indices.stop])
            if self.reader.with_weights
            else batch
        )

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        if not 0 <= index < self._length:
            raise IndexError(f"batch {index} of a dataset of {self._length} batches")
        # Read-ahead from an earlier position does not help a jump elsewhere.
        for stale in [k for k in self._pending if not index <= k < index + self._queue_size + 1]:
            self._pending.pop(stale).cancel()
        future = self._pending.pop(index, None)
        for ahead in range(index + 1, min(index + 1 + self._queue_size, self._length)):
            if ahead not in self._pending:
                self._pending[ahead] = self._pool.submit(self._read_batch, ahead)
        return future.result() if future is not None else self._read_batch(index)


def input_batches(
    reader: WindowReader,
    *,
    batch_size: int,
    drop_remainder: bool = False,
    positions: np.ndarray | None = None,
) -> tf.data.Dataset | WindowDataset:
    """Batches of the reader's windows, in its order, for the running Keras backend.

    tf.data (`make_dataset`) under TensorFlow, where it also feeds tf.distribute; the
    `WindowDataset` otherwise, so no other backend imports TensorFlow. Same batches either way.
    """
    kwargs = dict(batch_size=batch_size, drop_remainder=drop_remainder, positions=positions)
    if keras.backend.backend() == "tensorflow":
        return make_dataset(reader, shuffle=False, **kwargs)
    return WindowDataset(reader, **kwargs)


class ConcatenatedBatches(keras.utils.PyDataset):
    """The batches of several `WindowDataset`s, one after the other: the backend-free
    counterpart of `tf.data.Dataset.concatenate`."""

    def __init__(self, parts: list[WindowDataset]):
        super().__init__()
        self.parts = parts
        self._ends = np.cumsum([len(part) for part in parts])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a dataset of {len(self)} batches")
        part = int(np.searchsorted(self._ends, index, side="right"))
        return self.parts[part][index - (int(self._ends[part - 1]) if part else 0)]


def concatenate_batches(
    parts: list[tf.data.Dataset | WindowDataset],
) -> tf.data.Dataset | WindowDataset | ConcatenatedBatches:
    """The batches of `parts` (from `input_batches`), one part after the other, so that no batch
    mixes windows of two parts: whole frames of stores on different grids. One part is
    returned as it is."""
    if len(parts) == 1:
        return parts[0]
    if keras.backend.backend() == "tensorflow":
        joined = parts[0]
        for part in parts[1:]:
            joined = joined.concatenate(part)
        return joined
    return ConcatenatedBatches(parts)
