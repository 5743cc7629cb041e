"""ODIM_H5 composites (the EUMETNET OPERA standard): one file per time.

Layout read (Michelson et al. 2014, EUMETNET OPERA weather radar information model for
implementation with the HDF5 file format, version 2.2)::

    /what                 date (YYYYMMDD), time (HHMMSS): the nominal time of the product
    /where                projdef, xsize, ysize, xscale, yscale (m), LL_lon, LL_lat, UL_...,
                          UR_..., LR_... (also accepted in /dataset1/where); where xscale or
                          yscale is missing (RMI's composites), both come from projdef and
                          the corners, with pyproj: the outer corners of the corner pixels
    /datasetN/what        startdate, starttime, enddate, endtime (and, in some products, the
                          scaling attributes below)
    /datasetN/dataM/what  quantity (DBZH, TH, RATE, ACRR), gain, offset, nodata, undetect
    /datasetN/dataM/data  2-D raw values (uint8, uint16, float32 or float64), row 0 = north
    /datasetN/dataM/qualityK, /datasetN/qualityK
                          quality fields; QIND (what/quantity) with its own what/gain, offset

Each scaling attribute is taken from `dataM/what`, else `datasetN/what`, else `/what`, because
national variants and the newer OPERA products place them differently; gain and offset default
to 1 and 0, and NaN in float data is no data. value = raw * gain + offset; `nodata` is outside
coverage (NaN), `undetect` is no echo (-inf dBZ). Rain rates (RATE, mm/h) and accumulations
(ACRR, mm over the dataset's start-end interval) become dBZ with the Z-R relation.

Of several fields that could be read (several datasets, or data of known quantities), the first
in numeric order is read (or the first of `quantity`), and the frame says which (`choice`).
With `min_quality`, pixels whose QIND (of the data, else of its dataset) is below it, or
unknown (the field's nodata, NaN), are no data. Polar volumes and scans (/what object PVOL,
SCAN, ...) are refused: only gridded objects (COMP, IMAGE, CVOL) are frames on a map.

Read with h5py rather than pysteps' `import_odim_hdf5`, which needs pyproj, returns no time,
does not read TH, and by its own documentation reads only the OPERA and DPC variants correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    require,
)
from nowcast.data.sources import text as attr_text

QUANTITY_UNITS = {"DBZH": "dBZ", "TH": "dBZ", "RATE": "mm/h", "ACRR": "mm"}
CORNERS = ("LL", "UL", "UR", "LR")
# How far the edges of the corners' rectangle may differ (relative) for a pixel size from them.
_CORNER_TOLERANCE = 0.01
GRIDDED_OBJECTS = ("COMP", "IMAGE", "CVOL")
QUALITY_QUANTITY = "QIND"
_TIME_FORMAT = ("%Y%m%d%H%M%S",)
_SCALING_DEFAULTS = {"gain": 1.0, "offset": 0.0, "nodata": None, "undetect": None}
_OTHERS_NAMED = 3


@dataclass(frozen=True)
class QualityMask:
    """The QIND quality field of the data read, and the least quality kept.

    Attributes:
        dataset: the quality field's `.../qualityK/data` path.
        scaling: its own gain, offset, nodata (from `qualityK/what`).
        minimum: pixels of lower quality, or of unknown quality, become no data.
    """

    dataset: str
    scaling: dict[str, float | None]
    minimum: float


def _numbered(group: h5py.Group, prefix: str) -> list[str]:
    """Member names `<prefix>N` in numeric order (dataset1, dataset2, ..., dataset10)."""
    pattern = re.compile(rf"{prefix}(\d+)$")
    found = [(int(m.group(1)), name) for name in group if (m := pattern.match(name))]
    return [name for _, name in sorted(found)]


def _what_groups(data_group: str) -> tuple[str, ...]:
    """Where the attributes of `datasetN/dataM` may sit, nearest first."""
    return (f"{data_group}/what", f"{data_group.split('/')[0]}/what", "what")


def _lookup(f: h5py.File, what_groups: tuple[str, ...], name: str) -> Any:
    """Attribute `name` from the first of `what_groups` that has it; None when none has."""
    for what in what_groups:
        if what in f and name in f[what].attrs:
            return f[what].attrs[name]
    return None


def _check_gridded(f: h5py.File, path: Path) -> None:
    """Refuse polar volumes and scans: their data are rays, not a map. A file that does not
    say (no /what object) is read."""
    kind = _lookup(f, ("what",), "object")
    if kind is not None and attr_text(kind) not in GRIDDED_OBJECTS:
        raise SourceError(
            f"{path} is an ODIM {attr_text(kind)} (/what object), not a gridded product; nowcast "
            f"reads composites and images (object {', '.join(GRIDDED_OBJECTS)}), so grid polar "
            "volumes and scans into a composite first"
        )


def _select_data(f: h5py.File, path: Path, quantity: str | None) -> tuple[str, str, str | None]:
    """(`datasetN/dataM`, quantity, choice) of the data to read: the first of `quantity`, else
    the first of a known quantity. `choice` names it and the readable fields passed over, or is
    None when there were none."""
    found: list[tuple[str, str | None]] = []
    for dataset in _numbered(f, "dataset"):
        for data in _numbered(f[dataset], "data"):
            group = f"{dataset}/{data}"
            if isinstance(f[group].get("data"), h5py.Dataset):
                value = _lookup(f, _what_groups(group), "quantity")
                found.append((group, None if value is None else attr_text(value)))
    if not found:
        raise SourceError(
            f"{path} has no /datasetN/dataM/data dataset; is it an ODIM_H5 file? (format=odim)"
        )
    readable = [
        (group, name)
        for group, name in found
        if (name == quantity if quantity is not None else name in QUANTITY_UNITS)
    ]
    if readable:
        (group, name), others = readable[0], readable[1:]
        if not others:
            return group, name, None
        passed = ", ".join(f"/{g} ({n})" for g, n in others[:_OTHERS_NAMED])
        more = f" and {len(others) - _OTHERS_NAMED} more" if len(others) > _OTHERS_NAMED else ""
        return group, name, f"/{group} ({name}), not {passed}{more}"
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


def _time(
    f: h5py.File, what_groups: tuple[str, ...], path: Path, date_key: str, time_key: str
) -> int | None:
    """The time from `date_key`/`time_key` attributes (see _lookup), None when both are absent."""
    date, clock = _lookup(f, what_groups, date_key), _lookup(f, what_groups, time_key)
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


def _scaling(
    f: h5py.File, what_groups: tuple[str, ...], group: str, path: Path
) -> dict[str, float | None]:
    """gain, offset, nodata, undetect of `group` (see _lookup), with the ODIM defaults."""
    scaling = {}
    for name, default in _SCALING_DEFAULTS.items():
        value = _lookup(f, what_groups, name)
        try:
            scaling[name] = default if value is None else number(value)
        except ValueError:
            raise SourceError(
                f"{path}: /{group} attribute {name}={attr_text(value)!r} is not a number"
            ) from None
    return scaling


def _quality_mask(f: h5py.File, group: str, path: Path, minimum: float) -> QualityMask:
    """The QIND field of `datasetN/dataM`: its own qualityK, else its dataset's."""
    dataset_group = group.split("/")[0]
    for holder in (group, dataset_group):
        for name in _numbered(f[holder], "quality"):
            quality = f"{holder}/{name}"
            kind = _lookup(f, (f"{quality}/what",), "quantity")
            if kind is None or attr_text(kind) != QUALITY_QUANTITY:
                continue
            data = f[quality].get("data")
            if not isinstance(data, h5py.Dataset) or data.shape != f[f"{group}/data"].shape:
                raise SourceError(
                    f"{path}: /{quality} has no data of the shape of /{group}/data; "
                    "convert without min_quality="
                )
            scaling = _scaling(f, (f"{quality}/what",), quality, path)
            return QualityMask(f"{quality}/data", scaling, minimum)
    raise SourceError(
        f"{path} has no {QUALITY_QUANTITY} quality field for /{group} (looked in "
        f"/{group}/qualityK and /{dataset_group}/qualityK); convert without min_quality="
    )


