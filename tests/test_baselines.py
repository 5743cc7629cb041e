import numpy as np
import pytest

from nowcast.baselines import BlockMatching, OpticalFlow, Persistence, make_baseline
from nowcast.metrics import VerificationAccumulator


def blobs(n_frames, *, velocity=(0.0, 0.0), size=48):
    """(n_frames, size, size) fields of two Gaussian echoes moving `velocity` (x, y) px/frame."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    frames = []
    for t in range(n_frames):
        dx, dy = velocity[0] * t, velocity[1] * t
        field = np.exp(-((x - 16 - dx) ** 2 + (y - 18 - dy) ** 2) / 30.0)
        field += 0.6 * np.exp(-((x - 28 - dx) ** 2 + (y - 30 - dy) ** 2) / 15.0)
        frames.append(field)
    return np.stack(frames).astype(np.float32)


def csi(forecast, observation, threshold=0.3):
    accumulator = VerificationAccumulator(
        n_lead_times=forecast.shape[1],
        thresholds=[threshold],
        fss_threshold=threshold,
        fss_scales=[1],
    )
    accumulator.update(forecast=forecast, observation=observation)
    return accumulator.scores()["csi"][:, 0]


def test_persistence_repeats_the_last_frame_and_is_perfect_on_a_static_field():
    static = np.repeat(blobs(1)[None, :, :, :, None], 7, axis=1)  # (1, 7, 48, 48, 1)
    inputs, targets = static[:, :4], static[:, 4:]
    forecast = Persistence(n_out=3)(inputs)
    assert forecast.shape == targets.shape and forecast.dtype == np.float32
    np.testing.assert_array_equal(forecast, targets)
    np.testing.assert_array_equal(csi(forecast, targets), 1.0)


@pytest.mark.parametrize("extrapolation", [OpticalFlow, BlockMatching])
def test_extrapolation_follows_moving_echoes_that_persistence_misses(extrapolation):
    frames = blobs(8, velocity=(1.5, -1.0))[None, ..., None]  # (1, 8, 48, 48, 1)
    inputs, targets = frames[:, :4], frames[:, 4:]
    advected = extrapolation(n_out=4)(inputs)
    assert advected.shape == targets.shape and advected.dtype == np.float32
    flow_csi, persistence_csi = csi(advected, targets), csi(Persistence(4)(inputs), targets)
    assert np.all(flow_csi > 0.85), flow_csi
    assert np.all(flow_csi > persistence_csi + 0.2), (flow_csi, persistence_csi)


def test_block_matching_searches_as_far_as_its_reach():
    frames = blobs(8, velocity=(4.0, 0.0), size=64)[None, ..., None]  # 4 px/frame
    inputs, targets = frames[:, :4], frames[:, 4:]
    far, near = (make_baseline("block_matching", n_out=4, max_speed=s) for s in (6, 2))
    assert near.max_speed == 2
    far_csi, near_csi = csi(far(inputs), targets), csi(near(inputs), targets)
    assert np.all(far_csi > 0.85), far_csi
    assert np.all(near_csi < far_csi - 0.2), (near_csi, far_csi)


# Block matching's parabola puts a smooth blob's least cost 0.05 pixel per frame off.
@pytest.mark.parametrize("extrapolation, atol", [(OpticalFlow, 1e-3), (BlockMatching, 2.5e-2)])
def test_extrapolation_keeps_a_static_field_in_place(extrapolation, atol):
    static = np.repeat(blobs(1)[None, :, :, :, None], 5, axis=1)
    forecast = extrapolation(n_out=2)(static[:, :3])
    np.testing.assert_allclose(forecast, static[:, 3:], atol=atol)


def test_baselines_by_name_and_their_input_checks():
    assert isinstance(make_baseline("optical_flow", n_out=2), OpticalFlow)
    assert isinstance(make_baseline("block_matching", n_out=2), BlockMatching)
    with pytest.raises(ValueError, match="available: persistence, optical_flow, block_m.*'rover'"):
        make_baseline("rover", n_out=2)
    with pytest.raises(ValueError, match="at least 2 input frames, Received: 1"):
        OpticalFlow(n_out=2)(np.zeros((1, 1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, time, height, width, 1\)"):
        Persistence(n_out=2)(np.zeros((1, 3, 8, 8), np.float32))
