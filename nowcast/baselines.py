"""The reference forecasts every nowcast is scored against: persistence, optical flow and
S-PROG, and the block-matching extrapolation that a model with `model.advection` corrects.

A baseline is called like the model: `baseline(inputs)` with inputs (batch, n_in, height,
width, 1), n_in at least its `min_frames`, on the model's normalised scale (nowcast.units:
linear in dBZ, 0 = no echo, no-data pixels set to 0 by the input pipeline) returns (batch,
n_out, height, width, 1) float32 on the same scale, so forecasts of the model and of the
baselines go through the same scoring.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from keras import ops

from nowcast.config import NormalisationConfig
from nowcast.model.advection import DEFAULT_MAX_SPEED, advect, estimate_motion
from nowcast.units import dbz_to_rain, denormalise, normalise, rain_to_dbz

# S-PROG as pysteps' examples run it: an AR(2) model per level of a 6-level cascade, on rain
# rates in dB thresholded at 0.1 mm/h (-10 dB), with no rain at -15 dB.
AR_ORDER = 2
CASCADE_LEVELS = 6
RAIN_MMH_THRESHOLD = 0.1
RAIN_DB_THRESHOLD = 10.0 * math.log10(RAIN_MMH_THRESHOLD)
RAIN_DB_ZERO = -15.0


def _cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _check_inputs(inputs: np.ndarray, min_frames: int, name: str) -> np.ndarray:
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim != 5 or inputs.shape[-1] != 1:
        raise ValueError(
            f"{name} expects inputs of shape (batch, time, height, width, 1), "
            f"Received: shape={inputs.shape}"
        )
    if inputs.shape[1] < min_frames:
        raise ValueError(
            f"{name} needs at least {min_frames} input frames, Received: {inputs.shape[1]} "
            "(data.n_in)"
        )
    return inputs


class Persistence:
    """The last observed frame, repeated for every lead time (an Eulerian persistence nowcast).

    Args:
        n_out: number of frames to forecast.
    """

    min_frames = 1

    def __init__(self, n_out: int) -> None:
        self.n_out = int(n_out)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = _check_inputs(inputs, self.min_frames, "persistence")
        return np.repeat(inputs[:, -1:], self.n_out, axis=1)


class OpticalFlow:
    """Extrapolation along the motion of the input frames (pysteps), as operational nowcasts do.

    Per window, the Lucas-Kanade method (`pysteps.motion.get_method("LK")`) estimates a dense
    motion field from all input frames, and the semi-Lagrangian scheme
    (`pysteps.extrapolation.get_method("semilagrangian")`) advects the last frame along it
    for `n_out` steps. Motion is estimated on the normalised scale, which is linear in dBZ like
    the dB-transformed rain rates pysteps' examples use. Echo that would enter from beyond
    the frame is unknown and forecast as no echo (0).

    Args:
        n_out: number of frames to forecast.
    """

    min_frames, title = 2, "the optical-flow baseline"

    def __init__(self, n_out: int) -> None:
        # pysteps prints where it found its configuration file when first imported.
        with contextlib.redirect_stdout(io.StringIO()):
            from pysteps import extrapolation, motion
        self.n_out = int(n_out)
        self._motion = motion.get_method("LK")
        self._extrapolate = extrapolation.get_method("semilagrangian")

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = _check_inputs(inputs, self.min_frames, self.title)
        batch, _, height, width, _ = inputs.shape
        forecast = np.empty((batch, self.n_out, height, width, 1), np.float32)
        with warnings.catch_warnings(), ThreadPoolExecutor(_cores()) as pool:
            # With few motion vectors (little echo) pysteps' outlier test is degenerate: NumPy
            # warns about its covariance and pysteps says it skips the test. Nothing to act on.
            warnings.filterwarnings("ignore", "Singular matrix during outlier detection")
            warnings.simplefilter("ignore", RuntimeWarning)
            # Windows on every core: pysteps' NumPy, SciPy and OpenCV release the GIL.
            windows = pool.map(self._window, inputs[..., 0])  # (n_in, H, W) per window
            for k, window_forecast in enumerate(windows):
                forecast[k, ..., 0] = window_forecast
        return forecast

    def _window(self, frames: np.ndarray) -> np.ndarray:
        velocity = self._motion(frames)  # (2, H, W): pixels per frame along x, y
        return self._forecast(frames, velocity)

    def _forecast(self, frames: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """(n_out, H, W) from one window's (n_in, H, W) frames and their motion."""
        return self._extrapolate(frames[-1], velocity, self.n_out, outval=0.0)


