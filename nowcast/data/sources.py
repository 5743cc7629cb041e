"""What the format readers share: the frames a source file holds, found before any pixel is read.

A reader (nowcast.data.odim, .knmi, .sevir, .importers, and stores) turns one input file into
a list of SourceFrame: its time, quantity, grid and a function that reads its pixels. The
converter (nowcast.data.convert) sorts, checks and de-duplicates these lists, then reads the
frames in time order, a few at a time.

Every problem with an input is a SourceError whose one-line message names the file.
"""

from __future__ import annotations

import glob
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nowcast.units import rain_to_dbz

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
# The packages of nowcast's `formats` extra (pyproject.toml): those that pip installs everywhere.
FORMATS_EXTRA = ("pyproj", "netCDF4", "Pillow")


class SourceError(ValueError):
    """An input file that cannot be converted; the message names the file and what is wrong."""


@dataclass(frozen=True)
class SourceFrame:
    """One frame of an input file, described without reading its pixels.

    Attributes:
        label: names the frame in messages: the file, and for SEVIR the event and frame.
        time: seconds since 1970-01-01 UTC (the end of the interval for accumulations).
        quantity: the source's quantity (DBZH, TH, RATE, ACRR, VIL), for the consistency check.
        shape: (rows, columns) of the source grid.
        grid: the source grid description (projdef, xsize, ysize, xscale, yscale and other
            geolocation keys); frames of one store must agree on it.
        read: returns the (rows, columns) float32 frame in the store's units (dBZ, or VIL
            levels): NaN = no data, -inf or the floor = no echo.
        event: the event the frame belongs to (SEVIR's event id), or None.
        choice: which of several readable fields of the file was read and which were not
            (e.g. "/dataset1/data2 (DBZH), not /dataset2/data1 (DBZH)"), for the converter
            to say once; None when the file held one.
    """

    label: str
    time: int
    quantity: str
    shape: tuple[int, int]
    grid: Mapping[str, Any] = field(repr=False)
    read: Callable[[], np.ndarray] = field(repr=False, compare=False)
    event: str | None = None
    choice: str | None = field(default=None, compare=False)


def find_inputs(spec: str, suffixes: tuple[str, ...] = HDF5_SUFFIXES) -> list[Path]:
    """The input files of `spec`: one file, a folder (its files whose names end in one of
    `suffixes`, any case, recursively; every file for no suffixes) or a glob.

    Returns:
        Paths sorted by name (the order that decides which of two duplicates is kept).

    Raises:
        FileNotFoundError: nothing at `spec`, an empty folder or a glob that matches no file.
    """
    path = Path(spec).expanduser()
    if glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"input {spec} matches no file; check the pattern")
        return files
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and (not suffixes or p.name.lower().endswith(suffixes))
        )
        if not files:
            endings = f" ending in {', '.join(suffixes)}" if suffixes else ""
            raise FileNotFoundError(
                f"input folder {spec} holds no files{endings}; point input= at the files or a "
                "glob of them, or pass the format= they are in"
            )
        return files
    if not path.exists():
        raise FileNotFoundError(f"input {spec} does not exist; check the path")
    return [path]


def require(module: str, package: str, purpose: str) -> None:
    """Refuse in one line, naming what to install, when an optional package is missing.

    Raises:
        ValueError: `module` (from pip's `package`) cannot be imported.
    """
    if importlib.util.find_spec(module) is not None:
        return
    if package in FORMATS_EXTRA:
        fix = f"pip install -e '.[formats]' in nowcast's folder (or pip install {package})"
    else:
        fix = (
            f"install {package}, which the formats extra leaves out (pip cannot install it alone)"
        )
    raise ValueError(f"{purpose} needs {package}, which is not installed; {fix}")