def _grid(f: h5py.File, group: str, shape: tuple[int, int], path: Path) -> dict[str, Any]:
    """The /where attributes (else /datasetN/where), checked against the data's shape, with
    the pixel size from the corners where xscale or yscale is missing."""
    dataset_where = f"{group.split('/')[0]}/where"
    where = next((w for w in ("where", dataset_where) if w in f and len(f[w].attrs)), None)
    grid = {} if where is None else {k: plain(v) for k, v in f[where].attrs.items()}
    for key, size in (("ysize", shape[0]), ("xsize", shape[1])):
        if key in grid and grid[key] != size:
            raise SourceError(
                f"{path}: /{where} {key}={grid[key]} differs from the data's {shape[0]}x{shape[1]}"
            )
        grid[key] = size
    if "xscale" not in grid or "yscale" not in grid:
        xscale, yscale = _pixel_size_from_corners(grid, f"{path}: /{where or 'where'}")
        grid.setdefault("xscale", xscale)
        grid.setdefault("yscale", yscale)
    return grid


def _pixel_size_from_corners(grid: dict[str, Any], where: str) -> tuple[float, float]:
    """(xscale, yscale) in metres from `projdef` and the four corners' LL_lon, LL_lat, ...:
    ODIM's corners are the outer corners of the corner pixels, so the top and bottom edges span
    xsize pixels and the sides ysize. Projected as pysteps' importers project them.

    Raises:
        SourceError: a corner or projdef missing, a projdef pyproj does not read, or corners
            that are not a rectangle in that projection. ValueError: pyproj not installed.
    """
    names = [f"{corner}_{axis}" for corner in CORNERS for axis in ("lon", "lat")]
    missing = [name for name in ("projdef", *names) if name not in grid]
    if missing:
        raise SourceError(
            f"{where} has no xscale/yscale (the pixel size in metres), nor "
            f"{', '.join(missing)} to compute it from the projection and the corners"
        )
    require("pyproj", "pyproj", f"{where}: the pixel size from projdef and the corners")
    import pyproj

    try:
        projection = pyproj.Proj(grid["projdef"])
    except pyproj.exceptions.CRSError as err:
        raise SourceError(
            f"{where}: projdef={grid['projdef']!r} is not a projection pyproj reads ({err})"
        ) from None
    metres = projection.crs.axis_info[0].unit_conversion_factor
    x, y = {}, {}
    for corner in CORNERS:
        x[corner], y[corner] = projection(grid[f"{corner}_lon"], grid[f"{corner}_lat"])
    widths = (x["UR"] - x["UL"], x["LR"] - x["LL"])
    heights = (y["UL"] - y["LL"], y["UR"] - y["LR"])
    sizes = []
    for edges, count in ((widths, grid["xsize"]), (heights, grid["ysize"])):
        if min(edges) <= 0 or max(edges) > (1 + _CORNER_TOLERANCE) * min(edges):
            raise SourceError(
                f"{where} has no xscale/yscale, and its corners are not a rectangle in "
                f"projdef's projection (edges of {edges[0] * metres:.0f} and "
                f"{edges[1] * metres:.0f} m), so the pixel size is unknown"
            )
        sizes.append(float(np.mean(edges)) * metres / count)
    return sizes[0], sizes[1]


