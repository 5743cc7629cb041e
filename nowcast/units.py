"""Physical units and the model's normalised scale, in one place.

Reflectivity is in dBZ and rain rate in mm/h, related by Z = a R^b (Marshall-Palmer a=200,
b=1.6 by default: 1 mm/h = 23.0 dBZ). The model sees dBZ mapped linearly to [0, 1]; every
score, threshold and plot maps back to physical units first. No-data is NaN throughout.

The scored unit of each quantity and its thresholds (`scoring_for`, `to_physical`) and the
units frames are shown in (`display_units`, `display_values`) are here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nowcast.config import MetricsConfig, NormalisationConfig
from nowcast.data.store import REFLECTIVITY, VIL


def rain_to_dbz(rain_mmh: np.ndarray | float, a: float = 200.0, b: float = 1.6) -> np.ndarray:
    """Rain rate (mm/h) to reflectivity (dBZ); 0 mm/h gives -inf, NaN stays NaN."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(a) + 10.0 * b * np.log10(np.asarray(rain_mmh, dtype=np.float64))


def dbz_to_rain(dbz: np.ndarray | float, a: float = 200.0, b: float = 1.6) -> np.ndarray:
    """Reflectivity (dBZ) to rain rate (mm/h); NaN stays NaN."""
    return (10.0 ** (np.asarray(dbz, dtype=np.float64) / 10.0) / a) ** (1.0 / b)


def normalise(dbz: np.ndarray, norm: NormalisationConfig) -> np.ndarray:
    """dBZ to the model's [0, 1] scale as float32; no echo (< dbz_min) is 0, NaN stays NaN."""
    scaled = (np.asarray(dbz, dtype=np.float32) - norm.dbz_min) / (norm.dbz_max - norm.dbz_min)
    return np.clip(scaled, 0.0, 1.0)


def denormalise(values: np.ndarray, norm: NormalisationConfig) -> np.ndarray:
    """The model's [0, 1] scale back to dBZ (float32)."""
    values = np.asarray(values, dtype=np.float32)
    return values * (norm.dbz_max - norm.dbz_min) + norm.dbz_min


def rain_threshold_to_normalised(rain_mmh: float, norm: NormalisationConfig) -> float:
    """A rain-rate threshold (mm/h) as a value on the model's scale (for losses and metrics)."""
    return float(normalise(rain_to_dbz(rain_mmh, norm.zr_a, norm.zr_b), norm))


@dataclass(frozen=True)
class Scoring:
    """How forecasts of a store's quantity are scored: unit and thresholds in that unit.

    `balanced`: whether Shi et al.'s B-MSE and B-MAE (rain-rate weights) apply.
    """

    unit: str
    thresholds: list[float]
    fss_threshold: float
    balanced: bool


def scoring_for(quantity: str, metrics_cfg: MetricsConfig) -> Scoring:
    """Reflectivity is scored as rain rate (mm/h), VIL in VIL levels (SEVIR's thresholds).

    Raises:
        ValueError: another quantity, or thresholds that are not positive and increasing.
    """
    if quantity == REFLECTIVITY.name:
        scoring = Scoring(
            "mm/h", list(metrics_cfg.thresholds_mmh), metrics_cfg.fss_threshold_mmh, True
        )
    elif quantity == VIL.name:
        scoring = Scoring(
            VIL.units, list(metrics_cfg.thresholds_vil), metrics_cfg.fss_threshold_vil, False
        )
    else:
        raise ValueError(
            f"no scores are defined for stores of {quantity!r}, allowed: "
            f"{REFLECTIVITY.name}, {VIL.name}"
        )
    thresholds = scoring.thresholds
    if not thresholds or min(thresholds) <= 0 or np.any(np.diff(thresholds) <= 0):
        raise ValueError(
            f"metrics thresholds must be positive and increasing, Received: {thresholds}"
        )
    return scoring


def to_physical(values: np.ndarray, norm: NormalisationConfig, quantity: str) -> np.ndarray:
    """Model-scale values to the scored unit (`scoring_for`), float32; NaN stays NaN.

    Values are clipped to [0, 1] first, the range the observations have on that scale. For
    reflectivity, 0 (no echo) is 0 mm/h and other values go through dBZ and the run's Z-R
    relation; other quantities are de-normalised to the store's unit.
    """
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    if quantity != REFLECTIVITY.name:
        return denormalise(values, norm)
    # Z-R takes two float64 powers per pixel, the costliest step of scoring a batch: take them
    # only where there is echo, a small part of most radar frames.
    rain = np.where(np.isnan(values), np.float32(np.nan), np.float32(0.0))
    echo = values > 0.0
    rain[echo] = dbz_to_rain(denormalise(values[echo], norm), norm.zr_a, norm.zr_b)
    return rain


def display_units(quantity: str, units: str | None) -> str:
    """The unit frames of a store of `quantity` are shown in: `units`, or the scored unit.

    Reflectivity is shown as rain rate (mm/h, the default) or reflectivity (dBZ); VIL in
    SEVIR's levels.

    Raises:
        ValueError: a unit that does not fit the quantity.
    """
    allowed = ["mm/h", REFLECTIVITY.units] if quantity == REFLECTIVITY.name else [VIL.units]
    if units is None:
        return allowed[0]
    if units not in allowed:
        raise ValueError(
            f"frames of {quantity} are shown in {' or '.join(allowed)}, Received: units={units!r}"
        )
    return units


def display_values(
    normalised: np.ndarray, norm: NormalisationConfig, quantity: str, units: str
) -> np.ndarray:
    """Values on the model's [0, 1] scale in `units` (see `display_units`); NaN stays NaN."""
    if units == REFLECTIVITY.units:
        return denormalise(np.clip(normalised, 0.0, 1.0), norm)
    return to_physical(normalised, norm, quantity)
