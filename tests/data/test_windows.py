"""Window slicing and time-block splits (pure NumPy)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from nowcast.data import windows
from nowcast.data.windows import make_windows, split_windows

STEP = 300  # 5 minutes


def test_docstring_examples():
    result = doctest.testmod(windows)
    assert result.attempted >= 8 and result.failed == 0


def _naive_windows(times, length, stride, events=None):
    """Reference: check every start, then apply the stride within each run of usable frames."""
    ok = []
    for start in range(len(times) - length + 1):
        frames = range(start, start + length)
        if all(times[i + 1] - times[i] == STEP for i in frames[:-1]) and (
            events is None or len({events[i] for i in frames}) == 1
        ):
            ok.append(start)
    run_first, kept = {}, []
    for i in range(len(times)):
        joined = i > 0 and times[i] - times[i - 1] == STEP
        joined = joined and (events is None or events[i] == events[i - 1])
        run_first[i] = run_first[i - 1] if joined else i
    kept = [s for s in ok if (s - run_first[s]) % stride == 0]
    return np.array(kept, dtype=np.int64)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("stride", [1, 2, 5])
def test_make_windows_matches_a_naive_reference(seed, stride):
    rng = np.random.default_rng(seed)
    steps = rng.choice([STEP, STEP, STEP, STEP, 2 * STEP, 7 * STEP], size=80)
    times = np.concatenate([[0], np.cumsum(steps)])
    events = np.cumsum(rng.random(times.size) < 0.05)
    for ev in (None, events):
        got = make_windows(times, n_in=3, n_out=2, stride=stride, minutes_per_frame=5, events=ev)
        np.testing.assert_array_equal(got, _naive_windows(times, 5, stride, ev))
        assert got.dtype == np.int64


def test_windows_never_span_a_gap():
    times = np.delete(np.arange(30) * STEP, [10, 11, 20])
    starts = make_windows(times, n_in=2, n_out=3, minutes_per_frame=5)
    spans = times[starts + 4] - times[starts]
    assert np.all(spans == 4 * STEP)
    assert starts.size == (10 - 4) + (8 - 4) + (9 - 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_in": 0}, "n_in must be an integer >= 1"),
        ({"stride": 0}, "stride must be an integer >= 1"),
        ({"n_out": 20}, r"fewer frames than one window: .* 21 frames, Received: 10 frames"),
        ({"minutes_per_frame": 0}, "minutes_per_frame must be > 0"),
    ],
)
def test_make_windows_rejects_bad_arguments(kwargs, match):
    args = {"n_in": 1, "n_out": 1, "minutes_per_frame": 5} | kwargs
    with pytest.raises(ValueError, match=match):
        make_windows(np.arange(10) * STEP, **args)


def test_make_windows_rejects_unsorted_times():
    with pytest.raises(ValueError, match="strictly increasing"):
        make_windows(np.array([0, 300, 300, 600]), n_in=1, n_out=1, minutes_per_frame=5)


def _split(times, length, **kwargs):
    starts = make_windows(times, n_in=length - 1, n_out=1, minutes_per_frame=5)
    args = {"block_hours": 2, "val_fraction": 0.15, "test_fraction": 0.15} | kwargs
    return starts, split_windows(times, starts, window_length=length, **args)


def test_splits_share_no_frames_and_keep_every_whole_window():
    times = np.arange(12 * 24 * 4) * STEP  # 4 days
    length = 6
    starts, splits = _split(times, length)
    frames = {
        name: {int(f) for s in chosen for f in range(s, s + length)}
        for name, chosen in splits.items()
    }
    assert not frames["train"] & frames["val"]
    assert not frames["train"] & frames["test"]
    assert not frames["val"] & frames["test"]
    kept = np.concatenate(list(splits.values()))
    block = times // 7200
    first, last = block[starts], block[starts + length - 1]
    split_of_block = {int(block[s]): name for name, chosen in splits.items() for s in chosen}
    inside = first == last
    assert np.all(np.isin(starts[inside], kept))
    same_split = [
        split_of_block[a] == split_of_block[b]
        for a, b in zip(first[~inside], last[~inside], strict=True)
    ]
    assert 0 < sum(same_split) < len(same_split)
    np.testing.assert_array_equal(np.isin(starts[~inside], kept), same_split)


def test_splits_interleave_across_the_period_with_the_requested_shares():
    times = np.arange(12 * 24 * 10) * STEP  # 10 days of 2-hour blocks: 120 blocks
    _, splits = _split(times, 4)
    blocks = {name: np.unique(times[s] // 7200) for name, s in splits.items()}
    assert {name: b.size for name, b in blocks.items()} == {"train": 84, "val": 18, "test": 18}
    for name in ("val", "test"):
        # Spread over the whole period: some in each quarter of it.
        assert np.all(np.bincount(blocks[name] * 4 // 120, minlength=4) > 0)
    _, again = _split(times, 4)
    for name in splits:
        np.testing.assert_array_equal(splits[name], again[name])


def test_zero_fraction_gives_an_empty_split():
    times = np.arange(200) * STEP
    _, splits = _split(times, 4, val_fraction=0.0, test_fraction=0.3, block_hours=1)
    assert splits["val"].size == 0 and splits["test"].size > 0


def test_too_few_blocks_is_an_error_that_says_what_to_change():
    times = np.arange(100) * STEP  # 8.3 hours: one 24-hour block
    with pytest.raises(ValueError, match="split 'val' received no windows.*smaller block_hours"):
        _split(times, 4, block_hours=24)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "must be < 1"),
        ({"test_fraction": -0.1}, r"test_fraction must be in \[0, 1\)"),
        ({"block_hours": 0}, "block_hours must be > 0"),
    ],
)
def test_split_rejects_bad_fractions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _split(np.arange(100) * STEP, 4, **kwargs)


def test_split_rejects_windows_outside_the_frames():
    times = np.arange(10) * STEP
    with pytest.raises(ValueError, match="windows must lie inside the 10 frames"):
        split_windows(
            times,
            np.array([0, 8]),
            window_length=4,
            block_hours=1,
            val_fraction=0.1,
            test_fraction=0.1,
        )
