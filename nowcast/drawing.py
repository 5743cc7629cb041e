"""Radar pictures as forecasters read them: animations and still grids of a nowcast.

Frames are drawn on a discrete colour scale like those of weather services (rain rate in mm/h,
reflectivity in dBZ, or SEVIR's VIL levels), with a labelled colour bar: values below the
lowest level (no rain) are white, no-data pixels (outside radar coverage) grey. Each panel is
titled with its valid time and its lead time ("t+15 min"); the figure with the time the nowcast
was issued (the time of the newest input frame).

Beside the frames: a score against lead time for every method (`plot_scores_versus_lead_time`,
the evaluation's csi.png and the plot command's skill plots) and the scorecard of several
stores (`plot_scorecard`).

Pure drawing: functions take arrays and metadata and write to the path they are given, through
matplotlib's Agg canvas, so nothing ever opens a window; `write_pictures` writes a forecast's
pictures under temporary names (nowcast.io). This module imports neither TensorFlow nor Hydra.
Animations: GIF through Pillow (always available), MP4 through ffmpeg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib import animation, rcParams
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import Colorbar
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from nowcast.io import written_atomically

ANIMATION_FORMATS = ("gif", "mp4")
STILL_FORMAT = "png"
PLOT_FORMATS = (*ANIMATION_FORMATS, STILL_FORMAT)
NO_DATA_COLOUR = "#b3b3b3"
NO_ECHO_COLOUR = "white"


@dataclass(frozen=True)
class RadarScale:
    """A discrete colour scale: `colours[k]` fills [levels[k], levels[k + 1]); the last colour
    everything from `levels[-1]` up. Values below `levels[0]` are no echo (white).
    """

    unit: str
    label: str
    levels: tuple[float, ...]
    colours: tuple[str, ...]

    def colour_map(self) -> tuple[ListedColormap, BoundaryNorm]:
        """The colour map (under: white, over: the last colour, bad: grey) and its norm."""
        colour_map = ListedColormap(self.colours[:-1], name=self.unit).with_extremes(
            under=NO_ECHO_COLOUR, over=self.colours[-1], bad=NO_DATA_COLOUR
        )
        return colour_map, BoundaryNorm(self.levels, colour_map.N)


# Blues for light rain, greens for moderate, yellow to red for heavy, magenta for extreme
# (the usual order of national services' rain-rate maps), on the 1-2-5 ladder.
RAIN_RATE = RadarScale(
    unit="mm/h",
    label="rain rate (mm/h)",
    levels=(0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0),
    colours=(
        "#b4dcf5", "#73b9ee", "#3b82d9", "#1f4fb4", "#2dbd4a",
        "#1b8a2e", "#f5e62a", "#f59a1b", "#e3261c", "#c02bc9",
    ),
)  # fmt: skip
# The US National Weather Service's reflectivity colours, every 5 dBZ.
REFLECTIVITY = RadarScale(
    unit="dBZ",
    label="reflectivity (dBZ)",
    levels=tuple(float(v) for v in range(5, 75, 5)),
    colours=(
        "#04e9e7", "#019ff4", "#0300f4", "#02fd02", "#01c501", "#008e00", "#fdf802",
        "#e5bc00", "#fd9500", "#fd0000", "#d40000", "#bc0000", "#f800fd", "#9854c6",
    ),
)  # fmt: skip
# SEVIR's VIL levels, at the boundaries of SEVIR's own colour map (its grey lowest class is
# green here, since grey means no data).
VIL_LEVELS = RadarScale(
    unit="VIL level",
    label="VIL (SEVIR level)",
    levels=(16.0, 31.0, 59.0, 74.0, 100.0, 133.0, 160.0, 181.0, 219.0),
    colours=(
        "#a6e3a1", "#5cc45c", "#27962a", "#0f6a14", "#f5f500",
        "#edac00", "#f06e00", "#a00000", "#e700ff",
    ),
)  # fmt: skip
RADAR_SCALES = {scale.unit: scale for scale in (RAIN_RATE, REFLECTIVITY, VIL_LEVELS)}


def radar_scale(unit: str) -> RadarScale:
    """The colour scale of `unit` ("mm/h", "dBZ" or "VIL level").

    Raises:
        ValueError: another unit; the message lists the known ones.
    """
    if unit not in RADAR_SCALES:
        raise ValueError(f"no colour scale for unit {unit!r}, known: {', '.join(RADAR_SCALES)}")
    return RADAR_SCALES[unit]


def check_animation_format(fmt: str) -> None:
    """Fail early, before any work, when an animation cannot be written in `fmt`.

    Raises:
        ValueError: `fmt` is not gif or mp4, or it is mp4 and ffmpeg is not found.
    """
    if fmt not in ANIMATION_FORMATS:
        raise ValueError(
            f"unknown animation format, allowed: {', '.join(ANIMATION_FORMATS)}. Received: {fmt!r}"
        )
    if fmt == "mp4" and not animation.FFMpegWriter.isAvailable():
        raise ValueError(
            f"MP4 animations need ffmpeg, which was not found (looked for "
            f"{rcParams['animation.ffmpeg_path']!r} on PATH); install it (e.g. `apt-get install "
            "ffmpeg` or `conda install ffmpeg`) or use format=gif"
        )


@dataclass
class ForecastSequence:
    """One nowcast and what it is compared with, in the unit of a radar scale.

    Attributes:
        inputs: (n_in, H, W) observed frames the nowcast starts from, oldest first.
        forecasts: method name -> (n_out, H, W) frames at lead times 1..n_out (the model
            first, then the baselines).
        observation: (n_out, H, W) the frames observed at the lead times, or None when they
            are not known yet (an operational nowcast).
        issue_time: seconds since 1970-01-01 UTC of the newest input frame.
        minutes_per_frame: time between frames.
        unit: "mm/h", "dBZ" or "VIL level" (see RADAR_SCALES).
        caption: a line under the panels saying where the nowcast comes from.

    All frames are float, NaN where there is no data.
    """

    inputs: np.ndarray
    forecasts: Mapping[str, np.ndarray]
    observation: np.ndarray | None
    issue_time: int
    minutes_per_frame: float
    unit: str
    caption: str = ""
    scale: RadarScale = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scale = radar_scale(self.unit)
        if np.ndim(self.inputs) != 3 or len(self.inputs) == 0:
            raise ValueError(
                f"inputs must be (n_in, height, width), Received: shape={np.shape(self.inputs)}"
            )
        if not self.forecasts:
            raise ValueError("forecasts must hold at least one method")
        frame_shape = np.shape(self.inputs)[1:]
        shapes = {name: np.shape(frames) for name, frames in self.forecasts.items()}
        if self.observation is not None:
            shapes["observation"] = np.shape(self.observation)
        n_out = next(iter(shapes.values()))[0] if shapes else 0
        for name, shape in shapes.items():
            if len(shape) != 3 or shape[0] != n_out or shape[0] == 0 or shape[1:] != frame_shape:
                raise ValueError(
                    f"{name} must be (n_out, height, width) like the other forecasts, with "
                    f"frames of the inputs' {frame_shape}, Received: shape={shape}"
                )
        if not self.minutes_per_frame > 0:
            raise ValueError(f"minutes_per_frame must be > 0, Received: {self.minutes_per_frame}")

    @property
    def n_in(self) -> int:
        return len(self.inputs)

    @property
    def n_out(self) -> int:
        return len(next(iter(self.forecasts.values())))

    def frame_time(self, offset: int) -> tuple[str, str]:
        """("12:15 UTC", "t+15 min") of the frame `offset` frames after the newest input."""
        minutes = offset * self.minutes_per_frame
        valid = datetime.fromtimestamp(self.issue_time + minutes * 60, tz=timezone.utc)
        return f"{valid:%H:%M} UTC", f"t{minutes:+g} min"

    def issued(self) -> str:
        issued = datetime.fromtimestamp(self.issue_time, tz=timezone.utc)
        return f"Nowcast issued {issued:%Y-%m-%d %H:%M} UTC"


def _display_name(method: str) -> str:
    return method.replace("_", " ")


# Figure geometry, in inches.
_PANEL_INCH = 3.2
_GAP_INCH = 0.12
_TOP_INCH = 0.95  # the figure title and two-line panel titles
_TITLE_INCH = 0.45  # two-line panel titles between rows of a grid
_BOTTOM_INCH = 0.35  # the caption
_LEFT_INCH = 0.15
_ROW_LABEL_INCH = 0.35
_BAR_INCH = 1.3  # colour bar, its labels and the no-data key


def _layout(
    rows: int, columns: int, frame_shape: tuple[int, int], *, row_labels: bool, dpi: int
) -> tuple[Figure, np.ndarray, Axes, Axes]:
    """A figure of rows x columns frame panels, a colour bar and a no-data key at the right.

    Placed by hand: a layout engine would cost more than drawing the frames.

    Returns:
        The figure, (rows, columns) panel axes, the colour bar's axes and the key's axes.
    """
    height, width = frame_shape
    panel_w = _PANEL_INCH
    panel_h = _PANEL_INCH * height / width
    left = _LEFT_INCH + (_ROW_LABEL_INCH if row_labels else 0.0)
    fig_w = left + columns * panel_w + (columns - 1) * _GAP_INCH + _BAR_INCH
    fig_h = _TOP_INCH + rows * panel_h + (rows - 1) * _TITLE_INCH + _BOTTOM_INCH
    # Whole, even numbers of pixels: H.264 (MP4) needs them, and matplotlib would trim.
    fig_w, fig_h = (math.ceil(size * dpi / 2) * 2 / dpi for size in (fig_w, fig_h))
    figure = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(figure)

    def rect(x: float, y: float, w: float, h: float) -> list[float]:
        return [x / fig_w, y / fig_h, w / fig_w, h / fig_h]

    axes = np.empty((rows, columns), dtype=object)
    for r in range(rows):
        bottom = _BOTTOM_INCH + (rows - 1 - r) * (panel_h + _TITLE_INCH)
        for c in range(columns):
            ax = figure.add_axes(rect(left + c * (panel_w + _GAP_INCH), bottom, panel_w, panel_h))
            ax.set_xticks([])
            ax.set_yticks([])
            axes[r, c] = ax
    panels_h = rows * panel_h + (rows - 1) * _TITLE_INCH
    bar_x = left + columns * panel_w + (columns - 1) * _GAP_INCH + 0.2
    key_size = 0.2
    bar = figure.add_axes(
        rect(bar_x, _BOTTOM_INCH + 2.5 * key_size, 0.2, panels_h - 2.5 * key_size)
    )
    key = figure.add_axes(rect(bar_x, _BOTTOM_INCH, key_size, key_size))
    return figure, axes, bar, key


def _decorate(figure: Figure, sequence: ForecastSequence, bar: Axes, key: Axes, image) -> None:
    """Colour bar with one tick per level, the no-data key, the caption."""
    scale = sequence.scale
    colour_bar = Colorbar(bar, image, extend="max", ticks=scale.levels)
    colour_bar.ax.set_yticklabels([f"{level:g}" for level in scale.levels])
    colour_bar.set_label(scale.label)
    key.set_facecolor(NO_DATA_COLOUR)
    key.set_xticks([])
    key.set_yticks([])
    key.text(1.4, 0.5, "no data", transform=key.transAxes, va="center", fontsize=9)
    if sequence.caption:
        figure.text(0.01, 0.02, sequence.caption, fontsize=7, color="#555555", va="bottom")


def _draw(ax: Axes, frame: np.ndarray, sequence: ForecastSequence):
    colour_map, norm = sequence.scale.colour_map()
    return ax.imshow(
        np.ma.masked_invalid(frame), cmap=colour_map, norm=norm, interpolation="nearest"
    )


def animate_forecast(
    path: str | Path, sequence: ForecastSequence, *, fps: float = 2.0, dpi: int = 100
) -> None:
    """Write an animation of the inputs, then the lead times, panels side by side.

    Panels: the observation (when known), then each forecast method. During the input frames
    the observation panel shows them, and the forecast panels say when the forecast starts
    (when there is no observation, the forecast panels show the inputs themselves). Then
    every panel shows its frame at each lead time. One frame per input and lead time:
    n_in + n_out frames, at `fps` frames per second.

    Args:
        path: a .gif (written with Pillow) or .mp4 (written with ffmpeg) file.

    Raises:
        ValueError: another suffix, or .mp4 without ffmpeg.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    check_animation_format(fmt)
    observed = sequence.observation is not None
    names = (["observed"] if observed else []) + list(sequence.forecasts)
    figure, axes, bar, key = _layout(
        1, len(names), sequence.inputs.shape[1:], row_labels=False, dpi=dpi
    )
    axes = axes[0]
    blank = np.full(sequence.inputs.shape[1:], np.nan)
    images = [_draw(ax, blank, sequence) for ax in axes]
    titles = [ax.set_title("", fontsize=10) for ax in axes]
    issue_clock, _ = sequence.frame_time(0)
    waiting = [
        ax.text(
            0.5,
            0.5,
            f"forecast from\n{issue_clock}",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#777777",
        )
        for ax in axes
    ]
    _decorate(figure, sequence, bar, key, images[0])
    heading = figure.suptitle("", fontsize=12)

    def show_input(k: int) -> None:
        clock, lead = sequence.frame_time(k - sequence.n_in + 1)
        heading.set_text(f"{sequence.issued()} · input {k + 1} of {sequence.n_in}")
        for p, name in enumerate(names):
            shows_input = p == 0 or not observed
            images[p].set_data(np.ma.masked_invalid(sequence.inputs[k]))
            images[p].set_visible(shows_input)
            waiting[p].set_visible(not shows_input)
            label = "observed" if shows_input else _display_name(name)
            titles[p].set_text(f"{label}\n{clock}  {lead}" if shows_input else f"{label}\n")

    def show_lead(j: int) -> None:
        clock, lead = sequence.frame_time(j + 1)
        heading.set_text(f"{sequence.issued()} · lead time {j + 1} of {sequence.n_out}")
        frames = ([sequence.observation] if observed else []) + list(sequence.forecasts.values())
        for p, name in enumerate(names):
            images[p].set_data(np.ma.masked_invalid(frames[p][j]))
            images[p].set_visible(True)
            waiting[p].set_visible(False)
            titles[p].set_text(f"{_display_name(name)}\n{clock}  {lead}")

    writer_class = animation.PillowWriter if fmt == "gif" else animation.FFMpegWriter
    writer = writer_class(fps=fps)
    with writer.saving(figure, str(path), dpi):
        for k in range(sequence.n_in):
            show_input(k)
            writer.grab_frame()
        for j in range(sequence.n_out):
            show_lead(j)
            writer.grab_frame()


