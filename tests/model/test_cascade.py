"""Scale bands of the moved frame, weighed by the network per pixel and lead time."""

import keras
import numpy as np
import pytest
from test_advection import STAGES

from nowcast.model import EncoderForecaster
from nowcast.model.cascade import coarse_fields, scale_bands
from nowcast.model.encoder_forecaster import fit_lead_times


def _field(seed=0, shape=(2, 24, 30, 1)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_bands_add_up_to_the_field_and_hold_each_scale():
    field = _field(1)
    bands = keras.ops.convert_to_numpy(scale_bands(field, 4))
    assert bands.shape == (*field.shape[:3], 4)
    np.testing.assert_allclose(bands.sum(axis=-1, keepdims=True), field, atol=1e-5)
    # White noise lives at the finest scale: each coarser band holds less of its variance.
    spread = bands[:, 6:-6, 6:-6].std(axis=(0, 1, 2))
    assert np.all(np.diff(spread[:3]) < 0), spread


def test_a_feature_falls_in_the_band_of_its_size():
    """A checkerboard of single pixels is all detail; a hump 30 pixels wide is coarse."""
    rows, columns = np.mgrid[:64, :64]
    checkerboard = ((rows + columns) % 2).astype(np.float32)
    hump = np.exp(-((rows - 32) ** 2 + (columns - 32) ** 2) / (2 * 15.0**2)).astype(np.float32)
    for field, band in ((checkerboard, 0), (hump, 3)):
        bands = keras.ops.convert_to_numpy(scale_bands(field[None, ..., None], 4))[0]
        energy = (bands[8:-8, 8:-8] ** 2).sum(axis=(0, 1))
        energy[3] = ((bands[8:-8, 8:-8, 3] - bands[8:-8, 8:-8, 3].mean()) ** 2).sum()
        assert energy.argmax() == band, energy


def test_coarse_fields_keep_the_mean_and_lose_the_detail():
    field = _field(2, (1, 32, 48, 1))
    fields = [keras.ops.convert_to_numpy(f) for f in coarse_fields(field, 4)]
    assert [f.shape for f in fields] == [field.shape] * 4
    inner = (slice(None), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose([f[inner].mean() for f in fields], field[inner].mean(), atol=0.02)
    spread = [f[inner].std() for f in fields]
    assert np.all(np.diff(spread) < 0), spread


def _banded_and_plain(frames):
    banded = EncoderForecaster(STAGES, n_out=2, head_filters=4, advection=True, scale_bands=3)
    plain = EncoderForecaster(STAGES, n_out=2, head_filters=4, advection=True)
    banded(frames), plain(frames)
    gates = {id(w) for w in [*banded.band_gates.weights, banded.lead_band_logits]}
    plain.set_weights([w.numpy() for w in banded.weights if id(w) not in gates])
    return banded, plain


def _without_finest_band(moved, frame_size=16):
    bands = scale_bands(keras.ops.reshape(moved, (-1, frame_size, frame_size, 1)), 3)
    rest = keras.ops.sum(bands[..., 1:], axis=-1, keepdims=True)
    return keras.ops.convert_to_numpy(keras.ops.reshape(rest, moved.shape))


def test_a_model_with_bands_starts_as_one_without_and_learns_to_drop_a_band():
    """Gates start at 1 (the same forecast as without bands), and each band's gate moves
    between 0 and 2: weights that close the finest band's gate remove that band exactly."""
    frames = np.random.default_rng(3).random((1, 3, 16, 16, 1), dtype=np.float32)
    banded, plain = _banded_and_plain(frames)
    np.testing.assert_allclose(banded(frames), plain(frames), atol=1e-5)
    assert len(banded.band_gates.get_weights()[1]) == 3

    banded.output_conv.set_weights([np.zeros_like(w) for w in banded.output_conv.get_weights()])
    kernel, _ = banded.band_gates.get_weights()
    banded.band_gates.set_weights([kernel, np.array([-30.0, 0.0, 0.0], np.float32)])
    forecast, moved = banded.forecast_and_extrapolation(frames)
    np.testing.assert_allclose(forecast, _without_finest_band(moved), atol=1e-5)


def test_a_lead_time_logit_drops_a_band_at_that_lead_time_only():
    """S-PROG's cascade by learning: each lead time has its own logit per band, scaled so that
    a short fine-tuning can move it (LEAD_GATE_GAIN)."""
    frames = np.random.default_rng(4).random((2, 3, 16, 16, 1), dtype=np.float32)
    banded, _ = _banded_and_plain(frames)
    banded.output_conv.set_weights([np.zeros_like(w) for w in banded.output_conv.get_weights()])
    logits = np.zeros((2, 3), np.float32)
    logits[1, 0] = -1.0  # times the gain of 30: the finest band's gate at the second lead time
    banded.lead_band_logits.assign(logits)
    forecast, moved = banded.forecast_and_extrapolation(frames)
    np.testing.assert_allclose(forecast[:, 0], moved[:, 0], atol=1e-5)
    np.testing.assert_allclose(forecast[:, 1], _without_finest_band(moved)[:, 1], atol=1e-5)


def test_lead_time_logits_fit_a_shorter_or_longer_forecast():
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(fit_lead_times(table, 2), table[:2])
    np.testing.assert_array_equal(fit_lead_times(table, 3), table)
    np.testing.assert_array_equal(
        fit_lead_times(table, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    )


@pytest.mark.parametrize("kwargs", [{"scale_bands": 1}, {"scale_bands": -2}, {"scale_bands": 3}])
def test_scale_bands_are_refused_when_they_cannot_apply(kwargs):
    advection = kwargs["scale_bands"] != 3
    with pytest.raises(ValueError, match="scale_bands"):
        EncoderForecaster(STAGES, n_out=2, advection=advection, **kwargs)
