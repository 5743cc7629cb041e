"""Radar frames from source files, in time order and on a store's grid: what `nowcast-data
convert` writes to a store (nowcast.data.convert) and `nowcast-predict` forecasts from
(nowcast.prediction).

`scanner` picks the reader of a format (nowcast.data.odim, .knmi, .sevir, .importers, or a
store) and `input_suffixes` the files it takes; `check_consistent`, `time_step` and
`order_frames` check the frames alike, find the time step and put them in store order
(`ordered_frames` does all of it for a source); `cap_dbz` and `read_capped` mask clutter above
a rain rate; `regridded`, `regrid`, `source_grid` and `regrid_like` crop and block-average
frames in physical units, and describe the grid that results.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nowcast.data import importers, knmi, odim, sevir
from nowcast.data.sources import (
    HDF5_SUFFIXES,
    SourceError,
    SourceFrame,
    check_same_source,
    find_inputs,
    iso,
)
from nowcast.data.store import VIL, Store
from nowcast.units import dbz_to_rain, rain_to_dbz

log = logging.getLogger(__name__)

FORMATS = ("odim", "knmi", "sevir", "store", *importers.FORMAT_IMPORTERS)

_QUANTITY_OPTIONS = {"odim": tuple(odim.QUANTITY_UNITS), "knmi": knmi.QUANTITIES}

_GRID_OWN_KEYS = ("projdef", "xsize", "ysize", "xscale", "yscale")

_CROP_KEYS = ("crop_top", "crop_left", "downsample", "source_xsize", "source_ysize")

_DUPLICATES_LOGGED = 10


def _scan_store(path: Path) -> list[SourceFrame]:
    store = Store(path)
    shape, grid, events = (store.shape[1], store.shape[2]), store.grid, store.events
    return [
        SourceFrame(
            f"{path} frame {index}",
            int(time),
            store.quantity,
            shape,
            grid,
            partial(_read_store_frame, store, index),
            None if events is None else f"{path}#{events[index]}",
        )
        for index, time in enumerate(store.times)
    ]


def _read_store_frame(store: Store, index: int) -> np.ndarray:
    return store.read(index, index + 1)[0]


def scanner(cfg: Any, *, min_quality: float | None = None) -> Callable[[Path], list[SourceFrame]]:
    """The reader of `cfg.format`, with its options bound (`min_quality`: ODIM only;
    `importer`, `importer_kwargs`, `fn_pattern`: the formats read through pysteps)."""
    if cfg.format not in FORMATS:
        raise ValueError(
            f"unknown format, allowed: {', '.join(FORMATS)}. Received: format={cfg.format!r}"
        )
    pysteps_options = {
        key: value
        for key, value in (
            ("importer", cfg.importer),
            ("importer_kwargs", cfg.importer_kwargs or None),
            ("fn_pattern", cfg.fn_pattern),
        )
        if value is not None
    }
    if pysteps_options and cfg.format not in importers.FORMAT_IMPORTERS:
        raise ValueError(
            f"{', '.join(pysteps_options)} set how the formats read through pysteps "
            f"({', '.join(importers.FORMAT_IMPORTERS)}) are read, not format={cfg.format}; drop "
            f"{'them' if len(pysteps_options) > 1 else 'it'}"
        )
    allowed = _QUANTITY_OPTIONS.get(cfg.format, ())
    if cfg.quantity is not None and cfg.quantity not in allowed:
        raise ValueError(
            f"format={cfg.format} reads quantity= {', '.join(allowed) or '(not an option)'}. "
            f"Received: quantity={cfg.quantity!r}"
        )
    if min_quality is not None and cfg.format != "odim":
        raise ValueError(
            f"min_quality masks by the ODIM quality field (QIND), which format={cfg.format} "
            f"files do not have; drop it. Received: min_quality={min_quality}"
        )
    if min_quality is not None and not 0.0 <= min_quality <= 1.0:
        raise ValueError(
            f"min_quality is a QIND quality index from 0 to 1, Received: min_quality={min_quality}"
        )
    zr = {"zr_a": cfg.zr_a, "zr_b": cfg.zr_b}
    if cfg.format in importers.FORMAT_IMPORTERS:
        return importers.PystepsReader(
            cfg.format,
            cfg.importer,
            importer_kwargs=cfg.importer_kwargs,
            fn_pattern=cfg.fn_pattern,
            **zr,
        )
    if cfg.format == "odim":
        return partial(odim.scan_odim, quantity=cfg.quantity, min_quality=min_quality, **zr)
    if cfg.format == "knmi":
        return partial(knmi.scan_knmi, quantity=cfg.quantity, **zr)
    if cfg.format == "sevir":
        catalog = None if cfg.catalog is None else Path(cfg.catalog).expanduser()
        return partial(sevir.scan_sevir, catalog=catalog)
    return _scan_store


def input_suffixes(cfg: Any) -> tuple[str, ...]:
    """The file-name endings a folder input= of `cfg.format` is searched for."""
    if cfg.format in importers.FORMAT_IMPORTERS:
        return importers.suffixes(importers.importer_name(cfg.format, cfg.importer))
    return HDF5_SUFFIXES


def check_consistent(frames: list[SourceFrame]) -> None:
    """Every frame has the first frame's quantity, shape and grid description."""
    for frame in frames[1:]:
        check_same_source(frame, frames[0])


