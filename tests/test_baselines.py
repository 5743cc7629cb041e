import numpy as np
import pytest
from expect import fails_with_one_line
from scipy import ndimage

from nowcast.baselines import BlockMatching, OpticalFlow, Persistence, Sprog, make_baseline
from nowcast.config import NormalisationConfig
from nowcast.metrics import VerificationAccumulator
from nowcast.units import normalise


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


# Block matching's parabolas, on 4 x 4 then 2 x 2 pixel means, put a smooth blob's least cost
# up to 0.07 pixel per frame off on its flanks (3 % of its peak after two frames). S-PROG
# cannot fit its AR(2) model to frames that never change (correlation 1): it extrapolates.
@pytest.mark.parametrize(
    "extrapolation, atol", [(OpticalFlow, 1e-3), (BlockMatching, 3.5e-2), (Sprog, 1e-3)]
)
def test_extrapolation_keeps_a_static_field_in_place(extrapolation, atol):
    static = np.repeat(blobs(1)[None, :, :, :, None], 5, axis=1)
    forecast = extrapolation(n_out=2)(static[:, :3])
    np.testing.assert_allclose(forecast, static[:, 3:], atol=atol)


def rain_cells(n_frames, *, size=64, rho=0.8, seed=0):
    """(n_frames, size, size) rain on the model's scale (0.1 = 7 dBZ = 0.1 mm/h) moving 1 px
    right and 0.5 px down per frame: large cells that persist, and small features that each
    frame keeps only `rho` of (a lag-1 correlation), so S-PROG lets them decay."""
    rng = np.random.default_rng(seed)

    def smooth_noise(sigma):
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
        return noise / noise.std()

    large, small = smooth_noise(8.0), smooth_noise(1.0)
    frames = []
    for t in range(n_frames):
        field = 0.25 + 0.12 * large + 0.06 * small
        frames.append(ndimage.shift(field, (0.5 * t, 1.0 * t), order=3, mode="wrap"))
        small = rho * small + np.sqrt(1 - rho**2) * smooth_noise(1.0)
    return np.clip(np.stack(frames), 0, 1).astype(np.float32)


def high_pass_variance(forecast):
    """Variance of what a 2-pixel Gaussian smooths away, per lead time, away from the edges
    (where echo from beyond the frame is unknown): (B, T, H, W, 1) -> (T,)."""
    fields = forecast[0, :, 8:-8, 8:-8, 0]
    return np.var(fields - ndimage.gaussian_filter(fields, (0, 2, 2)), axis=(1, 2))


def test_sprog_extrapolates_first_and_lets_small_features_fade():
    inputs = rain_cells(4)[None, ..., None]  # (1, 4, 64, 64, 1)
    sprog, flow = Sprog(n_out=6)(inputs), OpticalFlow(n_out=6)(inputs)
    assert sprog.shape == (1, 6, 64, 64, 1) and sprog.dtype == np.float32
    assert sprog.min() >= 0 and sprog.max() <= 1 and sprog.max() > 0.4
    # Lead 1: the extrapolation, barely smoothed.
    interior = (slice(None), 0, slice(8, -8), slice(8, -8))
    assert np.corrcoef(sprog[interior].ravel(), flow[interior].ravel())[0, 1] > 0.9
    ratio = high_pass_variance(sprog) / high_pass_variance(flow)
    assert ratio[0] > 0.6, ratio
    # Later leads: the small features have decayed (a plain extrapolation keeps them).
    assert np.all(ratio[2:] < 0.8) and ratio[2:].mean() < 0.6 * ratio[0], ratio
    # One lead time, or several windows at once, give the same forecasts.
    np.testing.assert_allclose(Sprog(n_out=1)(inputs), sprog[:, :1], atol=1e-6)
    other = rain_cells(4, seed=1)[None, ..., None]
    both = Sprog(n_out=6)(np.concatenate([other, inputs]))
    np.testing.assert_allclose(both[1:], sprog, atol=1e-6)
    np.testing.assert_allclose(both[:1], Sprog(n_out=6)(other), atol=1e-6)


def test_sprog_works_on_rain_rates_above_a_tenth_of_a_mm_per_hour():
    """On an echo of 5-20 dBZ, S-PROG forecasts the part above 0.1 mm/h (7 dBZ) and no echo
    below it, in the run's scale (here dBZ from -10 to 60)."""
    norm = NormalisationConfig(dbz_min=-10.0, dbz_max=60.0)
    dbz = 5.0 + 15.0 * rain_cells(4)[..., None] / 0.6
    inputs = normalise(dbz, norm)[None]
    forecast = make_baseline("sprog", n_out=3, norm=norm)(inputs)
    forecast_dbz = forecast * 70.0 - 10.0
    wet = forecast > 0
    assert 0.1 < wet.mean() < 0.9
    assert forecast_dbz[wet].min() >= 7.0 - 1e-3 and forecast_dbz.max() <= dbz.max() + 1e-3
    assert make_baseline("sprog", n_out=3).norm == NormalisationConfig()


def test_sprog_extrapolates_windows_it_cannot_fit():
    """Where one of the 3 newest frames has no rain (>= 0.1 mm/h), or where every echo of the
    oldest leaves the grid along the motion, S-PROG's AR(2) model has no correlation to fit."""
    sprog, flow = Sprog(n_out=3), OpticalFlow(n_out=3)
    rain = rain_cells(4)[None, ..., None]
    weak = np.full_like(rain, 0.05)  # 3.5 dBZ: echo, but below 0.1 mm/h
    one_dry = rain.copy()
    one_dry[:, 1] = 0.0
    for inputs in (np.zeros_like(rain), weak, one_dry):
        np.testing.assert_array_equal(sprog(inputs), flow(inputs))
    assert sprog(weak).max() == pytest.approx(0.05, abs=1e-3)  # kept, as extrapolated

    frames = np.zeros((3, 32, 32), np.float32)
    frames[0, 10:20, 29:] = 0.4  # leaves the grid when moved 6 pixels right
    frames[1:, 10:20, 10:20] = rain_cells(2, size=10)
    velocity = np.zeros((2, 32, 32))
    velocity[0] = 3.0
    with pytest.warns(RuntimeWarning, match="invalid value"):  # pysteps' cascade gets NaN
        forecast = sprog._forecast(frames, velocity)
    np.testing.assert_array_equal(forecast, OpticalFlow._forecast(sprog, frames, velocity))


def test_sprog_needs_three_input_frames(capsys):
    too_few = np.zeros((1, 2, 16, 16, 1), np.float32)
    line = fails_with_one_line(lambda: Sprog(n_out=2)(too_few), capsys)
    assert "S-PROG baseline needs at least 3 input frames, Received: 2 (data.n_in)" in line


def test_baselines_by_name_and_their_input_checks():
    assert isinstance(make_baseline("optical_flow", n_out=2), OpticalFlow)
    assert isinstance(make_baseline("block_matching", n_out=2), BlockMatching)
    assert isinstance(make_baseline("sprog", n_out=2), Sprog)
    with pytest.raises(ValueError, match="available: persistence, optical_flow, block_m.*'rover'"):
        make_baseline("rover", n_out=2)
    with pytest.raises(ValueError, match="at least 2 input frames, Received: 1"):
        OpticalFlow(n_out=2)(np.zeros((1, 1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, time, height, width, 1\)"):
        Persistence(n_out=2)(np.zeros((1, 3, 8, 8), np.float32))
