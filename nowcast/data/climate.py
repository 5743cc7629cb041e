"""The rain climate of a store: how often and how hard it rains, and how rain fields look,
last and move; so that stores (the embedded synthetic set, real radar) can be set side by side
(`scripts/compare_climate.py`).

Everything is in rain rate R (mm/h), from the store's dBZ through its Z-R relation
(Marshall-Palmer where none is recorded, as `nowcast-data info` does).

- Intensities (valid share, wet shares, wet-pixel percentiles, dry frames) come from the
  store's per-frame histograms: every frame counts, to the store's 0.5 dBZ steps, and no frame
  is read.
- Structure, lifetime and motion come from frames read for them, at most `frames` for each,
  spread evenly over the *active* frames (at least ACTIVE_WET_SHARE of the valid pixels wet):
  a nearly dry field has no spectrum, correlation or motion worth averaging. They use
  dBR = 10 log10 R, with R below 0.1 mm/h (no echo included) set to 0.1 mm/h (-10 dBR).

  * Spectrum slope: log-log slope of the radially averaged 2-D power spectrum of a frame's
    dBR between wavelengths of 8 and 64 km, on the largest square centred on the radar
    coverage (pixels with data in at least half of the frames used) that lies fully inside it,
    no data there at -10 dBR; where that square is narrower than 64 km, the largest square
    centred on the grid. The mean is removed and a Hann window applied before the FFT; the
    slope is the mean over the frames.
  * Lifetime: Eulerian (no motion) correlation of the dBR of frame t with frame t + k,
    k = 0..MAX_LAG, over the pixels with data in both, averaged over runs of MAX_LAG + 1
    frames without a time gap or event change; the lag where the mean first drops below 1/e
    (interpolated linearly), and the mean correlation at 30 minutes.
  * Motion: pysteps' Lucas-Kanade (`pysteps.motion.get_method("LK")`) on the dBR of three
    consecutive frames, no data masked; the speed of the dense field at the pixels of the last
    frame with rain >= 0.1 mm/h, pooled over at most MOTION_TRIPLES triples.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nowcast.data.info import MARSHALL_PALMER, histogram_quantiles, value_totals
from nowcast.data.store import REFLECTIVITY, Store
from nowcast.data.windows import make_windows
from nowcast.units import dbz_to_rain, rain_to_dbz

DEFAULT_FRAMES = 288
WET_MMH = 0.1
SHARE_THRESHOLDS_MMH = (WET_MMH, 1.0, 5.0, 10.0)
RAIN_PERCENTILES = (50.0, 90.0, 99.0)
SPEED_PERCENTILES = (50.0, 90.0)
ACTIVE_WET_SHARE = 0.05
SPECTRUM_WAVELENGTHS_KM = (8.0, 64.0)
MAX_LAG = 12  # frames: an hour of 5-minute frames
CORRELATION_MINUTES = 30.0
MOTION_TRIPLES = 24
DBR_FLOOR = 10.0 * math.log10(WET_MMH)


@dataclass(frozen=True, eq=False)  # eq would compare the correlation arrays
class Climate:
    """One store's climate (see the module docstring); NaN where a statistic had no data.

    Shares are fractions of 1, rain rates mm/h, speeds km/h. Percentile dicts map the
    percentile (50.0, ...) to its value.
    """

    path: Path
    shape: tuple[int, int, int]
    pixel_km: tuple[float, float]  # (y, x)
    minutes_per_frame: float
    zr: tuple[float, float]
    zr_recorded: bool
    valid_share: float
    wet_shares: dict[float, float]  # threshold (mm/h) -> share of valid pixels at or above it
    rain_percentiles: dict[float, float]  # of the wet pixels' rain rates
    dry_frames: float  # share of frames without a pixel >= 0.1 mm/h
    spectrum_slope: float
    spectrum_frames: int
    spectrum_side: int  # pixels along each side of the square the spectra were taken on
    correlations: np.ndarray  # (MAX_LAG + 1,) mean correlation at lags 0..MAX_LAG frames
    lifetime_runs: int
    speed_percentiles: dict[float, float]
    motion_triples: int

    @property
    def lifetime_minutes(self) -> float:
        """When the mean correlation first drops below 1/e; inf if not within MAX_LAG."""
        return decorrelation_minutes(self.correlations, self.minutes_per_frame)

    @property
    def correlation_30min(self) -> float:
        """The mean correlation at 30 minutes (interpolated between lags)."""
        lags_min = np.arange(self.correlations.size) * self.minutes_per_frame
        if lags_min[-1] < CORRELATION_MINUTES:
            return math.nan
        return float(np.interp(CORRELATION_MINUTES, lags_min, self.correlations))


def decorrelation_minutes(correlations: np.ndarray, minutes_per_frame: float) -> float:
    """The lag (minutes) where a correlation curve first drops below 1/e, interpolated linearly.

    Args:
        correlations: (n,) correlation at lags 0, 1, ... frames.
        minutes_per_frame: the time of one lag.

    Returns:
        The lag in minutes; inf if the curve never drops below 1/e, NaN if it has gaps (NaN)
        before it does.
    """
    correlations = np.asarray(correlations, dtype=np.float64)
    below = np.flatnonzero(correlations < 1.0 / math.e)  # NaN compares False
    if below.size == 0:
        return math.inf if np.isfinite(correlations).all() else math.nan
    lag = int(below[0])
    if lag == 0:
        return 0.0
    before, after = correlations[lag - 1], correlations[lag]
    return float((lag - 1 + (before - 1.0 / math.e) / (before - after)) * minutes_per_frame)


def spectrum_slope(field: np.ndarray, pixel_km: tuple[float, float]) -> float:
    """Log-log slope of the radially averaged power spectrum of a square field, fitted between
    wavelengths of SPECTRUM_WAVELENGTHS_KM (8 to 64 km).

    Args:
        field: (n, n) finite values (dBR).
        pixel_km: (y, x) pixel size in km.

    Returns:
        The slope (about -3 for radar rain fields in dBR); NaN for a uniform field or one
        too small for three wavenumbers in the range.
    """
    side = field.shape[0]
    window = np.hanning(side)
    # The mean removed first: windowed, it would leak into the lowest wavenumbers.
    anomaly = (field - field.mean()) * np.outer(window, window)
    power = np.abs(np.fft.fft2(anomaly)) ** 2
    ky = np.fft.fftfreq(side, pixel_km[0])[:, None]  # cycles per km
    kx = np.fft.fftfreq(side, pixel_km[1])[None, :]
    step = 1.0 / (side * max(pixel_km))  # bin width: the resolution of the coarser axis
    bins = np.rint(np.hypot(ky, kx) / step).astype(np.int64).ravel()
    mean_power = np.bincount(bins, power.ravel()) / np.maximum(np.bincount(bins), 1)
    wavenumber = np.arange(mean_power.size) * step
    shortest, longest = SPECTRUM_WAVELENGTHS_KM
    tolerance = 1e-9  # the range ends are often bins exactly, up to rounding
    fit = (
        (wavenumber * longest >= 1 - tolerance)
        & (wavenumber * shortest <= 1 + tolerance)
        & (mean_power > 0)
    )
    if np.count_nonzero(fit) < 3:
        return math.nan
    slope, _ = np.polyfit(np.log10(wavenumber[fit]), np.log10(mean_power[fit]), 1)
    return float(slope)


def compute_climate(store: Store, *, frames: int = DEFAULT_FRAMES) -> Climate:
    """The climate of a reflectivity store (see the module docstring).

    Args:
        store: an open store of reflectivity (dBZ) with a pixel size (grid xscale, yscale).
        frames: at most this many frames are read for the spectra, for the lifetime runs
            (frames // (MAX_LAG + 1) runs, at least one) and for the motion triples (at most
            MOTION_TRIPLES).

    Raises:
        ValueError: `frames` < 1, the store holds no reflectivity, or it has no pixel size.
    """
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, Received: {frames=}")
    if store.quantity != REFLECTIVITY.name:
        raise ValueError(
            f"{store.path} holds {store.quantity} ({store.units}), not reflectivity; its "
            "climate needs rain rates"
        )
    grid = store.grid
    if "xscale" not in grid or "yscale" not in grid:
        raise ValueError(
            f"{store.path} has no pixel size (grid attributes xscale, yscale, in metres); "
            "the spectrum and the motion need it"
        )
    pixel_km = (float(grid["yscale"]) / 1000.0, float(grid["xscale"]) / 1000.0)
    zr = store.zr or MARSHALL_PALMER
    wet_dbz = float(rain_to_dbz(WET_MMH, *zr))
    active = np.flatnonzero(store.wet_fraction(wet_dbz) >= ACTIVE_WET_SHARE)

    valid_share, wet_shares, rain_percentiles = _intensities(store, zr)
    spectrum_frames = _spread(active, frames)
    slope, slope_frames, side = _spectrum(store, spectrum_frames, zr, pixel_km)
    runs = _spread(_starts(store, MAX_LAG + 1, active, last=False), frames // (MAX_LAG + 1) or 1)
    triples = _spread(_starts(store, 3, active, last=True), min(MOTION_TRIPLES, frames // 3 or 1))
    speeds = _speeds(store, triples, zr, wet_dbz, pixel_km)
    return Climate(
        path=store.path,
        shape=store.shape,
        pixel_km=pixel_km,
        minutes_per_frame=store.minutes_per_frame,
        zr=zr,
        zr_recorded=store.zr is not None,
        valid_share=valid_share,
        wet_shares=wet_shares,
        rain_percentiles=rain_percentiles,
        dry_frames=float(np.mean(store.wet_fraction(wet_dbz) == 0)),
        spectrum_slope=slope,
        spectrum_frames=slope_frames,
        spectrum_side=side,
        correlations=_mean_correlations(store, runs, zr),
        lifetime_runs=runs.size,
        speed_percentiles={
            q: float(np.percentile(speeds, q)) if speeds.size else math.nan
            for q in SPEED_PERCENTILES
        },
        motion_triples=triples.size,
    )


def _intensities(
    store: Store, zr: tuple[float, float]
) -> tuple[float, dict[float, float], dict[float, float]]:
    """Valid share, wet shares and wet-pixel rain percentiles, from the store's histograms."""
    values = store.raw_values  # (256,) dBZ of each raw value, NaN for no data
    totals = value_totals(store)
    valid = ~np.isnan(values)
    covered = int(totals[valid].sum())
    valid_share = covered / max(int(totals.sum()), 1)
    if covered == 0:
        return (
            valid_share,
            dict.fromkeys(SHARE_THRESHOLDS_MMH, math.nan),
            dict.fromkeys(RAIN_PERCENTILES, math.nan),
        )
    # Thresholds in dBZ, as Store.wet_fraction takes them, so that dry frames agree.
    above = {t: values >= float(rain_to_dbz(t, *zr)) for t in SHARE_THRESHOLDS_MMH}
    wet_shares = {t: int(totals[bins].sum()) / covered for t, bins in above.items()}
    wet = above[WET_MMH]
    if not totals[wet].any():
        return valid_share, wet_shares, dict.fromkeys(RAIN_PERCENTILES, math.nan)
    order = np.argsort(values[wet])
    levels = tuple(q / 100.0 for q in RAIN_PERCENTILES)
    quantiles_dbz = histogram_quantiles(totals[wet][order], values[wet][order], levels)
    rates = dbz_to_rain(np.asarray(quantiles_dbz), *zr)
    return valid_share, wet_shares, dict(zip(RAIN_PERCENTILES, map(float, rates), strict=True))


