"""ODIM_H5 composites (the EUMETNET OPERA standard): one file per time.

Layout read (REFERENCES.md section 4)::

    /what                 date (YYYYMMDD), time (HHMMSS): the nominal time of the product
    /where                projdef, xsize, ysize, xscale, yscale (m), LL_lon, LL_lat, UL_...,
                          UR_..., LR_... (also accepted in /dataset1/where)
    /datasetN/what        startdate, starttime, enddate, endtime (and, in some products, the
                          scaling attributes below)
    /datasetN/dataM/what  quantity (DBZH, TH, RATE, ACRR), gain, offset, nodata, undetect
    /datasetN/dataM/data  2-D raw values (uint8, uint16, float32 or float64), row 0 = north

Each scaling attribute is taken from `dataM/what`, else `datasetN/what`, else `/what`, because
national variants and the newer OPERA products place them differently; gain and offset default
to 1 and 0, and NaN in float data is no data. value = raw * gain + offset; `nodata` is outside
coverage (NaN), `undetect` is no echo (-inf dBZ). Rain rates (RATE, mm/h) and accumulations
(ACRR, mm over the dataset's start-end interval) become dBZ with the Z-R relation.

Read with h5py rather than pysteps' `import_odim_hdf5`, which needs pyproj, returns no time,
does not read TH, and by its own documentation reads only the OPERA and DPC variants correctly.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nowcast.data.sources import (
    SourceError,
    SourceFrame,
    number,
    open_hdf5,
    parse_time,
    physical_to_dbz,
    plain,
)
from nowcast.data.sources import text as attr_text

QUANTITY_UNITS = {"DBZH": "dBZ", "TH": "dBZ", "RATE": "mm/h", "ACRR": "mm"}
_TIME_FORMAT = ("%Y%m%d%H%M%S",)
_SCALING_DEFAULTS = {"gain": 1.0, "offset": 0.0, "nodata": None, "undetect": None}


def _numbered(group: h5py.Group, prefix: str) -> list[str]:
    """Member names `<prefix>N` in numeric order (dataset1, dataset2, ..., dataset10)."""
    pattern = re.compile(rf"{prefix}(\d+)$")
    found = [(int(m.group(1)), name) for name in group if (m := pattern.match(name))]
    return [name for _, name in sorted(found)]


def _lookup(f: h5py.File, data_group: str, name: str) -> Any:
    """Attribute `name` from dataM/what, else datasetN/what, else /what; None when absent."""
    dataset_group = data_group.rsplit("/", 1)[0]
    for what in (f"{data_group}/what", f"{dataset_group}/what", "what"):
        if what in f and name in f[what].attrs:
            return f[what].attrs[name]
    return None


def _select_data(f: h5py.File, path: Path, quantity: str | None) -> tuple[str, str]:
    """(`datasetN/dataM`, quantity) of the data to read: the requested or first known quantity."""
    found: list[tuple[str, str | None]] = []
    for dataset in _numbered(f, "dataset"):
        for data in _numbered(f[dataset], "data"):
            group = f"{dataset}/{data}"
            if isinstance(f[group].get("data"), h5py.Dataset):
                value = _lookup(f, group, "quantity")
                found.append((group, None if value is None else attr_text(value)))
    if not found:
        raise SourceError(
            f"{path} has no /datasetN/dataM/data dataset; is it an ODIM_H5 file? (format=odim)"
        )
    for group, name in found:
        if name == quantity if quantity is not None else name in QUANTITY_UNITS:
            return group, name
    named = [name for _, name in found if name is not None]
    if not named:
        group = found[0][0]
        raise SourceError(
            f"{path} has no quantity attribute in /{group}/what, /{group.split('/')[0]}/what "
            "or /what; it is not a complete ODIM_H5 file"
        )
    if quantity is not None:
        raise SourceError(
            f"{path} holds no {quantity} data (found: {', '.join(named)}); "
            "pass quantity= one of those nowcast reads"
        )
    raise SourceError(
        f"{path}: quantity {named[0]!r} is not one nowcast reads "
        f"(known: {', '.join(QUANTITY_UNITS)})"
    )


def _time(f: h5py.File, group: str, path: Path, date_key: str, time_key: str) -> int | None:
    """The time from `date_key`/`time_key` attributes (see _lookup), None when both are absent."""
    date, clock = _lookup(f, group, date_key), _lookup(f, group, time_key)
    if date is None and clock is None:
        return None
    stamp = "".join(attr_text(part) for part in (date, clock) if part is not None)
    try:
        return parse_time(stamp, _TIME_FORMAT)
    except ValueError:
        shown = [None if part is None else attr_text(part) for part in (date, clock)]
        raise SourceError(
            f"{path}: cannot read the time from {date_key}={shown[0]!r} {time_key}={shown[1]!r} "
            "(expected YYYYMMDD and HHMMSS)"
        ) from None


def _scaling(f: h5py.File, group: str, path: Path) -> dict[str, float | None]:
    scaling = {}
    for name, default in _SCALING_DEFAULTS.items():
        value = _lookup(f, group, name)
        try:
            scaling[name] = default if value is None else number(value)
        except ValueError:
            raise SourceError(
                f"{path}: /{group} attribute {name}={attr_text(value)!r} is not a number"
            ) from None
    return scaling


def _grid(f: h5py.File, group: str, shape: tuple[int, int], path: Path) -> dict[str, Any]:
    """The /where attributes (else /datasetN/where), checked against the data's shape."""
    dataset_where = f"{group.split('/')[0]}/where"
    where = next((w for w in ("where", dataset_where) if w in f and len(f[w].attrs)), None)
    grid = {} if where is None else {k: plain(v) for k, v in f[where].attrs.items()}
    for key, size in (("ysize", shape[0]), ("xsize", shape[1])):
        if key in grid and grid[key] != size:
            raise SourceError(
                f"{path}: /{where} {key}={grid[key]} differs from the data's {shape[0]}x{shape[1]}"
            )
        grid[key] = size
    return grid


