"""Physical units and the model's normalised scale, in one place.

Reflectivity is in dBZ and rain rate in mm/h, related by Z = a R^b (Marshall-Palmer a=200,
b=1.6 by default: 1 mm/h = 23.0 dBZ). The model sees dBZ mapped linearly to [0, 1]; every
score, threshold and plot maps back to physical units first. No-data is NaN throughout.
"""

from __future__ import annotations

import numpy as np

from nowcast.config import NormalisationConfig


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