def scan_odim(
    path: Path,
    *,
    quantity: str | None,
    zr_a: float,
    zr_b: float,
    min_quality: float | None = None,
) -> list[SourceFrame]:
    """The frame of one ODIM_H5 composite file (see the module docstring).

    Args:
        path: the file.
        quantity: the quantity to read (DBZH, TH, RATE, ACRR), or None for the first of these.
        zr_a, zr_b: Z = a R^b, to turn rain rates and accumulations into dBZ.
        min_quality: the least QIND (0-1) a pixel needs, or None to keep every pixel.

    Raises:
        SourceError: not HDF5, corrupt, a polar volume or scan, no data, an unknown or missing
            quantity, an unreadable time or scaling attribute, a /where grid that does not
            match the data or has no pixel size nor the corners to compute it from, or
            min_quality without a QIND field. ValueError: pyproj, needed for the pixel size
            from the corners, not installed.
    """
    with open_hdf5(path) as f:
        _check_gridded(f, path)
        group, name, choice = _select_data(f, path, quantity)
        data = f[f"{group}/data"]
        if data.ndim != 2:
            raise SourceError(f"{path}: /{group}/data has shape {data.shape}, not 2-D")
        shape = (int(data.shape[0]), int(data.shape[1]))
        what_groups = _what_groups(group)
        time = _time(f, ("what",), path, "date", "time")
        if time is None:
            time = _time(f, what_groups, path, "enddate", "endtime")
        if time is None:
            raise SourceError(
                f"{path} has no date/time attributes in /what (nor enddate/endtime in "
                f"/{group.split('/')[0]}/what); cannot read the time of the frame"
            )
        interval_minutes = None
        if name == "ACRR":
            start = _time(f, what_groups, path, "startdate", "starttime")
            end = _time(f, what_groups, path, "enddate", "endtime")
            if start is None or end is None or end <= start:
                raise SourceError(
                    f"{path}: ACRR needs the accumulation interval, but startdate/starttime and "
                    "enddate/endtime are missing or not increasing"
                )
            interval_minutes = (end - start) / 60.0
        scaling = _scaling(f, what_groups, group, path)
        quality = None if min_quality is None else _quality_mask(f, group, path, min_quality)
        grid = _grid(f, group, shape, path)
    read = partial(
        _read_frame, path, f"{group}/data", scaling, quality, name, interval_minutes, zr_a, zr_b
    )
    return [SourceFrame(str(path), time, name, shape, grid, read, choice=choice)]


