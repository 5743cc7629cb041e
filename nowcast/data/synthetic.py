"""The embedded default data set: synthetic radar reflectivity that behaves like real composites.

It is built to be honest (docs/data.md, "The synthetic set against real radar"): learnable,
because echoes move with a smooth wind that the input frames reveal, and hard, because that
wind varies in space and turns over hours, convective cells grow, split and decay within 20-60
minutes and new ones start on the flanks of old ones, so the last frame (persistence) is a poor
forecast.

What is simulated, on a grid of `pixel_km` and a step of `minutes_per_frame`:

* Wind: a steering flow of 10-85 km/h whose speed and direction drift over hours, plus
  rotational modes (shear and rotation, 5-15 km/h over 120-500 km) and divergent ones
  (convergence lines, 3-8 km/h over 80-250 km) that drift over 6-24 h: up to about 100 km/h.
* Stratiform rain: a smooth random field (spectrally filtered noise of 8-400 km scales,
  anisotropic so bands form) advected semi-Lagrangian with bilinear interpolation and renewed
  over a few hours; rain falls where it exceeds a threshold that follows wet and dry periods of
  about a day (about a tenth of the frames are dry), at 0.15-5 mm/h.
* Convective cells: 5-30 km, cores of roughly 3-80 mm/h (median 10), life cycles of 20-60 min
  (grow, mature, decay), some split in two; new cells start mostly on a flank of a mature cell
  or in wet areas, more often in the afternoon (local solar time = UTC here) and in wet periods.
  They move with the local wind plus a small propagation.
* Small-scale texture: a fast-changing advected field multiplies all rain (log-normal), which
  gives heavy-tailed, ragged rain fields.
* Climate: the intensities are set so that the set sits between a stratiform and a convective
  day of real composites rather than in a climate of heavy storms (docs/data.md, "The
  synthetic set against real radar": >= 10 mm/h on about 0.2 % of valid pixels, the 99th
  percentile of wet pixels about 9 mm/h).
* Rain rate -> dBZ with Marshall-Palmer (a=200, b=1.6); under 0.1 mm/h is no echo (the store's
  floor, -32 dBZ); outside a radar coverage disc (radius 0.48 of the smaller side) is no data.

The simulation runs on a periodic domain larger than the frame by a hidden margin, so echoes
enter from outside. Fields leaving one side re-enter the other after crossing the margin, by
then largely renewed. Generation is NumPy only, streams in blocks, and depends only on the
seed (not on the block size).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nowcast.config import SyntheticConfig
from nowcast.data.store import UNDETECT_DBZ, StoreWriter
from nowcast.data.windows import check_positive_int
from nowcast.units import rain_to_dbz

log = logging.getLogger(__name__)

START_TIME = np.datetime64("2024-06-01T00:00:00", "s")
ZR_A, ZR_B = 200.0, 1.6
COVERAGE_RADIUS = 0.48  # of the smaller frame side
NO_ECHO_MMH = 0.1
MAX_RAIN_MMH = 150.0  # heavier "rain" is hail or clutter in real data
_SPIN_UP_FRAMES = 36


class _SmoothSeries:
    """A smooth random time series of unit variance: a sum of cosines with random periods."""

    def __init__(self, rng: np.random.Generator, periods_h: tuple[float, float], n: int = 4):
        self.freq = 2 * np.pi / rng.uniform(*periods_h, size=n)
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.scale = np.sqrt(2.0 / n)

    def __call__(self, hours: float) -> float:
        return float(self.scale * np.cos(self.freq * hours + self.phase).sum())


def _filtered_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pixel_km: float,
    scales_km: tuple[float, float],
    beta: float,
) -> np.ndarray:
    """A periodic Gaussian random field of unit variance, power ~ k^-beta between the scales.

    Anisotropic (stretched 1-2.2x along a random direction) so that bands and lines appear.
    """
    ky = np.fft.fftfreq(shape[0], d=pixel_km)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_km)[None, :]
    angle = rng.uniform(0, np.pi)
    stretch = rng.uniform(1.0, 2.2)
    k_along = (kx * np.cos(angle) + ky * np.sin(angle)) * stretch
    k_across = (-kx * np.sin(angle) + ky * np.cos(angle)) / stretch
    k = np.hypot(k_along, k_across)
    k[0, 0] = np.inf  # no mean
    smallest, largest = scales_km
    amplitude = k ** (-beta / 2) * np.exp(-((k * smallest) ** 2))
    amplitude *= 1.0 - np.exp(-((k * largest) ** 2))
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * amplitude
    field = np.fft.irfft2(spectrum, s=shape)
    return ((field - field.mean()) / field.std()).astype(np.float32)


class _RotatingField:
    """An advected random field that decorrelates smoothly: cos(phi) P + sin(phi) Q.

    P and Q are two rows of the simulator's state. phi grows by pi/2 every `renew_minutes`;
    the part whose weight crosses zero is then replaced by fresh noise, so the field renews
    without jumps and keeps unit variance.
    """

    def __init__(self, rng, rows, shape, pixel_km, scales_km, beta, renew_minutes, mpf):
        self.rows = rows
        self._new = lambda: _filtered_noise(rng, shape, pixel_km, scales_km, beta).ravel()
        self.phi = rng.uniform(0, 2 * np.pi)
        self.dphi = (np.pi / 2) * mpf / renew_minutes

    def fill(self, state: np.ndarray) -> None:
        for row in self.rows:
            state[row] = self._new()

    def step(self, state: np.ndarray) -> None:
        """Advance phi one frame, renewing the part whose weight crosses zero (in place)."""
        old = np.array([np.cos(self.phi), np.sin(self.phi)])
        self.phi += self.dphi
        new = np.array([np.cos(self.phi), np.sin(self.phi)])
        for part in np.flatnonzero(np.sign(old) != np.sign(new)):
            state[self.rows[part]] = self._new()

    def combine(self, values: np.ndarray) -> np.ndarray:
        """The field from the state's values (n_state, ...) at some pixels."""
        p, q = values[self.rows[0]], values[self.rows[1]]
        return np.cos(self.phi) * p + np.sin(self.phi) * q


