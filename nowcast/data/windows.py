"""Window indices over a frame sequence, and train/val/test splits by blocks of time (NumPy only).

A window is `n_in + n_out` consecutive frames: the first `n_in` are the model's inputs, the
rest its targets. Windows are identified by the index of their first frame in the store.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")
# The split name that scores every valid window of a store, unsplit.
ALL_WINDOWS = "all"


def same_event(events: np.ndarray | None, n_frames: int) -> np.ndarray:
    """(n_frames - 1,) bool: frames i and i+1 share an event (all True without events)."""
    if events is None:
        return np.ones(max(n_frames - 1, 0), dtype=bool)
    events = np.asarray(events)
    if events.shape != (n_frames,):
        raise ValueError(
            f"events must have one id per frame ({n_frames},), Received: shape={events.shape}"
        )
    return events[1:] == events[:-1]


def times_increase(times: np.ndarray, events: np.ndarray | None = None) -> bool:
    """Whether times are strictly increasing within every event (throughout without events).

    Events may overlap in time (SEVIR's storm events happen at the same time in different
    places), so time may step back where the event id changes.
    """
    times = np.asarray(times)
    return not np.any(np.diff(times)[same_event(events, times.size)] <= 0)


def _run_first(joined: np.ndarray) -> np.ndarray:
    """Index of the first frame of each frame's run, from `joined[i]` (frames i, i+1 joined)."""
    n = joined.size + 1
    starts_run = np.concatenate([[True], ~joined])
    return np.maximum.accumulate(np.where(starts_run, np.arange(n), 0))


def _joined(times: np.ndarray, minutes_per_frame: float, events: np.ndarray | None) -> np.ndarray:
    """joined[i]: frames i and i+1 are one step apart within one event, so may share a window."""
    return (np.diff(times) == minutes_per_frame * 60) & same_event(events, times.size)


def longest_run(
    times: np.ndarray, *, minutes_per_frame: float, events: np.ndarray | None = None
) -> int:
    """The most consecutive frames, evenly spaced within one event (0 for no frames)."""
    times = np.asarray(times)
    if times.size == 0:
        return 0
    run_first = _run_first(_joined(times, minutes_per_frame, events))
    return int(np.max(np.arange(times.size) - run_first) + 1)


def window_means(per_frame: np.ndarray, starts: np.ndarray, window_length: int) -> np.ndarray:
    """Mean of a per-frame quantity over each window, (N,) float64.

    Args:
        per_frame: (T,) values, e.g. the fraction of valid or wet pixels of each frame (every
            frame has the same number of pixels, so the window's fraction is this mean).
        starts: (N,) window start indices.
        window_length: frames per window.
    """
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(per_frame, dtype=np.float64))])
    starts = np.asarray(starts, dtype=np.int64)
    return (cumulative[starts + window_length] - cumulative[starts]) / window_length


def check_positive_int(value, name: str) -> None:
    """A ValueError naming `name` unless `value` is a whole number >= 1 (NumPy ints too)."""
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, Received: {name}={value}")


