import json

import keras
import numpy as np
import pytest
from pysteps.verification import det_cat_fct
from pysteps.verification.spatialscores import fss_accum, fss_compute, fss_init

from nowcast.metrics import (
    CATEGORICAL_SCORES,
    CONTINUOUS_SCORES,
    ObservedBatch,
    VerificationAccumulator,
    bootstrap_mean_difference,
    categorical_scores,
    contingency_counts,
    continuous_scores,
    error_sums,
    fss_scores,
    fss_sums,
)


def fields_with_table(hits, false_alarms, misses, correct_negatives, seed=0):
    """(forecast, observation) pixel rows of 0 or 2 mm/h with exactly that table at 1 mm/h."""
    pairs = [(2, 2)] * hits + [(2, 0)] * false_alarms + [(0, 2)] * misses
    pairs += [(0, 0)] * correct_negatives
    pairs = np.random.default_rng(seed).permutation(np.array(pairs, dtype=np.float32))
    return pairs[:, 0], pairs[:, 1]


def as_bthw(*rows):
    """Rows of pixels, one per lead time, as a (1, time, 1, pixels) field."""
    return np.stack(rows)[None, :, None, :]


def test_asymmetric_tables_give_the_known_scores_per_lead_time():
    # Lead time 1: a=82, b=38, c=23, d=222, so a swap of misses and false alarms shows.
    fct_1, obs_1 = fields_with_table(82, 38, 23, 222)
    fct_2, obs_2 = fields_with_table(10, 5, 30, 320)
    forecast, observation = as_bthw(fct_1, fct_2), as_bthw(obs_1, obs_2)
    counts = np.asarray(
        contingency_counts(forecast=forecast, observation=observation, thresholds=[1.0, 3.0])
    )
    assert counts.shape == (2, 2, 4)
    np.testing.assert_array_equal(counts[:, 0], [[82, 38, 23, 222], [10, 5, 30, 320]])
    np.testing.assert_array_equal(counts[:, 1], [[0, 0, 0, 365], [0, 0, 0, 365]])

    scores = categorical_scores(counts)
    a, b, c, d = 82, 38, 23, 222
    random_hits = (a + b) * (a + c) / (a + b + c + d)
    expected = {
        "csi": 82 / 143,
        "pod": 82 / 105,
        "far": 38 / 120,
        "bias": 120 / 105,
        "ets": (82 - random_hits) / (143 - random_hits),
        "hss": 2 * (82 * 222 - 38 * 23) / (105 * 245 + 120 * 260),
    }
    for name, value in expected.items():
        assert scores[name][0, 0] == pytest.approx(value, rel=1e-12), name
    assert scores["csi"][1, 0] == pytest.approx(10 / 45)
    assert scores["far"][1, 0] == pytest.approx(5 / 15)
    # No event forecast or observed: CSI, POD, FAR and bias are undefined, not 0 or 1.
    for name in ("csi", "pod", "far", "bias"):
        assert np.isnan(scores[name][0, 1]), name


@pytest.mark.parametrize("seed", [0, 1])
def test_categorical_scores_match_pysteps_on_random_fields(seed):
    rng = np.random.default_rng(seed)
    forecast = rng.gamma(0.6, 3.0, (3, 4, 24, 28)).astype(np.float32)
    observation = rng.gamma(0.6, 3.0, (3, 4, 24, 28)).astype(np.float32)
    observation[rng.random(observation.shape) < 0.2] = np.nan  # no data
    thresholds = [0.37, 1.13, 4.91]  # between data values, where > and >= agree
    scores = categorical_scores(
        contingency_counts(forecast=forecast, observation=observation, thresholds=thresholds)
    )
    names = [name.upper() for name in CATEGORICAL_SCORES]
    for lead in range(forecast.shape[1]):
        valid = np.isfinite(observation[:, lead])
        for k, threshold in enumerate(thresholds):
            reference = det_cat_fct(
                forecast[:, lead][valid], observation[:, lead][valid], threshold, scores=names
            )
            for name in CATEGORICAL_SCORES:
                assert scores[name][lead, k] == pytest.approx(reference[name.upper()], abs=1e-6)


def test_fss_matches_pysteps_at_odd_and_even_scales_with_no_data_masked():
    rng = np.random.default_rng(5)
    forecast = rng.gamma(0.6, 3.0, (2, 3, 20, 26)).astype(np.float32)
    observation = rng.gamma(0.6, 3.0, (2, 3, 20, 26)).astype(np.float32)
    observation[:, :, :4, :] = np.nan
    scales = [1, 4, 5, 9, 26]
    fss = fss_scores(
        fss_sums(forecast=forecast, observation=observation, threshold=1.0, scales=scales)
    )
    assert fss.shape == (3, len(scales))
    for lead in range(3):
        for k, scale in enumerate(scales):
            state = fss_init(1.0, scale)
            for sample in range(2):
                masked = forecast[sample, lead].copy()
                masked[np.isnan(observation[sample, lead])] = np.nan
                fss_accum(state, masked, observation[sample, lead])
            assert fss[lead, k] == pytest.approx(fss_compute(state), abs=1e-6), (lead, scale)


