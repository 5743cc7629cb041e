"""The nowcast HDF5 sequence store: one file holding a time series of radar frames.

Radar data in any source format (ODIM_H5, KNMI HDF5, SEVIR, the synthetic set) is converted once
into this layout (`nowcast-data convert`), which training and evaluation read window by window
without loading it all.

Layout (version 2)::

    /                      attrs: nowcast_store_version = 2,
                                  quantity = "DBZH" (reflectivity) or "VIL" (SEVIR),
                                  units = "dBZ" or "VIL level",
                                  minutes_per_frame (nominal spacing of the frames),
                                  zr_a, zr_b (Z = a R^b used when the data were made; optional)
    /grid                  attrs: the grid description: projdef (proj4 string), xsize, ysize,
                                  xscale, yscale (metres), and any other keys of the source grid;
                                  a cropped or downsampled grid also holds crop_top, crop_left,
                                  downsample, source_xsize, source_ysize and the source's
                                  geolocation keys prefixed with source_
    /frames  (T, H, W)     uint8 raw values; value = raw * gain + offset;
                           attrs gain, offset, nodata, undetect (ODIM conventions);
                           chunks (1, H, W), gzip level 2, so a window is cheap to read
    /times   (T,)          int64 seconds since 1970-01-01 UTC, strictly increasing within an
                           event (or over the whole store when there are no events); a step
                           larger than minutes_per_frame marks missing frames
    /events  (T,)          optional int64 event id per frame; windows never cross a change
    /histogram (T, 256)    uint32 count of every raw value in every frame, so coverage, rain
                           fractions and statistics need no pass over the frames

Encoding written by StoreWriter (per quantity, see QUANTITIES): raw 255 = nodata (outside radar
coverage; read as NaN), raw 0 = undetect (no echo; read as the floor `offset`), raw 1..254 =
detected values, rounded to the nearest step and clipped. Reflectivity: gain 0.5 dBZ, offset
-32 dBZ (0.5 dBZ steps, as real products quantise, -31.5 to 95 dBZ); anything at or below the
floor, -inf (the dBZ of 0 mm/h) included, is undetect. SEVIR VIL: gain 1, offset 0, SEVIR's own
levels (see nowcast.data.sevir).

Version 1 stores (reflectivity only, times increasing throughout, no /histogram) are still read;
their histogram is computed from the frames on first use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nowcast.data.windows import times_increase
from nowcast.io import publish, publish_new, temporary_path

log = logging.getLogger(__name__)

STORE_VERSION = 2
NODATA_RAW = 255
UNDETECT_RAW = 0
N_RAW = 256  # uint8 raw values; the number of histogram bins
_MAX_VALUE_RAW = 254
_GZIP_LEVEL = 2  # level 4 saves ~1 % of the size of radar frames and writes 1.8x slower
_TIME_CHUNK = 4096
_HISTOGRAM_CHUNK = 1024
_WRITE_HINT = "convert your data with `nowcast-data convert` or write it with StoreWriter"


@dataclass(frozen=True)
class Quantity:
    """A quantity a store can hold, and its uint8 encoding: value = raw * gain + offset."""

    name: str
    units: str
    gain: float
    offset: float


REFLECTIVITY = Quantity("DBZH", "dBZ", gain=0.5, offset=-32.0)
VIL = Quantity("VIL", "VIL level", gain=1.0, offset=0.0)
QUANTITIES = {quantity.name: quantity for quantity in (REFLECTIVITY, VIL)}
UNDETECT_DBZ = REFLECTIVITY.offset  # what no echo reads as: the bottom of the raw scale


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


def _grid_value(key: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, int, float, bool)):
        return value
    numbers = np.asarray(value)
    if numbers.ndim == 1 and numbers.size and np.issubdtype(numbers.dtype, np.number):
        return numbers
    raise ValueError(
        "grid values must be str, int, float, bool or a list of numbers, "
        f"Received: {key}={value!r}"
    )


def _check_grid(grid: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    """The grid dict as HDF5-storable values; xsize/ysize, when given, must match the frames."""
    checked = {}
    for key, value in grid.items():
        if not isinstance(key, str):
            raise ValueError(f"grid keys must be strings, Received: key={key!r}")
        checked[key] = _grid_value(key, value)
    for key, size in (("xsize", width), ("ysize", height)):
        if key in checked and checked[key] != size:
            raise ValueError(
                f"grid {key} must equal the frame size {size}, Received: {key}={checked[key]}"
            )
    return checked


def encode(frames: np.ndarray, quantity: Quantity) -> np.ndarray:
    """Values in the quantity's units to raw uint8 (see the module docstring); NaN = no data."""
    frames = np.asarray(frames, dtype=np.float32)
    nodata = np.isnan(frames)
    # In place on one float32 copy: this runs on every converted frame.
    scaled = np.subtract(frames, np.float32(quantity.offset))
    scaled *= np.float32(1.0 / quantity.gain)
    np.rint(scaled, out=scaled)
    np.clip(scaled, UNDETECT_RAW, _MAX_VALUE_RAW, out=scaled)  # -inf (no echo) -> undetect
    scaled[nodata] = NODATA_RAW  # before the cast, which is undefined for NaN
    return scaled.astype(np.uint8)


