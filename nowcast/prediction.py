"""`nowcast-predict`: the operational forecast from the newest frames of radar files or a store.

`predict(cfg)` reads the newest n_in frames of a folder of radar files (ODIM_H5, KNMI, SEVIR;
with format=, any format `nowcast-data convert` reads) or of a store, checks that they follow
each other at the run's time step and lie on the grid the model was trained on (radar files
on the grid the training store was cropped and downsampled from are cropped and downsampled
the same way) or, for a fully convolutional model, have its pixel size (to 1 %): those are
forecast on their own grid, cropped to its centre so that the downsample strides divide its
sides. It forecasts n_out frames and writes them in physical units to an HDF5 file:

    /                     attrs: nowcast_forecast_version = 1, quantity ("RATE": rain rate, or
                          "VIL"), units ("mm/h" or "VIL level"), issue_time (UTC, ISO 8601:
                          the time of the newest input frame), minutes_per_frame, run,
                          checkpoint, input, zr_a, zr_b (Z = a R^b, reflectivity runs)
    /forecast             (n_out, H, W) float32 in `units`; NaN = no data (pixels without
                          data in the newest input frame: outside radar coverage)
    /valid_times          (n_out,) int64 seconds since 1970-01-01 UTC, one per frame
    /lead_times           (n_out,) float64 minutes after the issue time
    /input_times          (n_in,) int64 seconds since 1970-01-01 UTC of the frames used
    /grid                 attrs: the grid of the frames (as in a nowcast store: projdef, xsize,
                          ysize, xscale, yscale, and where a crop sits on its source grid)

What it shares with `nowcast-plot` is where its name says: the run, its grid and its forecast
of a window in nowcast.run, the values in physical units in nowcast.units, the pictures in
nowcast.drawing, refusing to replace files in nowcast.io.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
from omegaconf import DictConfig

from nowcast.data.frames import (
    FORMATS,
    cap_dbz,
    ordered_frames,
    read_capped,
    regrid_like,
    regridded,
    source_grid,
)
from nowcast.data.sources import (
    SourceError,
    SourceFrame,
    find_inputs,
    iso,
    open_hdf5,
    same_grid_value,
)
from nowcast.data.store import REFLECTIVITY, VIL
from nowcast.drawing import STILL_FORMAT, ForecastSequence, check_plot_format, write_pictures
from nowcast.io import file_stamp, refuse_existing, refusing_existing, written_atomically
from nowcast.run import RUN_HINT, ModelGrid, Run, forecast_window, require
from nowcast.units import display_units, display_values, normalise, to_physical

log = logging.getLogger(__name__)

FORECAST_VERSION = 1
# Pixel sizes this close (relative) are the same: grid descriptions round them differently.
PIXEL_SIZE_TOLERANCE = 0.01


def detect_format(path: Path) -> str:
    """The format of one input file: store, sevir, knmi or odim, from its layout.

    Raises:
        SourceError: not HDF5, or none of these layouts.
    """
    with open_hdf5(path) as f:
        if "nowcast_store_version" in f.attrs:
            return "store"
        if isinstance(f.get("vil"), h5py.Dataset):
            return "sevir"
        if isinstance(f.get("image1"), h5py.Group) and "overview" in f:
            return "knmi"
        if any(name.startswith("dataset") for name in f):
            return "odim"
    raise SourceError(
        f"{path} is not a nowcast store nor an ODIM_H5, KNMI or SEVIR file that nowcast "
        f"recognises; pass format={'|'.join(FORMATS)}"
    )


def _grid_differences(
    found: Mapping[str, Any], expected: Mapping[str, Any], whose: str = "the model's"
) -> list[str]:
    """`key=found (whose: expected)` for each grid attribute both descriptions hold that
    differs, the size, projection and pixel size first."""
    differences = []
    first = ("ysize", "xsize", "projdef", "yscale", "xscale")
    shared = found.keys() & expected.keys()
    for key in [k for k in first if k in shared] + sorted(shared - set(first)):
        a, b = found[key], expected[key]
        if not same_grid_value(a, b, rtol=1e-6):
            differences.append(f"{key}={a!r} ({whose}: {b!r})")
    return differences


@dataclass(frozen=True)
class _Placement:
    """How frames of one grid go onto a grid the model takes.

    Attributes:
        grid: the grid they are on then, as the forecast file records it.
        regrid: what puts a frame there, or None: it is there already.
        note: where that is the input's own grid, not the training store's, a line for the
            summary that says so and where the crop sits.
    """

    grid: dict[str, Any]
    regrid: Callable[[np.ndarray], np.ndarray] | None = None
    note: str | None = None


def _onto_model_grid(frame: SourceFrame, grid: ModelGrid) -> _Placement:
    """How `frame` goes onto a grid the model takes: it is on the training store's grid; it is
    on the grid that store was cut from, and is cut the same way; or it has the store's pixel
    size and the model is fully convolutional, and its centre is cropped to sides the model
    takes (the model forecasts on the input's own grid then).

    Raises:
        ValueError: none of these, with the fix.
    """
    found = {"ysize": frame.shape[0], "xsize": frame.shape[1], **frame.grid}
    differences = _grid_differences(found, grid.grid)
    if not differences:
        return _Placement(grid.grid)
    source = source_grid(grid.grid)
    if source is not None and not _grid_differences(found, source):
        a, b = grid.zr
        regrid = partial(regrid_like, grid=grid.grid, quantity=grid.quantity, zr_a=a, zr_b=b)
        return _Placement(grid.grid, regrid)
    pixel_keys = ("xscale", "yscale")
    if grid.frame_multiple is None or not all(k in found and k in grid.grid for k in pixel_keys):
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise ValueError(
            f"{frame.label} is not on the model's grid (that of {grid.store}): "
            f"{'; '.join(differences[:3])}{more}; pass radar files or a store on that grid"
        )
    pixels = {key: (float(found[key]), float(grid.grid[key])) for key in pixel_keys}
    if any(abs(size / model - 1) > PIXEL_SIZE_TOLERANCE for size, model in pixels.values()):
        differences = _grid_differences(
            {key: found[key] for key in pixel_keys}, {key: grid.grid[key] for key in pixel_keys}
        )
        raise ValueError(
            f"{frame.label} has pixels of another size than the model's (those of "
            f"{grid.store}): {'; '.join(differences)}; {_pixel_size_fix(pixels)}"
        )
    return _centre_crop(frame.label, found, grid.frame_multiple)


def _pixel_size_fix(pixels: Mapping[str, tuple[float, float]]) -> str:
    """How to forecast from pixels of another size, given (input's, model's) per xscale and
    yscale: a run trained on such pixels, or the input block-averaged to the model's."""
    (x, model_x), (y, model_y) = pixels["xscale"], pixels["yscale"]
    run = f"use a run trained on a store of {x:g} x {y:g} m pixels"
    coarser = _whole_ratio(x / model_x, y / model_y)
    if coarser is not None:
        return (
            f"{run} (nowcast-data convert downsample={coarser} makes one of {model_x:g}-m files)"
        )
    finer = _whole_ratio(model_x / x, model_y / y)
    if finer is not None:
        return (
            f"make a store of {model_x:g} x {model_y:g} m pixels from these files with "
            f"nowcast-data convert downsample={finer} and pass it as input=, or {run}"
        )
    return run


def _whole_ratio(*ratios: float) -> int | None:
    """The whole number from 2 up that every one of `ratios` is (within the tolerance), or None."""
    whole = round(ratios[0])
    if whole >= 2 and all(abs(ratio / whole - 1) <= PIXEL_SIZE_TOLERANCE for ratio in ratios):
        return whole
    return None


def _centre_crop(label: str, found: dict[str, Any], multiple: int) -> _Placement:
    """The centre of frames on the grid `found` whose sides are the largest multiples of
    `multiple`, placed on that grid as `nowcast-data convert` places a crop.

    Raises:
        ValueError: a side shorter than `multiple`.
    """
    rows, columns = int(found["ysize"]), int(found["xsize"])
    height, width = rows - rows % multiple, columns - columns % multiple
    if not (height and width):
        raise ValueError(
            f"{label} has {rows} x {columns} pixels, but the model takes frames whose sides "
            f"are multiples of {multiple} (the product of its downsample strides); pass "
            "larger frames"
        )
    top, left = (rows - height) // 2, (columns - width) // 2
    cropped = regridded(found, top=top, left=left, height=height, width=width, factor=1)
    note = (
        f"Forecast on the input's own grid, not the training store's: {rows} x {columns} "
        f"pixels of {float(found['xscale']):g} x {float(found['yscale']):g} m"
    )
    if (height, width) == (rows, columns):
        return _Placement(cropped, None, f"{note}.")
    # itemgetter of a pair of slices crops a frame: frame[top : top + height, left : ...].
    crop = itemgetter((slice(top, top + height), slice(left, left + width)))
    return _Placement(
        cropped,
        crop,
        f"{note}, cropped to its centre {height} x {width} from row {top}, column {left}, as "
        f"the model takes sides that are multiples of {multiple} (/grid in the forecast file "
        "records the crop).",
    )


@dataclass
class LatestFrames:
    """The newest frames of an input, on a grid the model takes.

    Attributes:
        frames: (n, H, W) float32 in the store's units (dBZ or VIL level), NaN = no data.
        times: (n,) int64 seconds since 1970-01-01 UTC, oldest first.
        labels: the file (and frame) each came from.
        grid: the grid of the frames: the training store's, or the input's own (cropped).
        grid_note: on the input's own grid, a line saying so and where the crop sits.
    """

    frames: np.ndarray
    times: np.ndarray
    labels: list[str]
    grid: dict[str, Any]
    grid_note: str | None


def read_latest_frames(
    source: Any, grid: ModelGrid, count: int, *, fmt: str | None = None
) -> LatestFrames:
    """The newest `count` frames of `source.input`, checked and put on a grid the model takes.

    Args:
        source: input (a file, folder or glob), quantity (of ODIM/KNMI files, or None),
            importer, importer_kwargs and fn_pattern (of the formats read through pysteps), and
            the clutter masks of `nowcast-data convert`: max_rain_mmh (pixels above that rain
            rate are no data) and min_quality (ODIM pixels of lower QIND are no data), each
            None for none.
        grid: the model's grid and time step.
        count: how many frames the model takes (its n_in).
        fmt: the input's format (one of nowcast-data convert's), or None to recognise it
            (odim, knmi, sevir or store).

    Raises:
        FileNotFoundError: no input files.
        ValueError (SourceError): an unreadable file, too few frames, a gap or another time
            step among the newest frames, another quantity, another pixel size (or another
            grid, for a model that takes only its own), frames of different grids, or no data
            at all.
    """
    fmt = fmt or detect_format(find_inputs(source.input)[-1])
    a, b = grid.zr
    scan = SimpleNamespace(
        format=fmt,
        input=source.input,
        quantity=source.quantity,
        catalog=None,
        importer=source.importer,
        importer_kwargs=source.importer_kwargs,
        fn_pattern=source.fn_pattern,
        zr_a=a,
        zr_b=b,
        min_quality=source.min_quality,
    )
    step_s = round(grid.minutes_per_frame * 60)
    frames, times = ordered_frames(scan, step_s)
    needs = (
        f"the model needs the {count} newest frames, {grid.minutes_per_frame:g} min apart "
        "(the n_in of the run)"
    )
    if len(frames) < count:
        raise ValueError(f"{source.input} holds {len(frames)} frame(s); {needs}")
    frames, times = frames[-count:], times[-count:]
    for frame, time in zip(frames, times, strict=True):
        if abs(frame.time - int(time)) > step_s / 4:
            raise ValueError(
                f"{frame.label} is stamped {iso(frame.time)}, off the {grid.minutes_per_frame:g}-"
                "min steps of the model's frames; pass frames at that time step"
            )
        if (frame.quantity == VIL.name) != (grid.quantity == VIL.name):
            raise ValueError(
                f"{frame.label} holds {frame.quantity}, but the model was trained on "
                f"{grid.quantity} ({grid.store}); pass frames of that quantity"
            )
    steps = set(np.diff(times).tolist())
    if len(steps) == 1 and steps != {step_s} and len({f.event for f in frames}) == 1:
        minutes = steps.pop() / 60
        raise ValueError(
            f"the newest {count} frames of {source.input} are {minutes:g} min apart, but the "
            f"model forecasts in steps of {grid.minutes_per_frame:g} min, the time step of its "
            f"training store ({grid.store}); pass frames {grid.minutes_per_frame:g} min apart, "
            f"or use a run trained on a store of {minutes:g}-min frames"
        )
    for k in range(count - 2, -1, -1):  # the gap nearest the newest frame is the one to fix
        if times[k + 1] - times[k] != step_s or frames[k + 1].event != frames[k].event:
            raise ValueError(
                f"the newest {count} frames of {source.input} are not consecutive: "
                f"{frames[k].label} ({iso(times[k])}) is followed by {frames[k + 1].label} "
                f"({iso(times[k + 1])}){' of another event' if frames[k].event else ''}; "
                f"{needs}. Add the missing frames or wait for the next complete sequence"
            )
    newest = _onto_model_grid(frames[-1], grid)  # a grid that does not fit: the newest's first
    placements = [*(_onto_model_grid(frame, grid) for frame in frames[:-1]), newest]
    for frame, placement in zip(frames[:-1], placements[:-1], strict=True):
        differences = _grid_differences(placement.grid, newest.grid, "the newest's")
        if differences:
            raise ValueError(
                f"{frame.label} is on another grid than the newest frame, {frames[-1].label}: "
                f"{'; '.join(differences[:3])}; pass frames of one grid"
            )
    cap = cap_dbz(source.max_rain_mmh, frames[-1].quantity, a, b)
    values = []
    for frame, placement in zip(frames, placements, strict=True):
        frame_values = read_capped(frame, cap)
        values.append(frame_values if placement.regrid is None else placement.regrid(frame_values))
    stacked = np.stack(values).astype(np.float32)
    if np.isnan(stacked[-1]).all():
        raise ValueError(
            f"{frames[-1].label} is no data everywhere on the model's grid; check the file"
        )
    return LatestFrames(
        stacked,
        np.asarray(times, np.int64),
        [f.label for f in frames],
        newest.grid,
        newest.note,
    )


@dataclass
class PredictResult:
    """The forecast `predict` wrote: its file, the pictures, and what it holds.

    Attributes:
        forecast: (n_out, H, W) float32 in `units`, NaN = no data.
        valid_times: (n_out,) int64 seconds since 1970-01-01 UTC.
        inputs: the file (and frame) of each input frame, oldest first.
        grid_note: on the input's own grid, not the training store's, a line saying so and
            where the crop sits.
    """

    path: Path
    pictures: list[Path]
    issue_time: int
    valid_times: np.ndarray
    forecast: np.ndarray
    units: str
    inputs: list[str]
    grid_note: str | None

    @property
    def summary(self) -> str:
        covered = self.forecast[:, ~np.isnan(self.forecast).all(axis=0)]
        peak = f"{np.max(covered):.3g} {self.units}" if covered.size else "no data"
        lines = [
            f"Nowcast issued {iso(self.issue_time)} from {len(self.inputs)} frames (newest: "
            f"{self.inputs[-1]}): {len(self.valid_times)} frames valid "
            f"{iso(self.valid_times[0])} to {iso(self.valid_times[-1])}, in {self.units}, "
            f"highest {peak}. Written to:",
            *(f"  {path}" for path in [self.path, *self.pictures]),
            *([self.grid_note] if self.grid_note else []),
        ]
        return "\n".join(lines)


def write_forecast(
    path: Path,
    *,
    forecast: np.ndarray,
    units: str,
    quantity: str,
    issue_time: int,
    valid_times: np.ndarray,
    input_times: np.ndarray,
    minutes_per_frame: float,
    grid: Mapping[str, Any],
    attributes: Mapping[str, Any],
) -> None:
    """Write a forecast file in the layout of the module docstring (to the path given).

    Args:
        forecast: (n_out, H, W) in `units`, NaN = no data.
        valid_times, input_times: seconds since 1970-01-01 UTC, (n_out,) and (n_in,).
    """
    with h5py.File(path, "w") as f:
        f.attrs["nowcast_forecast_version"] = FORECAST_VERSION
        f.attrs["quantity"] = quantity
        f.attrs["units"] = units
        f.attrs["issue_time"] = iso(issue_time)
        f.attrs["minutes_per_frame"] = minutes_per_frame
        for key, value in attributes.items():
            f.attrs[key] = value
        data = f.create_dataset(
            "forecast",
            data=forecast.astype(np.float32),
            chunks=(1, *forecast.shape[1:]),
            compression="gzip",
            compression_opts=4,
        )
        data.attrs["units"] = units
        data.attrs["nodata"] = "NaN: outside radar coverage"
        seconds = "seconds since 1970-01-01 00:00:00 UTC"
        for name, times in (("valid_times", valid_times), ("input_times", input_times)):
            f.create_dataset(name, data=np.asarray(times, np.int64)).attrs["units"] = seconds
        lead_times = (np.asarray(valid_times, np.float64) - issue_time) / 60.0
        f.create_dataset("lead_times", data=lead_times).attrs["units"] = "min"
        grid_group = f.create_group("grid")
        for key, value in grid.items():
            grid_group.attrs[key] = value


def predict(cfg: DictConfig) -> PredictResult:
    """Forecast from the newest frames of `cfg.input`; see the module docstring.

    Args:
        cfg: a composed `predict` config (nowcast.config.PredictConfig).

    Raises:
        FileNotFoundError: no such run, checkpoint, training store or input.
        FileExistsError: the output exists and `overwrite` is false.
        ValueError: frames with a gap, of another pixel size, time step or quantity (or
            another grid, for a model that takes only its training store's); a bad plot
            format or MP4 without ffmpeg; a checkpoint that does not fit the run.
    """
    require(cfg, "run", RUN_HINT)
    require(cfg, "input", "pass input=<a folder of radar files, a glob of them, or a store>")
    if cfg.plot is not None:
        check_plot_format(cfg.plot, "plot")
    run = Run.from_config(cfg)
    n_in, n_out, norm = run.n_in, run.n_out, run.norm
    grid = run.grid(cfg.reference_store)
    latest = read_latest_frames(cfg, grid, n_in, fmt=cfg.format)
    issue_time = int(latest.times[-1])
    if cfg.output is None:
        output = Path(f"nowcast_{file_stamp(issue_time)}.h5").absolute()
    else:
        output = Path(cfg.output).expanduser().absolute()
    stem = output.with_suffix("")
    pictures = []
    if cfg.plot is not None:
        pictures = [stem.with_suffix(f".{cfg.plot}")]
        if cfg.plot != STILL_FORMAT:
            pictures.append(stem.with_suffix(f".{STILL_FORMAT}"))
    hint = "output=<another file>"
    refuse_existing([output, *pictures], cfg.overwrite, hint)
    log.info(
        "Forecasting from %d frames up to %s, issued %s", n_in, latest.labels[-1], iso(issue_time)
    )

    model = run.load_model(latest.frames.shape[1:])
    normalised = normalise(latest.frames, norm)
    normalised_forecast = forecast_window(model, np.nan_to_num(normalised, nan=0.0), {})["model"]
    units = display_units(grid.quantity, None)
    coverage = ~np.isnan(latest.frames[-1])
    forecast = np.where(coverage, to_physical(normalised_forecast, norm, grid.quantity), np.nan)
    reflectivity = grid.quantity == REFLECTIVITY.name
    step_s = round(grid.minutes_per_frame * 60)
    valid_times = issue_time + step_s * np.arange(1, n_out + 1, dtype=np.int64)
    output.parent.mkdir(parents=True, exist_ok=True)
    # The forecast file is renamed into place last, once the pictures are written too.
    with (
        refusing_existing(hint),
        written_atomically(output, replace=cfg.overwrite) as temporary,
    ):
        write_forecast(
            temporary,
            forecast=forecast,
            units=units,
            quantity="RATE" if reflectivity else VIL.name,
            issue_time=issue_time,
            valid_times=valid_times,
            input_times=latest.times,
            minutes_per_frame=grid.minutes_per_frame,
            grid=latest.grid,
            attributes={
                "run": str(run.dir),
                "checkpoint": str(run.checkpoint),
                "input": str(cfg.input),
                **({"zr_a": grid.zr[0], "zr_b": grid.zr[1]} if reflectivity else {}),
            },
        )
        if cfg.plot is not None:
            sequence = ForecastSequence(
                inputs=display_values(normalised, norm, grid.quantity, units),
                forecasts={"model": forecast},
                observation=None,
                issue_time=issue_time,
                minutes_per_frame=grid.minutes_per_frame,
                unit=units,
                caption=f"run {run.dir} · checkpoint {run.checkpoint.name} · input {cfg.input}",
            )
            write_pictures(sequence, stem, cfg.plot, cfg)
    return PredictResult(
        path=output,
        pictures=pictures,
        issue_time=issue_time,
        valid_times=valid_times,
        forecast=forecast,
        units=units,
        inputs=latest.labels,
        grid_note=latest.grid_note,
    )