def _spread(candidates: np.ndarray, n: int) -> np.ndarray:
    """At most `n` of the (increasing) candidates, evenly spread from the first to the last."""
    if candidates.size <= n:
        return candidates
    return candidates[np.unique(np.rint(np.linspace(0, candidates.size - 1, n)).astype(np.int64))]


def _starts(store: Store, length: int, active: np.ndarray, *, last: bool) -> np.ndarray:
    """First frames of the runs of `length` frames without a time gap or event change whose
    first (or, with `last`, last) frame is active."""
    if len(store) < length:
        return np.zeros(0, np.int64)
    starts = make_windows(
        store.times,
        n_in=1,
        n_out=length - 1,
        minutes_per_frame=store.minutes_per_frame,
        events=store.events,
    )
    return starts[np.isin(starts + (length - 1 if last else 0), active)]


def _dbr(frames_dbz: np.ndarray, zr: tuple[float, float]) -> np.ndarray:
    """dBR (float64) of dBZ values, R below 0.1 mm/h at 0.1 mm/h; NaN (no data) stays NaN."""
    return 10.0 * np.log10(np.maximum(dbz_to_rain(frames_dbz, *zr), WET_MMH))


def _frame(store: Store, index: int) -> np.ndarray:
    return store.read(index, index + 1)[0]


