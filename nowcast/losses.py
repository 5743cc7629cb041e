"""Pixel losses on the model's normalised scale, chosen and combined by name from the config.

Targets carry NaN where the radar saw nothing (no-data); those pixels are left out of every loss.
The balanced losses (B-MSE, B-MAE; Shi et al. 2017) weight each pixel by the observed rain rate so
that the rare heavy rain is not drowned by the mostly dry or light-rain pixels. `soft_csi` scores
what forecasters score instead of a pixel error: one minus a differentiable critical success index
at each rain-rate threshold (as Lagerquist and Ebert-Uphoff 2022 build losses from verification
scores). A pixel error rewards fading an echo whose future is uncertain; the CSI rewards
forecasting it where it is likely enough to be a hit. `matched_csi` scores the forecast as
probability matching will make it (nowcast.model.matching): by the ranks of its pixels, not
their values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import keras
from keras import ops

from nowcast.config import LossConfig, NormalisationConfig
from nowcast.metrics import rain_rate_weights
from nowcast.units import rain_threshold_to_normalised

PIXEL_ERRORS: dict[str, Callable] = {"mse": ops.square, "mae": ops.abs}
SOFT_CSI = "soft_csi"
MATCHED_CSI = "matched_csi"
CSI_TERMS = (SOFT_CSI, MATCHED_CSI)
LOSS_NAMES = tuple(PIXEL_ERRORS) + tuple(f"balanced_{name}" for name in PIXEL_ERRORS) + CSI_TERMS


# A forecast more than this many sigmoid widths below a threshold is a clean no. Summed over
# every light-rain pixel, the sigmoid's far tail made a threshold that a batch never reaches
# (10 or 30 mm/h in stratiform rain) the cheapest term to lower, by lowering all rain: the
# network learnt to erase rain (docs/skill.md, "Fine-tuning on a few hours of your own radar").
TAIL_WIDTHS = 3.0


def matched_thresholds(observation, forecast, valid, thresholds: Sequence[float]):
    """Per frame and threshold, the forecast value that as many valid pixels exceed as are
    observed at or above the threshold: where probability matching would put the threshold
    on the forecast, had the extrapolation the observed amount of rain.

    Returns:
        One (batch, time, 1, ...) per threshold: midway between the forecast values of the
        ranks either side of the count, without gradient (ranks pass none).
    """
    frames = (*ops.shape(forecast)[:2], -1)
    # Pixels without data rank below every forecast value, so they take no rank of rain.
    ranked = ops.sort(
        ops.reshape(ops.where(valid > 0, ops.stop_gradient(forecast), -1e9), frames), axis=-1
    )
    pixels = ops.shape(ranked)[-1]  # unknown until run for frames of any size
    observed = ops.reshape(observation * valid, frames)
    keep = (*ops.shape(forecast)[:2], *(1,) * (len(forecast.shape) - 2))
    levels = []
    for threshold in thresholds:
        count = ops.sum(ops.cast(observed >= threshold, "int32"), axis=-1, keepdims=True)
        above = ops.clip(pixels - count, 0, pixels - 1)  # the lowest of the wettest `count`
        below = ops.clip(pixels - count - 1, 0, pixels - 1)
        level = 0.5 * (
            ops.take_along_axis(ranked, above, axis=-1)
            + ops.take_along_axis(ranked, below, axis=-1)
        )
        levels.append(ops.reshape(level, keep))
    return levels


def soft_csi_loss(
    observation,
    forecast,
    valid,
    thresholds: Sequence[float],
    width: float,
    matched: bool = False,
):
    """1 - CSI at each threshold, from soft counts over the batch, per lead time.

    A forecast pixel counts as `sigmoid((forecast - threshold) / width)` of a yes, or as a
    clean no more than `TAIL_WIDTHS` widths below the threshold, so hits, misses and false
    alarms are differentiable; they are summed over the batch and the frame before the ratio,
    as the verification sums contingency counts over windows. One pixel's worth in the
    numerator and denominator keeps a lead time with no rain at 0.

    With `matched`, the forecast is scored as probability matching will make it
    (`nowcast.model.matching`): each threshold is moved, per frame, to the forecast value that
    the observed count of pixels exceeds (`matched_thresholds`), so a pixel is a yes as far as
    it ranks among the wettest. The term then rewards placing rain, not its amount: a forecast
    smoothed below a threshold still gets that threshold's gradient, toward the ranks that
    matching turns into hits.

    Args:
        observation: observed values on the normalised scale (batch, time, ...), 0 where no data.
        forecast: forecast values of the same shape.
        valid: 1.0 where the observation has data, else 0.0, same shape.
        thresholds: thresholds on the same scale.
        width: the sigmoid's width on the same scale.

    Returns:
        (time,) the mean over thresholds of 1 - soft CSI; a rank-2 input is one lead time.
    """
    if len(observation.shape) == 2:
        observation, forecast, valid = (
            ops.expand_dims(x, 1) for x in (observation, forecast, valid)
        )
    axes = (0, *range(2, len(observation.shape)))  # all but time
    levels = (
        matched_thresholds(observation, forecast, valid, thresholds) if matched else thresholds
    )
    losses = []
    for threshold, level in zip(thresholds, levels, strict=True):
        counted = (valid > 0) & (forecast > level - TAIL_WIDTHS * width)
        yes = ops.where(counted, ops.sigmoid((forecast - level) / width), 0.0)
        observed = ops.cast(observation >= threshold, forecast.dtype) * valid
        hits = ops.sum(yes * observed, axis=axes)
        union = ops.sum(yes, axis=axes) + ops.sum(observed, axis=axes) - hits
        losses.append(1.0 - (hits + 1.0) / (union + 1.0))
    return ops.mean(ops.stack(losses), axis=0)


@keras.saving.register_keras_serializable(package="nowcast")
class PixelLoss(keras.losses.Loss):
    """Weighted sum of pixel losses, averaged over the valid (finite) target pixels of a sample.

    The `soft_csi` and `matched_csi` terms (see `soft_csi_loss`) are scores of the whole batch,
    not of a sample: each sample carries them whole, so the batch mean adds them once.

    Args:
        terms: loss name -> coefficient, names from `LOSS_NAMES`.
        thresholds: rain-rate thresholds on the normalised scale for the balanced losses.
        weights: the balanced losses' weight per rain-rate interval (len(thresholds) + 1).
        lead_decay: lead time k (0 first) weighs lead_decay**k, scaled to a mean of 1 over
            the forecast's lead times (so the loss keeps its size); 1 weighs them all alike.
        csi_width: the soft CSI's sigmoid width on the normalised scale.
        csi_thresholds: the soft CSI's thresholds on the normalised scale; None takes
            `thresholds` (as models saved before this argument did).

    Call arguments:
        y_true: observations (batch, time, height, width, channels), NaN where no data.
        y_pred: forecasts of the same shape.

    Returns one loss value per sample.
    """

    def __init__(
        self,
        terms: Mapping[str, float],
        thresholds: Sequence[float] = (),
        weights: Sequence[float] = (1.0,),
        lead_decay: float = 1.0,
        csi_width: float = 2.0 / 70.0,
        csi_thresholds: Sequence[float] | None = None,
        name: str = "pixel_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        unknown = sorted(set(terms) - set(LOSS_NAMES))
        if unknown or not terms:
            raise ValueError(
                f"unknown or empty loss terms, allowed: {', '.join(LOSS_NAMES)}. "
                f"Received: terms={dict(terms)}"
            )
        if len(weights) != len(thresholds) + 1:
            raise ValueError(
                "expected one more balanced-loss weight than thresholds. Received: "
                f"thresholds={list(thresholds)}, weights={list(weights)}"
            )
        if not (math.isfinite(lead_decay) and lead_decay > 0):
            raise ValueError(
                f"lead_decay must be a positive number (1: equal weights). Received: {lead_decay=}"
            )
        csi_thresholds = thresholds if csi_thresholds is None else csi_thresholds
        if set(CSI_TERMS) & set(terms) and not (
            csi_thresholds and math.isfinite(csi_width) and csi_width > 0
        ):
            raise ValueError(
                "the soft_csi and matched_csi losses need at least one threshold and a positive "
                "width (loss.soft_csi_thresholds_mmh, loss.soft_csi_width_dbz). "
                f"Received: csi_thresholds={list(csi_thresholds)}, {csi_width=}"
            )
        self.terms = {name: float(coef) for name, coef in terms.items()}
        self.thresholds = [float(t) for t in thresholds]
        self.weights = [float(w) for w in weights]
        self.lead_decay = float(lead_decay)
        self.csi_width = float(csi_width)
        self.csi_thresholds = [float(t) for t in csi_thresholds]

    def _lead_weights(self, steps: int) -> list[float]:
        """One weight per lead time, lead_decay**k scaled to a mean of 1."""
        weights = [self.lead_decay**k for k in range(steps)]
        return [w * steps / sum(weights) for w in weights]

    def call(self, y_true, y_pred):
        valid = ops.isfinite(y_true)
        observation = ops.where(valid, y_true, 0.0)
        # Zero the error before the square or abs, so no NaN reaches the gradient.
        error = ops.where(valid, y_pred - observation, 0.0)
        mask = ops.cast(valid, y_pred.dtype)
        balance = rain_rate_weights(observation, self.thresholds, self.weights) * mask
        total = ops.zeros_like(error)
        for name, coef in self.terms.items():
            if name in CSI_TERMS:
                continue
            pixel_loss = PIXEL_ERRORS[name.removeprefix("balanced_")](error)
            weight = balance if name.startswith("balanced_") else mask
            total = total + coef * pixel_loss * weight
        if self.lead_decay != 1.0:
            per_lead = (1, -1) + (1,) * (len(y_true.shape) - 2)
            weights = ops.array(self._lead_weights(y_true.shape[1]), total.dtype)
            total = total * ops.reshape(weights, per_lead)
        axes = tuple(range(1, len(y_true.shape)))
        per_sample = ops.sum(total, axis=axes) / ops.maximum(ops.sum(mask, axis=axes), 1.0)
        for name in [term for term in CSI_TERMS if term in self.terms]:  # a fixed order
            per_lead = soft_csi_loss(
                observation,
                y_pred,
                mask,
                self.csi_thresholds,
                self.csi_width,
                matched=name == MATCHED_CSI,
            )
            leads = per_lead.shape[0]
            weights = ops.array(self._lead_weights(leads), per_lead.dtype)
            per_sample = per_sample + self.terms[name] * ops.sum(per_lead * weights) / leads
        return per_sample

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "terms": self.terms,
            "thresholds": self.thresholds,
            "weights": self.weights,
            "lead_decay": self.lead_decay,
            "csi_width": self.csi_width,
            "csi_thresholds": self.csi_thresholds,
        }


def make_loss(loss_cfg: LossConfig, norm: NormalisationConfig) -> PixelLoss:
    """The configured loss, with its rain-rate thresholds (mm/h) and soft-CSI width (dBZ) put on
    the model's scale."""
    thresholds = [rain_threshold_to_normalised(t, norm) for t in loss_cfg.thresholds_mmh]
    csi_thresholds = [
        rain_threshold_to_normalised(t, norm) for t in loss_cfg.soft_csi_thresholds_mmh
    ]
    width = loss_cfg.soft_csi_width_dbz / (norm.dbz_max - norm.dbz_min)
    return PixelLoss(
        dict(loss_cfg.terms),
        thresholds,
        list(loss_cfg.weights),
        loss_cfg.lead_decay,
        csi_width=width,
        csi_thresholds=csi_thresholds,
    )
