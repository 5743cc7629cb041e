"""Radar products read through pysteps' importers (`pysteps.io.importers`): FMI, MeteoSwiss, BoM
and every other product pysteps reads.

pysteps reads the pixels: each importer returns the field, a quality field (unused here) and a
metadata dict (pysteps' data model)::

    unit              dBZ, mm/h, or mm (an accumulation over `accutime` minutes)
    transform         None, or dB for dBZ
    zerovalue         the value of no echo (no rain): pixels at or below it have no echo
    NaN in the field  no data (outside coverage); some importers return a masked array instead
    yorigin           upper (row 0 = north) or lower (rows run from the south)
    projection        proj4 string; x1, y1, x2, y2: the outer corners; xpixelsize, ypixelsize;
                      all in cartesian_unit (m, km, or degrees)

Here the field becomes the store's dBZ: rain rates, and accumulations over the file's own
`accutime`, through the store's Z-R relation (not the importer's zr_a, zr_b: one store, one
relation); no echo is -inf, no data NaN; rows run north to south. The grid is described as
ODIM's /where: projdef, xsize, ysize, xscale and yscale in metres (from the corners where
pysteps gives no pixel size), and the corners x1, y1, x2, y2 in metres. Grids in degrees keep
pysteps' keys and have no xscale or yscale.

pysteps returns no time. It is read from the file where the file has one (FMI's PGM header
`obstime`; MeteoSwiss's GIF comment `PRDT=AQCyyjjjHHMM`; BoM's netCDF `valid_time`, the end of
the accumulation; ODIM's /what date and time), else from the file name with the file-name
patterns of pysteps' archive (pystepsrc's `data_sources`, `fn_pattern`: strftime directives,
`?` and `*` for any characters, the time at the start of the name), or with `fn_pattern`
where given.

pysteps cannot read a file's metadata without its pixels, so that a folder is scanned quickly
(`nowcast-predict` scans every file of its input), only the first file of a reader is imported
while scanning; the others are taken to be on its grid and of its unit, which is checked when
each is read.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timezone
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nowcast.data.sources import (
    HDF5_SUFFIXES,
    SourceError,
    SourceFrame,
    check_same_source,
    open_hdf5,
    parse_time,
    physical_to_dbz,
    require,
    text,
)

# nowcast-data convert format= -> the pysteps importer it reads with (None: importer= says).
FORMAT_IMPORTERS = {"fmi": "fmi_pgm", "mch": "mch_gif", "bom": "bom_rf3", "pysteps": None}
IMPORTERS = (
    "bom_rf3",
    "dwd_hdf5",
    "dwd_radolan",
    "fmi_geotiff",
    "fmi_pgm",
    "knmi_hdf5",
    "mch_gif",
    "mch_hdf5",
    "mch_metranet",
    "mrms_grib",
    "odim_hdf5",
    "opera_hdf5",
    "saf_crri",
)
# What each importer needs beyond nowcast's dependencies, as (module, pip package): pysteps
# checks some of these only once a file is read, and odim_hdf5 and dwd_radolan not at all.
_NEEDS = {
    "bom_rf3": (("netCDF4", "netCDF4"),),
    "dwd_hdf5": (("pyproj", "pyproj"),),
    "dwd_radolan": (("pyproj", "pyproj"),),
    "fmi_geotiff": (("osgeo", "GDAL"),),
    "fmi_pgm": (("pyproj", "pyproj"),),
    "mch_gif": (("PIL", "Pillow"),),
    "mch_metranet": (("metranet", "metranet"),),
    "mrms_grib": (("pygrib", "pygrib"), ("pyproj", "pyproj")),
    "odim_hdf5": (("pyproj", "pyproj"),),
    "opera_hdf5": (("pyproj", "pyproj"),),
    "saf_crri": (("netCDF4", "netCDF4"),),
}
# File-name endings a folder input= is searched for; importers missing here take every file.
_SUFFIXES = {
    "bom_rf3": (".nc",),
    "dwd_hdf5": HDF5_SUFFIXES,
    "fmi_geotiff": (".tif", ".tiff"),
    "fmi_pgm": (".pgm.gz", ".pgm"),
    "knmi_hdf5": HDF5_SUFFIXES,
    "mch_gif": (".gif",),
    "mch_hdf5": HDF5_SUFFIXES,
    "mrms_grib": (".grib2",),
    "odim_hdf5": HDF5_SUFFIXES,
    "opera_hdf5": HDF5_SUFFIXES,
    "saf_crri": (".nc",),
}
# pysteps' archive file-name patterns (pystepsrc data_sources), MeteoSwiss's product letters
# as wildcards. None for BoM: without its valid_time, pysteps gives no accumulation period, so
# its name would not help.
NAME_PATTERNS = {
    "fmi_geotiff": "%Y%m%d%H%M_FINUTM",
    "fmi_pgm": "%Y%m%d%H%M_fmi.radar.composite.lowest_FIN_SUOMI1",
    "knmi_hdf5": "RAD_NL25_RAP_5min_%Y%m%d%H%M",
    "mch_gif": "???%y%j%H%M",
    "mch_metranet": "???%y%j%H%M",
    "mrms_grib": "PrecipRate_00.00_%Y%m%d-%H%M%S",
    "odim_hdf5": "%Y%m%d%H%M00.rad.best.comp.rate.qpe",
    "opera_hdf5": "T_PAAH21_C_EUOC_%Y%m%d%H%M%S",
    "saf_crri": "S_NWC_CRR_MSG4_Europe-VISIR_%Y%m%dT%H%M00Z",
}
_DIRECTIVE_DIGITS = {"Y": 4, "y": 2, "m": 2, "d": 2, "j": 3, "H": 2, "M": 2, "S": 2}
_PATTERN_TOKEN = re.compile(r"(%.|\?|\*)")
# MeteoSwiss's GIF products (pysteps' import_mch_gif) and the minutes in their names
# (AQC151351545F_00005.801.gif: 5 minutes); RZC is a rain rate, the others accumulations.
_MCH_PRODUCTS = ("AQC", "CPC", "RZC", "AZC")
_MCH_MINUTES = re.compile(r"_(\d{5})\.")
_MCH_COMMENT_TIME = re.compile(rb"PRDT=[A-Za-z]{3}(\d{9})")
_UNIT_QUANTITIES = {"dBZ": "DBZH", "mm/h": "RATE", "mm": "ACRR"}
_METRES_PER_UNIT = {"m": 1.0, "km": 1000.0}
_ODIM_TIME_FORMAT = ("%Y%m%d%H%M%S",)
_PGM_TIME_FORMAT = ("%Y%m%d%H%M",)
_MCH_TIME_FORMAT = ("%y%j%H%M",)


def importer_name(fmt: str, importer: str | None) -> str:
    """The pysteps importer of `format=fmt` (one of FORMAT_IMPORTERS), checked against `importer=`.

    Raises:
        ValueError: format=pysteps without importer=, or another importer than fmt's.
    """
    fixed = FORMAT_IMPORTERS[fmt]
    if fixed is None:
        if importer is None:
            raise ValueError(
                f"format=pysteps needs importer=, one of {', '.join(IMPORTERS)} (or a pysteps "
                "plugin's)"
            )
        return importer
    if importer not in (None, fixed):
        raise ValueError(
            f"format={fmt} reads with pysteps' importer {fixed}; for another importer use "
            f"format=pysteps importer=<name>. Received: importer={importer!r}"
        )
    return fixed


def suffixes(importer: str) -> tuple[str, ...]:
    """The file-name endings of `importer`'s files, for a folder input= (empty: every file)."""
    return _SUFFIXES.get(importer, ())


