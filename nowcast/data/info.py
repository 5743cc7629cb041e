"""`nowcast-data info`: what a store holds, from its metadata and per-frame histograms.

Reads no frame (except in version-1 stores, which have no histograms), so it is quick on any
store size. Rain rates above PLAUSIBLE_MAX_MMH get a warning line: at 1-km, 5-minute
resolution such rates are clutter (or hail cores), which `convert` can mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nowcast.data.sevir import THRESHOLDS as VIL_THRESHOLDS
from nowcast.data.sevir import vil_level_to_kg_m2
from nowcast.data.sources import iso
from nowcast.data.store import VIL, Store
from nowcast.data.windows import same_event
from nowcast.units import dbz_to_rain, rain_to_dbz

RAIN_THRESHOLDS_MMH = (0.1, 1.0, 10.0, 30.0)
MARSHALL_PALMER = (200.0, 1.6)
# 150 mm/h is 58 dBZ at Marshall-Palmer, the top of heavy convective rain; OPERA composites'
# clutter reads thousands of mm/h.
PLAUSIBLE_MAX_MMH = 150.0


def _time_lines(store: Store) -> list[str]:
    times = store.times
    step = store.minutes_per_frame * 60
    steps = np.diff(times)[same_event(store.events, len(store))]
    gaps = steps[steps > step]
    missing = int(np.sum(np.rint(gaps / step) - 1))
    line = f"{iso(times.min())} to {iso(times.max())}; "
    plural = "" if gaps.size == 1 else "s"
    line += f"{gaps.size} gap{plural} ({missing} frames missing)" if gaps.size else "no gaps"
    if store.events is not None:
        events = int(np.count_nonzero(~same_event(store.events, len(store)))) + 1
        line += f"; {events} events"
    return [line]


def value_totals(store: Store) -> np.ndarray:
    """(256,) int64: how many pixels of the whole store hold each raw value (`store.raw_values`),
    from its per-frame histograms, so that no frame is read."""
    return sum(
        (block.sum(axis=0, dtype=np.int64) for block in store.histogram_blocks()),
        np.zeros(store.raw_values.size, np.int64),
    )


def histogram_quantiles(
    counts: np.ndarray, values: np.ndarray, levels: tuple[float, ...]
) -> list[float]:
    """Quantiles of a histogram of `values` (increasing) with `counts` per value: for each
    level q, the smallest value with at least q of the counts at or below it."""
    cumulative = np.cumsum(counts) / counts.sum()
    first = np.minimum(np.searchsorted(cumulative, levels), values.size - 1)
    return [float(values[i]) for i in first]


def _statistics(store: Store, totals: np.ndarray) -> list[str]:
    """Wet fractions at physical thresholds and the distribution of the wet pixels."""
    values = store.raw_values
    valid = ~np.isnan(values)
    covered = totals[valid].sum()
    if store.quantity == VIL.name:
        thresholds = [
            (f">= {t} ({vil_level_to_kg_m2(t):.2f} kg/m2)", float(t)) for t in VIL_THRESHOLDS
        ]
        wet_label, wet_value = "VIL >= 16", float(VIL_THRESHOLDS[0])
        physical, unit = vil_level_to_kg_m2, "kg/m2"
        implausible = np.inf
        lines = []
    else:
        a, b = store.zr or MARSHALL_PALMER
        source = "recorded in the store" if store.zr else "Marshall-Palmer, not recorded"
        thresholds = [
            (f">= {t:g} mm/h ({float(rain_to_dbz(t, a, b)):.1f} dBZ)", float(rain_to_dbz(t, a, b)))
            for t in RAIN_THRESHOLDS_MMH
        ]
        wet_label, wet_value = ">= 0.1 mm/h", thresholds[0][1]
        physical, unit = (lambda dbz: dbz_to_rain(dbz, a, b)), "mm/h"
        implausible = float(rain_to_dbz(PLAUSIBLE_MAX_MMH, a, b))
        lines = [f"Z-R: Z = {a:g} R^{b:g} ({source})"]
    if covered == 0:
        return [*lines, "no valid pixel in the store"]
    for label, threshold in thresholds:
        share = totals[valid & (values >= threshold)].sum() / covered
        lines.append(f"{label:<32} {100 * share:6.2f} % of valid pixels")
    dry = np.mean(store.wet_fraction(wet_value) == 0)
    lines.append(f"dry frames (no pixel {wet_label})   {100 * dry:6.2f} %")
    wet = valid & (values >= wet_value)
    if totals[wet].sum():
        order = np.argsort(values[wet])
        wet_values = values[wet][order]
        median, p99 = histogram_quantiles(totals[wet][order], wet_values, (0.5, 0.99))
        peak = wet_values[totals[wet][order] > 0].max()
        lines.append(
            f"wet pixels ({wet_label}): median {float(physical(median)):.2f}, 99th percentile "
            f"{float(physical(p99)):.2f}, max {float(physical(peak)):.2f} {unit}"
        )
        if peak > implausible:
            above = valid & (values > implausible)
            lines.append(
                f"warning: max {float(physical(peak)):.0f} mm/h is above "
                f"{PLAUSIBLE_MAX_MMH:g} mm/h ({100 * totals[above].sum() / covered:.4f} % of "
                "valid pixels): likely clutter; convert with "
                f"max_rain_mmh={PLAUSIBLE_MAX_MMH:g} or, for ODIM, min_quality= (QIND masking)"
            )
    return lines


def describe_store(path: str | os.PathLike) -> str:
    """A multi-line summary: frames, grid, time range, units and rain statistics."""
    path = Path(path).expanduser()
    store = Store(path)
    n, height, width = store.shape
    values = store.raw_values
    detected = values[1:][~np.isnan(values[1:])]
    grid = store.grid
    scale = ""
    if "xscale" in grid and "yscale" in grid:
        scale = f" of {float(grid['xscale']) / 1000:g} x {float(grid['yscale']) / 1000:g} km"
    totals = value_totals(store)
    coverage = totals[~np.isnan(values)].sum() / max(totals.sum(), 1)
    rows = [
        ("store", f"{path} ({path.stat().st_size / 1e6:.1f} MB)"),
        (
            "frames",
            f"{n} of {height} x {width} pixels{scale}, every {store.minutes_per_frame:g} min",
        ),
        ("time", *_time_lines(store)),
        (
            "quantity",
            f"{store.quantity} in {store.units}: {detected.min():g} to {detected.max():g} "
            f"in steps of {detected[1] - detected[0]:g}; no echo reads "
            f"{store.undetect_value:g}, no data NaN",
        ),
        ("grid", *(f"{key} = {value}" for key, value in sorted(grid.items()))),
        ("coverage", f"{100 * coverage:.2f} % of pixels have data"),
        ("statistics", *_statistics(store, totals)),
    ]
    return "\n".join(
        f"{(name if k == 0 else ''):<11} {line}"
        for name, *lines in rows
        for k, line in enumerate(lines)
    )