class _Advector:
    """Semi-Lagrangian advection on a periodic grid with bilinear interpolation.

    The value at pixel x after a step is the value before it at the departure point
    x - wind(x). Work arrays are allocated once: allocating these large temporaries every
    frame cost more than the arithmetic.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.grid_y, self.grid_x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        self._floor = np.empty(shape, np.float32)
        self._frac = [np.empty(shape, np.float32) for _ in range(4)]  # fx, 1-fx, fy, 1-fy
        self._index = [np.empty(shape, np.intp) for _ in range(5)]  # x0, x1, y0, y1, flat
        self._weight = np.empty(shape[0] * shape[1], np.float32)
        self._gathered: np.ndarray | None = None

    def __call__(self, state: np.ndarray, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
        """Advect every row of state (n, H*W) by the wind (u, v) (H, W) in pixels; into out."""
        height, width = self.shape
        fx, gx, fy, gy = self._frac
        x0, x1, y0, y1, flat = self._index
        for grid, wind, frac, rest, first, second, size in (
            (self.grid_x, u, fx, gx, x0, x1, width),
            (self.grid_y, v, fy, gy, y0, y1, height),
        ):
            np.subtract(grid, wind, out=frac)
            np.floor(frac, out=self._floor)
            np.subtract(frac, self._floor, out=frac)
            np.subtract(1.0, frac, out=rest)
            first[...] = self._floor
            np.remainder(first, size, out=first)
            np.add(first, 1, out=second)
            np.remainder(second, size, out=second)
        np.multiply(y0, width, out=y0)
        np.multiply(y1, width, out=y1)
        if self._gathered is None or self._gathered.shape != state.shape:
            self._gathered = np.empty_like(state)
        for corner, (rows, cols, wx, wy) in enumerate(
            ((y0, x0, gx, gy), (y0, x1, fx, gy), (y1, x0, gx, fy), (y1, x1, fx, fy))
        ):
            np.add(rows, cols, out=flat)
            np.multiply(wx, wy, out=self._weight.reshape(self.shape))
            # np.take is several times faster than fancy indexing for this gather.
            np.take(state, flat.ravel(), axis=1, out=self._gathered)
            np.multiply(self._gathered, self._weight, out=out if corner == 0 else self._gathered)
            if corner:
                np.add(out, self._gathered, out=out)


class _Simulator:
    """State of the synthetic weather; `step()` advances one frame and returns it in dBZ."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        _check_config(cfg)
        self.cfg = cfg
        rng = self.rng = np.random.default_rng(cfg.seed)
        self.margin = max(24, int(np.ceil(max(cfg.height, cfg.width) / 4)))
        self.dy, self.dx = cfg.height + 2 * self.margin, cfg.width + 2 * self.margin
        self.hours_per_frame = cfg.minutes_per_frame / 60.0
        self.kmh_to_px = self.hours_per_frame / cfg.pixel_km  # km/h -> pixels per frame
        self.hours = -_SPIN_UP_FRAMES * self.hours_per_frame

        # Weather regimes (functions of time, in hours).
        self.speed = _SmoothSeries(rng, (8, 48))
        self.direction = _SmoothSeries(rng, (12, 72))
        self.direction0 = rng.uniform(0, 2 * np.pi)
        self.wetness = _SmoothSeries(rng, (12, 96))
        self.convective = _SmoothSeries(rng, (12, 72))
        self.flank = 1.0 if rng.random() < 0.75 else -1.0  # preferred flank: right of motion
        self._init_wind_modes(rng)

        # State rows: stratiform P, Q; texture P, Q. (4, Dy * Dx) float32.
        shape = (self.dy, self.dx)
        mpf = cfg.minutes_per_frame
        self.stratiform = _RotatingField(rng, (0, 1), shape, cfg.pixel_km, (8, 400), 2.6, 150, mpf)
        self.texture = _RotatingField(rng, (2, 3), shape, cfg.pixel_km, (2, 12), 2.0, 20, mpf)
        self.fields = (self.stratiform, self.texture)
        self.state = np.empty((4, self.dy * self.dx), np.float32)
        self._spare = np.empty_like(self.state)
        for field in self.fields:
            field.fill(self.state)
        self.advector = _Advector(shape)

        rows = np.arange(cfg.height)[:, None] - (cfg.height - 1) / 2
        cols = np.arange(cfg.width)[None, :] - (cfg.width - 1) / 2
        self.no_data = np.hypot(rows, cols) > COVERAGE_RADIUS * min(cfg.height, cfg.width)
        # Flat domain indices of the frame's pixels, (height * width,) in row-major order.
        frame_rows = np.arange(cfg.height)[:, None] + self.margin
        frame_cols = np.arange(cfg.width)[None, :] + self.margin
        self.visible = (frame_rows * self.dx + frame_cols).ravel()
        self.cells = _Cells()
        for _ in range(_SPIN_UP_FRAMES):
            self.step()

    # ----- wind ---------------------------------------------------------------------------------
    def _init_wind_modes(self, rng: np.random.Generator) -> None:
        """Modes psi_k = s_k/|k| sin(k.x + phase_k(t)) of the wind's departure from the steering.

        Four are rotational (u = dpsi/dy, v = -dpsi/dx: shear and rotation, 5-15 km/h, wavelengths
        of 120-500 km) and two divergent (the wind along k: convergence lines, 3-8 km/h, 80-250
        km), all drifting with periods of 6-24 h. Real composites show such shear, rotation and
        convergence over a few hundred kilometres; a near-uniform wind would flatter any
        single-vector extrapolation.
        """
        rotational, divergent = 4, 2
        n_modes = rotational + divergent
        wavelength = np.concatenate(
            [rng.uniform(120, 500, rotational), rng.uniform(80, 250, divergent)]
        )
        wavenumber = 2 * np.pi / wavelength  # rad/km
        angle = rng.uniform(0, 2 * np.pi, size=n_modes)
        self.mode_kx, self.mode_ky = wavenumber * np.cos(angle), wavenumber * np.sin(angle)
        speed = (
            np.concatenate([rng.uniform(5, 15, rotational), rng.uniform(3, 8, divergent)])
            * self.kmh_to_px
        )  # px/frame
        # Across k for the rotational modes, along k for the divergent ones.
        flow_angle = angle - np.where(np.arange(n_modes) < rotational, np.pi / 2, 0.0)
        self.mode_u = speed * np.cos(flow_angle)
        self.mode_v = speed * np.sin(flow_angle)
        self.mode_phase = rng.uniform(0, 2 * np.pi, size=n_modes)
        self.mode_freq = 2 * np.pi / rng.uniform(6, 24, n_modes) * rng.choice([-1, 1], n_modes)
        y_km = np.arange(self.dy) * self.cfg.pixel_km
        self._cos_y = np.cos(np.outer(y_km, self.mode_ky))  # (Dy, modes)
        self._sin_y = np.sin(np.outer(y_km, self.mode_ky))
        self._x_km = np.arange(self.dx) * self.cfg.pixel_km

    def _steering(self) -> tuple[float, float]:
        """Steering flow (u along columns, v along rows) in pixels per frame."""
        speed = float(np.clip(40.0 + 20.0 * self.speed(self.hours), 10.0, 85.0))  # km/h
        direction = self.direction0 + 1.2 * self.direction(self.hours)
        return (
            speed * np.cos(direction) * self.kmh_to_px,
            speed * np.sin(direction) * self.kmh_to_px,
        )

    def _wind_at(self, x_px: np.ndarray, y_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wind (u, v) in pixels per frame at domain positions (pixels)."""
        u0, v0 = self._steering()
        phase = self.mode_phase + self.mode_freq * self.hours
        km = self.cfg.pixel_km
        wave = np.cos(
            np.multiply.outer(x_px * km, self.mode_kx)
            + np.multiply.outer(y_px * km, self.mode_ky)
            + phase
        )
        return u0 + wave @ self.mode_u, v0 + wave @ self.mode_v

    def _wind_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Wind (u, v) in pixels per frame on the domain grid, (Dy, Dx) float32 each.

        Same field as _wind_at: cos(kx x + ky y + p) = cos(ky y) cos(kx x + p)
        - sin(ky y) sin(kx x + p), so the sum over modes is one (Dy, 2m) @ (2m, Dx) product.
        """
        u0, v0 = self._steering()
        phase_x = (
            np.outer(self.mode_kx, self._x_km)
            + (self.mode_phase + self.mode_freq * self.hours)[:, None]
        )
        along_x = np.concatenate([np.cos(phase_x), np.sin(phase_x)])  # (2m, Dx)
        along_y = np.concatenate([self._cos_y, -self._sin_y], axis=1)  # (Dy, 2m)
        u = (along_y * np.tile(self.mode_u, 2)) @ along_x + u0
        v = (along_y * np.tile(self.mode_v, 2)) @ along_x + v0
        return u.astype(np.float32), v.astype(np.float32)

    # ----- regimes ------------------------------------------------------------------------------
    def _threshold(self) -> float:
        """Stratiform rain where the field exceeds this: ~0.2 % wet at +2.8, ~65 % at -0.4."""
        return 1.2 - 1.4 * self.wetness(self.hours)

    def _activity(self) -> float:
        """Convective initiation rate relative to a typical afternoon (diurnal x regime)."""
        hour_of_day = self.hours % 24
        diurnal = 0.3 + 1.4 * np.exp(-(((hour_of_day - 16) / 3.5) ** 2))
        regime = 0.6 * self.wetness(self.hours) + 0.8 * self.convective(self.hours)
        return float(diurnal * np.exp(regime - 0.5))

    # ----- one frame ----------------------------------------------------------------------------
    def step(self) -> np.ndarray:
        """Advance one frame; returns (height, width) float32 dBZ, NaN = no data."""
        self.hours += self.hours_per_frame
        for field in self.fields:
            field.step(self.state)
        self.advector(self.state, *self._wind_grid(), out=self._spare)
        self.state, self._spare = self._spare, self.state
        cells = self.cells
        if cells.n:
            cells.move(*self._wind_at(cells.x, cells.y), self.dx, self.dy)
        cells.split(self.rng, self.kmh_to_px)
        self._initiate()
        return self._render()

    def _initiate(self) -> None:
        rng, cfg, cells = self.rng, self.cfg, self.cells
        area = self.dy * self.dx * cfg.pixel_km**2 / 1e4  # units of 10^4 km^2
        # ~2 new cells per 10^4 km^2 per hour on a typical afternoon.
        count = rng.poisson(2.0 * area * self.hours_per_frame * self._activity())
        if count == 0:
            return
        mature = np.flatnonzero((cells.age > 0.25 * cells.life) & (cells.age < 0.8 * cells.life))
        on_flank = rng.random(count) < (0.55 if mature.size else 0.0)
        n_flank = int(on_flank.sum())
        x = np.empty(count)
        y = np.empty(count)
        if n_flank:
            parents = rng.choice(mature, size=n_flank)
            px, py = cells.x[parents], cells.y[parents]
            u, v = self._wind_at(px, py)
            u = u + cells.prop_u[parents]
            v = v + cells.prop_v[parents]
            norm = np.maximum(np.hypot(u, v), 1e-6)
            along_x, along_y = u / norm, v / norm
            # Right of the motion in image coordinates (y down) is (-along_y, along_x).
            side = self.flank * np.where(rng.random(n_flank) < 0.8, 1.0, -1.0)
            across = side * rng.uniform(6, 14, n_flank) / cfg.pixel_km
            ahead = rng.uniform(-4, 8, n_flank) / cfg.pixel_km
            x[on_flank] = px - along_y * across + along_x * ahead
            y[on_flank] = py + along_x * across + along_y * ahead
        n_free = count - n_flank
        if n_free:
            # Best of 6 random candidates by stratiform field (+ noise): favours wet areas.
            candidates = rng.integers(0, self.dy * self.dx, size=(n_free, 6))
            score = self.stratiform.combine(self.state[:, candidates])
            best = candidates[
                np.arange(n_free), np.argmax(score + rng.standard_normal(score.shape), 1)
            ]
            x[~on_flank] = best % self.dx + rng.random(n_free)
            y[~on_flank] = best // self.dx + rng.random(n_free)
        cells.add(rng, x % self.dx, y % self.dy, cfg, self.kmh_to_px)

    def _render(self) -> np.ndarray:
        cfg = self.cfg
        visible = self.state[:, self.visible].reshape(4, cfg.height, cfg.width)
        excess = self.stratiform.combine(visible) - self._threshold()
        rain = np.where(excess > 0, 0.15 * np.exp(1.4 * np.minimum(excess, 2.5)), 0.0)
        rain += self.cells.render(self.margin, cfg.height, cfg.width, self.dy, self.dx)
        sigma = 0.5
        rain *= np.exp(sigma * self.texture.combine(visible) - sigma**2 / 2)
        rain = np.minimum(rain, MAX_RAIN_MMH)
        dbz = np.full(rain.shape, UNDETECT_DBZ, dtype=np.float32)
        echo = rain >= NO_ECHO_MMH
        dbz[echo] = rain_to_dbz(rain[echo], ZR_A, ZR_B)
        dbz[self.no_data] = np.nan
        return dbz


class _Cells:
    """Convective cells as parallel arrays (positions in pixels of the periodic domain).

    Each cell is up to three Gaussian cores (so cells are irregular and elongated) plus a wide,
    weak envelope; amplitude follows sin(pi age/life)^1.5 and the size grows and shrinks with it.
    """

    _FIELDS = (
        "x", "y", "age", "life", "amp", "core", "envelope", "env_ratio", "prop_u", "prop_v",
        "split_done",
    )  # fmt: skip

    def __init__(self) -> None:
        for name in self._FIELDS:
            setattr(self, name, np.zeros(0))
        self.sub_offset = np.zeros((0, 3, 2))  # (cell, core, [dx, dy]) in units of core sigma
        self.sub_weight = np.zeros((0, 3))

    @property
    def n(self) -> int:
        return self.x.size

    def _extend(self, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            setattr(self, name, np.concatenate([getattr(self, name), value]))

    def _keep(self, keep: np.ndarray) -> None:
        for name in (*self._FIELDS, "sub_offset", "sub_weight"):
            setattr(self, name, getattr(self, name)[keep])

    def add(
        self,
        rng: np.random.Generator,
        x: np.ndarray,
        y: np.ndarray,
        cfg: SyntheticConfig,
        kmh_to_px: float,
    ) -> None:
        """Start cells at domain positions (pixels), with random size, life and strength."""
        n = x.size
        core_km = rng.uniform(1.5, 4.0, n)
        angle = rng.uniform(0, 2 * np.pi, n)
        distance = rng.uniform(1.0, 1.8, (n, 3))
        distance[:, 0] = 0.0
        direction = np.stack([np.cos(angle), np.sin(angle)], -1)[:, None, :]
        sign = np.array([0.0, 1.0, -1.0])[None, :, None]
        weight = rng.uniform(0.3, 0.8, (n, 3)) * (rng.random((n, 3)) < 0.7)
        weight[:, 0] = 1.0
        self._extend(
            {
                "x": x,
                "y": y,
                "age": np.zeros(n),
                "life": rng.uniform(20, 60, n) / cfg.minutes_per_frame,
                "amp": np.clip(10.0 * np.exp(0.6 * rng.standard_normal(n)), 3.0, 80.0),
                "core": core_km / cfg.pixel_km,
                "envelope": core_km * rng.uniform(2.0, 3.5, n) / cfg.pixel_km,
                "env_ratio": rng.uniform(0.05, 0.15, n),
                "prop_u": rng.normal(0, 4, n) * kmh_to_px,
                "prop_v": rng.normal(0, 4, n) * kmh_to_px,
                "split_done": np.zeros(n),
            }
        )
        self.sub_offset = np.concatenate([self.sub_offset, direction * sign * distance[..., None]])
        self.sub_weight = np.concatenate([self.sub_weight, weight])

    def move(self, u: np.ndarray, v: np.ndarray, dx: int, dy: int) -> None:
        self.x = (self.x + u + self.prop_u) % dx
        self.y = (self.y + v + self.prop_v) % dy
        self.age = self.age + 1
        self._keep(self.age <= self.life)

    def split(self, rng: np.random.Generator, kmh_to_px: float) -> None:
        """Some cells past a third of their life split: two cells drift apart sideways."""
        due = (self.split_done == 0) & (self.age >= 0.35 * self.life)
        self.split_done[due] = 1
        parents = np.flatnonzero(due & (rng.random(self.n) < 0.2))
        if parents.size == 0:
            return
        norm = np.maximum(np.hypot(self.prop_u[parents], self.prop_v[parents]), 1e-6)
        # Sideways unit vector (across the propagation) and the drift speed of each half.
        side_x, side_y = -self.prop_v[parents] / norm, self.prop_u[parents] / norm
        drift = rng.uniform(4, 8, parents.size) * kmh_to_px
        child = {name: getattr(self, name)[parents].copy() for name in self._FIELDS}
        child["prop_u"] += side_x * drift
        child["prop_v"] += side_y * drift
        child["x"] += side_x * child["core"]
        child["y"] += side_y * child["core"]
        child["amp"] *= rng.uniform(0.6, 0.95, parents.size)
        child["life"] += rng.uniform(0, 0.4, parents.size) * child["life"]
        self.prop_u[parents] -= side_x * drift
        self.prop_v[parents] -= side_y * drift
        sub_offset = self.sub_offset[parents]
        sub_weight = self.sub_weight[parents]
        self._extend(child)
        self.sub_offset = np.concatenate([self.sub_offset, sub_offset])
        self.sub_weight = np.concatenate([self.sub_weight, sub_weight])

    def render(self, margin: int, height: int, width: int, dy: int, dx: int) -> np.ndarray:
        """Rain rate (mm/h) of all cells on the visible crop, (height, width)."""
        if self.n == 0:
            return np.zeros((height, width), dtype=np.float32)
        phase = np.sin(np.pi * np.clip(self.age / self.life, 0, 1))
        strength = self.amp * phase**1.5
        size = 0.55 + 0.45 * phase
        core = self.core * size
        # Blobs: 3 cores per cell, then one envelope per cell; (blobs,) each.
        cx = np.concatenate(
            [(self.x[:, None] + self.sub_offset[..., 0] * core[:, None]).ravel(), self.x]
        )
        cy = np.concatenate(
            [(self.y[:, None] + self.sub_offset[..., 1] * core[:, None]).ravel(), self.y]
        )
        sigma = np.concatenate([np.repeat(core, 3), self.envelope * size])
        amp = np.concatenate(
            [(strength[:, None] * self.sub_weight).ravel(), strength * self.env_ratio]
        )
        cols = np.arange(margin, margin + width)
        rows = np.arange(margin, margin + height)
        # Periodic (minimum-image) distances; Gaussians are separable, so the sum over blobs
        # is one (height, blobs) @ (blobs, width) product.
        ddx = (cols[None, :] - cx[:, None] + dx / 2) % dx - dx / 2
        ddy = (rows[None, :] - cy[:, None] + dy / 2) % dy - dy / 2
        gx = np.exp(-0.5 * (ddx / sigma[:, None]) ** 2)
        gy = np.exp(-0.5 * (ddy / sigma[:, None]) ** 2) * amp[:, None]
        return (gy.T @ gx).astype(np.float32)


def _check_config(cfg: SyntheticConfig) -> None:
    for name in ("frames", "height", "width"):
        value = getattr(cfg, name)
        minimum = 1 if name == "frames" else 8
        if int(value) != value or value < minimum:
            raise ValueError(
                f"synthetic {name} must be an integer >= {minimum}, Received: {value}"
            )
    for name in ("pixel_km", "minutes_per_frame"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"synthetic {name} must be > 0, Received: {getattr(cfg, name)}")


def iter_synthetic_frames(
    cfg: SyntheticConfig, chunk: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Generate the synthetic sequence in blocks (bounded memory for any length).

    Args:
        cfg: frames, height, width, seed, pixel_km, minutes_per_frame.
        chunk: frames per block (the content does not depend on it).

    Yields:
        (frames_dbz, times): (n, height, width) float32 dBZ with NaN outside radar coverage and
        UNDETECT_DBZ (-32) where there is no echo; (n,) int64 seconds since 1970-01-01 UTC, every
        minutes_per_frame from 2024-06-01T00:00Z.
    """
    check_positive_int(chunk, "chunk")
    simulator = _Simulator(cfg)
    start = START_TIME.astype(np.int64)
    step_s = round(cfg.minutes_per_frame * 60)
    for first in range(0, cfg.frames, chunk):
        n = min(chunk, cfg.frames - first)
        frames = np.stack([simulator.step() for _ in range(n)])
        times = start + step_s * np.arange(first, first + n, dtype=np.int64)
        yield frames, times


RADAR_LON, RADAR_LAT = 5.0, 52.0  # the fictional radar, at the frame centre
_EARTH_RADIUS_M = 6_371_000.0


def _aeqd_to_lonlat(x_m: float, y_m: float) -> tuple[float, float]:
    """Inverse spherical azimuthal equidistant projection around the radar (degrees)."""
    lat0, lon0 = np.radians(RADAR_LAT), np.radians(RADAR_LON)
    rho = np.hypot(x_m, y_m)
    c = rho / _EARTH_RADIUS_M
    lat = np.arcsin(np.cos(c) * np.sin(lat0) + y_m * np.sin(c) * np.cos(lat0) / rho)
    lon = lon0 + np.arctan2(
        x_m * np.sin(c), rho * np.cos(lat0) * np.cos(c) - y_m * np.sin(lat0) * np.sin(c)
    )
    return float(np.degrees(lon)), float(np.degrees(lat))


def synthetic_grid(cfg: SyntheticConfig) -> dict[str, str | int | float]:
    """Grid attributes of the synthetic store: azimuthal equidistant around a fictional radar.

    Corner longitudes/latitudes are those of the outer corners of the lower-left and
    upper-right pixels (ODIM convention).
    """
    scale = float(cfg.pixel_km) * 1000.0
    half_x, half_y = cfg.width * scale / 2, cfg.height * scale / 2
    ll_lon, ll_lat = _aeqd_to_lonlat(-half_x, -half_y)
    ur_lon, ur_lat = _aeqd_to_lonlat(half_x, half_y)
    return {
        "projdef": f"+proj=aeqd +lat_0={RADAR_LAT} +lon_0={RADAR_LON} +R={_EARTH_RADIUS_M:.0f} "
        "+units=m",
        "xsize": int(cfg.width),
        "ysize": int(cfg.height),
        "xscale": scale,
        "yscale": scale,
        "ll_lon": ll_lon,
        "ll_lat": ll_lat,
        "ur_lon": ur_lon,
        "ur_lat": ur_lat,
    }


def write_synthetic_store(
    path: str | os.PathLike, cfg: SyntheticConfig, *, overwrite: bool = False
) -> Path:
    """Generate the synthetic sequence and write it as a nowcast store; returns the path.

    Raises:
        FileExistsError: `path` exists and `overwrite` is false.
    """
    with synthetic_store_writer(path, cfg, overwrite=overwrite) as writer:
        for frames, times in iter_synthetic_frames(cfg):
            writer.append(frames, times)
    return writer.path


def synthetic_store_writer(
    path: str | os.PathLike, cfg: SyntheticConfig, *, overwrite: bool = False
) -> StoreWriter:
    """An open StoreWriter with the synthetic set's grid, frame interval and Z-R relation."""
    return StoreWriter(
        path,
        height=cfg.height,
        width=cfg.width,
        grid=synthetic_grid(cfg),
        minutes_per_frame=cfg.minutes_per_frame,
        zr_a=ZR_A,
        zr_b=ZR_B,
        overwrite=overwrite,
    )


def write_missing_synthetic_store(path: Path, cfg: SyntheticConfig) -> Path:
    """Write the synthetic set to `path`, where it is missing (`resolve_store`); returns `path`.

    Another run that started at the same time may write it first: that one is used, as if it
    had been there from the start.
    """
    log.info("Writing the synthetic radar-echo set to %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_synthetic_store(path, cfg)
    except FileExistsError:
        log.info("Another process wrote %s meanwhile; using that one", path)
        return path
