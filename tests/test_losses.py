import keras
import numpy as np
import pytest
from keras import ops

from nowcast.config import LossConfig, NormalisationConfig
from nowcast.losses import LOSS_NAMES, PixelLoss, make_loss
from nowcast.metrics import rain_rate_weights
from nowcast.units import rain_threshold_to_normalised


def test_mse_and_mae_average_over_valid_pixels_only():
    y_true = np.array([[0.2, np.nan, 0.6, 0.0]], "float32")
    y_pred = np.array([[0.4, 0.9, 0.3, 0.1]], "float32")
    errors = np.array([0.2, 0.3, 0.1])  # the NaN pixel is left out
    mse = PixelLoss({"mse": 1.0})(y_true, y_pred)
    mae = PixelLoss({"mae": 1.0})(y_true, y_pred)
    np.testing.assert_allclose(float(mse), np.mean(errors**2), rtol=1e-6)
    np.testing.assert_allclose(float(mae), np.mean(errors), rtol=1e-6)


def test_terms_combine_with_their_coefficients():
    y_true = np.array([[0.2, 0.5]], "float32")
    y_pred = np.array([[0.0, 0.1]], "float32")
    combined = PixelLoss({"mse": 2.0, "mae": 0.5})(y_true, y_pred)
    expected = 2.0 * np.mean([0.04, 0.16]) + 0.5 * np.mean([0.2, 0.4])
    np.testing.assert_allclose(float(combined), expected, rtol=1e-6)


def test_balanced_weights_follow_the_rain_rate_intervals():
    observation = np.array([0.0, 0.1, 0.2, 0.35, 0.5], "float32")
    weights = rain_rate_weights(observation, thresholds=[0.1, 0.3], weights=[1.0, 2.0, 5.0])
    np.testing.assert_array_equal(ops.convert_to_numpy(weights), [1, 2, 2, 5, 5])


def test_balanced_mse_from_config_uses_mm_per_hour_thresholds():
    norm = NormalisationConfig()
    at_5 = rain_threshold_to_normalised(5.0, norm)
    at_30 = rain_threshold_to_normalised(30.0, norm)
    loss = make_loss(LossConfig(terms={"balanced_mse": 1.0}), norm)
    # A pixel at 5 mm/h weighs 5 (interval 5-10 mm/h), one just above 30 mm/h weighs 30.
    y_true = np.array([[0.0, at_5, at_30 + 1e-3]], "float32")
    y_pred = y_true + 0.1
    expected = (1.0 + 5.0 + 30.0) * 0.01 / 3
    np.testing.assert_allclose(float(loss(y_true, y_pred)), expected, rtol=1e-4)


def test_gradient_is_finite_with_no_data_targets():
    y_true = keras.ops.convert_to_tensor(np.array([[np.nan, 0.5]], "float32"))
    loss = PixelLoss({"balanced_mse": 1.0, "mae": 1.0}, [0.3], [1.0, 2.0])
    import tensorflow as tf

    y_pred = tf.Variable([[0.1, 0.2]])
    with tf.GradientTape() as tape:
        value = loss(y_true, y_pred)
    grad = tape.gradient(value, y_pred).numpy()
    assert np.all(np.isfinite(grad))
    assert grad[0, 0] == 0.0 and grad[0, 1] < 0.0


def test_unknown_loss_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="allowed: " + ", ".join(LOSS_NAMES)):
        PixelLoss({"msee": 1.0})


def test_loss_round_trips_through_its_config():
    loss = PixelLoss({"balanced_mae": 1.0}, [0.3, 0.5], [1.0, 2.0, 5.0])
    again = PixelLoss.from_config(loss.get_config())
    assert again.terms == loss.terms and again.weights == loss.weights


def test_lead_decay_weighs_early_lead_times_more_and_keeps_the_loss_size():
    y_true = np.zeros((1, 3, 2, 2, 1), "float32")
    y_pred = y_true.copy()
    y_pred[:, 0], y_pred[:, 1], y_pred[:, 2] = 0.1, 0.2, 0.3  # error per lead time
    equal = float(PixelLoss({"mae": 1.0})(y_true, y_pred))
    np.testing.assert_allclose(equal, 0.2, rtol=1e-6)
    weighted = PixelLoss({"mae": 1.0}, lead_decay=0.5)  # 1, 0.5, 0.25 -> 12/7, 6/7, 3/7
    expected = (0.1 * 12 + 0.2 * 6 + 0.3 * 3) / 7 / 3
    np.testing.assert_allclose(float(weighted(y_true, y_pred)), expected, rtol=1e-6)
    again = PixelLoss.from_config(weighted.get_config())
    np.testing.assert_allclose(float(again(y_true, y_pred)), expected, rtol=1e-6)
    cfg = LossConfig(terms={"mae": 1.0}, lead_decay=0.5)
    np.testing.assert_allclose(
        float(make_loss(cfg, NormalisationConfig())(y_true, y_pred)), expected, rtol=1e-6
    )
    with pytest.raises(ValueError, match="lead_decay must be a positive number"):
        PixelLoss({"mse": 1.0}, lead_decay=0.0)


