"""SEVIR vertically integrated liquid (VIL) event files, with the times from SEVIR's catalog.

Layout read (Veillette, Samsi and Mattioli 2020, SEVIR: A Storm Event Imagery Dataset for Deep
Learning Applications in Radar and Satellite Meteorology)::

    <file>.h5   id   (N,) bytes: event ids, e.g. b"S728503"
                vil  (N, H, W, T) uint8: N events of T 5-minute frames (384 x 384 x 49 in SEVIR)
    CATALOG.csv one row per event and image type: id, file_name (relative to SEVIR's data
                folder), file_index (row in the file), img_type ("vil"), time_utc
                ("2019-06-01 18:35:00"), minute_offsets ("-120:-115:...:120", one per frame),
                proj, height_m, width_m, size_x, size_y, ...

Each event becomes an event of the store, its frames at time_utc + minute_offsets. Values stay
SEVIR's VIL levels (0-254; 255 = missing, read as no data; 0 = no VIL), which the model sees
divided by 255 (configs/data/sevir.yaml) as in SEVIR's own benchmarks, and which its thresholds
(16, 74, 133, 160, 181, 219) are given in. Block averaging works in kg/m^2 (see below).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nowcast.data.sources import SourceError, SourceFrame, open_hdf5, parse_time
from nowcast.data.sources import text as attr_text

MISSING_LEVEL = 255
THRESHOLDS = (16, 74, 133, 160, 181, 219)  # SEVIR's verification thresholds, in levels
CATALOG_NAME = "CATALOG.csv"
_CATALOG_COLUMNS = ("id", "file_name", "file_index", "img_type", "time_utc", "minute_offsets")
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
_LINEAR_TOP_LEVEL = 18.0  # levels 5-18 are linear in kg/m^2, above exponential


def vil_level_to_kg_m2(levels: np.ndarray) -> np.ndarray:
    """SEVIR VIL levels to kg/m^2 (Veillette et al. 2020); NaN stays NaN.

    0 for levels <= 5; (X - 2) / 90.66 for 5 < X <= 18; exp((X - 83.9) / 38.9) above.
    """
    levels = np.asarray(levels, dtype=np.float64)
    with np.errstate(over="ignore"):
        exponential = np.exp((levels - 83.9) / 38.9)
    vil = np.where(levels <= _LINEAR_TOP_LEVEL, (levels - 2.0) / 90.66, exponential)
    return np.where(levels <= 5.0, 0.0, vil)


def vil_kg_m2_to_level(vil: np.ndarray) -> np.ndarray:
    """kg/m^2 to (fractional) SEVIR VIL levels, the inverse of vil_level_to_kg_m2 above level 5.

    0 kg/m^2 is level 0; NaN stays NaN.
    """
    vil = np.asarray(vil, dtype=np.float64)
    linear_top = (_LINEAR_TOP_LEVEL - 2.0) / 90.66
    with np.errstate(divide="ignore", invalid="ignore"):
        exponential = np.maximum(38.9 * np.log(vil) + 83.9, _LINEAR_TOP_LEVEL)
    levels = np.where(vil <= linear_top, 90.66 * vil + 2.0, exponential)
    return np.where(vil <= 0.0, 0.0, levels)


def find_catalog(path: Path) -> Path | None:
    """SEVIR's CATALOG.csv in the file's folder or the nearest folder above it."""
    for folder in path.resolve().parents:
        if (folder / CATALOG_NAME).is_file():
            return folder / CATALOG_NAME
    return None


@lru_cache(maxsize=4)
def read_catalog(catalog: Path) -> Mapping[str, list[dict[str, str]]]:
    """The catalog's VIL rows, grouped by the file name (without folders) they point into."""
    if not catalog.is_file():
        raise FileNotFoundError(f"SEVIR catalog {catalog} does not exist; check catalog=")
    with catalog.open(newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in _CATALOG_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise SourceError(f"{catalog} is not SEVIR's catalog: it has no {missing} columns")
        rows: dict[str, list[dict[str, str]]] = {}
        for row in reader:
            if row["img_type"] == "vil":
                rows.setdefault(Path(row["file_name"]).name, []).append(row)
    return rows


def _event_times(row: dict[str, str], frames: int, label: str) -> np.ndarray:
    try:
        anchor = parse_time(row["time_utc"].strip(), _TIME_FORMATS)
        offsets = np.array([int(m) for m in row["minute_offsets"].split(":")], dtype=np.int64)
    except ValueError:
        raise SourceError(
            f"{label}: cannot read the times from the catalog's time_utc={row['time_utc']!r} "
            f"and minute_offsets={row['minute_offsets'][:40]!r}..."
        ) from None
    if offsets.size != frames:
        raise SourceError(
            f"{label}: the catalog gives {offsets.size} minute_offsets for {frames} frames"
        )
    return anchor + 60 * offsets


def _grid(row: dict[str, str]) -> dict[str, Any]:
    """Projection and pixel size, the same for every event (their corners differ)."""
    grid: dict[str, Any] = {}
    if row.get("proj"):
        grid["projdef"] = row["proj"]
    for key, extent, size in (("xscale", "width_m", "size_x"), ("yscale", "height_m", "size_y")):
        try:
            grid[key] = float(row[extent]) / float(row[size])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            continue
    return grid


def scan_sevir(path: Path, *, catalog: Path | None) -> list[SourceFrame]:
    """The frames of every VIL event in one SEVIR file (see the module docstring).

    Args:
        path: a SEVIR VIL file.
        catalog: SEVIR's CATALOG.csv; None looks for it next to the file and in the folders
            above it.

    Raises:
        SourceError: not HDF5, corrupt, no vil dataset, no catalog rows for the file, event ids
            that differ from the catalog's, or unreadable times.
    """
    catalog = catalog or find_catalog(path)
    if catalog is None:
        raise SourceError(
            f"{path}: no {CATALOG_NAME} found in its folder or above, so the frame times are "
            f"unknown; pass catalog=<path to SEVIR's {CATALOG_NAME}>"
        )
    rows = read_catalog(catalog).get(path.name, [])
    if not rows:
        raise SourceError(f"{path}: {catalog} lists no vil events in this file")
    with open_hdf5(path) as f:
        vil = f.get("vil")
        if not isinstance(vil, h5py.Dataset) or vil.ndim != 4:
            raise SourceError(
                f"{path} has no (N, H, W, T) /vil dataset; is it a SEVIR VIL file? (format=sevir)"
            )
        events, height, width, frames = (int(n) for n in vil.shape)
        ids = [attr_text(i) for i in f["id"][...]] if "id" in f else None
    frames_of_file = []
    for row in rows:
        try:
            index = int(row["file_index"])
        except ValueError:
            index = -1
        if not 0 <= index < events:
            raise SourceError(
                f"{path}: catalog event {row['id']} has file_index={row['file_index']!r}, "
                f"outside the file's {events} events"
            )
        if ids is not None and ids[index] != row["id"]:
            raise SourceError(
                f"{path}: event {index} is {ids[index]} in the file but {row['id']} in {catalog}"
            )
        label = f"{path} event {row['id']}"
        times = _event_times(row, frames, label)
        grid = _grid(row)
        for t in range(frames):
            read = partial(_read_frame, path, index, t)
            frames_of_file.append(
                SourceFrame(
                    f"{label} frame {t}",
                    int(times[t]),
                    "VIL",
                    (height, width),
                    grid,
                    read,
                    row["id"],
                )
            )
    return frames_of_file


@lru_cache(maxsize=2)
def _read_event(path: Path, index: int) -> np.ndarray:
    """One event's (H, W, T) levels as float32, NaN where missing; cached, as its frames are
    read one after the other."""
    with open_hdf5(path) as f:
        levels = f["vil"][index].astype(np.float32)
    levels[levels == MISSING_LEVEL] = np.nan
    return levels


def _read_frame(path: Path, index: int, t: int) -> np.ndarray:
    return _read_event(path, index)[..., t]