def raw_histograms(raw: np.ndarray) -> np.ndarray:
    """(n, 256) uint32 count of every raw value in each of n (n, H, W) uint8 frames."""
    counts = [np.bincount(frame.ravel(), minlength=N_RAW) for frame in raw]
    return np.array(counts, dtype=np.uint32).reshape(len(raw), N_RAW)


class StoreWriter:
    """Write a store frame block by frame block, atomically.

    Data go to `.tmp-<pid>-<name>` next to the target (`nowcast.io.temporary_path`), which is
    renamed into place only when the writer closes without error; on an exception the temporary
    file is deleted, so a failed write never leaves a half-written store at the target path.
    Without `overwrite`, the store is published only if nothing has appeared at `path` since
    (`nowcast.io.publish_new`): of two writers of one new store, the second to finish is refused
    as if it had started after the first.

    Args:
        path: the store to create.
        height, width: frame size in pixels.
        grid: grid description, stored as attributes of `/grid` (see the module docstring).
        minutes_per_frame: nominal time between frames.
        quantity: "DBZH" (reflectivity in dBZ, the default) or "VIL" (SEVIR VIL levels).
        zr_a, zr_b: optional Z-R relation (Z = a R^b) to record with the data.
        overwrite: replace an existing file at `path`.

    Raises:
        FileExistsError: `path` exists and `overwrite` is false (also from `close`).
        ValueError: invalid sizes, grid, quantity or time step.

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
        quantity: str = REFLECTIVITY.name,
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
        if quantity not in QUANTITIES:
            raise ValueError(
                f"unknown store quantity, allowed: {', '.join(QUANTITIES)}. "
                f"Received: quantity={quantity!r}"
            )
        if (zr_a is None) != (zr_b is None):
            raise ValueError(f"give both zr_a and zr_b or neither, Received: {zr_a=}, {zr_b=}")
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise self._exists()
        self.height, self.width = int(height), int(width)
        self.quantity = QUANTITIES[quantity]
        grid = _check_grid(grid, self.height, self.width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_path = temporary_path(self.path)
        self._file: h5py.File | None = h5py.File(self._tmp_path, "w")
        self._count = 0
        self._last_time: int | None = None
        self._last_event: int | None = None
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
        f.attrs["quantity"] = self.quantity.name
        f.attrs["units"] = self.quantity.units
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
        )
        frames.attrs["gain"] = self.quantity.gain
        frames.attrs["offset"] = self.quantity.offset
        frames.attrs["nodata"] = NODATA_RAW
        frames.attrs["undetect"] = UNDETECT_RAW
        f.create_dataset(
            "times", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(_TIME_CHUNK,)
        )
        f.create_dataset(
            "histogram",
            shape=(0, N_RAW),
            maxshape=(None, N_RAW),
            dtype=np.uint32,
            chunks=(_HISTOGRAM_CHUNK, N_RAW),
            compression="gzip",
            compression_opts=_GZIP_LEVEL,
            shuffle=True,
        )

    def append(
        self,
        frames: np.ndarray,
        times: np.ndarray,
        events: np.ndarray | None = None,
    ) -> None:
        """Add a block of frames.

        Args:
            frames: (n, height, width) values in the store's units (dBZ for reflectivity);
                NaN = no data (outside coverage), -inf or anything at or below the floor
                (-32 dBZ) = no echo; +inf is an error.
            times: (n,) int64 seconds since 1970-01-01 UTC, or datetime64; strictly increasing
                within an event (with no events: throughout), also across blocks.
            events: optional (n,) int event ids; give them in every block or in none.
        """
        if self._file is None:
            raise ValueError(f"the writer for {self.path} is closed; open a new StoreWriter")
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != (self.height, self.width):
            raise ValueError(
                f"frames must have shape (n, {self.height}, {self.width}), "
                f"Received: shape={frames.shape}"
            )
        n = frames.shape[0]
        times = _as_epoch_seconds(times)
        if times.shape != (n,):
            raise ValueError(f"times must have shape ({n},), Received: shape={times.shape}")
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
            events = events.astype(np.int64)
        if n == 0:
            return
        previous = self._last_time is not None
        all_times = np.concatenate([[self._last_time], times]) if previous else times
        all_events = None
        if has_events:
            all_events = np.concatenate([[self._last_event], events]) if previous else events
        if not times_increase(all_times, all_events):
            raise ValueError(
                f"times must be strictly increasing within an event (also after the last "
                f"appended time {self._last_time}), Received: {times[:5]}..."
            )

        if np.issubdtype(frames.dtype, np.floating) and np.isposinf(frames).any():
            frame = int(np.isposinf(frames).any(axis=(1, 2)).argmax())
            raise ValueError(
                f"frames hold +inf ({int(np.isposinf(frames).sum())} pixels, the first in frame "
                f"{self._count + frame}), which is no measurement; mark no data as NaN and no "
                f"echo as -inf. {self.path} was not written"
            )
        raw = encode(frames, self.quantity)
        f = self._file
        stop = self._count + n
        columns = [("frames", raw), ("times", times), ("histogram", raw_histograms(raw))]
        if has_events:
            if "events" not in f:
                f.create_dataset(
                    "events", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(_TIME_CHUNK,)
                )
            columns.append(("events", events))
        for name, values in columns:
            f[name].resize(stop, axis=0)
            f[name][self._count : stop] = values
        self._count = stop
        self._last_time = int(times[-1])
        self._last_event = int(events[-1]) if has_events else None

    def close(self) -> Path:
        """Finish the file and move it to the target path; returns that path."""
        if self._file is None:
            return self.path
        if self._count == 0:
            self.abort()
            raise ValueError(f"no frames were appended; {self.path} was not written")
        self._file.close()
        self._file = None
        try:
            (publish if self.overwrite else publish_new)(self._tmp_path, self.path)
        except FileExistsError:
            self._tmp_path.unlink()
            raise self._exists() from None
        return self.path

    def _exists(self) -> FileExistsError:
        return FileExistsError(f"{self.path} exists; pass overwrite=true to replace it")

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
    frames: np.ndarray,
    times: np.ndarray,
    *,
    grid: Mapping[str, Any],
    minutes_per_frame: float,
    events: np.ndarray | None = None,
    quantity: str = REFLECTIVITY.name,
    zr_a: float | None = None,
    zr_b: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write frames held in memory as a store in one go (see StoreWriter for the arguments).

    Args:
        frames: (T, H, W) values in the quantity's units (dBZ: NaN = no data, -inf or
            <= -32 dBZ = no echo).
        times: (T,) int64 seconds since 1970-01-01 UTC or datetime64, strictly increasing
            within an event.

    Returns:
        The path of the written store.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (T, H, W), Received: shape={frames.shape}")
    _, height, width = frames.shape
    with StoreWriter(
        path,
        height=height,
        width=width,
        grid=grid,
        minutes_per_frame=minutes_per_frame,
        quantity=quantity,
        zr_a=zr_a,
        zr_b=zr_b,
        overwrite=overwrite,
    ) as writer:
        writer.append(frames, times, events)
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


# Decompressed frames kept per open store: training reads windows in random order and
# neighbouring windows share all frames but one, so an event's frames are decompressed once,
# not once per window (a 128-pixel patch of FMI's 1224 x 760 composite: 0.15 s a window
# without the cache, 0.05 s with it; docs/benchmarks.md). 128 MB holds a day of 760 x 696
# frames; the cache only fills as frames are read.
CHUNK_CACHE_BYTES = 128 * 2**20


@dataclass(frozen=True)
class CodedFrames:
    """Frames as a store holds them, one raw byte a pixel, with the table that decodes them.

    A training patch is a small part of a large composite: its place is chosen from the raw
    values and only the patch is decoded (decoding whole 1224 x 760 frames to float32 took
    about as long as reading them).
    """

    codes: np.ndarray  # (T, H, W) uint8
    nodata: int  # the raw value of no data
    table: np.ndarray  # (256,) float32 value of each raw value

    def valid(self) -> np.ndarray:
        """(T, H, W) bool: the pixel has data."""
        return self.codes != self.nodata

    def decode(self, rows: slice = slice(None), columns: slice = slice(None)) -> np.ndarray:
        """(T, rows, columns) float32 in the store's units, NaN where no data."""
        return np.take(self.table, self.codes[:, rows, columns])