def time_step(frames: list[SourceFrame], minutes_per_frame: float | None) -> int:
    """The time step in seconds: given, or the most common step within events, in minutes."""
    if minutes_per_frame is not None:
        if not minutes_per_frame > 0:
            raise ValueError(f"minutes_per_frame must be > 0, Received: {minutes_per_frame}")
        return round(minutes_per_frame * 60)
    by_event: dict[str | None, list[int]] = {}
    for frame in frames:
        by_event.setdefault(frame.event, []).append(frame.time)
    steps = Counter()
    for times in by_event.values():
        minutes = np.rint(np.diff(np.unique(times)) / 60.0).astype(np.int64)
        steps.update(minutes[minutes > 0].tolist())
    if not steps:
        raise SourceError(
            f"only one frame per time found ({len(frames)} frames in all), so the time step is "
            "unknown; pass minutes_per_frame= or more files"
        )
    return steps.most_common(1)[0][0] * 60


def order_frames(
    frames: list[SourceFrame], step_s: int
) -> tuple[list[SourceFrame], np.ndarray, int]:
    """Frames in store order with their (snapped) times; duplicates dropped and counted."""
    snap = all(frame.event is None for frame in frames)
    kept: dict[tuple[str | None, int], SourceFrame] = {}
    duplicates = 0
    for frame in frames:  # in file-name order: the first of two duplicates is kept
        time = round(frame.time / step_s) * step_s if snap else frame.time
        key = (frame.event, time)
        if key in kept:
            duplicates += 1
            if duplicates <= _DUPLICATES_LOGGED:
                log.warning(
                    "duplicate time %s: kept %s, skipped %s",
                    iso(time),
                    kept[key].label,
                    frame.label,
                )
            continue
        kept[key] = frame
    if duplicates > _DUPLICATES_LOGGED:
        log.warning("%d duplicate frames skipped in all (the first of each time kept)", duplicates)
    event_start: dict[str | None, int] = {}
    for event, time in kept:
        event_start[event] = min(time, event_start.get(event, time))
    keys = sorted(kept, key=lambda k: (event_start[k[0]], str(k[0]), k[1]))
    return [kept[k] for k in keys], np.array([k[1] for k in keys], dtype=np.int64), duplicates


def ordered_frames(cfg: Any, step_s: int) -> tuple[list[SourceFrame], np.ndarray]:
    """The frames of `cfg.input` in store order, with their times (s), as `convert` orders them.

    Used by `nowcast-predict` to find the newest frames. `cfg` holds format, input, quantity,
    catalog, importer, importer_kwargs, fn_pattern, zr_a, zr_b and min_quality as for convert;
    times are snapped to `step_s` (except in SEVIR events) and duplicates skipped. No pixel is
    read (but the first file's, for the formats read through pysteps).

    Raises:
        FileNotFoundError: no input. SourceError: a file that cannot be read, or no frames.
    """
    scan = scanner(cfg, min_quality=cfg.min_quality)
    frames = [
        frame for path in find_inputs(cfg.input, input_suffixes(cfg)) for frame in scan(path)
    ]
    if not frames:
        raise SourceError(f"no frames found in {cfg.input}")
    frames, times, _ = order_frames(frames, step_s)
    return frames, times


def regridded(
    grid: dict[str, Any], *, top: int, left: int, height: int, width: int, factor: int
) -> dict[str, Any]:
    """The grid description after cropping and block-averaging by `factor`.

    xsize, ysize, xscale, yscale describe the new grid; crop_top, crop_left and downsample
    place it on the source grid (composed with an earlier crop), whose size and other
    geolocation keys (corners, offsets) are kept with a source_ prefix.
    """
    if (top, left, factor) == (0, 0, 1) and (height, width) == (grid["ysize"], grid["xsize"]):
        return dict(grid)
    out: dict[str, Any] = {}
    for key, value in grid.items():
        if key.startswith("source_") or key == "projdef":
            out[key] = value
        elif key not in _GRID_OWN_KEYS and key not in _CROP_KEYS:
            out[f"source_{key}"] = value
    earlier = int(grid.get("downsample", 1))
    out["crop_top"] = int(grid.get("crop_top", 0)) + top * earlier
    out["crop_left"] = int(grid.get("crop_left", 0)) + left * earlier
    out["downsample"] = earlier * factor
    out["source_ysize"] = int(grid.get("source_ysize", grid["ysize"]))
    out["source_xsize"] = int(grid.get("source_xsize", grid["xsize"]))
    out["ysize"], out["xsize"] = height // factor, width // factor
    for key in ("xscale", "yscale"):
        if key in grid:
            out[key] = float(grid[key]) * factor
    return out