def name_time(name: str, pattern: str) -> int | None:
    """Seconds since 1970-01-01 UTC from a file name that starts as `pattern` says (pysteps'
    archive `fn_pattern`: %Y %y %m %d %j %H %M %S, `?` for one character, `*` for any), or
    None when it does not.

    Raises:
        ValueError: another directive in the pattern, or digits that are not a time.
    """
    regex, directives = "", []
    for token in _PATTERN_TOKEN.split(pattern):
        if token == "?":
            regex += "."
        elif token == "*":
            regex += ".*?"
        elif token.startswith("%") and len(token) == 2:
            if token[1] not in _DIRECTIVE_DIGITS:
                raise ValueError(
                    f"fn_pattern takes the time directives "
                    f"{' '.join('%' + d for d in _DIRECTIVE_DIGITS)}, Received: {pattern!r}"
                )
            regex += rf"(\d{{{_DIRECTIVE_DIGITS[token[1]]}}})"
            directives.append(token)
        else:
            regex += re.escape(token)
    if not directives:
        raise ValueError(
            f"fn_pattern has no time directive (e.g. %Y%m%d%H%M), Received: {pattern!r}"
        )
    match = re.match(regex, name)
    if match is None:
        return None
    return parse_time(" ".join(match.groups()), (" ".join(directives),))