def make_windows(
    times: np.ndarray,
    *,
    n_in: int,
    n_out: int,
    stride: int = 1,
    minutes_per_frame: float,
    events: np.ndarray | None = None,
) -> np.ndarray:
    """Start indices of the windows that lie inside runs of evenly spaced frames.

    A window never spans a time gap (every step inside it must be exactly
    `minutes_per_frame * 60` seconds) nor an event boundary (a change of event id). Within each
    run of usable frames, starts are taken every `stride` frames from the run's first frame.

    Args:
        times: (T,) int64 seconds since 1970-01-01 UTC, strictly increasing.
        n_in, n_out: input and target frames per window (both >= 1).
        stride: frames between consecutive window starts (>= 1).
        minutes_per_frame: the regular spacing of the frames.
        events: optional (T,) event id per frame.

    Returns:
        (N,) int64 start indices, increasing; window k covers frames
        `starts[k] : starts[k] + n_in + n_out`.

    Raises:
        ValueError: bad sizes, times not strictly increasing, or fewer frames than one window.

    Examples:
        Ten 5-minute frames with one missing frame after index 5 (a 10-minute step):

        >>> times = np.array([0, 300, 600, 900, 1200, 1500, 2100, 2400, 2700, 3000, 3300])
        >>> make_windows(times, n_in=2, n_out=1, minutes_per_frame=5)
        array([0, 1, 2, 3, 6, 7, 8])
        >>> make_windows(times, n_in=2, n_out=1, stride=2, minutes_per_frame=5)
        array([0, 2, 6, 8])

        Event ids cut windows too:

        >>> events = np.array([1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2])
        >>> make_windows(times, n_in=2, n_out=1, minutes_per_frame=5, events=events)
        array([0, 1, 6, 7, 8])
    """
    times = np.asarray(times)
    for name, value in (("n_in", n_in), ("n_out", n_out), ("stride", stride)):
        check_positive_int(value, name)
    if not minutes_per_frame > 0:
        raise ValueError(f"minutes_per_frame must be > 0, Received: {minutes_per_frame=}")
    if times.ndim != 1 or not np.issubdtype(times.dtype, np.integer):
        raise ValueError(
            "times must be a 1-D integer array (seconds since 1970-01-01 UTC), "
            f"Received: shape={times.shape}, dtype={times.dtype}"
        )
    length = n_in + n_out
    if times.size < length:
        raise ValueError(
            f"fewer frames than one window: a window needs n_in + n_out = {length} frames, "
            f"Received: {times.size} frames"
        )
    if not times_increase(times, events):
        raise ValueError("times must be strictly increasing within each event")
    joined = _joined(times, minutes_per_frame, events)
    breaks = np.concatenate([[0], np.cumsum(~joined)])
    candidates = np.arange(times.size - length + 1)
    # No break between a window's first and last frame.
    inside = breaks[candidates + length - 1] == breaks[candidates]
    run_first = _run_first(joined)
    on_stride = (candidates - run_first[candidates]) % stride == 0
    return candidates[inside & on_stride].astype(np.int64)


# Block lengths (hours) tried, longest first, when `data.split.block_hours` is not given: the
# longest that gives every split its windows. Longer blocks lose fewer windows at the seams
# between splits and keep val and test further from the weather training saw.
BLOCK_HOURS_LADDER = (24.0, 12.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5)


def _assign_blocks(n_blocks: int, fractions: dict[str, float]) -> np.ndarray:
    """Split index (into SPLITS) of each block: each block goes to the largest deficit."""
    targets = np.array([fractions[name] for name in SPLITS])
    counts = np.zeros(len(SPLITS))
    assignment = np.empty(n_blocks, dtype=np.int64)
    for block in range(n_blocks):
        # argmax returns the first maximum, so ties go to train, then val, then test.
        chosen = int(np.argmax((block + 1) * targets - counts))
        assignment[block] = chosen
        counts[chosen] += 1
    return assignment


def _checked_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    fractions = {"val": val_fraction, "test": test_fraction}
    for name, value in fractions.items():
        if not 0 <= value < 1:
            raise ValueError(f"{name}_fraction must be in [0, 1), Received: {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction + test_fraction must be < 1 to leave blocks for training, "
            f"Received: {val_fraction} + {test_fraction}"
        )
    return {"train": 1.0 - val_fraction - test_fraction, **fractions}


