"""Verification scores for precipitation nowcasts: categorical, continuous and neighbourhood.

Scores follow the forecasters' protocol (Jolliffe and Stephenson 2012, Forecast Verification:
A Practitioner's Guide in Atmospheric Science; docs/evaluation.md): counts and sums are taken per
lead time over a whole split, batch by batch, and scores are computed once from the totals,
never averaged over batches. `VerificationAccumulator` keeps those totals for one forecast
method; the functions below compute one batch's share with backend-neutral `keras.ops`.

Conventions shared by every function:

* Fields are (batch, time, height, width) or (batch, time, height, width, 1), in physical
  units (rain rate in mm/h, or the data's own unit such as VIL); the time axis is the lead
  time.
* Arguments are `(forecast, observation)`, keyword-only.
* Observations are NaN where there is no data; those pixels are left out of every score. A NaN
  forecast is not masked: it forecasts no event and makes the error scores NaN, so it shows.
* An event is a value `>=` the threshold (HKO-7, SEVIR, pysteps' FSS; pysteps' det_cat_fct
  uses `>`, which differs only for values equal to a threshold).
* A score whose denominator is zero (CSI when neither forecast nor observation has an event)
  is NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np
from keras import ops

from nowcast.balanced import BALANCED_THRESHOLDS_MMH, BALANCED_WEIGHTS

CONTINGENCY_FIELDS = ("hits", "false_alarms", "misses", "correct_negatives")
CATEGORICAL_SCORES = ("csi", "pod", "far", "hss", "ets", "bias")
ERROR_SUMS = (
    "valid_pixels",
    "squared_error",
    "absolute_error",
    "balanced_squared_error",
    "balanced_absolute_error",
)
CONTINUOUS_SCORES = ("mse", "mae", "b_mse", "b_mae")
FSS_SUMS = ("forecast_squared", "forecast_observation", "observation_squared")


def rain_rate_weights(observation, thresholds: Sequence[float], weights: Sequence[float]):
    """Per-pixel weights: `weights[k]` for observations in [thresholds[k-1], thresholds[k]).

    Args:
        observation: observed values on the normalised scale, any shape.
        thresholds: increasing thresholds on the same scale, one fewer than `weights`.
        weights: the weight of each interval, lowest first.
    """
    weight = ops.full_like(observation, weights[0])
    for threshold, step in zip(thresholds, weights[1:], strict=True):
        weight = ops.where(observation >= threshold, step, weight)
    return weight


def _time_first(field):
    """A (batch, time, height, width[, 1]) field as a float32 (time, batch, height, width) tensor.

    Time first, so that the reductions over everything but the lead time run over contiguous
    memory (several times faster than reducing axes 0, 2 and 3 on the CPU).
    """
    field = ops.convert_to_tensor(field, dtype="float32")
    shape = tuple(field.shape)
    if len(shape) == 5 and shape[-1] == 1:
        field = field[..., 0]
    elif len(shape) != 4:
        raise ValueError(
            "expected fields of shape (batch, time, height, width) or (batch, time, height, "
            f"width, 1), Received: shape={shape}"
        )
    return ops.transpose(field, (1, 0, 2, 3))


class ObservedBatch:
    """One batch's observation, with what the scores need of it computed once, when first
    asked for: several forecasts scored against it (`VerificationAccumulator.update` of each
    method) share its masks, events, weights and FSS window counts.

    Args:
        observation: (batch, time, height, width[, 1]) in physical units, NaN where no data.
    """

    def __init__(self, observation) -> None:
        self.shape = tuple(np.shape(observation))
        self.field = _time_first(observation)  # (T, B, H, W)
        self._parts: dict = {}

    @cached_property
    def valid(self):
        """(T, B, H, W) bool: where the observation has data."""
        return ops.isfinite(self.field)

    def part(self, key: tuple, compute):
        """`compute()`, once per `key` (what it computes and its settings)."""
        if key not in self._parts:
            self._parts[key] = compute()
        return self._parts[key]

    def forecast_field(self, forecast):
        """`forecast` as `field` is, after checking that both have one shape."""
        if tuple(np.shape(forecast)) != self.shape:
            raise ValueError(
                "forecast and observation must have the same shape, Received: "
                f"forecast.shape={tuple(np.shape(forecast))}, observation.shape={self.shape}"
            )
        return _time_first(forecast)


def contingency_counts(
    *, forecast, observation, thresholds: Sequence[float], per_sample: bool = False
):
    """Hits, false alarms, misses and correct negatives per lead time and threshold.

    Args:
        forecast, observation: (batch, time, height, width[, 1]) in physical units.
        thresholds: K event thresholds, same units.
        per_sample: count each sample of the batch apart instead of summing over the batch.

    Returns:
        int32 tensor (time, K, 4), or (batch, time, K, 4) with `per_sample`, the last axis in
        the order of `CONTINGENCY_FIELDS`. Pixels where the observation is NaN are not counted.
    """
    observed = ObservedBatch(observation)
    forecast = observed.forecast_field(forecast)
    return _contingency_counts(forecast, observed, thresholds=thresholds, per_sample=per_sample)


def _contingency_counts(forecast, observed: ObservedBatch, *, thresholds, per_sample):
    """`contingency_counts` of a forecast from `ObservedBatch.forecast_field`."""
    steps, batch = forecast.shape[:2]
    thresholds = [float(t) for t in thresholds]
    # (T, B, H, W) fields -> (T, 1, B, H*W), against thresholds (1, K, 1, 1): (T, K, B, H*W).
    limits = ops.reshape(ops.convert_to_tensor(np.asarray(thresholds, np.float32)), (1, -1, 1, 1))

    def count(mask):  # (T, K or 1, B, N) -> (T, K or 1, B)
        return ops.sum(ops.cast(mask, "int32"), axis=-1)

    def observed_events():
        observation = ops.reshape(observed.field, (steps, 1, batch, -1))
        valid = ops.reshape(observed.valid, (steps, 1, batch, -1))
        events = observation >= limits  # NaN compares False
        return valid, events, count(events), count(valid)

    valid, observed_event, observed_count, valid_count = observed.part(
        ("contingency", *thresholds), observed_events
    )
    forecast = ops.reshape(forecast, (steps, 1, batch, -1))
    forecast_event = (forecast >= limits) & valid
    hits = count(forecast_event & observed_event)
    false_alarms = count(forecast_event) - hits
    misses = observed_count - hits
    correct_negatives = valid_count - hits - false_alarms - misses
    counts = ops.stack([hits, false_alarms, misses, correct_negatives], axis=-1)  # (T, K, B, 4)
    if per_sample:
        return ops.transpose(counts, (2, 0, 1, 3))
    return ops.sum(counts, axis=2)


def _ratio(numerator, denominator):
    """numerator / denominator, NaN where the denominator is zero."""
    defined = denominator != 0
    return ops.where(defined, numerator / ops.where(defined, denominator, 1.0), np.nan)


def categorical_scores(counts) -> dict[str, np.ndarray]:
    """CSI, POD, FAR, HSS, ETS and frequency bias from contingency counts.

    With a hits, b false alarms, c misses, d correct negatives and n = a + b + c + d:
    CSI a/(a+b+c), POD a/(a+c), FAR b/(a+b), bias (a+b)/(a+c),
    ETS (a - r)/(a + b + c - r) with r = (a+b)(a+c)/n, HSS 2(ad - bc)/((a+c)(c+d) + (a+b)(b+d)).

    Args:
        counts: (..., 4) counts in the order of `CONTINGENCY_FIELDS`, summed over everything
            the scores are to pool (e.g. a whole split).

    Returns:
        name (`CATEGORICAL_SCORES`) -> float64 array of shape `counts.shape[:-1]`.
    """
    counts = ops.cast(ops.convert_to_tensor(np.asarray(counts)), "float64")
    a, b, c, d = (counts[..., k] for k in range(4))
    random_hits = _ratio((a + b) * (a + c), a + b + c + d)
    scores = {
        "csi": _ratio(a, a + b + c),
        "pod": _ratio(a, a + c),
        "far": _ratio(b, a + b),
        "hss": _ratio(2.0 * (a * d - b * c), (a + c) * (c + d) + (a + b) * (b + d)),
        "ets": _ratio(a - random_hits, a + b + c - random_hits),
        "bias": _ratio(a + b, a + c),
    }
    return {name: ops.convert_to_numpy(value) for name, value in scores.items()}


def error_sums(
    *,
    forecast,
    observation,
    balanced_thresholds: Sequence[float] | None = BALANCED_THRESHOLDS_MMH,
    balanced_weights: Sequence[float] = BALANCED_WEIGHTS,
):
    """Sums per lead time for MSE, MAE and their balanced forms (B-MSE, B-MAE).

    The balanced sums weight each pixel's error by the observation: `balanced_weights[k]`
    from `balanced_thresholds[k-1]` up to `balanced_thresholds[k]`. The defaults are Shi et
    al.'s (2017) weights for rain rates in mm/h; with `balanced_thresholds=None` (a quantity
    with no such standard, e.g. VIL) the balanced sums are NaN.

    Args:
        forecast, observation: (batch, time, height, width[, 1]) in physical units.
        balanced_thresholds: increasing thresholds, one fewer than `balanced_weights`, or None.
        balanced_weights: the weight of each interval, lowest first.

    Returns:
        float64 tensor (time, 5) in the order of `ERROR_SUMS`: the number of valid
        (non-NaN observation) pixels, then the sums of squared, absolute, weighted squared and
        weighted absolute errors over them.
    """
    observed = ObservedBatch(observation)
    return _error_sums(
        observed.forecast_field(forecast),
        observed,
        balanced_thresholds=balanced_thresholds,
        weights=balanced_weights,
    )


def _error_sums(forecast, observed: ObservedBatch, *, balanced_thresholds, weights):
    """`error_sums` of a forecast from `ObservedBatch.forecast_field`."""

    valid = observed.valid

    def observed_terms():
        observation = observed.field
        observed_values = ops.where(valid, observation, 0.0)
        if balanced_thresholds is None:
            weight = ops.full_like(observation, np.nan, dtype="float64")
        else:
            weight = rain_rate_weights(observed_values, balanced_thresholds, weights)
            weight = ops.cast(weight, "float64")
        valid_pixels = ops.sum(ops.cast(valid, "float64"), axis=(1, 2, 3))
        return observed_values, weight, valid_pixels

    thresholds = None if balanced_thresholds is None else tuple(balanced_thresholds)
    key = ("errors", thresholds, tuple(weights))
    observed_values, weight, valid_pixels = observed.part(key, observed_terms)
    error = ops.cast(ops.where(valid, forecast - observed_values, 0.0), "float64")
    squared, absolute = ops.square(error), ops.abs(error)
    # Sum over batch, height and width: (T, B, H, W) -> (T,).
    sums = [ops.sum(term, axis=(1, 2, 3)) for term in (squared, absolute)]
    sums += [ops.sum(weight * term, axis=(1, 2, 3)) for term in (squared, absolute)]
    return ops.stack([valid_pixels, *sums], axis=-1)


def continuous_scores(sums) -> dict[str, np.ndarray]:
    """MSE, MAE, B-MSE and B-MAE from `error_sums` totals: each a mean over valid pixels.

    B-MSE and B-MAE are means of weighted errors per pixel; Shi et al. (2017) report the sum
    over a 480x480 frame instead, so multiply by the frame's pixel count to compare.

    Args:
        sums: (..., 5) totals in the order of `ERROR_SUMS`.

    Returns:
        name (`CONTINUOUS_SCORES`) -> float64 array of shape `sums.shape[:-1]`.
    """
    sums = ops.convert_to_tensor(np.asarray(sums, dtype=np.float64))
    pixels = sums[..., 0]
    return {
        name: ops.convert_to_numpy(_ratio(sums[..., k + 1], pixels))
        for k, name in enumerate(CONTINUOUS_SCORES)
    }


def _check_scales(scales: Sequence[int]) -> None:
    if not scales or any(int(s) != s or s < 1 for s in scales):
        raise ValueError(f"FSS scales must be integers >= 1, Received: scales={list(scales)}")


def _window_counts(events, scales: Sequence[int]) -> list:
    """Events in the `s` x `s` window around each pixel, for each s in `scales`.

    Pixels beyond the frame have no event, and the window of pixel i spans i - s//2 ...
    i + s - 1 - s//2, as in scipy.ndimage.uniform_filter (which pysteps uses), so even scales
    match pysteps too. Every scale comes from one integral image: exact integers, and far
    faster than box convolutions.

    Args:
        events: int32 (..., height, width) of 0/1.

    Returns:
        One int32 tensor of the shape of `events` per scale.
    """
    height, width = events.shape[-2:]
    # Zeros in front: one more than the widest half-window, so that every window sum is a
    # difference of prefix sums; zeros behind: the widest other half.
    front = max(s // 2 for s in scales) + 1
    back = max(s - 1 - s // 2 for s in scales)
    leading = [(0, 0)] * (len(events.shape) - 2)
    padded = ops.pad(events, [*leading, (front, back), (front, back)])
    prefix = ops.cumsum(ops.cumsum(padded, axis=-2), axis=-1)
    counts = []
    for s in scales:
        last = front + s - 1 - s // 2  # prefix index of pixel 0's window's last row (column)
        first = front - s // 2 - 1  # prefix index just before its first row (column)
        rows, rows_before = slice(last, last + height), slice(first, first + height)
        cols, cols_before = slice(last, last + width), slice(first, first + width)
        counts.append(
            prefix[..., rows, cols]
            - prefix[..., rows_before, cols]
            - prefix[..., rows, cols_before]
            + prefix[..., rows_before, cols_before]
        )
    return counts


def fss_sums(*, forecast, observation, threshold: float, scales: Sequence[int]):
    """Sums per lead time and scale for the fractions skill score (Roberts and Lean 2008).

    F and O are the fractions of pixels `>= threshold` in the square window of `scale` pixels
    around each pixel (zeros beyond the frame, as pysteps' fss). At pixels where the
    observation is NaN neither field has an event.

    Args:
        forecast, observation: (batch, time, height, width[, 1]) in physical units.
        threshold: the event threshold, same units.
        scales: window sides in pixels (>= 1).

    Returns:
        float64 tensor (time, len(scales), 3) in the order of `FSS_SUMS`:
        sum F^2, sum F*O, sum O^2 over batch, height and width.
    """
    _check_scales(scales)
    observed = ObservedBatch(observation)
    forecast = observed.forecast_field(forecast)
    return _fss_sums(forecast, observed, threshold=threshold, scales=scales)


def _fss_sums(forecast, observed: ObservedBatch, *, threshold, scales):
    """`fss_sums` of a forecast from `ObservedBatch.forecast_field`."""
    steps = forecast.shape[0]
    scales = [int(s) for s in scales]

    def window_counts(events):  # (T, B, H, W) 0/1 -> per scale, float64 (T, B*H*W)
        return [
            ops.reshape(ops.cast(counts, "float64"), (steps, -1))
            for counts in _window_counts(ops.cast(events, "int32"), scales)
        ]

    # Sums of products of counts over the pixels: exact, since they are integers far below
    # 2^53.
    def observed_counts():  # per scale, the observation's counts and the sum of their squares
        counts = window_counts((observed.field >= threshold) & observed.valid)
        return [(other, ops.sum(other * other, axis=-1)) for other in counts]

    observation = observed.part(("fss", float(threshold), *scales), observed_counts)
    per_scale = []
    for scale, counts, (other, other_squared) in zip(
        scales, window_counts((forecast >= threshold) & observed.valid), observation, strict=True
    ):
        sums = [ops.sum(counts * counts, axis=-1), ops.sum(counts * other, axis=-1)]
        per_scale.append(ops.stack([*sums, other_squared], axis=-1) / float(scale) ** 4)
    return ops.stack(per_scale, axis=1)


def fss_scores(sums) -> np.ndarray:
    """FSS = 1 - sum (F - O)^2 / (sum F^2 + sum O^2) from `fss_sums` totals.

    Args:
        sums: (..., 3) totals in the order of `FSS_SUMS`.

    Returns:
        float64 array of shape `sums.shape[:-1]`; NaN where neither field has an event.
    """
    sums = ops.convert_to_tensor(np.asarray(sums, dtype=np.float64))
    forecast_sq, cross, observation_sq = sums[..., 0], sums[..., 1], sums[..., 2]
    total = forecast_sq + observation_sq
    return ops.convert_to_numpy(1.0 - _ratio(total - 2.0 * cross, total))


class VerificationAccumulator:
    """Totals for one forecast method over a split, updated batch by batch, scored once.

    Holds int64/float64 NumPy totals per lead time: contingency counts per threshold, error
    sums, and FSS sums per scale. Accumulators over different parts of a split (workers,
    shards) combine with `merge`; the result equals one pass over all the data. Updates that
    name each window's block of time also keep the contingency counts per block
    (`block_contingency`), from which `bootstrap_mean_difference` tells how far a score would
    move on another sample of weather.

    Args:
        n_lead_times: forecast frames per window.
        thresholds: event thresholds for the categorical scores (physical units).
        fss_threshold: event threshold for the fractions skill score.
        fss_scales: FSS window sides in pixels.
        balanced_thresholds, balanced_weights: the B-MSE and B-MAE weights (see error_sums).
    """

    def __init__(
        self,
        *,
        n_lead_times: int,
        thresholds: Sequence[float],
        fss_threshold: float,
        fss_scales: Sequence[int],
        balanced_thresholds: Sequence[float] | None = BALANCED_THRESHOLDS_MMH,
        balanced_weights: Sequence[float] = BALANCED_WEIGHTS,
    ) -> None:
        _check_scales(fss_scales)
        self.thresholds = [float(t) for t in thresholds]
        self.fss_threshold = float(fss_threshold)
        self.fss_scales = [int(s) for s in fss_scales]
        self.balanced = {
            "balanced_thresholds": balanced_thresholds,
            "balanced_weights": balanced_weights,
        }
        self.contingency = np.zeros((n_lead_times, len(self.thresholds), 4), np.int64)
        self.errors = np.zeros((n_lead_times, len(ERROR_SUMS)), np.float64)
        self.fss = np.zeros((n_lead_times, len(self.fss_scales), len(FSS_SUMS)), np.float64)
        self.block_contingency: dict[int, np.ndarray] = {}

    def update(self, *, forecast, observation, blocks: Sequence[int] | None = None) -> None:
        """Add one batch: (batch, time, height, width[, 1]) fields in physical units (the
        observation may be an `ObservedBatch`, shared with other methods' updates), and
        optionally the block (any integer id) each of its windows belongs to."""
        shape = tuple(np.shape(forecast))
        if shape[1] != self.contingency.shape[0]:
            raise ValueError(
                f"expected {self.contingency.shape[0]} lead times, Received: {shape=}"
            )
        if blocks is not None and len(blocks) != shape[0]:
            raise ValueError(
                f"expected one block per window, Received: {len(blocks)} blocks, {shape=}"
            )
        if not isinstance(observation, ObservedBatch):
            observation = ObservedBatch(observation)
        # Time first once for all three sums: each transpose copies the whole batch.
        observed, forecast = observation, observation.forecast_field(forecast)
        counts = _contingency_counts(
            forecast, observed, thresholds=self.thresholds, per_sample=True
        )
        counts = ops.convert_to_numpy(counts).astype(np.int64)
        self.contingency += counts.sum(axis=0)
        if blocks is not None:
            for block, window in zip(blocks, counts, strict=True):
                self._add_block(int(block), window)
        thresholds, weights = (
            self.balanced["balanced_thresholds"],
            self.balanced["balanced_weights"],
        )
        self.errors += ops.convert_to_numpy(
            _error_sums(forecast, observed, balanced_thresholds=thresholds, weights=weights)
        )
        fss = _fss_sums(forecast, observed, threshold=self.fss_threshold, scales=self.fss_scales)
        self.fss += ops.convert_to_numpy(fss)

    def merge(self, other: VerificationAccumulator) -> None:
        """Add the totals of another accumulator with the same settings."""
        settings = ("thresholds", "fss_threshold", "fss_scales", "balanced")
        if any(getattr(self, s) != getattr(other, s) for s in settings) or (
            self.contingency.shape != other.contingency.shape
        ):
            raise ValueError("only accumulators with the same lead times and settings merge")
        self.contingency += other.contingency
        self.errors += other.errors
        self.fss += other.fss
        for block, counts in other.block_contingency.items():
            self._add_block(block, counts)

    def to_record(self) -> dict:
        """Settings and totals as plain lists and numbers (for JSON), which `from_record` reads
        back into an equal accumulator: counts exactly, sums to the last bit (float64 reprs)."""
        weighted = self.balanced["balanced_thresholds"]
        return {
            "n_lead_times": int(self.contingency.shape[0]),
            "thresholds": self.thresholds,
            "fss_threshold": self.fss_threshold,
            "fss_scales": self.fss_scales,
            "balanced_thresholds": None if weighted is None else [float(t) for t in weighted],
            "balanced_weights": [float(w) for w in self.balanced["balanced_weights"]],
            "contingency": self.contingency.tolist(),
            "errors": self.errors.tolist(),
            "fss": self.fss.tolist(),
            # JSON keys are strings.
            "block_contingency": {
                str(block): counts.tolist() for block, counts in self.block_contingency.items()
            },
        }

    @classmethod
    def from_record(cls, record: Mapping) -> VerificationAccumulator:
        """The accumulator that `to_record` described; null sums (NaN in JSON) are NaN.

        Raises:
            ValueError: totals whose shapes do not fit the settings.
        """
        weighted = record["balanced_thresholds"]
        # Tuples, as the defaults are: `merge` compares the settings.
        accumulator = cls(
            n_lead_times=record["n_lead_times"],
            thresholds=record["thresholds"],
            fss_threshold=record["fss_threshold"],
            fss_scales=record["fss_scales"],
            balanced_thresholds=None if weighted is None else tuple(weighted),
            balanced_weights=tuple(record["balanced_weights"]),
        )

        def read(name: str, values, dtype, shape: tuple) -> np.ndarray:
            values = np.asarray(values, dtype)
            if values.shape != shape:
                raise ValueError(
                    f"expected {name} of shape {shape} for these settings, Received: "
                    f"shape={values.shape}"
                )
            return values

        dtypes = {"contingency": np.int64, "errors": np.float64, "fss": np.float64}
        for name, dtype in dtypes.items():
            total = getattr(accumulator, name)
            total[...] = read(name, record[name], dtype, total.shape)
        accumulator.block_contingency = {
            int(block): read("block_contingency", counts, np.int64, accumulator.contingency.shape)
            for block, counts in record["block_contingency"].items()
        }
        return accumulator

    def _add_block(self, block: int, counts: np.ndarray) -> None:
        if block in self.block_contingency:
            self.block_contingency[block] += counts
        else:
            self.block_contingency[block] = counts.copy()

    def scores(self) -> dict[str, np.ndarray]:
        """Every score from the totals so far.

        Returns:
            `CATEGORICAL_SCORES` -> (time, K); `CONTINUOUS_SCORES` -> (time,);
            "fss" -> (time, len(fss_scales)).
        """
        return {
            **categorical_scores(self.contingency),
            **continuous_scores(self.errors),
            "fss": fss_scores(self.fss),
        }


def bootstrap_mean_difference(
    blocks: Mapping[int, np.ndarray],
    other_blocks: Mapping[int, np.ndarray],
    *,
    score: str = "csi",
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> np.ndarray:
    """Confidence interval of (mean over lead times of `score`) minus the other method's, per
    threshold, by a block bootstrap: the blocks are drawn with replacement, `samples` times,
    and both methods are scored on the counts pooled over each draw.

    Blocks of time, not single windows, are drawn because neighbouring windows share frames
    and weather, so they do not vary independently. The interval covers which weather the
    split happened to hold, not the randomness of training.

    Args:
        blocks, other_blocks: block id -> (time, K, 4) contingency counts of each method
            (`VerificationAccumulator.block_contingency`), over the same blocks.
        score: one of `CATEGORICAL_SCORES`.
        samples: bootstrap draws.
        level: the interval's coverage, e.g. 0.95 for the 2.5th to 97.5th percentiles.
        seed: draws the resamples, so that the same counts give the same interval.

    Returns:
        float64 (K, 2): the lower and upper end per threshold; NaN with fewer than 2 blocks.
    """
    keys = sorted(blocks)
    if not keys or keys != sorted(other_blocks):
        raise ValueError("both methods must be counted over the same blocks, at least one")
    first, second = (np.stack([counts[k] for k in keys]) for counts in (blocks, other_blocks))
    if len(keys) < 2:
        return np.full((first.shape[2], 2), np.nan)
    # How often each block is drawn in each resample: (samples, blocks).
    uniform = np.full(len(keys), 1 / len(keys))
    draws = np.random.default_rng(seed).multinomial(len(keys), uniform, samples)

    def mean_score(counts):  # (blocks, T, K, 4) -> (samples, K)
        pooled = (draws @ counts.reshape(len(keys), -1)).reshape(samples, *counts.shape[1:])
        return np.nanmean(categorical_scores(pooled)[score], axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a score undefined throughout: NaN
        difference = mean_score(first) - mean_score(second)
        tail = 50 * (1 - level)
        return np.nanpercentile(difference, [tail, 100 - tail], axis=0).T