def scan_odim(path: Path, *, quantity: str | None, zr_a: float, zr_b: float) -> list[SourceFrame]:
    """The frame of one ODIM_H5 composite file (see the module docstring).

    Args:
        path: the file.
        quantity: the quantity to read (DBZH, TH, RATE, ACRR), or None for the first of these.
        zr_a, zr_b: Z = a R^b, to turn rain rates and accumulations into dBZ.

    Raises:
        SourceError: not HDF5, corrupt, no data, an unknown or missing quantity, an unreadable
            time or scaling attribute, or a /where grid that does not match the data.
    """
    with open_hdf5(path) as f:
        group, name = _select_data(f, path, quantity)
        data = f[f"{group}/data"]
        if data.ndim != 2:
            raise SourceError(f"{path}: /{group}/data has shape {data.shape}, not 2-D")
        shape = (int(data.shape[0]), int(data.shape[1]))
        time = _time(f, "what", path, "date", "time")
        if time is None:
            time = _time(f, group, path, "enddate", "endtime")
        if time is None:
            raise SourceError(
                f"{path} has no date/time attributes in /what (nor enddate/endtime in "
                f"/{group.split('/')[0]}/what); cannot read the time of the frame"
            )
        interval_minutes = None
        if name == "ACRR":
            start = _time(f, group, path, "startdate", "starttime")
            end = _time(f, group, path, "enddate", "endtime")
            if start is None or end is None or end <= start:
                raise SourceError(
                    f"{path}: ACRR needs the accumulation interval, but startdate/starttime and "
                    "enddate/endtime are missing or not increasing"
                )
            interval_minutes = (end - start) / 60.0
        scaling = _scaling(f, group, path)
        grid = _grid(f, group, shape, path)
    read = partial(_read_frame, path, f"{group}/data", scaling, name, interval_minutes, zr_a, zr_b)
    return [SourceFrame(str(path), time, name, shape, grid, read)]


def _read_frame(
    path: Path,
    dataset: str,
    scaling: dict[str, float | None],
    quantity: str,
    interval_minutes: float | None,
    zr_a: float,
    zr_b: float,
) -> np.ndarray:
    with open_hdf5(path) as f:
        raw = f[dataset][...]
    no_data = np.isnan(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, bool)
    if scaling["nodata"] is not None:
        no_data |= raw == scaling["nodata"]
    no_echo = raw == scaling["undetect"] if scaling["undetect"] is not None else False
    values = raw.astype(np.float64) * scaling["gain"] + scaling["offset"]
    is_dbz = QUANTITY_UNITS[quantity] == "dBZ"
    dbz = physical_to_dbz(
        values, is_dbz=is_dbz, interval_minutes=interval_minutes, zr_a=zr_a, zr_b=zr_b
    )
    dbz[no_echo] = -np.inf
    dbz[no_data] = np.nan
    return dbz.astype(np.float32)
