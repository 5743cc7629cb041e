"""Window slicing and time-block splits (pure NumPy)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from nowcast.data import windows
from nowcast.data.windows import (
    SplitError,
    choose_block_hours,
    longest_run,
    make_windows,
    split_windows,
    stores_out_of_training,
    times_increase,
    window_means,
)

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
    with pytest.raises(
        ValueError,
        match=r"split 'val' received no windows: 1 block\(s\) of 24 h hold 97 windows "
        r"\(train 97, val 0, test 0\); use a smaller block_hours",
    ):
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


def test_events_may_overlap_in_time():
    """SEVIR storms happen at once in different places: time steps back at an event change."""
    times = np.concatenate([np.arange(10) * STEP, 3 * STEP + np.arange(10) * STEP])
    events = np.repeat([0, 1], 10)
    assert times_increase(times, events) and not times_increase(times)
    starts = make_windows(times, n_in=3, n_out=2, stride=5, minutes_per_frame=5, events=events)
    np.testing.assert_array_equal(starts, [0, 5, 10, 15])
    times[15] = times[13]  # time steps back inside an event
    with pytest.raises(ValueError, match="strictly increasing within each event"):
        make_windows(times, n_in=3, n_out=2, minutes_per_frame=5, events=events)


def test_split_by_events_keeps_each_event_whole():
    # Five 2-hour events, each starting on its own day; two of them overlap with the next day.
    day = 24 * 3600
    starts_of_events = np.array([0, day, day + 3600, 2 * day, 3 * day])
    times = np.concatenate([s + np.arange(24) * STEP for s in starts_of_events])
    events = np.repeat(np.arange(5), 24)
    starts = make_windows(times, n_in=4, n_out=4, stride=4, minutes_per_frame=5, events=events)
    splits = split_windows(
        times, starts, window_length=8, block_hours=24, val_fraction=0.25, test_fraction=0.25,
        events=events,
    )  # fmt: skip
    assert sum(s.size for s in splits.values()) == starts.size  # no window dropped
    split_of_event = {}
    for name, chosen in splits.items():
        for event in np.unique(events[chosen]):
            assert split_of_event.setdefault(int(event), name) == name
    assert split_of_event[1] == split_of_event[2]  # events starting the same day go together


def test_longest_run_and_window_means():
    times = np.delete(np.arange(20) * STEP, [7, 8])
    assert longest_run(times, minutes_per_frame=5) == 11
    assert longest_run(times, minutes_per_frame=5, events=np.repeat([0, 1], 9)) == 9
    assert longest_run(np.zeros(0, np.int64), minutes_per_frame=5) == 0
    np.testing.assert_allclose(window_means(np.arange(6.0), [0, 2, 3], 3), [1.0, 3.0, 4.0])


def _choose(times, length, **kwargs):
    starts = make_windows(times, n_in=length - 1, n_out=1, minutes_per_frame=5)
    args = {"val_fraction": 0.15, "test_fraction": 0.15, "minutes_per_frame": 5} | kwargs
    return starts, choose_block_hours(times, starts, window_length=length, **args)


def test_the_block_length_is_the_longest_that_gives_every_split_windows():
    days = np.arange(12 * 24 * 8) * STEP  # 8 days: 24-hour blocks do, as before
    _, (hours, splits) = _choose(days, 17)
    assert hours == 24
    expected = _split(days, 17, block_hours=24)[1]
    for name in splits:
        np.testing.assert_array_equal(splits[name], expected[name])
    morning = np.arange(92) * STEP  # a 7.6-hour archive, windows of 17 frames (85 min)
    _, (hours, splits) = _choose(morning, 17)
    assert hours == 1.5
    assert {name: chosen.size for name, chosen in splits.items()} == {
        "train": 22,
        "val": 2,
        "test": 4,
    }
    with pytest.raises(SplitError, match="split 'test' received no windows"):
        _split(morning, 17, block_hours=2)  # blocks dealt train, train, val, train


def _events_days_apart(frames: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Times and segment ids of one store per event, each `frames` long, ten days apart."""
    times = np.concatenate([np.arange(n) * STEP + i * 10 * 86400 for i, n in enumerate(frames)])
    return times, np.repeat(np.arange(len(frames)), frames)


