"""The extrapolation the network corrects: motion found by block matching, frames moved."""

import keras
import numpy as np
import pytest

from nowcast.model import EncoderForecaster
from nowcast.model.advection import advect, estimate_motion
from nowcast.model.matching import match_distribution

STAGES = [
    {
        "filters": 4,
        "kernel_size": 3,
        "downsample_filters": 4,
        "downsample_kernel": 3,
        "downsample_stride": 2,
    }
]


def _textured_frames(velocity, steps=5, size=64, seed=0):
    """Rain-like texture (smoothed noise, dry below its median) moving `velocity` px/frame."""
    rng = np.random.default_rng(seed)
    big = rng.random((size * 2, size * 2), dtype=np.float32)
    kernel = np.ones(5, np.float32) / 5
    for axis in (0, 1):
        big = np.apply_along_axis(np.convolve, axis, big, kernel, mode="same")
    big = np.clip(big - np.median(big), 0, None) * 4
    frames = []
    for t in range(steps):
        dy, dx = (round(v * t) for v in velocity)
        frames.append(
            big[size // 2 - dy : size // 2 - dy + size, size // 2 - dx : size // 2 - dx + size]
        )
    return np.stack(frames)[None, ..., None]


@pytest.mark.parametrize("velocity", [(2, -3), (0, 5), (-4, 1), (-11, 7)])
def test_motion_of_translated_echo_is_found_to_a_fraction_of_a_pixel(velocity):
    # (-11, 7): 156 km/h on a 1-km, 5-minute grid, found on the coarse level and refined.
    frames = _textured_frames(velocity, size=96)
    motion = keras.ops.convert_to_numpy(estimate_motion(frames, max_speed=12))
    assert motion.shape == (1, 96, 96, 2)
    interior = motion[0, 24:-24, 24:-24].reshape(-1, 2)
    np.testing.assert_allclose(np.median(interior, axis=0), velocity, atol=0.25)


def test_advect_moves_whole_pixels_exactly_and_brings_no_echo_from_outside():
    frame = np.random.default_rng(1).random((2, 16, 16, 1), dtype=np.float32)
    motion = np.zeros((2, 16, 16, 2), np.float32)
    motion[0] = (1, 2)  # down 1, right 2 per frame; the second sample stands still
    moved = keras.ops.convert_to_numpy(advect(frame, motion, 3))
    assert moved.shape == (2, 3, 16, 16, 1)
    for k in range(1, 4):
        expected = np.zeros_like(frame[0])
        expected[k:, 2 * k :] = frame[0, : 16 - k, : 16 - 2 * k]
        np.testing.assert_allclose(moved[0, k - 1], expected, atol=1e-6)
        np.testing.assert_allclose(moved[1, k - 1], frame[1], atol=1e-6)


def test_advect_follows_the_motion_along_the_path_not_only_at_the_end():
    # Echo in slow flow (1 px/frame) crosses into fast flow (3 px/frame) at column 32. Taking
    # k times the motion at each output pixel would look 30 px upstream of the fast side and
    # find nothing; following the path finds the band, stretched as it speeds up.
    frame = np.zeros((1, 8, 64, 1), np.float32)
    frame[:, :, 26:30] = 1.0
    motion = np.zeros((1, 8, 64, 2), np.float32)
    motion[..., 1] = np.where(np.arange(64) < 32, 1.0, 3.0)
    moved = keras.ops.convert_to_numpy(advect(frame, motion, 10))[0, -1, :, :, 0]
    assert moved[:, :40].max() == 0.0
    wet_columns = np.flatnonzero(moved.max(axis=0) > 0.5)
    assert wet_columns.size >= 8 and wet_columns.min() >= 44 and wet_columns.max() <= 60


def test_with_advection_a_silent_network_forecasts_the_extrapolation():
    model = EncoderForecaster(STAGES, n_out=4, head_filters=4, advection=True)
    frames = _textured_frames((1, 2))
    model(frames)
    model.output_conv.set_weights([np.zeros_like(w) for w in model.output_conv.get_weights()])
    forecast = keras.ops.convert_to_numpy(model(frames))
    motion = estimate_motion(frames, max_speed=model.advection_max_speed)
    expected = keras.ops.convert_to_numpy(advect(frames[:, -1], motion, 4))
    np.testing.assert_allclose(forecast, expected, atol=1e-6)
    # Away from the edges, a small fraction of persistence's error (about 0.3 on this 5-km
    # texture, whose 4 x 4 means the coarse level of the matching barely resolves).
    truth = _textured_frames((1, 2), steps=9)[:, 5:]
    persistence = np.repeat(frames[:, -1:], 4, axis=1)
    error, persistence_error = (
        np.abs(f - truth)[:, :, 8:-8, 8:-8].mean() for f in (forecast, persistence)
    )
    assert error < 0.35 * persistence_error, (error, persistence_error)


def test_the_forecast_comes_with_the_extrapolation_it_corrects():
    model = EncoderForecaster(STAGES, n_out=3, head_filters=4, advection=True)
    frames = _textured_frames((1, 2))
    whole = model(frames)  # builds it
    forecast, moved = model.forecast_and_extrapolation(frames)
    np.testing.assert_allclose(forecast, whole, atol=1e-6)
    motion = estimate_motion(frames, max_speed=model.advection_max_speed)
    np.testing.assert_allclose(moved, advect(frames[:, -1], motion, 3), atol=1e-6)
    plain = EncoderForecaster(STAGES, n_out=3, head_filters=4)
    plain(frames)
    assert plain.forecast_and_extrapolation(frames)[1] is None


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [
        ({"last_frame_skip": True}, (1, 3, 16, 16, 1), "not True with `last_frame_skip`"),
        ({"out_channels": 2}, (1, 3, 16, 16, 1), "out_channels equal to the input channels"),
        ({}, (1, 1, 16, 16, 1), "at least 2 input frames"),
        ({"advection_max_speed": 0}, (1, 3, 16, 16, 1), "advection_max_speed"),
    ],
)
def test_advection_rejects_what_it_cannot_extrapolate(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        EncoderForecaster(STAGES, n_out=2, advection=True, **kwargs)(np.zeros(shape, "float32"))


def test_advection_takes_frames_of_any_size():
    """KNMI's central 760 x 696 pixels are 95 x 87 after three stride-2 stages, and a model
    without strides takes odd sides: the coarse-to-fine matching pads them with no echo."""
    stages = [dict(STAGES[0]), dict(STAGES[0])]
    model = EncoderForecaster(stages, n_out=2, head_filters=4, advection=True)
    forecast = model(np.zeros((1, 3, 12, 20, 1), "float32"))  # bottom stage 3 x 5
    assert tuple(forecast.shape) == (1, 2, 12, 20, 1)
    unstrided = EncoderForecaster(
        [dict(STAGES[0], downsample_stride=1)], n_out=2, head_filters=4, advection=True
    )
    frames = _textured_frames((1, -2), steps=3, size=45)
    assert tuple(unstrided(frames).shape) == (1, 2, 45, 45, 1)
    motion = keras.ops.convert_to_numpy(estimate_motion(frames, max_speed=6))
    assert motion.shape == (1, 45, 45, 2)
    np.testing.assert_allclose(
        np.median(motion[0, 12:-12, 12:-12].reshape(-1, 2), 0), (1, -2), atol=0.25
    )


def test_matching_keeps_the_pattern_and_takes_the_reference_values():
    rng = np.random.default_rng(2)
    field = rng.normal(size=(2, 3, 6, 5, 1)).astype("float32")
    reference = rng.uniform(size=(2, 3, 6, 5, 1)).astype("float32")
    matched = keras.ops.convert_to_numpy(match_distribution(field, reference))
    for b in range(2):
        for t in range(3):
            got, wanted = matched[b, t].ravel(), reference[b, t].ravel()
            np.testing.assert_array_equal(np.sort(got), np.sort(wanted))
            np.testing.assert_array_equal(np.argsort(got), np.argsort(field[b, t].ravel()))


def test_a_faded_forecast_is_matched_back_to_the_extrapolations_rain_area():
    """The point of matching: a network that halves every echo would lose the rain area above
    a threshold; matched, the forecast has the extrapolation's area at every threshold. In
    training the loss sees the forecast before matching, whose ranks pass no gradient."""
    model = EncoderForecaster(
        STAGES, n_out=3, head_filters=4, advection=True, probability_matching=True
    )
    frames = _textured_frames((1, 2))
    model(frames)
    forecast, moved = model.forecast_and_extrapolation(frames)
    forecast, moved = keras.ops.convert_to_numpy(forecast), keras.ops.convert_to_numpy(moved)
    for threshold in (0.05, 0.2, 0.5):
        np.testing.assert_array_equal(
            (forecast >= threshold).sum(axis=(2, 3, 4)), (moved >= threshold).sum(axis=(2, 3, 4))
        )
    unmatched = EncoderForecaster(STAGES, n_out=3, head_filters=4, advection=True)
    unmatched(frames)
    unmatched.set_weights(model.get_weights())
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(frames, training=True)),
        keras.ops.convert_to_numpy(unmatched(frames, training=True)),
    )


def test_probability_matching_needs_the_extrapolation():
    with pytest.raises(ValueError, match="probability_matching"):
        EncoderForecaster(STAGES, n_out=2, probability_matching=True)
