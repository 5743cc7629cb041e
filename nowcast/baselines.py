"""The reference forecasts every nowcast is scored against: persistence and optical flow, and
the block-matching extrapolation that a model with `model.advection` corrects.

A baseline is called like the model: `baseline(inputs)` with inputs (batch, n_in, height,
width, 1) on the model's normalised scale (nowcast.units: linear in dBZ, 0 = no echo, no-data
pixels set to 0 by the input pipeline) returns (batch, n_out, height, width, 1) float32 on the
same scale, so forecasts of the model and of the baselines go through the same scoring.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from keras import ops

from nowcast.model.advection import DEFAULT_MAX_SPEED, advect, estimate_motion


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

    def __init__(self, n_out: int) -> None:
        self.n_out = int(n_out)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = _check_inputs(inputs, 1, "persistence")
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

    def __init__(self, n_out: int) -> None:
        # pysteps prints where it found its configuration file when first imported.
        with contextlib.redirect_stdout(io.StringIO()):
            from pysteps import extrapolation, motion
        self.n_out = int(n_out)
        self._motion = motion.get_method("LK")
        self._extrapolate = extrapolation.get_method("semilagrangian")

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = _check_inputs(inputs, 2, "the optical-flow baseline")
        batch, _, height, width, _ = inputs.shape
        forecast = np.empty((batch, self.n_out, height, width, 1), np.float32)
        with warnings.catch_warnings():
            # With few motion vectors (little echo) pysteps' outlier test is degenerate: NumPy
            # warns about its covariance and pysteps says it skips the test. Nothing to act on.
            warnings.filterwarnings("ignore", "Singular matrix during outlier detection")
            warnings.simplefilter("ignore", RuntimeWarning)
            for k, frames in enumerate(inputs[..., 0]):  # (n_in, H, W) per window
                velocity = self._motion(frames)  # (2, H, W): pixels per frame along x, y
                forecast[k, ..., 0] = self._extrapolate(
                    frames[-1], velocity, self.n_out, outval=0.0
                )
        return forecast


class BlockMatching:
    """The newest frame moved along block-matched motion (nowcast.model.advection): the
    forecast a model with `model.advection` starts from, scored on its own so that what the
    network adds to it shows.

    Args:
        n_out: number of frames to forecast.
        max_speed: the fastest motion searched, in pixels per frame; evaluation passes the
            run's `model.advection_max_speed`, so the baseline is the model's own starting point.
    """

    def __init__(self, n_out: int, max_speed: int = DEFAULT_MAX_SPEED) -> None:
        self.n_out = int(n_out)
        self.max_speed = int(max_speed)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = _check_inputs(inputs, 2, "the block-matching baseline")
        motion = estimate_motion(inputs, max_speed=self.max_speed)
        return ops.convert_to_numpy(advect(inputs[:, -1], motion, self.n_out))


BASELINES = {
    "persistence": Persistence,
    "optical_flow": OpticalFlow,
    "block_matching": BlockMatching,
}


def make_baseline(
    name: str, *, n_out: int, max_speed: int = DEFAULT_MAX_SPEED
) -> Persistence | OpticalFlow | BlockMatching:
    """The baseline called `name` (one of `BASELINES`), forecasting `n_out` frames;
    `max_speed` is block matching's reach in pixels per frame (the others have none).

    Raises:
        ValueError: an unknown name; the message lists the available ones.
    """
    if name not in BASELINES:
        raise ValueError(
            f"unknown baseline, available: {', '.join(BASELINES)}. Received: {name!r}"
        )
    if name == "block_matching":
        return BlockMatching(n_out, max_speed)
    return BASELINES[name](n_out)
