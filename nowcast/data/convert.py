"""`nowcast-data convert`: radar files of a known format -> one nowcast store.

Steps, each with one-line errors that name the file (see nowcast.data.sources); the readers,
the ordering and the regridding are in nowcast.data.frames, shared with `nowcast-predict`:

1. Find the input files (a file, a folder of the format's files, or a glob) and read each
   one's frame times, quantity and grid, without reading pixels (but the first file's, for the
   formats read through pysteps: see nowcast.data.importers).
2. Check that every frame has the quantity and grid of the first one.
3. Infer the time step (the most common step between frames, in whole minutes) unless
   `minutes_per_frame` is given, and round scan times to that step on the clock (radar
   products stamp scans a few seconds off the nominal time). SEVIR events keep their times.
4. Sort by time (events by their first frame); of frames with the same time (within an event),
   keep the first in file-name order and log a warning.
5. Read the frames in that order, a block at a time; mask clutter (below); crop them (a pixel
   window, centred by default) and block-average them in physical units (rain rate in mm/h
   via Z-R for reflectivity, kg/m^2 for SEVIR VIL; a block with fewer than half of its pixels
   valid is no data), and write the store atomically: a failure leaves no file behind.

Clutter (ground and sea echoes, interference, ships: an OPERA composite reads up to thousands
of mm/h) is masked before block averaging, so that it does not leak into the blocks around it:
`min_quality` makes ODIM pixels whose QIND quality field is below it no data, and
`max_rain_mmh` makes pixels above that rain rate (through Z-R) no data. Masked rather than
clipped to the cap: a clutter spike is not rain at any rate, and clipped it would stay in the
store as the heaviest rain there is, a false alarm at every threshold, weighted most by
intensity-weighted losses; as no data, the losses, the scores and the block averages skip it.
The price is that real rain above the cap (hail cores read 60 dBZ and more) becomes a hole,
so keep the cap well above the rates the archive really holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from nowcast.config import ConvertCommandConfig, CropConfig
from nowcast.data.frames import (
    cap_dbz,
    check_consistent,
    input_suffixes,
    linear_scale,
    order_frames,
    read_capped,
    regrid,
    regridded,
    scanner,
    time_step,
)
from nowcast.data.sources import (
    SourceError,
    SourceFrame,
    find_inputs,
)
from nowcast.data.store import REFLECTIVITY, VIL, StoreWriter
from nowcast.data.windows import check_positive_int

log = logging.getLogger(__name__)

_BLOCK_FRAMES = 32


@dataclass
class ConvertResult:
    """What `convert` wrote."""

    path: Path
    frames: int
    height: int
    width: int
    minutes_per_frame: float
    duplicates: int


def _crop_window(
    shape: tuple[int, int], crop: CropConfig, factor: int
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop in source pixels, checked against the grid."""
    check_positive_int(factor, "downsample")
    window = []
    for axis, (size, offset, extent, name) in enumerate(
        ((shape[0], crop.top, crop.height, "height"), (shape[1], crop.left, crop.width, "width"))
    ):
        offset_name = ("top", "left")[axis]
        extent = size if extent is None else extent
        if not 1 <= extent <= size:
            raise ValueError(
                f"crop.{name} must be from 1 to the source's {size} pixels, "
                f"Received: crop.{name}={extent}"
            )
        offset = (size - extent) // 2 if offset is None else offset
        if not 0 <= offset <= size - extent:
            raise ValueError(
                f"crop.{offset_name} + crop.{name} must stay inside the source's {size} pixels, "
                f"Received: crop.{offset_name}={offset}, crop.{name}={extent}"
            )
        if extent % factor:
            raise ValueError(
                f"the crop's {extent} pixels ({name}) are not a multiple of downsample={factor}; "
                f"set crop.{name}={extent - extent % factor} (or another multiple)"
            )
        window.append((offset, extent))
    (top, height), (left, width) = window
    return top, left, height, width


def _log_choices(frames: list[SourceFrame]) -> None:
    """Say which field was read of files holding several: once per choice, not per file."""
    files: dict[str, list[str]] = {}
    for frame in frames:
        if frame.choice is not None:
            files.setdefault(frame.choice, []).append(frame.label)
    for choice, labels in files.items():
        more = f" and {len(labels) - 1} more file(s)" if len(labels) > 1 else ""
        log.info("read %s of %s%s; pass quantity= to read another", choice, labels[0], more)