def _spectrum(
    store: Store, indices: np.ndarray, zr: tuple[float, float], pixel_km: tuple[float, float]
) -> tuple[float, int, int]:
    """Mean spectrum slope over the frames, the number of frames with one, and the square's
    side (pixels)."""
    if indices.size == 0:
        return math.nan, 0, 0
    # A first pass for the coverage, so that every frame is cut to the same square.
    with_data = np.zeros(store.shape[1:], np.int64)
    for index in indices:
        with_data += ~np.isnan(_frame(store, index))
    min_side = math.ceil(SPECTRUM_WAVELENGTHS_KM[1] / min(pixel_km))
    rows, cols = _centred_square(2 * with_data >= indices.size, min_side)
    slopes = np.array(
        [
            spectrum_slope(
                np.nan_to_num(_dbr(_frame(store, i)[rows, cols], zr), nan=DBR_FLOOR), pixel_km
            )
            for i in indices
        ]
    )
    fitted = np.isfinite(slopes)
    mean = float(slopes[fitted].mean()) if fitted.any() else math.nan
    return mean, int(fitted.sum()), rows.stop - rows.start


def _centred_square(covered: np.ndarray, min_side: int) -> tuple[slice, slice]:
    """The largest square centred on the covered area's centroid that lies fully inside it;
    where that is narrower than `min_side` pixels, the largest square centred on the grid."""
    height, width = covered.shape

    def square(side: int, centre_y: float, centre_x: float) -> tuple[slice, slice]:
        top = min(max(round(centre_y - side / 2), 0), height - side)
        left = min(max(round(centre_x - side / 2), 0), width - side)
        return slice(top, top + side), slice(left, left + side)

    if covered.any():
        rows, cols = np.nonzero(covered)
        centre = (rows.mean() + 0.5, cols.mean() + 0.5)  # pixel i spans i..i+1
        low, high = 0, min(height, width)
        while low < high:  # binary search for the widest fully covered square
            middle = (low + high + 1) // 2
            if covered[square(middle, *centre)].all():
                low = middle
            else:
                high = middle - 1
        if low >= min_side:
            return square(low, *centre)
    return square(min(height, width), height / 2, width / 2)


