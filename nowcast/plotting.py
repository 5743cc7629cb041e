"""`nowcast-plot`: pictures of one stored window of a run, and the evaluation's skill plots.

`plot_run(cfg)` draws one window of a run's test split: the observed input frames, then per
lead time the observation, the model's forecast and the baselines side by side (an animation
and a still, drawn by nowcast.drawing), plus the evaluation's skill plots when
`nowcast-evaluate` has been run. The run, its windows, baselines and forecast come from
nowcast.run; the values shown from nowcast.units; refusing to replace files from nowcast.io.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from nowcast.data.sources import iso
from nowcast.data.windows import ALL_WINDOWS, window_means
from nowcast.drawing import (
    STILL_FORMAT,
    ForecastSequence,
    check_plot_format,
    plot_scores_versus_lead_time,
    write_pictures,
)
from nowcast.io import file_stamp, refuse_existing, refusing_existing, written_atomically
from nowcast.metrics import CATEGORICAL_SCORES
from nowcast.run import RUN_HINT, Run, forecast_window, require
from nowcast.units import display_units, display_values, normalise

log = logging.getLogger(__name__)


@dataclass
class PlotResult:
    """What `plot_run` drew: the window (index among the split's `windows`), its issue time
    (seconds since 1970-01-01 UTC), the pictures and the skill plots (empty when there is no
    evaluation in `evaluation`)."""

    split: str
    window: int
    windows: int
    issue_time: int
    files: list[Path]
    skill_files: list[Path]
    evaluation: Path

    @property
    def summary(self) -> str:
        which = "Window" if self.split == ALL_WINDOWS else f"{self.split.capitalize()} window"
        lines = [
            f"{which} {self.window} of {self.windows}, issued {iso(self.issue_time)}:",
            *(f"  {path}" for path in self.files),
        ]
        if self.skill_files:
            lines.append(f"Skill versus lead time, from {self.evaluation / 'metrics.json'}:")
            lines += [f"  {path}" for path in self.skill_files]
        else:
            lines.append(
                f"No skill plots: {self.evaluation} holds no metrics.json; run nowcast-evaluate"
            )
        return "\n".join(lines)


def choose_window(
    sample: str | None,
    *,
    issue_times: np.ndarray,
    wet_fraction: np.ndarray,
    split: str,
) -> int:
    """The index of the window to draw among a split's windows.

    Args:
        sample: None for the wettest window, an index ("3", "-1"), or the UTC issue time
            of a window (the time of its newest input frame, e.g. "2024-06-01T12:00").
        issue_times: (N,) int64 seconds since 1970-01-01 UTC, one per window.
        wet_fraction: (N,) mean fraction of wet pixels of each window.
        split: the split's name, for messages.

    Raises:
        ValueError: an index out of range, or a time that is no window's issue time.
    """
    count = len(issue_times)
    if sample is None:
        return int(np.argmax(wet_fraction))
    sample = str(sample).strip()
    try:
        index = int(sample)
    except ValueError:
        index = None
    if index is not None:
        if not -count <= index < count:
            raise ValueError(
                f"sample={index} is out of range: the {split} split has {count} windows "
                f"(0 to {count - 1}); pass an index in that range or an issue time"
            )
        return index % count
    try:
        wanted = np.datetime64(sample.removesuffix("Z"), "s").astype(np.int64)
    except ValueError:
        raise ValueError(
            f"sample={sample!r} is neither a window index nor a UTC time such as 2024-06-01T12:00"
        ) from None
    found = np.flatnonzero(issue_times == wanted)
    if found.size == 0:
        raise ValueError(
            f"sample={sample} is not the issue time (newest input frame) of a {split} window; "
            f"the {count} {split} windows are issued from {iso(issue_times.min())} to "
            f"{iso(issue_times.max())}; pass one of their times, an index, or split=train|val"
        )
    return int(found[0])


def _skill_plots(evaluation: Path, output_dir: Path, overwrite: bool) -> list[Path]:
    """Each categorical score of the evaluation against lead time, one PNG per score.

    A plot is drawn again only when metrics.json is newer than it, or with `overwrite`.
    """
    record = json.loads((evaluation / "metrics.json").read_text())
    written = []
    for score in CATEGORICAL_SCORES:
        path = output_dir / f"skill_{score}.png"
        metrics_time = (evaluation / "metrics.json").stat().st_mtime
        if path.exists() and not overwrite and path.stat().st_mtime >= metrics_time:
            written.append(path)
            continue
        with written_atomically(path) as temporary:
            plot_scores_versus_lead_time(
                temporary,
                score=score,
                lead_times_min=record["lead_times_min"],
                thresholds=record["thresholds"],
                unit=record["units"],
                # JSON null (an undefined score) becomes NaN.
                scores_per_method={
                    method: np.array(result["scores"][score], dtype=np.float64)
                    for method, result in record["methods"].items()
                },
            )
        written.append(path)
    return written


def plot_run(cfg: DictConfig) -> PlotResult:
    """Draw one window of a run, and the evaluation's skill plots; see the module docstring.

    Args:
        cfg: a composed `plot` config (nowcast.config.PlotConfig).

    Raises:
        FileNotFoundError: no such run, checkpoint or store.
        FileExistsError: a picture of this window exists and `overwrite` is false.
        ValueError: a bad sample, format or unit; MP4 without ffmpeg; a checkpoint that does
            not fit the run.
    """
    require(cfg, "run", RUN_HINT)
    check_plot_format(cfg.format, "format")
    run = Run.from_config(cfg)
    windows = run.windows(cfg.split, cfg.data)
    n_in, n_out, norm = run.n_in, run.n_out, run.norm
    with windows.open() as store:
        quantity, minutes_per_frame = store.quantity, store.minutes_per_frame
        units = display_units(quantity, cfg.units)
        wet = store.wet_fraction(run.config.data.wet_threshold)
        index = choose_window(
            cfg.sample,
            issue_times=store.times[windows.starts + n_in - 1],
            wet_fraction=window_means(wet, windows.starts, n_in + n_out),
            split=cfg.split,
        )
        start = int(windows.starts[index])
        frames = store.read(start, start + n_in + n_out)  # (T, H, W), store units
        issue_time = int(store.times[start + n_in - 1])
        store_name = store.paths[store.locate(start)[0]].name
    log.info(
        "Drawing %s window %d of %d, issued %s%s",
        cfg.split,
        index,
        windows.starts.size,
        iso(issue_time),
        " (the wettest; pass sample=<index or time> for another)" if cfg.sample is None else "",
    )
    output_dir = Path(cfg.paths.output_dir).expanduser().absolute()
    # A picture in another unit than the quantity's default sits beside the default one.
    in_other_units = "" if units == display_units(quantity, None) else f"_{units}"
    stem = output_dir / f"forecast_{file_stamp(issue_time)}{in_other_units}"
    formats = [cfg.format, STILL_FORMAT] if cfg.format != STILL_FORMAT else [STILL_FORMAT]
    hint = "sample=<another window>"
    refuse_existing([stem.with_suffix(f".{f}") for f in formats], cfg.overwrite, hint)

    model = run.load_model(frames.shape[1:])
    normalised = normalise(frames, norm)  # NaN (no data) stays NaN
    baselines = run.baselines(cfg.baselines)
    forecasts = forecast_window(model, np.nan_to_num(normalised[:n_in], nan=0.0), baselines)
    coverage = ~np.isnan(frames[n_in - 1])
    show = partial(display_values, norm=norm, quantity=quantity, units=units)
    sequence = ForecastSequence(
        inputs=show(normalised[:n_in]),
        forecasts={name: np.where(coverage, show(f), np.nan) for name, f in forecasts.items()},
        observation=show(normalised[n_in:]),
        issue_time=issue_time,
        minutes_per_frame=minutes_per_frame,
        unit=units,
        caption=f"{cfg.split} window {index} of {store_name} · run {run.dir} · "
        f"checkpoint {run.checkpoint.name}",
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    with refusing_existing(hint):
        files = write_pictures(sequence, stem, cfg.format, cfg)
    evaluation = Path(cfg.evaluation).expanduser().absolute()
    skill_files = []
    if (evaluation / "metrics.json").is_file():
        skill_files = _skill_plots(evaluation, output_dir, cfg.overwrite)
    return PlotResult(
        split=cfg.split,
        window=index,
        windows=int(windows.starts.size),
        issue_time=issue_time,
        files=files,
        skill_files=skill_files,
        evaluation=evaluation,
    )