class Store:
    """A store opened read-only.

    Metadata (times, events, grid, scaling) are read once when the store is opened. The frames
    are read on demand through an h5py handle opened lazily in each process, so a Store can be
    pickled and used from tf.data or multiprocessing workers (h5py objects cannot be pickled,
    and a handle must not cross a fork). Threads share the handle; h5py serialises access.
    Per-frame statistics (coverage, wet fractions) come from `/histogram` in blocks, so
    memory grows only by a few numbers per frame, never with the frame size.

    Args:
        path: the store file.

    Raises:
        StoreError: the file is missing, not HDF5, truncated or corrupt, or not a nowcast store.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._pid: int | None = None
        self._valid_fraction: np.ndarray | None = None
        self._wet_fractions: dict[float, np.ndarray] = {}
        self._counted_frames = False
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
            return h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=10007)
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
            if frames.ndim != 3 or frames.dtype != np.uint8:
                raise fail(f"/frames must be (T, H, W) uint8, is {frames.shape} {frames.dtype}")
            missing = [
                a for a in ("gain", "offset", "nodata", "undetect") if a not in frames.attrs
            ]
            if missing:
                raise fail(f"/frames lacks the attributes {missing}")
            self._gain = float(frames.attrs["gain"])
            self._offset = float(frames.attrs["offset"])
            self._nodata = int(frames.attrs["nodata"])
            self._undetect = int(frames.attrs["undetect"])
            self._shape = tuple(int(s) for s in frames.shape)
            n = self._shape[0]
            self._times = np.asarray(times[...], dtype=np.int64)
            if self._times.shape != (n,):
                raise fail(f"/times has shape {self._times.shape}, /frames has {n} frames")
            self._events = None
            if "events" in f:
                self._events = np.asarray(f["events"][...], dtype=np.int64)
                if self._events.shape != (n,):
                    raise fail(f"/events has shape {self._events.shape}, /frames has {n} frames")
            if not times_increase(self._times, self._events):
                raise fail("/times is not strictly increasing within an event")
            self._has_histogram = "histogram" in f
            if self._has_histogram and f["histogram"].shape != (n, N_RAW):
                raise fail(f"/histogram has shape {f['histogram'].shape}, expected ({n}, {N_RAW})")
            self._attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
            grid = f.get("grid")
            self._grid = {} if grid is None else {k: _attr_value(v) for k, v in grid.attrs.items()}
        except (OSError, RuntimeError, KeyError) as err:
            raise StoreError(f"{self.path} is corrupt ({err}); write it again") from None
        if "minutes_per_frame" not in self._attrs:
            raise fail("no minutes_per_frame attribute")
        # Raw value -> value in one table lookup per pixel.
        lut = np.arange(N_RAW, dtype=np.float64) * self._gain + self._offset
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
        return str(self._attrs.get("units", REFLECTIVITY.units))

    @property
    def quantity(self) -> str:
        return str(self._attrs.get("quantity", REFLECTIVITY.name))

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
    def undetect_value(self) -> float:
        """The value no echo reads as, in the store's units (-32 dBZ for reflectivity)."""
        return self._offset

    @property
    def raw_values(self) -> np.ndarray:
        """(256,) float32 value of each raw value (NaN for nodata): the histogram's bins."""
        return self._lut.copy()

    def _dataset(self, name: str) -> h5py.Dataset:
        """The dataset `name` through this process's handle (looked up once: it is not free)."""
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            with self._lock:
                if self._file is None or self._pid != pid:
                    self._file = self._open_file()
                    self._datasets = {}
                    self._pid = pid
        if name not in self._datasets:
            self._datasets[name] = self._file[name]
        return self._datasets[name]

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._dataset(name)[start:stop]
        except (OSError, RuntimeError, KeyError) as err:
            raise StoreError(
                f"{self.path}: /{name} rows {start}:{stop} could not be read ({err}); the file "
                "is corrupt, write it again"
            ) from None

    def histogram_blocks(self) -> Iterator[np.ndarray]:
        """Per-frame raw-value counts, (n, 256) uint32, in blocks of consecutive frames.

        Read from `/histogram`; a version-1 store without it has its frames counted instead.
        """
        if not self._has_histogram and not self._counted_frames:
            log.info("%s has no /histogram (an older store): counting its frames", self.path)
            self._counted_frames = True
        block = _HISTOGRAM_CHUNK * 4 if self._has_histogram else 256
        for start in range(0, len(self), block):
            stop = min(start + block, len(self))
            if self._has_histogram:
                yield self._read_rows("histogram", start, stop)
            else:
                yield raw_histograms(self._read_rows("frames", start, stop))

    @property
    def valid_fraction(self) -> np.ndarray:
        """(T,) float64 fraction of pixels per frame that are not no-data."""
        if self._valid_fraction is None:
            pixels = self._shape[1] * self._shape[2]
            self._valid_fraction = np.concatenate(
                [1.0 - counts[:, self._nodata] / pixels for counts in self.histogram_blocks()]
                or [np.zeros(0)]
            )
        return self._valid_fraction

    def wet_fraction(self, threshold: float) -> np.ndarray:
        """(T,) float64 fraction of each frame's valid pixels at or above `threshold`.

        Args:
            threshold: in the store's units (dBZ for reflectivity); values are the ones `read`
                returns, so no echo counts as the floor (-32 dBZ).

        Frames without valid pixels have fraction 0.
        """
        threshold = float(threshold)
        if threshold not in self._wet_fractions:
            wet_bins = np.nan_to_num(self._lut, nan=-np.inf) >= threshold
            valid_bins = ~np.isnan(self._lut)
            fractions = []
            for counts in self.histogram_blocks():
                counts = counts.astype(np.float64)
                valid = counts @ valid_bins
                wet = counts @ wet_bins
                fractions.append(np.divide(wet, valid, out=np.zeros_like(wet), where=valid > 0))
            self._wet_fractions[threshold] = np.concatenate(fractions or [np.zeros(0)])
        return self._wet_fractions[threshold]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames start..stop-1 as (stop - start, H, W) float32 in the store's units.

        No data (outside coverage) is NaN; no echo is `undetect_value` (-32 dBZ as written by
        StoreWriter).
        """
        return self.read_coded(start, stop).decode()

    def read_coded(self, start: int, stop: int) -> CodedFrames:
        """Frames start..stop-1 as raw values, to decode where they are used."""
        if not 0 <= start < stop <= len(self):
            raise ValueError(
                f"expected 0 <= start < stop <= {len(self)} for {self.path}, "
                f"Received: {start=}, {stop=}"
            )
        codes = self._read_rows("frames", int(start), int(stop))
        return CodedFrames(codes, self._nodata, self._lut)

    def close(self) -> None:
        """Close the h5py handle of this process (it reopens on the next read)."""
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = self._pid = None
            self._datasets = {}

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _file=None, _datasets={}, _pid=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, shape={self.shape})"


def open_store(path: str | os.PathLike) -> Store:
    """Open a store read-only (see Store)."""
    return Store(path)