@contextmanager
def open_hdf5(path: Path) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only; a missing, non-HDF5 or corrupt file is a SourceError."""
    if not path.is_file():
        raise SourceError(f"{path} does not exist or is not a file")
    if not h5py.is_hdf5(path):
        raise SourceError(f"{path} is not an HDF5 file; check the input= files and format=")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise SourceError(f"{path} is truncated or corrupt ({err})") from None
    try:
        yield f
    except (OSError, RuntimeError) as err:  # h5py reports damaged objects and chunks so
        raise SourceError(f"{path} is truncated or corrupt ({err})") from None
    finally:
        f.close()


def text(value: Any) -> str:
    """An HDF5 string attribute (bytes, numpy bytes, str, or a 1-element array of them)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace").rstrip("\x00").strip()
    return str(value).strip()


def number(value: Any) -> float:
    """An HDF5 numeric attribute (scalar or KNMI's 1-element arrays) as a float."""
    array = np.asarray(value)
    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"expected one number, Received: {value!r}")
    return float(array.reshape(()))


def plain(value: Any) -> Any:
    """An HDF5 attribute as a grid value: str, int, float or a list of numbers."""
    array = np.asarray(value)
    if array.dtype.kind in "SUO":
        return text(value)
    if array.size == 1:
        return array.reshape(()).item()
    return array.ravel().tolist()


def parse_time(stamp: str, formats: tuple[str, ...]) -> int:
    """Seconds since 1970-01-01 UTC of a UTC time string in one of `formats` (ValueError else)."""
    for fmt in formats:
        try:
            moment = datetime.strptime(stamp, fmt)
        except ValueError:
            continue
        return int(moment.replace(tzinfo=timezone.utc).timestamp())
    raise ValueError(f"{stamp!r} is not a time in the format {formats[0]}")


def same_grid_value(a: Any, b: Any, rtol: float = 1e-9) -> bool:
    """Whether two values of one grid attribute agree: strings exactly, numbers and arrays of
    one shape to `rtol`."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=0.0)


def check_same_source(frame: SourceFrame, first: SourceFrame) -> None:
    """Refuse a frame of another quantity, shape or grid description than `first`'s: frames of
    one store share them.

    Raises:
        SourceError: the first difference, naming both frames.
    """
    if frame.quantity != first.quantity:
        raise SourceError(
            f"{frame.label} holds {frame.quantity}, but {first.label} holds "
            f"{first.quantity}; convert one quantity at a time"
        )
    if frame.shape != first.shape:
        raise SourceError(
            f"{frame.label}: grid of {frame.shape[0]}x{frame.shape[1]} pixels differs from "
            f"the {first.shape[0]}x{first.shape[1]} of {first.label}; convert files of one "
            "grid at a time"
        )
    if frame.grid is first.grid:
        return
    for key in sorted(set(frame.grid) | set(first.grid)):
        if key not in frame.grid or key not in first.grid:
            raise SourceError(
                f"{frame.label}: grid attribute {key} is in only one of this file and "
                f"{first.label}; convert files of one grid at a time"
            )
        if not same_grid_value(frame.grid[key], first.grid[key]):
            raise SourceError(
                f"{frame.label}: grid {key}={frame.grid[key]!r} differs from "
                f"{first.grid[key]!r} in {first.label}; convert files of one grid at a time"
            )


def iso(seconds: int) -> str:
    """A time in seconds since 1970-01-01 UTC as YYYY-MM-DDTHH:MM:SSZ."""
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def physical_to_dbz(
    values: np.ndarray, *, is_dbz: bool, interval_minutes: float | None, zr_a: float, zr_b: float
) -> np.ndarray:
    """A frame's calibrated values as dBZ: reflectivity as it is; a rain rate (mm/h), or an
    accumulation over `interval_minutes` (mm), through Z = a R^b."""
    if is_dbz:
        return values
    rain_mmh = values if interval_minutes is None else values * 60.0 / interval_minutes
    with np.errstate(invalid="ignore"):
        return rain_to_dbz(np.maximum(rain_mmh, 0.0), zr_a, zr_b)