def _block_of_frame(
    times: np.ndarray,
    block_seconds: float,
    events: np.ndarray | None,
    segments: np.ndarray | None,
) -> np.ndarray:
    """(T,) block id of each frame: blocks of `block_seconds` counted from each segment's
    first time, numbered in segment order, then time order. With events, a frame counts at
    the time of its event's first frame, so an event lies in one block."""
    if events is not None:
        times = times[_run_first(same_event(events, times.size))]
    if segments is None:
        segments = np.zeros(times.size, np.int64)
    segment_ids, segment_of_frame = np.unique(segments, return_inverse=True)
    first = np.full(segment_ids.size, np.iinfo(np.int64).max)
    np.minimum.at(first, segment_of_frame, times)
    local = ((times - first[segment_of_frame]) // block_seconds).astype(np.int64)
    blocks_per_segment = np.zeros(segment_ids.size, np.int64)
    np.maximum.at(blocks_per_segment, segment_of_frame, local + 1)
    offset = np.concatenate([[0], np.cumsum(blocks_per_segment)[:-1]])
    return offset[segment_of_frame] + local


class SplitError(ValueError):
    """A split that would receive no windows (or too few); `counts` says what each received."""

    def __init__(self, message: str, counts: dict[str, int]):
        super().__init__(message)
        self.counts = counts


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def split_windows(
    times: np.ndarray,
    starts: np.ndarray,
    *,
    window_length: int,
    block_hours: float,
    val_fraction: float,
    test_fraction: float,
    events: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    min_train: int = 1,
) -> dict[str, np.ndarray]:
    """Assign windows to train/val/test by contiguous blocks of time, so no splits share a frame.

    Time is cut into blocks of `block_hours`, counted from the first time of each segment (a
    store of a run that trains on several; the whole sequence without `segments`). With events,
    every frame counts at the time of its event's first frame, so whole events go to one split
    (events may overlap in time, as SEVIR's do; each is placed by when it starts). The blocks in
    which windows start are dealt out in segment order, then time order; blocks without a
    window start (gaps, nights without data, the tail of a store) are not dealt, so an empty
    year takes no turn. Block k goes to the split whose deficit `(k + 1) * fraction -
    blocks_so_far` is largest (ties: train, val, test). Every split thus holds blocks spread over
    the whole period, val and test blocks interleave with train blocks, and after any number of
    blocks each split is within one block of its share. A window whose frames fall in blocks of
    more than one split is dropped, so no val or test window overlaps a training window.

    Args:
        times: (T,) int64 seconds since 1970-01-01 UTC of all frames.
        starts: (N,) window start indices into `times` (from make_windows).
        window_length: frames per window (n_in + n_out).
        block_hours: length of a block of time (hours, > 0).
        val_fraction, test_fraction: shares of the blocks, each in [0, 1), sum < 1.
        events: optional (T,) event id per frame (a change of id starts a new event).
        segments: optional (T,) segment id per frame, in segment order; no window may cross
            segments (make_windows sees them as events).
        min_train: the fewest training windows that will do (a batch).

    Returns:
        {"train", "val", "test"} -> int64 start indices, in the order of `starts`.

    Raises:
        ValueError: bad fractions or starts out of range. SplitError: a split with a positive
            fraction that receives no window, or training fewer than `min_train` (too few
            blocks: use shorter blocks or more data); it says what each split received.

    Examples:
        Ten 1-hour blocks of 12 frames (5 minutes apart), windows of 3 frames:

        >>> times = np.arange(120) * 300
        >>> starts = make_windows(times, n_in=2, n_out=1, minutes_per_frame=5)
        >>> splits = split_windows(times, starts, window_length=3, block_hours=1,
        ...                        val_fraction=0.2, test_fraction=0.2)
        >>> {name: np.unique(times[s] // 3600).tolist() for name, s in splits.items()}
        {'train': [0, 2, 4, 5, 7, 9], 'val': [1, 6], 'test': [3, 8]}

        Windows that start in train block 0 and end in val block 1 (starts 10 and 11) are
        dropped:

        >>> [int(s) for s in starts[8:13] if s in splits["train"] or s in splits["val"]]
        [8, 9, 12]
    """
    times = np.asarray(times)
    starts = np.asarray(starts, dtype=np.int64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-D array, Received: shape={times.shape}")
    if not block_hours > 0:
        raise ValueError(f"block_hours must be > 0, Received: {block_hours=}")
    fractions = _checked_fractions(val_fraction, test_fraction)
    check_positive_int(window_length, "window_length")
    if starts.ndim != 1:
        raise ValueError(f"starts must be 1-D, Received: shape={starts.shape}")
    if starts.size and (starts.min() < 0 or starts.max() + window_length > times.size):
        raise ValueError(
            f"windows must lie inside the {times.size} frames, Received: starts from "
            f"{starts.min()} to {starts.max()} with window_length={window_length}"
        )
    block_of_frame = _block_of_frame(times, block_hours * 3600.0, events, segments)
    dealt = np.unique(block_of_frame[starts])
    block_split = np.zeros(int(block_of_frame.max()) + 1, np.int64)
    block_split[dealt] = _assign_blocks(dealt.size, fractions)
    # A block holding no window start takes the split of the last dealt block before it: only
    # the ends of that block's windows can reach into it.
    last_dealt = np.zeros(block_split.size, np.int64)
    last_dealt[dealt] = dealt
    block_split = block_split[np.maximum.accumulate(last_dealt)]
    # changes[b]: number of split changes between block 0 and block b.
    changes = np.concatenate([[0], np.cumsum(block_split[1:] != block_split[:-1])])
    first = block_of_frame[starts]
    last = block_of_frame[starts + window_length - 1]
    whole = changes[first] == changes[last]
    split_of_window = block_split[first]
    result = {
        name: starts[whole & (split_of_window == index)] for index, name in enumerate(SPLITS)
    }
    counts = {name: int(result[name].size) for name in SPLITS}
    for name in SPLITS:
        needed = min_train if name == "train" else 1
        if fractions[name] > 0 and counts[name] < needed:
            what = "no windows" if needed == 1 else f"{counts[name]} windows, fewer than {needed}"
            raise SplitError(
                f"split {name!r} received {what}: {dealt.size} block(s) of {block_hours:g} h "
                f"hold {starts.size} windows ({_counts_text(counts)}); use a smaller "
                "block_hours or more frames",
                counts,
            )
    return result


def blocks_needed(fractions: dict[str, float]) -> int:
    """The fewest blocks that give every split with a positive fraction at least one."""
    wanted = {index for index, name in enumerate(SPLITS) if fractions[name] > 0}
    n = 1
    while not wanted <= set(_assign_blocks(n, fractions).tolist()):
        n += 1
    return n


def stores_out_of_training(
    segments: np.ndarray | None, starts: np.ndarray, train: np.ndarray
) -> np.ndarray:
    """The segments (stores) among the windows `starts` that have no window in `train`
    (none without segments: one store)."""
    if segments is None:
        return np.zeros(0, np.int64)
    return np.setdiff1d(segments[starts], segments[train])


def choose_block_hours(
    times: np.ndarray,
    starts: np.ndarray,
    *,
    window_length: int,
    minutes_per_frame: float,
    val_fraction: float,
    test_fraction: float,
    events: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    min_train: int = 1,
) -> tuple[float, dict[str, np.ndarray]]:
    """The longest block of `BLOCK_HOURS_LADDER` (down to one window's length) that gives every
    split its windows, and the split it gives (see `split_windows`).

    With `segments` (a set of stores), the longest block that also leaves every store some
    training windows is preferred: on a few short events, long blocks give validation a whole
    event, and the network then trains on one event fewer. Only when no block length keeps
    every store in training is the longest that gives every split its windows taken.

    Raises:
        SplitError: no block length does; the message names the split left short, what each
            split got with blocks of one window's length, and the shortest archive that would do.
    """
    window_hours = window_length * minutes_per_frame / 60.0
    ladder = [hours for hours in BLOCK_HOURS_LADDER if hours > window_hours] + [window_hours]
    longest = None
    for hours in ladder:
        try:
            splits = split_windows(
                times,
                starts,
                window_length=window_length,
                block_hours=hours,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                events=events,
                segments=segments,
                min_train=min_train,
            )
        except SplitError as err:
            last = err
            continue
        if stores_out_of_training(segments, starts, splits["train"]).size == 0:
            return hours, splits
        if longest is None:
            longest = hours, splits
    if longest is not None:
        return longest
    fractions = _checked_fractions(val_fraction, test_fraction)
    short = next(
        name
        for name in SPLITS
        if fractions[name] > 0 and last.counts[name] < (min_train if name == "train" else 1)
    )
    needed = blocks_needed(fractions) * window_hours
    if short == "train":
        needed = max(needed, (min_train + 1) * window_hours / fractions["train"])
    raise SplitError(
        f"split {short!r} receives too few windows with any block length from "
        f"{ladder[0]:g} h down to one window's {window_hours:g} h: the {starts.size} windows "
        f"give {_counts_text(last.counts)} even then; it takes about {needed:g} h of "
        "consecutive frames to give every split its windows; use more frames, "
        "data.split.val_fraction / test_fraction = 0 for a split you do not need, or hold "
        "whole stores out with data.holdout=[...]",
        last.counts,
    )
