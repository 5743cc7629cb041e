"""KNMI radar composites in KNMI's own HDF5 layout (not ODIM): one file per 5 minutes.

Layout of RAD_NL25_RAP_5min_YYYYmmddHHMM.h5, KNMI's 5-minute rain accumulation (pysteps'
example data); numbers are 1-element arrays, strings fixed-length ASCII::

    /overview                   product_datetime_start, product_datetime_end
                                ("26-AUG-2010;02:55:00.000", UTC), number_image_groups (1),
                                number_radar_groups, product_group_name, products_missing, ...
    /image1                     image_geo_parameter ACCUMULATED_PRECIPITATION_[MM],
                                image_product_name, image_bytes_per_pixel, image_size
    /image1/image_data          (765, 700) uint16 pixel values PV, row 0 = north
    /image1/calibration         calibration_formulas "GEO=0.01*PV+0.0" (mm),
                                calibration_missing_data and calibration_out_of_image (65535)
    /image1/statistics          stat_min_value, stat_max_value (KNMI writes 0 for both)
    /geographic                 geo_number_rows, geo_number_columns, geo_pixel_size_x/y (1 km;
                                y < 0 as rows run south), geo_dim_pixel ("KM,KM"), geo_row_offset,
                                geo_column_offset, geo_product_corners (4 lon/lat pairs)
    /geographic/map_projection  projection_proj4_params (polar stereographic), projection_name
    /radar1, /radar2            radar_name, radar_location (the radars in the composite)

value = formula(PV). A PV equal to calibration_missing_data or calibration_out_of_image is no
data (NaN); every other PV is measured, so PV 0 is 0 mm: dry, no echo. Accumulations are mm
over product_datetime_start..end (5 minutes: x12 for mm/h) and become dBZ with the Z-R
relation. The frame's time is product_datetime_end, the time in KNMI's file names.

Besides ACCUMULATED_PRECIPITATION_[MM], two image_geo_parameter values of other KNMI products
are read: ACCUMULATION_[MM] (as Py-ART's KNMI reader knows it) and REFLECTIVITY_[DBZ]
(RAD_NL25_PCP_NA: "GEO = 0.500000 * PV + -32.000000", missing 0, out of image 255). A file of
several image groups (number_image_groups > 1, as in KNMI's forecasts: one image per lead
time) is refused rather than read as one frame.

Read with h5py rather than pysteps' `import_knmi_hdf5`, which hard-codes the scaling and the
no-data value, takes the interval as an argument instead of reading it, and returns no time.
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

GEO_PARAMETERS = {
    "ACCUMULATED_PRECIPITATION_[MM]": "ACRR",
    "ACCUMULATION_[MM]": "ACRR",
    "REFLECTIVITY_[DBZ]": "DBZH",
}
QUANTITIES = tuple(dict.fromkeys(GEO_PARAMETERS.values()))
_IMAGE_GROUP = re.compile(r"image\d+$")
_TIME_FORMATS = ("%d-%b-%Y;%H:%M:%S.%f", "%d-%b-%Y;%H:%M:%S")
_FORMULA = re.compile(r"GEO\s*=\s*([-+0-9.eE]+)\s*\*\s*PV\s*\+\s*([-+0-9.eE]+)$")
_KM_IN_M = 1000.0


def _required(group: h5py.Group, name: str, path: Path) -> Any:
    if name not in group.attrs:
        raise SourceError(f"{path}: {group.name} has no {name} attribute")
    return group.attrs[name]


def _member(f: h5py.File, name: str, path: Path, kind: type = h5py.Group) -> Any:
    if not isinstance(f.get(name), kind):
        what = "dataset" if kind is h5py.Dataset else "group"
        raise SourceError(
            f"{path} has no /{name} {what}; is it a KNMI HDF5 composite? (format=knmi)"
        )
    return f[name]


def _quantity(image: h5py.Group, path: Path, quantity: str | None) -> str:
    if "image_geo_parameter" not in image.attrs:
        if quantity is None:
            raise SourceError(
                f"{path}: /image1 has no image_geo_parameter attribute to say what it holds; "
                f"pass quantity= one of {', '.join(QUANTITIES)}"
            )
        return quantity
    parameter = attr_text(image.attrs["image_geo_parameter"])
    if parameter not in GEO_PARAMETERS:
        raise SourceError(
            f"{path}: quantity {parameter!r} is not one nowcast reads "
            f"(known: {', '.join(GEO_PARAMETERS)})"
        )
    if quantity is not None and GEO_PARAMETERS[parameter] != quantity:
        raise SourceError(f"{path} holds {parameter}, not quantity={quantity}")
    return GEO_PARAMETERS[parameter]


def _check_one_image(f: h5py.File, overview: h5py.Group, path: Path) -> None:
    """Refuse files of several images (KNMI's forecasts hold one per lead time)."""
    declared = overview.attrs.get("number_image_groups", 1)
    try:
        count = max(int(number(declared)), sum(1 for name in f if _IMAGE_GROUP.match(name)))
    except ValueError:
        raise SourceError(f"{path}: /overview number_image_groups is not a number") from None
    if count > 1:
        raise SourceError(
            f"{path} holds {count} image groups (/overview number_image_groups), as KNMI's "
            "forecasts do, one per lead time; nowcast reads files of one observed image, "
            "such as RAD_NL25_RAP_5min_*.h5"
        )


def _time(overview: h5py.Group, name: str, path: Path) -> int:
    stamp = attr_text(_required(overview, name, path))
    try:
        return parse_time(stamp, _TIME_FORMATS)
    except ValueError:
        raise SourceError(
            f"{path}: cannot read the time from /overview {name}={stamp!r} "
            "(expected e.g. 26-AUG-2010;02:55:00.000)"
        ) from None


def _calibration(image: h5py.Group, path: Path) -> tuple[float, float, list[float]]:
    """(gain, offset, no-data pixel values) from /image1/calibration."""
    calibration = _member(image.file, "image1/calibration", path)
    formula = attr_text(_required(calibration, "calibration_formulas", path))
    match = _FORMULA.match(formula)
    if match is None:
        raise SourceError(
            f"{path}: cannot read the calibration formula {formula!r} (expected GEO=a*PV+b)"
        )
    no_data = []
    for name in ("calibration_missing_data", "calibration_out_of_image"):
        if name in calibration.attrs:
            try:
                no_data.append(number(calibration.attrs[name]))
            except ValueError:
                raise SourceError(f"{path}: {name} is not a number") from None
    return float(match.group(1)), float(match.group(2)), no_data


def _grid(f: h5py.File, shape: tuple[int, int], path: Path) -> dict[str, Any]:
    geographic = _member(f, "geographic", path)
    grid = {k: plain(v) for k, v in geographic.attrs.items()}
    if isinstance(geographic.get("map_projection"), h5py.Group):
        grid |= {k: plain(v) for k, v in geographic["map_projection"].attrs.items()}
    if "projection_proj4_params" in grid:
        grid["projdef"] = grid["projection_proj4_params"]
    for key, source, size in (
        ("ysize", "geo_number_rows", shape[0]),
        ("xsize", "geo_number_columns", shape[1]),
    ):
        if source in grid and grid[source] != size:
            raise SourceError(
                f"{path}: /geographic {source}={grid[source]} differs from the image's "
                f"{shape[0]}x{shape[1]}"
            )
        grid[key] = size
    in_km = str(grid.get("geo_dim_pixel", "KM")).upper().startswith("KM")
    for key, source in (("xscale", "geo_pixel_size_x"), ("yscale", "geo_pixel_size_y")):
        if isinstance(grid.get(source), (int, float)):
            grid[key] = abs(grid[source]) * (_KM_IN_M if in_km else 1.0)
    return grid


def scan_knmi(path: Path, *, quantity: str | None, zr_a: float, zr_b: float) -> list[SourceFrame]:
    """The frame of one KNMI HDF5 composite file (see the module docstring).

    Args:
        path: the file.
        quantity: ACRR or DBZH, only needed when the file has no image_geo_parameter.
        zr_a, zr_b: Z = a R^b, to turn rain rates and accumulations into dBZ.

    Raises:
        SourceError: not HDF5, corrupt, a missing group, dataset or attribute, an unknown
            quantity, several image groups, an unreadable time or formula, or a grid that does
            not match the image.
    """
    with open_hdf5(path) as f:
        image = _member(f, "image1", path)
        data = _member(f, "image1/image_data", path, h5py.Dataset)
        if data.ndim != 2:
            raise SourceError(f"{path}: /image1/image_data has shape {data.shape}, not 2-D")
        shape = (int(data.shape[0]), int(data.shape[1]))
        overview = _member(f, "overview", path)
        _check_one_image(f, overview, path)
        name = _quantity(image, path, quantity)
        end = _time(overview, "product_datetime_end", path)
        interval_minutes = None
        if name == "ACRR":
            start = _time(overview, "product_datetime_start", path)
            if end <= start:
                raise SourceError(
                    f"{path}: an accumulation needs product_datetime_start before "
                    "product_datetime_end"
                )
            interval_minutes = (end - start) / 60.0
        gain, offset, no_data = _calibration(image, path)
        grid = _grid(f, shape, path)
    read = partial(_read_frame, path, gain, offset, no_data, name, interval_minutes, zr_a, zr_b)
    return [SourceFrame(str(path), end, name, shape, grid, read)]


def _read_frame(
    path: Path,
    gain: float,
    offset: float,
    no_data_values: list[float],
    quantity: str,
    interval_minutes: float | None,
    zr_a: float,
    zr_b: float,
) -> np.ndarray:
    with open_hdf5(path) as f:
        pixels = f["image1/image_data"][...]
    values = pixels.astype(np.float64) * gain + offset
    dbz = physical_to_dbz(
        values, is_dbz=quantity == "DBZH", interval_minutes=interval_minutes, zr_a=zr_a, zr_b=zr_b
    )
    dbz[np.isin(pixels, no_data_values)] = np.nan
    return dbz.astype(np.float32)