def lead_times_shown(n_out: int, max_lead_times: int) -> list[int]:
    """Lead-time indices (0-based) for a still: evenly spaced, ending at the last lead time.

    >>> lead_times_shown(12, 6)
    [1, 3, 5, 7, 9, 11]
    """
    if max_lead_times < 1:
        raise ValueError(f"max_lead_times must be >= 1, Received: {max_lead_times}")
    step = math.ceil(n_out / max_lead_times)
    return list(range(n_out - 1, -1, -step))[::-1]


def plot_forecast_grid(
    path: str | Path, sequence: ForecastSequence, *, max_lead_times: int = 6, dpi: int = 100
) -> None:
    """Write a still (PNG) of the nowcast: one row per method, one column per lead time.

    Rows: the observation, then each forecast method. With an observation, its row starts
    with the newest input (t+0) and the forecast rows leave that column empty; without one,
    the first row shows the newest input frames instead. Columns: up to `max_lead_times`
    evenly spaced lead times, the last one included.
    """
    leads = lead_times_shown(sequence.n_out, max_lead_times)
    # Each row: (frame, frames after the newest input) per column; None leaves a gap.
    if sequence.observation is not None:
        rows = {"observed": [(sequence.inputs[-1], 0)]}
        rows["observed"] += [(sequence.observation[j], j + 1) for j in leads]
        blank = [None]
    else:
        newest = min(len(leads), sequence.n_in)
        rows = {"observed": [(sequence.inputs[o - 1], o) for o in range(1 - newest, 1)]}
        blank = []
    for name, frames in sequence.forecasts.items():
        rows[_display_name(name)] = blank + [(frames[j], j + 1) for j in leads]
    columns = max(len(row) for row in rows.values())
    figure, axes, bar, key = _layout(
        len(rows), columns, sequence.inputs.shape[1:], row_labels=True, dpi=dpi
    )
    image = None
    for r, (name, row) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r, c]
            cell = row[c] if c < len(row) else None
            if cell is None:
                ax.set_visible(False)
                continue
            frame, offset = cell
            image = _draw(ax, frame, sequence)
            clock, lead = sequence.frame_time(offset)
            ax.set_title(f"{clock}\n{lead}", fontsize=9)
        first = axes[r, 0].get_position()
        figure.text(
            first.x0 - 0.1 / figure.get_figwidth(),
            first.y0 + first.height / 2,
            name,
            rotation=90,
            ha="right",
            va="center",
            fontsize=11,
        )
    _decorate(figure, sequence, bar, key, image)
    figure.suptitle(sequence.issued(), fontsize=12)
    figure.savefig(path, dpi=dpi, format=STILL_FORMAT)