def linear_scale(quantity: str, zr_a: float, zr_b: float) -> tuple[Callable, Callable]:
    """(to, from) the physical linear unit that block averages are taken in."""
    if quantity == VIL.name:
        return sevir.vil_level_to_kg_m2, sevir.vil_kg_m2_to_level
    return partial(dbz_to_rain, a=zr_a, b=zr_b), partial(rain_to_dbz, a=zr_a, b=zr_b)


def regrid(
    frame: np.ndarray,
    *,
    top: int,
    left: int,
    height: int,
    width: int,
    factor: int,
    to_linear: Callable[[np.ndarray], np.ndarray],
    from_linear: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Crop a (rows, columns) frame and average blocks of factor x factor pixels.

    Averages are taken in a linear physical unit (`to_linear`, then `from_linear` back), over
    the block's valid pixels; a block with fewer than half of its pixels valid is no data (NaN).

    Returns:
        (height // factor, width // factor) float32.
    """
    window = frame[top : top + height, left : left + width]
    if factor == 1:
        return np.asarray(window, dtype=np.float32)
    blocks = window.reshape(height // factor, factor, width // factor, factor)
    valid = ~np.isnan(blocks)
    linear = np.where(valid, to_linear(np.where(valid, blocks, -np.inf)), 0.0)
    count = valid.sum(axis=(1, 3))
    mean = linear.sum(axis=(1, 3)) / np.maximum(count, 1)
    with np.errstate(divide="ignore"):
        averaged = np.asarray(from_linear(mean), dtype=np.float32)
    averaged[2 * count < factor * factor] = np.nan
    return averaged


def source_grid(grid: dict[str, Any]) -> dict[str, Any] | None:
    """The grid a cropped or downsampled store was cut from, as its source files describe it.

    The inverse of `regridded`; None for a store on its source grid.
    """
    if "downsample" not in grid:
        return None
    source = {k.removeprefix("source_"): v for k, v in grid.items() if k.startswith("source_")}
    if "projdef" in grid:
        source["projdef"] = grid["projdef"]
    for key in ("xscale", "yscale"):
        if key in grid:
            source[key] = float(grid[key]) / int(grid["downsample"])
    return source


def regrid_like(
    frame: np.ndarray, grid: dict[str, Any], *, quantity: str, zr_a: float, zr_b: float
) -> np.ndarray:
    """A frame on the source grid of a store of `grid`, cropped and block-averaged like its frames.

    Args:
        frame: (rows, columns) float32 in the store's units, on `source_grid(grid)`.
        grid: a store's grid description with crop_top, crop_left and downsample.
        quantity: the store's quantity; zr_a, zr_b: its Z-R relation (see `regrid`).

    Returns:
        (grid ysize, grid xsize) float32.
    """
    factor = int(grid.get("downsample", 1))
    to_linear, from_linear = linear_scale(quantity, zr_a, zr_b)
    return regrid(
        frame,
        top=int(grid.get("crop_top", 0)),
        left=int(grid.get("crop_left", 0)),
        height=int(grid["ysize"]) * factor,
        width=int(grid["xsize"]) * factor,
        factor=factor,
        to_linear=to_linear,
        from_linear=from_linear,
    )


def cap_dbz(max_rain_mmh: float | None, quantity: str, zr_a: float, zr_b: float) -> float:
    """`max_rain_mmh` in the store's dBZ (+inf: no cap), checked."""
    if max_rain_mmh is None:
        return np.inf
    if quantity == VIL.name:
        raise ValueError(
            "max_rain_mmh caps rain rates, but these frames are SEVIR VIL; drop it. "
            f"Received: max_rain_mmh={max_rain_mmh}"
        )
    if not max_rain_mmh > 0:
        raise ValueError(f"max_rain_mmh must be > 0 (or null), Received: {max_rain_mmh}")
    return float(rain_to_dbz(max_rain_mmh, zr_a, zr_b))


def read_capped(frame: SourceFrame, cap: float) -> np.ndarray:
    """The frame's values, with those above `cap` (dBZ, see `cap_dbz`) as no data (NaN)."""
    try:
        values = frame.read()
    except (OSError, RuntimeError, KeyError) as err:
        raise SourceError(f"{frame.label}: the data could not be read ({err})") from None
    if values.shape != frame.shape:
        raise SourceError(f"{frame.label}: data of shape {values.shape}, expected {frame.shape}")
    return np.where(values > cap, np.float32(np.nan), values)