def test_soft_csi_is_one_minus_the_csi_of_the_summed_counts_when_sharp():
    rng = np.random.default_rng(0)
    y_true = rng.uniform(0, 1, (3, 2, 8, 8, 1)).astype("float32")
    y_pred = rng.uniform(0, 1, (3, 2, 8, 8, 1)).astype("float32")
    thresholds = [0.3, 0.7]
    loss = PixelLoss({"soft_csi": 1.0}, thresholds, [1.0, 1.0, 1.0], csi_width=1e-6)
    expected = []
    for lead in range(2):
        per_threshold = []
        for t in thresholds:
            yes, observed = y_pred[:, lead] >= t, y_true[:, lead] >= t
            hits = np.sum(yes & observed)
            misses, false_alarms = np.sum(~yes & observed), np.sum(yes & ~observed)
            per_threshold.append(1 - (hits + 1) / (hits + misses + false_alarms + 1))
        expected.append(np.mean(per_threshold))
    # The batch's score, carried whole by every sample.
    per_sample = ops.convert_to_numpy(loss.call(y_true, y_pred))
    np.testing.assert_allclose(per_sample, np.mean(expected), rtol=1e-5)
    np.testing.assert_allclose(float(loss(y_true, y_pred)), np.mean(expected), rtol=1e-5)


def test_soft_csi_rewards_raising_a_miss_and_penalises_a_false_alarm():
    import tensorflow as tf

    # Pixels: a hit, a miss (observed, forecast below) and a false alarm; the last is no data.
    y_true = keras.ops.convert_to_tensor(np.array([[0.8, 0.8, 0.1, np.nan]], "float32"))
    y_pred = tf.Variable([[0.8, 0.45, 0.55, 0.9]])
    loss = PixelLoss({"soft_csi": 1.0}, [0.5], [1.0, 1.0], csi_width=0.05)
    with tf.GradientTape() as tape:
        value = loss(y_true, y_pred)
    grad = tape.gradient(value, y_pred).numpy()[0]
    assert 0 < float(value) < 1
    assert grad[1] < 0 < grad[2]  # raise the miss, lower the false alarm
    assert grad[3] == 0.0  # no-data pixels count for nothing
    perfect = PixelLoss({"soft_csi": 1.0}, [0.5], [1.0, 1.0], csi_width=1e-3)
    assert float(perfect(y_true, y_true)) < 1e-6


def test_soft_csi_from_config_uses_its_own_mm_per_hour_thresholds_and_dbz_width():
    norm = NormalisationConfig()
    cfg = LossConfig(
        terms={"soft_csi": 1.0},
        thresholds_mmh=[30.0],
        weights=[1.0, 30.0],
        soft_csi_thresholds_mmh=[1.0, 10.0],
    )
    loss = make_loss(cfg, norm)
    assert loss.thresholds == [pytest.approx(rain_threshold_to_normalised(30.0, norm))]
    assert loss.csi_thresholds == [
        pytest.approx(rain_threshold_to_normalised(t, norm)) for t in (1.0, 10.0)
    ]
    assert loss.csi_width == pytest.approx(2.0 / 70.0)
    again = PixelLoss.from_config(loss.get_config())
    assert again.get_config() == loss.get_config()
    # A loss saved before the soft CSI had thresholds of its own scored at the balanced ones.
    saved_before = {k: v for k, v in loss.get_config().items() if k != "csi_thresholds"}
    assert PixelLoss.from_config(saved_before).csi_thresholds == loss.thresholds
    with pytest.raises(ValueError, match="matched_csi losses need at least one threshold"):
        PixelLoss({"soft_csi": 1.0})
    with pytest.raises(ValueError, match=r"\(loss.soft_csi_thresholds_mmh, loss.soft_csi_width"):
        make_loss(LossConfig(terms={"soft_csi": 1.0}, soft_csi_width_dbz=0.0), norm)
    with pytest.raises(ValueError, match="matched_csi losses need at least one threshold"):
        make_loss(LossConfig(terms={"soft_csi": 1.0}, soft_csi_thresholds_mmh=[]), norm)