def _pgm_time(path: Path) -> int | None:
    """`# obstime YYYYmmddHHMM` of an FMI PGM header (gzipped or not)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        stream.readline()  # the magic number, P5
        for line in stream:
            if not line.startswith(b"#"):
                return None
            key, _, value = line[1:].strip().partition(b" ")
            if key == b"obstime":
                return parse_time(value.decode(errors="replace").strip(), _PGM_TIME_FORMAT)
    return None


def _gif_time(path: Path) -> int | None:
    """The time in a MeteoSwiss GIF's comment: PRDT=<product><yyjjjHHMM> (as in its name)."""
    from PIL import Image

    with Image.open(path) as image:
        match = _MCH_COMMENT_TIME.search(image.info.get("comment", b""))
    return None if match is None else parse_time(match.group(1).decode(), _MCH_TIME_FORMAT)


def _netcdf_valid_time(path: Path) -> int | None:
    """BoM Rainfields' `valid_time` variable: the end of the accumulation."""
    import netCDF4

    with netCDF4.Dataset(path) as dataset:
        variable = dataset.variables.get("valid_time")
        if variable is None:
            return None
        moment = netCDF4.num2date(
            np.asarray(variable[...]).item(),
            variable.units,
            getattr(variable, "calendar", "standard"),
            only_use_cftime_datetimes=False,
            only_use_python_datetimes=True,
        )
    return int(moment.replace(tzinfo=timezone.utc).timestamp())


def _odim_time(path: Path) -> int | None:
    """/what date and time of an ODIM_H5 file: the product's nominal time."""
    with open_hdf5(path) as f:
        what = f.get("what")
        if not isinstance(what, h5py.Group) or not {"date", "time"} <= set(what.attrs):
            return None
        return parse_time(text(what.attrs["date"]) + text(what.attrs["time"]), _ODIM_TIME_FORMAT)


_FILE_TIMES: dict[str, Callable[[Path], int | None]] = {
    "bom_rf3": _netcdf_valid_time,
    "dwd_hdf5": _odim_time,
    "fmi_pgm": _pgm_time,
    "mch_gif": _gif_time,
    "mch_hdf5": _odim_time,
    "odim_hdf5": _odim_time,
    "opera_hdf5": _odim_time,
}


def _default_kwargs(importer: str, path: Path) -> dict[str, Any]:
    """The importer's arguments that depend on the file: FMI's gzip, MeteoSwiss's product,
    unit and minutes (from the name; pystepsrc's AQC, mm, 5 where it does not say)."""
    if importer == "fmi_pgm":
        return {"gzipped": path.name.lower().endswith(".gz")}
    if importer in ("mch_gif", "mch_metranet"):
        product = path.name[:3].upper()
        if product not in _MCH_PRODUCTS:
            product = "AQC"
        minutes = _MCH_MINUTES.search(path.name)
        return {
            "product": product,
            "unit": "mm/h" if product == "RZC" else "mm",
            "accutime": int(minutes.group(1)) if minutes else 5,
        }
    return {}


@dataclass(frozen=True)
class _Image:
    """What a file's metadata says: the frame's shape, grid and quantity, and how to get dBZ."""

    shape: tuple[int, int]
    grid: dict[str, Any]
    quantity: str
    interval_minutes: float | None
    zerovalue: float | None
    flip: bool