def test_error_scores_on_hand_values_leave_no_data_out():
    observation = np.array([0.1, 3.0, 40.0, np.nan], np.float32)[None, None, None]
    forecast = np.array([0.6, 1.0, 50.0, 7.0], np.float32)[None, None, None]
    scores = continuous_scores(error_sums(forecast=forecast, observation=observation))
    # Errors 0.5, -2, 10 with Shi et al. weights 1 (< 2 mm/h), 2 (2-5), 30 (>= 30).
    assert scores["mse"][0] == pytest.approx((0.25 + 4 + 100) / 3)
    assert scores["mae"][0] == pytest.approx((0.5 + 2 + 10) / 3)
    assert scores["b_mse"][0] == pytest.approx((0.25 + 2 * 4 + 30 * 100) / 3)
    assert scores["b_mae"][0] == pytest.approx((0.5 + 2 * 2 + 30 * 10) / 3)


def test_a_perfect_forecast_scores_perfectly():
    rng = np.random.default_rng(3)
    observation = rng.gamma(0.6, 3.0, (2, 3, 16, 16, 1)).astype(np.float32)
    observation[:, :, :2] = np.nan
    accumulator = VerificationAccumulator(
        n_lead_times=3, thresholds=[0.5, 2.0], fss_threshold=1.0, fss_scales=[1, 5]
    )
    accumulator.update(forecast=np.nan_to_num(observation, nan=9.0), observation=observation)
    scores = accumulator.scores()
    for name, perfect in [("csi", 1), ("pod", 1), ("far", 0), ("hss", 1), ("ets", 1), ("bias", 1)]:
        np.testing.assert_allclose(scores[name], perfect, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(scores["fss"], 1.0, atol=1e-12)
    for name in ("mse", "mae", "b_mse", "b_mae"):
        np.testing.assert_allclose(scores[name], 0.0, atol=1e-12, err_msg=name)


def test_scores_pool_counts_over_batches_and_merge():
    rng = np.random.default_rng(4)
    # A wet batch and a nearly dry one: averaging their CSIs would differ from pooling.
    wet = [rng.gamma(2.0, 3.0, (2, 2, 12, 12)).astype(np.float32) for _ in range(2)]
    dry = [rng.gamma(0.1, 1.0, (2, 2, 12, 12)).astype(np.float32) for _ in range(2)]
    settings = dict(n_lead_times=2, thresholds=[1.0, 5.0], fss_threshold=1.0, fss_scales=[3])
    whole, first, second = (VerificationAccumulator(**settings) for _ in range(3))
    whole.update(
        forecast=np.concatenate([wet[0], dry[0]]), observation=np.concatenate([wet[1], dry[1]])
    )
    first.update(forecast=wet[0], observation=wet[1])
    second.update(forecast=dry[0], observation=dry[1])
    per_batch_mean = (first.scores()["csi"] + second.scores()["csi"]) / 2
    first.merge(second)
    for name, value in whole.scores().items():
        # Counts pool exactly, float64 sums added in another order to 1e-12; JAX (by default)
        # has no float64, and its float32 sums agree to about 1e-7.
        float32_sums = keras.backend.backend() == "jax" and name in (*CONTINUOUS_SCORES, "fss")
        rtol = 1e-6 if float32_sums else 1e-12
        np.testing.assert_allclose(first.scores()[name], value, rtol=rtol, err_msg=name)
    assert not np.allclose(whole.scores()["csi"], per_batch_mean)


def test_counts_per_window_add_up_to_the_batch_and_are_kept_per_block():
    rng = np.random.default_rng(5)
    forecast, observation = (rng.gamma(1.0, 2.0, (3, 2, 8, 8)).astype(np.float32) for _ in "fo")
    observation[1, :, :2] = np.nan
    pair = dict(forecast=forecast, observation=observation, thresholds=[1.0, 4.0])
    per_window = np.asarray(contingency_counts(**pair, per_sample=True))
    assert per_window.shape == (3, 2, 2, 4)
    np.testing.assert_array_equal(per_window.sum(0), contingency_counts(**pair))
    np.testing.assert_array_equal(
        per_window[1],
        contingency_counts(
            **{**pair, **{"forecast": forecast[1:2], "observation": observation[1:2]}}
        ),
    )

    settings = dict(n_lead_times=2, thresholds=[1.0, 4.0], fss_threshold=1.0, fss_scales=[3])
    whole, first, second = (VerificationAccumulator(**settings) for _ in range(3))
    whole.update(forecast=forecast, observation=observation, blocks=[7, 9, 7])
    first.update(forecast=forecast[:2], observation=observation[:2], blocks=[7, 9])
    second.update(forecast=forecast[2:], observation=observation[2:], blocks=[7])
    first.merge(second)
    for accumulator in (whole, first):
        assert sorted(accumulator.block_contingency) == [7, 9]
        np.testing.assert_array_equal(accumulator.block_contingency[7], per_window[[0, 2]].sum(0))
        np.testing.assert_array_equal(accumulator.block_contingency[9], per_window[1])
    with pytest.raises(ValueError, match="one block per window"):
        whole.update(forecast=forecast, observation=observation, blocks=[1, 2])


def block_counts(rng, blocks: int, hit_rate: float) -> dict[int, np.ndarray]:
    """Random (time 2, thresholds 1, 4) tables per block, hits a `hit_rate` share of events."""
    tables = {}
    for block in range(blocks):
        events = rng.integers(50, 150, size=2)
        hits = rng.binomial(events, hit_rate)
        false_alarms = rng.integers(10, 40, size=2)
        tables[block] = np.stack(
            [hits, false_alarms, events - hits, 1000 - events - false_alarms], -1
        )[:, None]
    return tables


def test_block_bootstrap_interval_of_a_mean_score_difference():
    rng = np.random.default_rng(6)
    better, worse = block_counts(rng, 12, 0.7), block_counts(rng, 12, 0.4)
    interval = bootstrap_mean_difference(better, worse, samples=400)
    assert interval.shape == (1, 2) and 0 < interval[0, 0] < interval[0, 1]
    pooled = [categorical_scores(sum(t.values()))["csi"].mean() for t in (better, worse)]
    assert interval[0, 0] < pooled[0] - pooled[1] < interval[0, 1]
    # Same counts, same draws; a method against itself differs by exactly nothing.
    np.testing.assert_array_equal(interval, bootstrap_mean_difference(better, worse, samples=400))
    np.testing.assert_array_equal(bootstrap_mean_difference(better, better, samples=50), [[0, 0]])
    # Wider where the blocks disagree more: half the blocks better, half worse.
    mixed = {k: (better if k % 2 else worse)[k] for k in better}
    wide = bootstrap_mean_difference(mixed, block_counts(rng, 12, 0.55), samples=400)
    assert wide[0, 0] < 0 < wide[0, 1]
    assert np.isnan(bootstrap_mean_difference({0: better[0]}, {0: worse[0]})).all()
    with pytest.raises(ValueError, match="same blocks"):
        bootstrap_mean_difference(better, {0: worse[0]})


def test_fields_are_keyword_only_and_must_agree_in_shape():
    field = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(TypeError):
        contingency_counts(field, field, thresholds=[1.0])
    with pytest.raises(ValueError, match=r"same shape.*\(1, 2, 4, 4\).*\(1, 3, 4, 4\)"):
        error_sums(forecast=field, observation=np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="expected fields of shape"):
        error_sums(forecast=field[0], observation=field[0])
    with pytest.raises(ValueError, match="scales must be integers >= 1"):
        fss_sums(forecast=field, observation=field, threshold=1.0, scales=[0])


def test_methods_scored_against_one_observed_batch_get_the_totals_of_separate_updates():
    """Evaluation computes the observation's masks, events, weights and FSS window counts once
    per batch for all the methods; the totals are those of each method scored on its own."""
    rng = np.random.default_rng(3)
    observation = rng.gamma(0.4, 3.0, (2, 3, 24, 20)).astype(np.float32)
    observation[:, :, :5] = np.nan
    forecasts = [rng.gamma(0.4, 3.0, observation.shape).astype(np.float32) for _ in range(2)]
    settings = dict(
        n_lead_times=3, thresholds=[0.5, 2.0, 8.0], fss_threshold=1.0, fss_scales=[1, 4]
    )
    shared, alone = ([VerificationAccumulator(**settings) for _ in forecasts] for _ in range(2))
    observed = ObservedBatch(observation)
    for forecast, with_shared, on_its_own in zip(forecasts, shared, alone, strict=True):
        with_shared.update(forecast=forecast, observation=observed, blocks=[0, 1])
        on_its_own.update(forecast=forecast, observation=observation, blocks=[0, 1])
        assert with_shared.to_record() == on_its_own.to_record()
    assert not np.array_equal(shared[0].contingency, shared[1].contingency)
    # Other settings against the same batch get their own parts of it.
    other = dict(n_lead_times=3, thresholds=[1.0], fss_threshold=2.0, fss_scales=[3])
    with_shared, on_its_own = (
        VerificationAccumulator(**other, balanced_thresholds=None) for _ in range(2)
    )
    with_shared.update(forecast=forecasts[0], observation=observed)
    on_its_own.update(forecast=forecasts[0], observation=observation)
    assert json.dumps(with_shared.to_record()) == json.dumps(on_its_own.to_record())
    with pytest.raises(ValueError, match="same shape"):
        shared[0].update(forecast=forecasts[0][:1], observation=observed)