def test_on_a_few_short_stores_the_blocks_keep_every_store_in_training():
    """A 7.6-hour event and two of 3.4 hours, as the shared radar events are: 6-hour blocks
    would give validation one short event whole; 2-hour blocks take it from the long one."""
    times, segments = _events_days_apart([92, 41, 41])
    starts = make_windows(times, n_in=5, n_out=12, minutes_per_frame=5, events=segments)
    args = dict(window_length=17, val_fraction=0.15, test_fraction=0.0, segments=segments)
    whole_event = split_windows(times, starts, block_hours=6, **args)
    assert stores_out_of_training(segments, starts, whole_event["train"]).tolist() == [2]
    hours, splits = choose_block_hours(times, starts, minutes_per_frame=5, **args)
    assert hours == 2
    assert np.bincount(segments[splits["train"]]).tolist() == [56, 25, 25]
    assert np.bincount(segments[splits["val"]]).tolist() == [4]


def test_when_no_block_keeps_every_store_in_training_the_longest_that_splits_is_taken():
    times, segments = _events_days_apart([17, 17])  # one window each: one must validate
    starts = make_windows(times, n_in=5, n_out=12, minutes_per_frame=5, events=segments)
    hours, splits = choose_block_hours(
        times, starts, window_length=17, minutes_per_frame=5, val_fraction=0.5,
        test_fraction=0.0, segments=segments,
    )  # fmt: skip
    assert hours == 24
    assert stores_out_of_training(segments, starts, splits["train"]).tolist() == [1]


def test_no_block_length_will_do_names_the_split_and_the_archive_that_would():
    times = np.arange(30) * STEP  # 2.5 hours, windows of 17 frames
    with pytest.raises(SplitError) as caught:
        _choose(times, 17)
    message = str(caught.value)
    assert message.startswith(
        "split 'val' receives too few windows with any block length from 24 h down to one "
        "window's 1.41667 h: the 14 windows give train 14, val 0, test 0 even then; it takes "
        "about 7.08333 h of consecutive frames"
    )
    assert "data.holdout" in message
    # Without val and test, the same archive trains.
    _, (hours, splits) = _choose(times, 17, val_fraction=0.0, test_fraction=0.0)
    assert hours == 24 and splits["train"].size == 14


def test_only_blocks_that_hold_windows_are_dealt():
    """Two days a year apart: the empty days between take no turn."""
    day = np.arange(12 * 24) * STEP
    times = np.concatenate([day, 365 * 24 * 3600 + day])
    starts = make_windows(times, n_in=4, n_out=2, minutes_per_frame=5)
    splits = split_windows(
        times, starts, window_length=6, block_hours=6, val_fraction=0.25, test_fraction=0.25
    )
    blocks = {name: np.unique(times[s] // (6 * 3600)) for name, s in splits.items()}
    # 8 blocks of 6 hours hold windows, dealt 4/2/2.
    assert {name: b.size for name, b in blocks.items()} == {"train": 4, "val": 2, "test": 2}


def test_segments_are_cut_into_blocks_apart():
    """Two stores of a morning each, the second starting half an hour later: each store's
    hours are counted from its own first frame, not from the first store's."""
    morning = np.arange(48) * STEP  # 4 hours
    times = np.concatenate([morning, morning + 1800])
    segments = np.repeat([0, 1], 48)
    starts = make_windows(times, n_in=2, n_out=1, minutes_per_frame=5, events=segments)
    splits = split_windows(
        times, starts, window_length=3, block_hours=1, val_fraction=0.25, test_fraction=0.25,
        segments=segments,
    )  # fmt: skip
    split_of = np.full(times.size, -1)
    for index, chosen in enumerate(splits.values()):
        split_of[chosen] = index
    for segment in (0, 1):
        mine = (segments == segment) & (split_of >= 0)
        hour = (times[mine] - times[segments == segment][0]) // 3600
        # Every hour of the store, counted from its start, went whole to one split.
        for h in np.unique(hour):
            assert np.unique(split_of[mine][hour == h]).size == 1, (segment, h)
    # The second store's hours are dealt too: train, val, test, train.
    assert np.unique(split_of[(segments == 1) & (split_of >= 0)]).size == 3