class PystepsReader:
    """Frames of radar files read with one pysteps importer (see the module docstring).

    Called with a file's path, it returns the file's one frame, as the other formats' scan
    functions do (nowcast.data.sources).

    Args:
        fmt: nowcast-data convert's format= (a key of FORMAT_IMPORTERS).
        importer: pysteps' importer name (format=pysteps), or None for fmt's own.
        importer_kwargs: more keyword arguments of the importer, over those nowcast passes.
        fn_pattern: read the time from file names of this pattern (see `name_time`) instead
            of from the files, or None.
        zr_a, zr_b: Z = a R^b, to turn rain rates and accumulations into dBZ.

    Raises:
        ValueError: an unknown importer, a bad fn_pattern, or a package the importer needs
            that is not installed (one line naming what to install).
    """

    def __init__(
        self,
        fmt: str,
        importer: str | None,
        *,
        importer_kwargs: Mapping[str, Any],
        fn_pattern: str | None,
        zr_a: float,
        zr_b: float,
    ) -> None:
        self.importer = importer_name(fmt, importer)
        # pysteps prints where it found its configuration file when first imported.
        with contextlib.redirect_stdout(io.StringIO()):
            from pysteps.io.interface import get_method
        try:
            self._import = get_method(self.importer, "importer")
        except ValueError:
            raise ValueError(
                f"unknown pysteps importer, allowed: {', '.join(IMPORTERS)} (or a pysteps "
                f"plugin's). Received: importer={self.importer!r}"
            ) from None
        for module, package in _NEEDS.get(self.importer, ()):
            require(module, package, f"format={fmt} (pysteps' import_{self.importer})")
        if fn_pattern is not None:
            name_time("", fn_pattern)  # a bad pattern fails here, not at the first file
        self._kwargs = dict(importer_kwargs)
        self._fn_pattern = fn_pattern
        self._zr = {"zr_a": zr_a, "zr_b": zr_b}
        self._first: SourceFrame | None = None

    def __call__(self, path: Path) -> list[SourceFrame]:
        time = self._time(path)
        read = partial(self._read, path)
        if self._first is None:
            image = self._describe(path, *self._imported(path))
            self._first = SourceFrame(
                str(path), time, image.quantity, image.shape, image.grid, read
            )
            return [self._first]
        first = self._first
        return [SourceFrame(str(path), time, first.quantity, first.shape, first.grid, read)]

    def _time(self, path: Path) -> int:
        """The file's time: from the file, else its name (see the module docstring)."""
        file_time = None if self._fn_pattern else _FILE_TIMES.get(self.importer)
        pattern = self._fn_pattern or NAME_PATTERNS.get(self.importer)
        try:
            time = None if file_time is None else file_time(path)
            if time is None and pattern is not None:
                time = name_time(path.name, pattern)
        except (OSError, ValueError, KeyError) as err:
            raise SourceError(f"{path}: cannot read the time ({err})") from None
        if time is None:
            looked = [
                where
                for where, used in (
                    ("in the file", file_time),
                    (f"in its name by the pattern {pattern!r}", pattern),
                )
                if used is not None
            ]
            raise SourceError(
                f"{path}: no time found {' nor '.join(looked) or 'for this importer'}; pass "
                "fn_pattern= with the names' time format, e.g. fn_pattern='radar_%Y%m%d%H%M'"
            )
        return time

    def _imported(self, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        """pysteps' field (float64, NaN = no data) and metadata of one file."""
        from pysteps.exceptions import DataModelError, MissingOptionalDependency

        kwargs = _default_kwargs(self.importer, path) | self._kwargs
        try:
            field, _, metadata = self._import(str(path), **kwargs)
        except MissingOptionalDependency as err:  # a plugin's, or one _NEEDS does not know
            raise ValueError(f"{path}: {err}; install it") from None
        except (OSError, ValueError, KeyError, IndexError, TypeError, DataModelError) as err:
            raise SourceError(
                f"{path}: pysteps' import_{self.importer} cannot read it "
                f"({type(err).__name__}: {err}); check the files and format="
            ) from None
        values = np.ma.filled(np.ma.asarray(field, dtype=np.float64), np.nan)
        if values.ndim != 2:
            raise SourceError(
                f"{path}: pysteps' import_{self.importer} returned a field of shape "
                f"{values.shape}, not 2-D"
            )
        return values, metadata

    def _describe(self, path: Path, values: np.ndarray, metadata: Mapping[str, Any]) -> _Image:
        """The frame `metadata` describes (see the module docstring), checked."""
        source = f"{path}: pysteps' import_{self.importer}"
        unit = metadata.get("unit")
        if unit not in _UNIT_QUANTITIES:
            raise SourceError(
                f"{source} gives values in unit {unit!r}, not one nowcast reads "
                f"({', '.join(_UNIT_QUANTITIES)})"
            )
        transform = metadata.get("transform")
        if transform is not None and not (transform == "dB" and unit == "dBZ"):
            raise SourceError(f"{source} gives {unit} transformed by {transform!r}")
        interval = metadata.get("accutime") if unit == "mm" else None
        if unit == "mm" and (interval is None or not float(interval) > 0):
            raise SourceError(
                f"{source} gives an accumulation (mm) with no accumulation period "
                f"(accutime={interval!r}); pass +importer_kwargs.accutime=<minutes> where the "
                "importer takes it"
            )
        yorigin = metadata.get("yorigin", "upper")
        if yorigin not in ("upper", "lower"):
            raise SourceError(f"{source} gives yorigin={yorigin!r}, not upper or lower")
        zerovalue = metadata.get("zerovalue")
        shape = (int(values.shape[0]), int(values.shape[1]))
        return _Image(
            shape,
            _grid(metadata, shape),
            _UNIT_QUANTITIES[unit],
            None if interval is None else float(interval),
            None if zerovalue is None else float(zerovalue),
            yorigin == "lower",
        )

    def _read(self, path: Path) -> np.ndarray:
        """The file's frame in dBZ (NaN = no data, -inf = no echo), rows north to south,
        checked against the first file's grid, shape and quantity (which its scan took)."""
        values, metadata = self._imported(path)
        image = self._describe(path, values, metadata)
        first = self._first
        found = replace(
            first, label=str(path), quantity=image.quantity, shape=image.shape, grid=image.grid
        )
        check_same_source(found, first)
        with np.errstate(invalid="ignore"):  # NaN (no data) compares False
            no_echo = values <= image.zerovalue if image.zerovalue is not None else False
        dbz = physical_to_dbz(
            values,
            is_dbz=image.quantity == "DBZH",
            interval_minutes=image.interval_minutes,
            **self._zr,
        )
        dbz[no_echo] = -np.inf
        return (dbz[::-1] if image.flip else dbz).astype(np.float32)


def _grid(metadata: Mapping[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
    """The grid description of pysteps' metadata (see the module docstring)."""
    grid: dict[str, Any] = {"ysize": shape[0], "xsize": shape[1]}
    if metadata.get("projection"):
        grid["projdef"] = str(metadata["projection"])
    corners = {
        key: float(metadata[key])
        for key in ("x1", "y1", "x2", "y2")
        if metadata.get(key) is not None
    }
    unit = metadata.get("cartesian_unit", "m")
    to_metres = _METRES_PER_UNIT.get(unit)
    if to_metres is None:  # e.g. MRMS's degrees: no pixel size in metres
        pixels = {k: float(metadata[k]) for k in ("xpixelsize", "ypixelsize") if metadata.get(k)}
        return grid | corners | pixels | {"cartesian_unit": unit}
    grid |= {key: value * to_metres for key, value in corners.items()}
    for key, size, count, (low, high) in (
        ("xscale", metadata.get("xpixelsize"), shape[1], ("x1", "x2")),
        ("yscale", metadata.get("ypixelsize"), shape[0], ("y1", "y2")),
    ):
        if size is not None:
            grid[key] = abs(float(size)) * to_metres
        elif low in corners and high in corners:  # RMI's ODIM composites give only the corners
            grid[key] = abs(corners[high] - corners[low]) * to_metres / count
    return grid