def plot_scorecard(
    path: Path,
    *,
    differences: np.ndarray,
    events: list[str],
    methods: list[str],
    thresholds: list[str],
    reference: str,
) -> None:
    """A scorecard, as WeatherBench 2 draws models against a baseline: one panel per event
    (and the pooled one), a row per method and a column per threshold, each cell coloured by
    the method's mean CSI minus the reference method's (blue: better, red: worse) and labelled
    with it. The colours span the 90th percentile of the differences' sizes (larger ones take
    the end colours), so the sign of the small differences between close methods reads.

    Args:
        path: the PNG to write.
        differences: (events, methods, thresholds) mean CSI over lead times minus the
            reference's; NaN (no rain that heavy) is drawn grey.
        events, methods, thresholds: the labels of the three axes.
        reference: the method every difference is taken against.
    """
    differences = np.asarray(differences, dtype=float)
    expected = (len(events), len(methods), len(thresholds))
    if differences.shape != expected:
        raise ValueError(
            f"differences must be (events, methods, thresholds) = {expected}, "
            f"Received: shape={differences.shape}"
        )
    finite = np.abs(differences[np.isfinite(differences)])
    # Colours saturate beyond the 90th percentile, so that one method far behind (persistence)
    # does not wash out the differences between the close ones.
    span = float(np.percentile(finite, 90)) if finite.size else 0.0
    span = span or 0.01
    colour_map = ListedColormap(
        ["#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de",
         "#4393c3", "#2166ac"]
    ).with_extremes(bad=NO_DATA_COLOUR)  # fmt: skip
    columns = min(len(events), 3)
    rows = math.ceil(len(events) / columns)
    figure = Figure(
        figsize=(
            columns * (1.4 + 0.9 * len(thresholds)),
            1.3 + rows * (1.1 + 0.4 * len(methods)),
        ),
        layout="constrained",
    )
    figure.suptitle(
        f"Mean CSI over lead times minus {_display_name(reference)}'s "
        "(blue: ahead of it, red: behind)",
        fontsize=10,
    )
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax, event, values in zip(axes, events, differences, strict=False):
        image = ax.imshow(
            np.ma.masked_invalid(np.clip(values, -span, span)),
            cmap=colour_map,
            vmin=-span,
            vmax=span,
            aspect="auto",
        )
        for (row, column), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(column, row, f"{value:+.3f}", ha="center", va="center", fontsize=8)
        ax.set_title(event, fontsize=9)
        ax.set_xticks(range(len(thresholds)), thresholds, fontsize=7, rotation=30)
        ax.set_yticks(range(len(methods)), [_display_name(m) for m in methods], fontsize=8)
    for ax in axes[len(events) :]:
        ax.set_visible(False)
    bar = figure.colorbar(
        image, ax=axes[: len(events)].tolist(), location="bottom", shrink=0.5, aspect=40
    )
    bar.set_label(
        f"mean CSI minus {_display_name(reference)}'s (ends: this much or more)", fontsize=8
    )
    figure.savefig(path, dpi=100)