def _matched_to_observed_amounts(y_true, y_pred):
    """The forecast as probability matching makes it, with the observed values as reference:
    each frame's valid pixels take the observed values in the forecast's rank order."""
    valid = np.isfinite(y_true)
    matched = np.full_like(y_pred, -1.0)
    for b, t in np.ndindex(y_true.shape[:2]):
        inside = valid[b, t]
        ranks = np.argsort(np.argsort(y_pred[b, t][inside]))
        matched[b, t][inside] = np.sort(y_true[b, t][inside])[ranks]
    return matched


def test_matched_csi_is_the_csi_of_the_forecast_matched_to_the_observed_amounts_when_sharp():
    rng = np.random.default_rng(1)
    y_true = rng.uniform(0, 1, (3, 2, 8, 8, 1)).astype("float32")
    # Too little rain to pass 0.7 anywhere, but placed partly where it was observed.
    y_pred = (0.3 * rng.uniform(0, 1, y_true.shape) + 0.2 * y_true).astype("float32")
    y_true[0, 0, :2] = np.nan  # no data: no rank of rain, no count
    thresholds = [0.3, 0.7]
    matched = _matched_to_observed_amounts(y_true, y_pred)
    expected = []
    for lead in range(2):
        per_threshold = []
        for t in thresholds:
            yes, observed = matched[:, lead] >= t, np.nan_to_num(y_true[:, lead]) >= t
            hits = np.sum(yes & observed)
            misses, false_alarms = np.sum(~yes & observed), np.sum(yes & ~observed)
            per_threshold.append(1 - (hits + 1) / (hits + misses + false_alarms + 1))
        expected.append(np.mean(per_threshold))
    loss = PixelLoss({"matched_csi": 1.0}, thresholds, [1.0, 1.0, 1.0], csi_width=1e-6)
    np.testing.assert_allclose(float(loss(y_true, y_pred)), np.mean(expected), rtol=1e-5)
    # Ranks, not amounts: halving the forecast changes nothing; the soft CSI sees no rain.
    halved = 0.5 * y_pred
    np.testing.assert_allclose(float(loss(y_true, halved)), np.mean(expected), rtol=1e-5)
    soft = PixelLoss({"soft_csi": 1.0}, thresholds, [1.0, 1.0, 1.0], csi_width=1e-6)
    assert float(soft(y_true, halved)) > float(loss(y_true, halved)) + 0.1


def test_matched_csi_teaches_ranks_to_a_forecast_below_every_threshold():
    import tensorflow as tf

    # Observed: rain at 0.8 on the first four pixels. Forecast: a faded field, all below
    # 0.8, whose wettest four pixels are the last four (false alarms once matched).
    y_true = keras.ops.convert_to_tensor(
        np.where(np.arange(16) < 4, 0.8, 0.1).astype("float32")[None, None, :]
    )
    faded = np.where(np.arange(16) >= 12, 0.4, 0.3).astype("float32")
    y_pred = tf.Variable(faded[None, None, :])

    def gradient(terms):
        loss = PixelLoss(terms, [0.5], [1.0, 1.0], csi_width=2.0 / 70.0)
        with tf.GradientTape() as tape:
            value = loss(y_true, y_pred)
        return tape.gradient(value, y_pred).numpy()[0, 0]

    assert np.all(gradient({"soft_csi": 1.0}) == 0.0)  # three widths below: a clean no
    matched = gradient({"matched_csi": 1.0})
    assert matched[12:].min() > 0  # lower the wettest, the false alarms
    assert matched[:4].max() < 0  # raise the misses toward their ranks


def test_a_threshold_a_batch_never_reaches_does_not_push_light_rain_down():
    import tensorflow as tf

    # Light rain forecast and observed, far below a heavy threshold that nothing reaches.
    y_true = keras.ops.convert_to_tensor(np.full((2, 1, 64, 1), 0.3, "float32"))
    y_pred = tf.Variable(np.full((2, 1, 64, 1), 0.3, "float32"))
    loss = PixelLoss({"soft_csi": 1.0}, [0.8], [1.0, 1.0], csi_width=2.0 / 70.0)

    def gradient():
        with tf.GradientTape() as tape:
            value = loss(y_true, y_pred)
        return tape.gradient(value, y_pred).numpy()

    assert np.all(gradient() == 0.0)
    # A false alarm near the threshold is still penalised.
    near_miss = np.where(np.arange(64) < 4, 0.79, 0.3).astype("float32")
    y_pred.assign(np.broadcast_to(near_miss[None, None, :, None], (2, 1, 64, 1)))
    assert gradient()[:, 0, :4].min() > 0