def convert(cfg: ConvertCommandConfig) -> ConvertResult:
    """Convert radar files into a nowcast store (see the module docstring).

    Args:
        cfg: the `nowcast-data convert` config: format, input, output, overwrite, quantity,
            catalog, importer, importer_kwargs, fn_pattern, crop, downsample,
            minutes_per_frame, zr_a, zr_b, max_rain_mmh, min_quality.

    Returns:
        What was written.

    Raises:
        FileNotFoundError: no input; FileExistsError: the output exists and overwrite is false;
        ValueError (SourceError, StoreError): a bad option or input file, with one line naming
        it. Nothing is written at the output path unless the whole conversion succeeds.
    """
    scan = scanner(cfg, min_quality=cfg.min_quality)
    output = Path(cfg.output).expanduser()
    if output.exists() and not cfg.overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=true to replace it")
    inputs = find_inputs(cfg.input, input_suffixes(cfg))
    log.info("Reading the times of %d file(s) from %s", len(inputs), cfg.input)
    frames = scan(inputs[0])
    if not frames:
        raise SourceError(f"no frames found in {inputs[0]}")
    # Check the crop against the first file's grid before reading the times of all the others.
    top, left, height, width = _crop_window(frames[0].shape, cfg.crop, cfg.downsample)
    cap = cap_dbz(cfg.max_rain_mmh, frames[0].quantity, cfg.zr_a, cfg.zr_b)
    frames += [frame for path in inputs[1:] for frame in scan(path)]
    check_consistent(frames)
    _log_choices(frames)
    step_s = time_step(frames, cfg.minutes_per_frame)
    frames, times, duplicates = order_frames(frames, step_s)
    event_ids = None
    if frames[0].event is not None:
        numbers: dict[str | None, int] = {}  # events numbered 0, 1, ... in store order
        event_ids = np.array([numbers.setdefault(f.event, len(numbers)) for f in frames])

    reference = frames[0]
    grid = {"ysize": reference.shape[0], "xsize": reference.shape[1], **reference.grid}
    factor = int(cfg.downsample)
    quantity = VIL if reference.quantity == VIL.name else REFLECTIVITY
    to_linear, from_linear = linear_scale(quantity.name, cfg.zr_a, cfg.zr_b)
    zr = {} if quantity is VIL else {"zr_a": cfg.zr_a, "zr_b": cfg.zr_b}
    out_grid = regridded(grid, top=top, left=left, height=height, width=width, factor=factor)
    crop = partial(
        regrid,
        top=top,
        left=left,
        height=height,
        width=width,
        factor=factor,
        to_linear=to_linear,
        from_linear=from_linear,
    )
    valid_pixels = 0
    with StoreWriter(
        output,
        height=height // factor,
        width=width // factor,
        grid=out_grid,
        minutes_per_frame=step_s / 60.0,
        quantity=quantity.name,
        overwrite=cfg.overwrite,
        **zr,
    ) as writer:
        progress_every = max(len(frames) // 10, _BLOCK_FRAMES)
        for start in range(0, len(frames), _BLOCK_FRAMES):
            stop = min(start + _BLOCK_FRAMES, len(frames))
            block = np.stack([crop(read_capped(frame, cap)) for frame in frames[start:stop]])
            valid_pixels += int(np.count_nonzero(~np.isnan(block)))
            events = None if event_ids is None else event_ids[start:stop]
            writer.append(block, times[start:stop], events)
            if stop % progress_every < _BLOCK_FRAMES or stop == len(frames):
                log.info("Converted %d of %d frames", stop, len(frames))
        if valid_pixels == 0:
            raise SourceError(
                f"every one of the {len(frames)} frames from {cfg.input} is no-data inside the "
                "crop; check the files' nodata values and the crop; no store was written"
            )
    return ConvertResult(
        path=writer.path,
        frames=len(frames),
        height=height // factor,
        width=width // factor,
        minutes_per_frame=step_s / 60.0,
        duplicates=duplicates,
    )
