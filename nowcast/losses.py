"""Pixel losses on the model's normalised scale, chosen and combined by name from the config.

Targets carry NaN where the radar saw nothing (no-data); those pixels are left out of every loss.
The balanced losses (B-MSE, B-MAE; Shi et al. 2017) weight each pixel by the observed rain rate so
that the rare heavy rain is not drowned by the mostly dry or light-rain pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import keras
from keras import ops

from nowcast.config import LossConfig, NormalisationConfig
from nowcast.units import rain_threshold_to_normalised

PIXEL_ERRORS: dict[str, Callable] = {"mse": ops.square, "mae": ops.abs}
LOSS_NAMES = tuple(PIXEL_ERRORS) + tuple(f"balanced_{name}" for name in PIXEL_ERRORS)


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


@keras.saving.register_keras_serializable(package="nowcast")
class PixelLoss(keras.losses.Loss):
    """Weighted sum of pixel losses, averaged over the valid (finite) target pixels of a sample.

    Args:
        terms: loss name -> coefficient, names from `LOSS_NAMES`.
        thresholds: rain-rate thresholds on the normalised scale for the balanced losses.
        weights: the balanced losses' weight per rain-rate interval (len(thresholds) + 1).
        lead_decay: lead time k (0 first) weighs lead_decay**k, scaled to a mean of 1 over
            the forecast's lead times (so the loss keeps its size); 1 weighs them all alike.

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
        self.terms = {name: float(coef) for name, coef in terms.items()}
        self.thresholds = [float(t) for t in thresholds]
        self.weights = [float(w) for w in weights]
        self.lead_decay = float(lead_decay)

    def call(self, y_true, y_pred):
        valid = ops.isfinite(y_true)
        observation = ops.where(valid, y_true, 0.0)
        # Zero the error before the square or abs, so no NaN reaches the gradient.
        error = ops.where(valid, y_pred - observation, 0.0)
        mask = ops.cast(valid, y_pred.dtype)
        balance = rain_rate_weights(observation, self.thresholds, self.weights) * mask
        total = 0.0
        for name, coef in self.terms.items():
            pixel_loss = PIXEL_ERRORS[name.removeprefix("balanced_")](error)
            weight = balance if name.startswith("balanced_") else mask
            total = total + coef * pixel_loss * weight
        if self.lead_decay != 1.0:
            weights = [self.lead_decay**k for k in range(y_true.shape[1])]
            weights = [w * len(weights) / sum(weights) for w in weights]
            per_lead = (1, -1) + (1,) * (len(y_true.shape) - 2)
            total = total * ops.reshape(ops.array(weights, total.dtype), per_lead)
        axes = tuple(range(1, len(y_true.shape)))
        return ops.sum(total, axis=axes) / ops.maximum(ops.sum(mask, axis=axes), 1.0)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "terms": self.terms,
            "thresholds": self.thresholds,
            "weights": self.weights,
            "lead_decay": self.lead_decay,
        }


def make_loss(loss_cfg: LossConfig, norm: NormalisationConfig) -> PixelLoss:
    """The configured loss, with its rain-rate thresholds (mm/h) put on the model's scale."""
    thresholds = [rain_threshold_to_normalised(t, norm) for t in loss_cfg.thresholds_mmh]
    return PixelLoss(dict(loss_cfg.terms), thresholds, list(loss_cfg.weights), loss_cfg.lead_decay)