class Sprog(OpticalFlow):
    """S-PROG (Seed 2003; `pysteps.nowcasts.sprog`): the optical-flow baseline's motion and
    extrapolation, with the newest frame decomposed into a cascade of 6 spatial scales, each
    of which decays at the rate of its own AR(2) model (fitted to the 3 newest input frames),
    and the forecast's distribution matched to the newest frame's (CDF probability matching).
    Small features fade within minutes and large ones persist: a smoother forecast than plain
    extrapolation, which scores higher at light thresholds and long lead times.

    The input is brought to pysteps' usual scale: rain rate (mm/h, through dBZ and the run's
    Z-R relation) in dB, 10 log10(R), with rain below 0.1 mm/h set to -15 dB, and the forecast
    back to the model's scale: below 0.1 mm/h is no echo (0). Echo between `dbz_min` and
    0.1 mm/h (7 dBZ with Marshall-Palmer, below every default threshold) is thus forecast as no
    echo. No-data pixels arrive as 0 from the input pipeline, like no echo, and are taken as
    no rain (S-PROG's FFT takes no NaN; the other baselines see the same zeros). Echo that
    would enter from beyond the frame is forecast as no echo (0), as by optical flow.

    A window gets the optical-flow forecast instead when S-PROG's AR(2) model cannot be
    fitted: when one of the 3 newest frames has no rain (>= 0.1 mm/h) anywhere (a cascade
    level that does not vary has no correlation; pysteps fails, or on a dry field returns a
    dry forecast), or when a level's correlation is exactly 1 (frames that do not change along
    the motion: Yule-Walker is singular, and no decay, i.e. extrapolation, is S-PROG's own
    limit there).

    Args:
        n_out: number of frames to forecast.
        norm: the model's normalisation (its scale and Z-R relation).
    """

    min_frames, title = AR_ORDER + 1, "the S-PROG baseline"

    def __init__(self, n_out: int, norm: NormalisationConfig | None = None) -> None:
        super().__init__(n_out)
        with contextlib.redirect_stdout(io.StringIO()):
            from pysteps import nowcasts
        self._sprog = nowcasts.get_method("sprog")
        self.norm = norm if norm is not None else NormalisationConfig()

    def _forecast(self, frames: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        frames = frames[-(AR_ORDER + 1) :]  # (3, H, W): what the AR(2) model is fitted to
        rain_db = self._to_rain_db(frames)
        if not np.all((rain_db >= RAIN_DB_THRESHOLD).any(axis=(1, 2))):
            return super()._forecast(frames, velocity)
        try:
            # pysteps narrates every step on stdout.
            with contextlib.redirect_stdout(io.StringIO()):
                forecast_db = self._sprog(
                    rain_db,
                    velocity,
                    self.n_out,
                    precip_thr=RAIN_DB_THRESHOLD,
                    n_cascade_levels=CASCADE_LEVELS,
                    ar_order=AR_ORDER,
                    probmatching_method="cdf",
                )
        except np.linalg.LinAlgError:  # singular Yule-Walker equations (class docstring)
            return super()._forecast(frames, velocity)
        except ValueError as err:
            # No correlation ("x contains non-finite values"): every echo of an older frame
            # left the grid on its way to the newest frame's position.
            if "non-finite" not in str(err):
                raise
            return super()._forecast(frames, velocity)
        return self._from_rain_db(forecast_db)

    def _to_rain_db(self, frames: np.ndarray) -> np.ndarray:
        """Model scale (no echo 0) to dB of mm/h, no rain at `RAIN_DB_ZERO`; float64."""
        norm = self.norm
        rain = dbz_to_rain(denormalise(frames, norm), norm.zr_a, norm.zr_b)
        wet = (frames > 0) & (rain >= RAIN_MMH_THRESHOLD)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(wet, 10.0 * np.log10(rain), RAIN_DB_ZERO)

    def _from_rain_db(self, rain_db: np.ndarray) -> np.ndarray:
        """dB of mm/h back to the model's scale; below the threshold and NaN (from beyond the
        frame) are no echo (0)."""
        norm = self.norm
        wet = np.nan_to_num(rain_db, nan=RAIN_DB_ZERO) >= RAIN_DB_THRESHOLD
        dbz = rain_to_dbz(10.0 ** (rain_db / 10.0), norm.zr_a, norm.zr_b)
        return np.where(wet, normalise(dbz, norm), np.float32(0.0))


class BlockMatching:
    """The newest frame moved along block-matched motion (nowcast.model.advection): the
    forecast a model with `model.advection` starts from, scored on its own so that what the
    network adds to it shows.

    Args:
        n_out: number of frames to forecast.
        max_speed: the fastest motion searched, in pixels per frame; evaluation passes the
            run's `model.advection_max_speed`, so the baseline is the model's own starting point.
    """

    min_frames = 2

    def __init__(self, n_out: int, max_speed: int = DEFAULT_MAX_SPEED) -> None:
        self.n_out = int(n_out)
        self.max_speed = int(max_speed)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = _check_inputs(inputs, self.min_frames, "the block-matching baseline")
        motion = estimate_motion(inputs, max_speed=self.max_speed)
        return ops.convert_to_numpy(advect(inputs[:, -1], motion, self.n_out))


BASELINES = {
    "persistence": Persistence,
    "optical_flow": OpticalFlow,
    "block_matching": BlockMatching,
    "sprog": Sprog,
}


def make_baseline(
    name: str,
    *,
    n_out: int,
    max_speed: int = DEFAULT_MAX_SPEED,
    norm: NormalisationConfig | None = None,
) -> Persistence | OpticalFlow | BlockMatching | Sprog:
    """The baseline called `name` (one of `BASELINES`), forecasting `n_out` frames;
    `max_speed` is block matching's reach in pixels per frame, `norm` the model's
    normalisation, which S-PROG needs to work on rain rates (default: NormalisationConfig()).

    Raises:
        ValueError: an unknown name; the message lists the available ones.
    """
    if name not in BASELINES:
        raise ValueError(
            f"unknown baseline, available: {', '.join(BASELINES)}. Received: {name!r}"
        )
    if name == "block_matching":
        return BlockMatching(n_out, max_speed)
    if name == "sprog":
        return Sprog(n_out, norm)
    return BASELINES[name](n_out)