def _correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation over the pixels where both fields have data; NaN if one is uniform."""
    both = ~(np.isnan(first) | np.isnan(second))
    x = first[both] - first[both].mean()
    y = second[both] - second[both].mean()
    # Sums, not np.dot: OpenBLAS threads made np.dot ~1000x slower on a busy 2-core machine.
    norm = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / norm if norm > 0 else math.nan


def _mean_correlations(store: Store, starts: np.ndarray, zr: tuple[float, float]) -> np.ndarray:
    """(MAX_LAG + 1,) correlation at each lag, averaged over the runs that have one."""
    curves = np.full((starts.size, MAX_LAG + 1), np.nan)
    for run, start in enumerate(starts):
        fields = _dbr(store.read(start, start + MAX_LAG + 1), zr)  # (MAX_LAG + 1, H, W)
        curves[run] = [_correlation(fields[0], field) for field in fields]
    counts = np.count_nonzero(~np.isnan(curves), axis=0)
    sums = np.nansum(curves, axis=0)
    return np.divide(sums, counts, out=np.full(MAX_LAG + 1, np.nan), where=counts > 0)


def _lucas_kanade() -> Callable[[np.ndarray], np.ndarray]:
    # pysteps prints where it found its configuration file when first imported.
    with contextlib.redirect_stdout(io.StringIO()):
        from pysteps import motion
    return motion.get_method("LK")


def _speeds(
    store: Store,
    starts: np.ndarray,
    zr: tuple[float, float],
    wet_dbz: float,
    pixel_km: tuple[float, float],
) -> np.ndarray:
    """Echo speeds (km/h, float32) at the wet pixels of the last frame of each triple."""
    if starts.size == 0:
        return np.zeros(0, np.float32)
    lucas_kanade = _lucas_kanade()
    km_per_frame_to_kmh = 60.0 / store.minutes_per_frame
    speeds = []
    for start in starts:
        frames_dbz = store.read(start, start + 3)
        with warnings.catch_warnings():
            # Few vectors (little echo) make pysteps' outlier test degenerate; nothing to act on.
            warnings.filterwarnings("ignore", "Singular matrix during outlier detection")
            warnings.simplefilter("ignore", RuntimeWarning)
            # No data stays NaN, which pysteps masks: no features on the coverage edge.
            u, v = lucas_kanade(_dbr(frames_dbz, zr))  # (2, H, W): pixels per frame along x, y
        wet = frames_dbz[-1] >= wet_dbz  # NaN compares False
        speed = np.hypot(u[wet] * pixel_km[1], v[wet] * pixel_km[0]) * km_per_frame_to_kmh
        speeds.append(speed.astype(np.float32))
    return np.concatenate(speeds)


def _percent(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{100 * share:.2f} %"


def _number(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _lifetime(climate: Climate) -> str:
    minutes = climate.lifetime_minutes
    if math.isinf(minutes):
        return f"> {MAX_LAG * climate.minutes_per_frame:g} min"
    return "n/a" if math.isnan(minutes) else f"{minutes:.0f} min"


def _frames(climate: Climate) -> str:
    n, height, width = climate.shape
    y_km, x_km = climate.pixel_km
    pixel = f"{x_km:g} km" if x_km == y_km else f"{x_km:g} x {y_km:g} km"
    return f"{n} of {height} x {width}, {pixel}, {climate.minutes_per_frame:g} min"


def _window(climate: Climate) -> str:
    if climate.spectrum_frames == 0:
        return "no active frame"
    y_km, x_km = climate.pixel_km
    side = climate.spectrum_side
    return f"{side * x_km:g} x {side * y_km:g} km, {climate.spectrum_frames} frames"


def _zr(climate: Climate) -> str:
    a, b = climate.zr
    return f"Z = {a:g} R^{b:g}" + ("" if climate.zr_recorded else " (assumed)")


_ROWS: list[tuple[str, Callable[[Climate], str]]] = [
    ("frames, pixel, step", _frames),
    ("Z-R", _zr),
    ("valid (radar-covered) share of the grid", lambda c: _percent(c.valid_share)),
    *(
        (
            f"valid pixels >= {t:g} mm/h" + (" (wet)" if t == WET_MMH else ""),
            lambda c, t=t: _percent(c.wet_shares[t]),
        )
        for t in SHARE_THRESHOLDS_MMH
    ),
    *(
        (
            f"wet-pixel rain rate, {'median' if q == 50 else f'{q:g}th percentile'} (mm/h)",
            lambda c, q=q: _number(c.rain_percentiles[q], ".2f"),
        )
        for q in RAIN_PERCENTILES
    ),
    (f"dry frames (no pixel >= {WET_MMH:g} mm/h)", lambda c: _percent(c.dry_frames)),
    (
        "spectrum slope, {:g}-{:g} km (dBR)".format(*SPECTRUM_WAVELENGTHS_KM),
        lambda c: _number(c.spectrum_slope, ".2f"),
    ),
    ("spectrum window, frames", _window),
    ("lifetime (correlation < 1/e)", _lifetime),
    (f"correlation at {CORRELATION_MINUTES:g} min", lambda c: _number(c.correlation_30min, ".2f")),
    ("lifetime runs", lambda c: f"{c.lifetime_runs} runs of {MAX_LAG + 1} frames"),
    *(
        (
            f"motion speed, {'median' if q == 50 else f'{q:g}th percentile'} (km/h)",
            lambda c, q=q: _number(c.speed_percentiles[q], ".1f"),
        )
        for q in SPEED_PERCENTILES
    ),
    ("motion samples", lambda c: f"{c.motion_triples} frame triples"),
]


def format_climates(climates: Sequence[Climate], *, markdown: bool = False) -> str:
    """A table with a row per statistic and a column per store (named by file name, or by the
    whole path where names repeat); plain text or, with `markdown`, a Markdown table."""
    names = [climate.path.name for climate in climates]
    if len(set(names)) < len(names):
        names = [str(climate.path) for climate in climates]
    header = ["statistic", *names]
    rows = [[label, *(cell(climate) for climate in climates)] for label, cell in _ROWS]
    if markdown:
        lines = [header, ["---", *("---:" for _ in names)], *rows]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[k]) for line in [header, *rows]) for k in range(len(header))]
    return "\n".join(
        "  ".join(
            [
                line[0].ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)),
            ]
        )
        for line in [header, *rows]
    )
