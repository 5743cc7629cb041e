"""The nowcast HDF5 sequence store: one file holding a time series of radar reflectivity frames.

Radar data in any source format (ODIM_H5, KNMI HDF5, SEVIR, the synthetic set) is converted once
into this layout, which training and evaluation read window by window without loading it all.

Layout (version 1)::

    /                      attrs: nowcast_store_version = 1, quantity = "DBZH", units = "dBZ",
                                  minutes_per_frame (nominal spacing of the frames),
                                  zr_a, zr_b (Z = a R^b, only where the source was a rain rate
                                  or the producer states one)
    /grid                  attrs: the grid description, any keys, e.g. projdef (proj4 string),
                                  xsize, ysize, xscale, yscale (metres), ll_lon, ll_lat, ...
    /frames  (T, H, W)     uint8 (uint16 also read) raw values; dBZ = raw * gain + offset;
                           attrs gain, offset, nodata, undetect (ODIM conventions);
                           chunks (1, H, W), gzip level 4 + shuffle, so a window is cheap to read
    /times   (T,)          int64 seconds since 1970-01-01 UTC, strictly increasing; a step
                           larger than minutes_per_frame marks missing frames
    /events  (T,)          optional int64 event id per frame; windows never cross a change
    /valid_fraction (T,)   float32 fraction of pixels per frame that are not no-data (written by
                           StoreWriter; computed on first use when absent)

Encoding written by StoreWriter: uint8, gain 0.5 dBZ, offset -32 dBZ (0.5 dBZ steps, as real
products quantise), raw 255 = nodata (outside radar coverage; read as NaN), raw 0 = undetect
(no echo; read as the dBZ floor `offset`, i.e. -32 dBZ, which every normalisation maps to 0).
Detected echo is stored as raw 1..254 (-31.5 to 95 dBZ); values outside are clipped, and
anything at or below the floor (including -inf, the dBZ of 0 mm/h) is stored as undetect.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

STORE_VERSION = 1
GAIN_DBZ = 0.5
OFFSET_DBZ = -32.0
NODATA_RAW = 255
UNDETECT_RAW = 0
UNDETECT_DBZ = OFFSET_DBZ  # what no echo reads as: the bottom of the raw scale
_MAX_ECHO_RAW = 254
_GZIP_LEVEL = 4
_TIME_CHUNK = 4096
_WRITE_HINT = "write it with nowcast.data.store.write_store or StoreWriter"


class StoreError(ValueError):
    """A file that cannot be read as a nowcast store; the message names the file and the fix."""


def _as_epoch_seconds(times: np.ndarray) -> np.ndarray:
    """int64 seconds since 1970-01-01 UTC from int64 seconds or numpy datetime64 values."""
    times = np.asarray(times)
    if np.issubdtype(times.dtype, np.datetime64):
        return times.astype("datetime64[s]").astype(np.int64)
    if not np.issubdtype(times.dtype, np.integer):
        raise ValueError(
            "times must be int64 seconds since 1970-01-01 UTC or datetime64, "
            f"Received: dtype={times.dtype}"
        )
    return times.astype(np.int64)


def _check_grid(grid: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    """The grid dict as HDF5-storable scalars; xsize/ysize, when given, must match the frames."""
    checked = {}
    for key, value in grid.items():
        if not isinstance(key, str):
            raise ValueError(f"grid keys must be strings, Received: key={key!r}")
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(
                f"grid values must be str, int, float or bool, Received: {key}={value!r}"
            )
        checked[key] = value
    for key, size in (("xsize", width), ("ysize", height)):
        if key in checked and checked[key] != size:
            raise ValueError(
                f"grid {key} must equal the frame size {size}, Received: {key}={checked[key]}"
            )
    return checked


class StoreWriter:
    """Write a store frame block by frame block, atomically.

    Data go to `<name>.tmp-<pid>` next to the target, which is renamed into place only when the
    writer closes without error; on an exception the temporary file is deleted, so a failed
    write never leaves a half-written store at the target path.

    Args:
        path: the store to create.
        height, width: frame size in pixels.
        grid: grid description, stored as attributes of `/grid` (see the module docstring).
        minutes_per_frame: nominal time between frames.
        zr_a, zr_b: optional Z-R relation (Z = a R^b) to record with the data.
        overwrite: replace an existing file at `path`.

    Raises:
        FileExistsError: `path` exists and `overwrite` is false.
        ValueError: invalid sizes, grid or time step.

    Example::

        with StoreWriter(path, height=128, width=128, grid=grid, minutes_per_frame=5) as writer:
            for frames_dbz, times in blocks:
                writer.append(frames_dbz, times)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        height: int,
        width: int,
        grid: Mapping[str, Any],
        minutes_per_frame: float,
        zr_a: float | None = None,
        zr_b: float | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if int(height) != height or int(width) != width or height < 1 or width < 1:
            raise ValueError(
                f"height and width must be positive integers, Received: {height=}, {width=}"
            )
        if not minutes_per_frame > 0:
            raise ValueError(f"minutes_per_frame must be > 0, Received: {minutes_per_frame=}")
        if (zr_a is None) != (zr_b is None):
            raise ValueError(f"give both zr_a and zr_b or neither, Received: {zr_a=}, {zr_b=}")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=true to replace it")
        self.height, self.width = int(height), int(width)
        grid = _check_grid(grid, self.height, self.width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._file: h5py.File | None = h5py.File(self._tmp_path, "w")
        self._count = 0
        self._last_time: int | None = None
        self._has_events: bool | None = None
        try:
            self._create_layout(grid, minutes_per_frame, zr_a, zr_b)
        except BaseException:
            self.abort()
            raise

    def _create_layout(
        self,
        grid: dict[str, Any],
        minutes_per_frame: float,
        zr_a: float | None,
        zr_b: float | None,
    ) -> None:
        f = self._file
        f.attrs["nowcast_store_version"] = STORE_VERSION
        f.attrs["quantity"] = "DBZH"
        f.attrs["units"] = "dBZ"
        f.attrs["minutes_per_frame"] = minutes_per_frame
        if zr_a is not None:
            f.attrs["zr_a"] = float(zr_a)
            f.attrs["zr_b"] = float(zr_b)
        grid_group = f.create_group("grid")
        for key, value in grid.items():
            grid_group.attrs[key] = value
        frames = f.create_dataset(
            "frames",
            shape=(0, self.height, self.width),
            maxshape=(None, self.height, self.width),
            dtype=np.uint8,
            chunks=(1, self.height, self.width),
            compression="gzip",
            compression_opts=_GZIP_LEVEL,
            shuffle=True,
        )
        frames.attrs["gain"] = GAIN_DBZ
        frames.attrs["offset"] = OFFSET_DBZ
        frames.attrs["nodata"] = NODATA_RAW
        frames.attrs["undetect"] = UNDETECT_RAW
        for name, dtype in (("times", np.int64), ("valid_fraction", np.float32)):
            f.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(_TIME_CHUNK,)
            )

    def append(
        self,
        frames_dbz: np.ndarray,
        times: np.ndarray,
        events: np.ndarray | None = None,
    ) -> None:
        """Add a block of frames.

        Args:
            frames_dbz: (n, height, width) reflectivity in dBZ; NaN = no data (outside
                coverage), -inf or anything at or below -32 dBZ = no echo.
            times: (n,) int64 seconds since 1970-01-01 UTC, or datetime64; strictly increasing,
                also across blocks.
            events: optional (n,) int event ids; give them in every block or in none.
        """
        if self._file is None:
            raise ValueError(f"the writer for {self.path} is closed; open a new StoreWriter")
        frames_dbz = np.asarray(frames_dbz)
        if frames_dbz.ndim != 3 or frames_dbz.shape[1:] != (self.height, self.width):
            raise ValueError(
                f"frames_dbz must have shape (n, {self.height}, {self.width}), "
                f"Received: shape={frames_dbz.shape}"
            )
        n = frames_dbz.shape[0]
        times = _as_epoch_seconds(times)
        if times.shape != (n,):
            raise ValueError(f"times must have shape ({n},), Received: shape={times.shape}")
        previous = [] if self._last_time is None else [self._last_time]
        if n and np.any(np.diff(np.concatenate([previous, times])) <= 0):
            raise ValueError(
                f"times must be strictly increasing (also after the last appended time "
                f"{self._last_time}), Received: {times[:5]}..."
            )
        has_events = events is not None
        if self._has_events is not None and has_events != self._has_events:
            raise ValueError("give events with every appended block or with none")
        self._has_events = has_events
        if has_events:
            events = np.asarray(events)
            if events.shape != (n,) or not np.issubdtype(events.dtype, np.integer):
                raise ValueError(
                    f"events must be ({n},) integers, "
                    f"Received: shape={events.shape}, dtype={events.dtype}"
                )
        if n == 0:
            return

        nodata = np.isnan(frames_dbz)
        scaled = np.rint((frames_dbz.astype(np.float32) - OFFSET_DBZ) / GAIN_DBZ)
        # NaN and -inf become undetect first (the cast would be undefined); NaN is then nodata.
        raw = np.clip(np.nan_to_num(scaled, nan=0.0, neginf=0.0), 0, _MAX_ECHO_RAW)
        raw = raw.astype(np.uint8)
        raw[nodata] = NODATA_RAW
        valid_fraction = 1.0 - nodata.mean(axis=(1, 2), dtype=np.float64)

        f = self._file
        stop = self._count + n
        for name, values in (
            ("frames", raw),
            ("times", times),
            ("valid_fraction", valid_fraction.astype(np.float32)),
        ):
            f[name].resize(stop, axis=0)
            f[name][self._count : stop] = values
        if has_events:
            if "events" not in f:
                f.create_dataset(
                    "events", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(_TIME_CHUNK,)
                )
            f["events"].resize(stop, axis=0)
            f["events"][self._count : stop] = events.astype(np.int64)
        self._count = stop
        self._last_time = int(times[-1])

    def close(self) -> Path:
        """Finish the file and move it to the target path; returns that path."""
        if self._file is None:
            return self.path
        if self._count == 0:
            self.abort()
            raise ValueError(f"no frames were appended; {self.path} was not written")
        self._file.close()
        self._file = None
        os.replace(self._tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Discard everything written so far (the target path is left untouched)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_store(
    path: str | os.PathLike,
    frames_dbz: np.ndarray,
    times: np.ndarray,
    *,
    grid: Mapping[str, Any],
    minutes_per_frame: float,
    events: np.ndarray | None = None,
    zr_a: float | None = None,
    zr_b: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write frames held in memory as a store in one go (see StoreWriter for the arguments).

    Args:
        frames_dbz: (T, H, W) dBZ, NaN = no data, -inf or <= -32 dBZ = no echo.
        times: (T,) int64 seconds since 1970-01-01 UTC or datetime64, strictly increasing.

    Returns:
        The path of the written store.
    """
    frames_dbz = np.asarray(frames_dbz)
    if frames_dbz.ndim != 3:
        raise ValueError(f"frames_dbz must be (T, H, W), Received: shape={frames_dbz.shape}")
    _, height, width = frames_dbz.shape
    with StoreWriter(
        path,
        height=height,
        width=width,
        grid=grid,
        minutes_per_frame=minutes_per_frame,
        zr_a=zr_a,
        zr_b=zr_b,
        overwrite=overwrite,
    ) as writer:
        writer.append(frames_dbz, times, events)
    return writer.path


def _attr_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (numpy scalars and bytes unwrapped)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class Store:
    """A store opened read-only.

    Metadata (times, events, grid, scaling) are read once when the store is opened. The frames
    are read on demand through an h5py handle opened lazily in each process, so a Store can be
    pickled and used from tf.data or multiprocessing workers (h5py objects cannot be pickled,
    and a handle must not cross a fork). Threads share the handle; h5py serialises access.

    Args:
        path: the store file.

    Raises:
        StoreError: the file is missing, not HDF5, truncated or corrupt, or not a nowcast store.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: h5py.File | None = None
        self._frames: h5py.Dataset | None = None
        self._pid: int | None = None
        self._valid_fraction: np.ndarray | None = None
        with self._open_file() as f:
            self._read_metadata(f)

    def _open_file(self) -> h5py.File:
        if not self.path.exists():
            raise StoreError(f"{self.path} does not exist; check the path or {_WRITE_HINT}")
        if not self.path.is_file() or not h5py.is_hdf5(self.path):
            raise StoreError(
                f"{self.path} is not an HDF5 file; convert the data into a nowcast store "
                f"({_WRITE_HINT})"
            )
        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(
                f"{self.path} is truncated or corrupt ({err}); write it again"
            ) from None

    def _read_metadata(self, f: h5py.File) -> None:
        def fail(problem: str) -> StoreError:
            return StoreError(f"{self.path} is not a nowcast store ({problem}); {_WRITE_HINT}")

        try:
            version = f.attrs.get("nowcast_store_version")
            if version is None:
                raise fail("no nowcast_store_version attribute")
            if int(version) > STORE_VERSION:
                raise StoreError(
                    f"{self.path} has store version {int(version)}, newer than this nowcast "
                    f"reads ({STORE_VERSION}); upgrade nowcast"
                )
            for name in ("frames", "times"):
                if not isinstance(f.get(name), h5py.Dataset):
                    raise fail(f"no /{name} dataset")
            frames, times = f["frames"], f["times"]
            if frames.ndim != 3 or frames.dtype not in (np.uint8, np.uint16):
                raise fail(
                    f"/frames must be (T, H, W) uint8 or uint16, is {frames.shape} {frames.dtype}"
                )
            missing = [
                a for a in ("gain", "offset", "nodata", "undetect") if a not in frames.attrs
            ]
            if missing:
                raise fail(f"/frames lacks the attributes {missing}")
            self._gain = float(frames.attrs["gain"])
            self._offset = float(frames.attrs["offset"])
            self._nodata = int(frames.attrs["nodata"])
            self._undetect = int(frames.attrs["undetect"])
            self._dtype = frames.dtype
            self._shape = tuple(int(s) for s in frames.shape)
            n = self._shape[0]
            self._times = np.asarray(times[...], dtype=np.int64)
            if self._times.shape != (n,):
                raise fail(f"/times has shape {self._times.shape}, /frames has {n} frames")
            if n > 1 and np.any(np.diff(self._times) <= 0):
                raise fail("/times is not strictly increasing")
            self._events = None
            if "events" in f:
                self._events = np.asarray(f["events"][...], dtype=np.int64)
                if self._events.shape != (n,):
                    raise fail(f"/events has shape {self._events.shape}, /frames has {n} frames")
            if "valid_fraction" in f:
                self._valid_fraction = np.asarray(f["valid_fraction"][...], dtype=np.float64)
                if self._valid_fraction.shape != (n,):
                    raise fail(f"/valid_fraction has shape {self._valid_fraction.shape}")
            self._attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
            grid = f.get("grid")
            self._grid = {} if grid is None else {k: _attr_value(v) for k, v in grid.attrs.items()}
        except (OSError, RuntimeError, KeyError) as err:
            raise StoreError(f"{self.path} is corrupt ({err}); write it again") from None
        if "minutes_per_frame" not in self._attrs:
            raise fail("no minutes_per_frame attribute")
        # Raw value -> dBZ in one table lookup per pixel.
        lut = np.arange(np.iinfo(self._dtype).max + 1, dtype=np.float64) * self._gain
        lut += self._offset
        lut[self._undetect] = self._offset
        lut[self._nodata] = np.nan
        self._lut = lut.astype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, H, W): number of frames, height, width."""
        return self._shape

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def times(self) -> np.ndarray:
        """(T,) int64 seconds since 1970-01-01 UTC."""
        return self._times

    @property
    def events(self) -> np.ndarray | None:
        """(T,) int64 event id per frame, or None when the store has no events."""
        return self._events

    @property
    def grid(self) -> dict[str, Any]:
        """The grid description (a copy)."""
        return dict(self._grid)

    @property
    def units(self) -> str:
        return str(self._attrs.get("units", "dBZ"))

    @property
    def quantity(self) -> str:
        return str(self._attrs.get("quantity", "DBZH"))

    @property
    def minutes_per_frame(self) -> float:
        """Nominal time between frames (minutes)."""
        return float(self._attrs["minutes_per_frame"])

    @property
    def zr(self) -> tuple[float, float] | None:
        """The recorded Z-R relation (a, b), or None."""
        if "zr_a" not in self._attrs:
            return None
        return float(self._attrs["zr_a"]), float(self._attrs["zr_b"])

    @property
    def undetect_dbz(self) -> float:
        """The value no echo reads as (dBZ)."""
        return self._offset

    @property
    def valid_fraction(self) -> np.ndarray:
        """(T,) float64 fraction of pixels per frame that are not no-data."""
        if self._valid_fraction is None:
            fractions = []
            for start in range(0, len(self), 256):
                raw = self._read_raw(start, min(start + 256, len(self)))
                fractions.append(1.0 - (raw == self._nodata).mean(axis=(1, 2)))
            self._valid_fraction = np.concatenate(fractions) if fractions else np.zeros(0)
        return self._valid_fraction

    def _dataset(self) -> h5py.Dataset:
        pid = os.getpid()
        if self._frames is None or self._pid != pid:
            with self._lock:
                if self._frames is None or self._pid != pid:
                    self._file = self._open_file()
                    self._frames = self._file["frames"]
                    self._pid = pid
        return self._frames

    def _read_raw(self, start: int, stop: int) -> np.ndarray:
        try:
            return self._dataset()[start:stop]
        except (OSError, RuntimeError) as err:
            raise StoreError(
                f"{self.path}: frames {start}:{stop} could not be read ({err}); the file is "
                "corrupt, write it again"
            ) from None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames start..stop-1 as (stop - start, H, W) float32 dBZ.

        No data (outside coverage) is NaN; no echo is `undetect_dbz` (-32 dBZ as written by
        StoreWriter).
        """
        if not 0 <= start < stop <= len(self):
            raise ValueError(
                f"expected 0 <= start < stop <= {len(self)} for {self.path}, "
                f"Received: {start=}, {stop=}"
            )
        return self._lut[self._read_raw(int(start), int(stop))]

    def close(self) -> None:
        """Close the h5py handle of this process (it reopens on the next read)."""
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = self._frames = self._pid = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _file=None, _frames=None, _pid=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, shape={self.shape})"


def open_store(path: str | os.PathLike) -> Store:
    """Open a store read-only (see Store)."""
    return Store(path)