def check_plot_format(fmt: str, key: str) -> None:
    """A ValueError for a picture format other than PLOT_FORMATS (`key` names the setting), or
    MP4 without ffmpeg."""
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"unknown {key}, allowed: {', '.join(PLOT_FORMATS)}. Received: {fmt!r}")
    if fmt in ANIMATION_FORMATS:
        check_animation_format(fmt)


def write_pictures(sequence: ForecastSequence, stem: Path, fmt: str, settings) -> list[Path]:
    """The animation (gif or mp4) and the still (png) of `sequence`, or only the still.

    Args:
        settings: what the `plot` and `predict` configs hold: `fps` (the animation's frames per
            second), `max_lead_times` (the still's columns at most) and `overwrite` (replace
            existing files).

    Raises:
        FileExistsError: one exists and `overwrite` is false (`nowcast.io.publish_new`).
    """
    fps, max_lead_times, replace = settings.fps, settings.max_lead_times, settings.overwrite
    paths = []
    if fmt in ANIMATION_FORMATS:
        path = stem.with_suffix(f".{fmt}")
        with written_atomically(path, replace=replace) as temporary:
            animate_forecast(temporary, sequence, fps=fps)
        paths.append(path)
    path = stem.with_suffix(f".{STILL_FORMAT}")
    with written_atomically(path, replace=replace) as temporary:
        plot_forecast_grid(temporary, sequence, max_lead_times=max_lead_times)
    paths.append(path)
    return paths


def plot_scores_versus_lead_time(
    path: Path,
    *,
    score: str,
    lead_times_min: list[float],
    thresholds: list[float],
    unit: str,
    scores_per_method: dict[str, np.ndarray],
) -> None:
    """One panel per threshold, `score` against lead time for every method, written to `path`.

    Args:
        scores_per_method: method -> (lead times, thresholds) array.
    """
    columns = min(3, len(thresholds))
    rows = math.ceil(len(thresholds) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.2 * rows))
    # Fixed spacing: a layout engine would take longer than all the drawing.
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.93, wspace=0.3, hspace=0.45)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for k, threshold in enumerate(thresholds):
        ax = axes[k]
        for method, values in scores_per_method.items():
            ax.plot(lead_times_min, values[:, k], marker="o", markersize=3, label=method)
        ax.set_title(f"{score.upper()} >= {threshold:g} {unit}")
        ax.set_xlabel("lead time (min)")
        ax.set_ylabel(score.upper())
        ax.grid(alpha=0.3)
    for ax in axes[len(thresholds) :]:
        ax.set_visible(False)
    axes[0].legend()
    figure.savefig(path, dpi=100)