def _low_quality(raw: np.ndarray, quality: QualityMask) -> np.ndarray:
    """Pixels whose quality is below the minimum or unknown (the field's nodata, or NaN)."""
    values = raw.astype(np.float64) * quality.scaling["gain"] + quality.scaling["offset"]
    if quality.scaling["nodata"] is not None:
        values[raw == quality.scaling["nodata"]] = np.nan
    return ~(values >= quality.minimum)  # NaN compares False: unknown quality is masked


def _read_frame(
    path: Path,
    dataset: str,
    scaling: dict[str, float | None],
    quality: QualityMask | None,
    quantity: str,
    interval_minutes: float | None,
    zr_a: float,
    zr_b: float,
) -> np.ndarray:
    with open_hdf5(path) as f:
        raw = f[dataset][...]
        quality_raw = None if quality is None else f[quality.dataset][...]
    no_data = np.isnan(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, bool)
    if scaling["nodata"] is not None:
        no_data |= raw == scaling["nodata"]
    if quality is not None:
        no_data |= _low_quality(quality_raw, quality)
    no_echo = raw == scaling["undetect"] if scaling["undetect"] is not None else False
    values = raw.astype(np.float64) * scaling["gain"] + scaling["offset"]
    is_dbz = QUANTITY_UNITS[quantity] == "dBZ"
    dbz = physical_to_dbz(
        values, is_dbz=is_dbz, interval_minutes=interval_minutes, zr_a=zr_a, zr_b=zr_b
    )
    dbz[no_echo] = -np.inf
    dbz[no_data] = np.nan
    return dbz.astype(np.float32)
