"""What `nowcast-plot` (nowcast.pictures) and `nowcast-predict` (nowcast.prediction) share: a
run's forecast of one window, its values in the units people read, and its pictures.

Both commands run every check before anything is written, and write files under temporary
names that are renamed when complete (nowcast.io), so a failure leaves nothing behind; nothing
existing is replaced without `overwrite=true`, not even a file that another process wrote
after the check (`refusing_existing`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from nowcast.config import NormalisationConfig
from nowcast.data.store import REFLECTIVITY, VIL
from nowcast.evaluation import to_physical
from nowcast.io import written_atomically
from nowcast.plotting import (
    ANIMATION_FORMATS,
    STILL_FORMAT,
    ForecastSequence,
    animate_forecast,
    check_animation_format,
    plot_forecast_grid,
)
from nowcast.units import denormalise

PLOT_FORMATS = (*ANIMATION_FORMATS, STILL_FORMAT)
RUN_HINT = "pass run=<a directory written by nowcast-train>"


def require(cfg: DictConfig, key: str, hint: str) -> Any:
    """`cfg[key]`, or a ValueError naming the key and ending in `hint` when it is `???`."""
    if OmegaConf.is_missing(cfg, key):
        raise ValueError(f"no {key} given; {hint}")
    return cfg[key]


def file_stamp(seconds: int) -> str:
    """A UTC time for file names: 20240601T1200Z."""
    return f"{datetime.fromtimestamp(int(seconds), tz=timezone.utc):%Y%m%dT%H%MZ}"


def refuse_existing(paths: list[Path], overwrite: bool, hint: str) -> None:
    """A FileExistsError naming those of `paths` that exist, unless `overwrite`."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise _exists_error(existing, hint)


@contextlib.contextmanager
def refusing_existing(hint: str) -> Iterator[None]:
    """Give a file that another process published between `refuse_existing`'s check and this
    block's write (the FileExistsError of `nowcast.io.publish_new`, which names it) the error
    that the check would have given."""
    try:
        yield
    except FileExistsError as err:
        raise _exists_error([err.filename], hint) from None


def _exists_error(paths: list[str], hint: str) -> FileExistsError:
    return FileExistsError(f"{', '.join(paths)} exists; pass overwrite=true or {hint}")


def display_units(quantity: str, units: str | None) -> str:
    """The unit frames of a store of `quantity` are shown in: `units`, or the scored unit.

    Reflectivity is shown as rain rate (mm/h, the default) or reflectivity (dBZ); VIL in
    SEVIR's levels.

    Raises:
        ValueError: a unit that does not fit the quantity.
    """
    allowed = ["mm/h", REFLECTIVITY.units] if quantity == REFLECTIVITY.name else [VIL.units]
    if units is None:
        return allowed[0]
    if units not in allowed:
        raise ValueError(
            f"frames of {quantity} are shown in {' or '.join(allowed)}, Received: units={units!r}"
        )
    return units


def display_values(
    normalised: np.ndarray, norm: NormalisationConfig, quantity: str, units: str
) -> np.ndarray:
    """Values on the model's [0, 1] scale in `units` (see `display_units`); NaN stays NaN."""
    if units == REFLECTIVITY.units:
        return denormalise(np.clip(normalised, 0.0, 1.0), norm)
    return to_physical(normalised, norm, quantity)


def forecast_window(
    model: keras.Model, inputs: np.ndarray, baselines: dict[str, Callable]
) -> dict[str, np.ndarray]:
    """Method -> (n_out, H, W) forecast on the model's scale, from (n_in, H, W) inputs, by the
    model and by each baseline (name -> forecaster, as `run_baselines` builds them).

    Inputs are on the model's scale with no data as 0, as the input pipeline gives them.
    """
    batch = inputs[None, ..., None]  # (1, n_in, H, W, 1)
    forecasts = {"model": keras.ops.convert_to_numpy(model.predict_on_batch(batch))[0, ..., 0]}
    for name, baseline in baselines.items():
        forecasts[name] = baseline(batch)[0, ..., 0]
    return forecasts


def write_pictures(
    sequence: ForecastSequence,
    stem: Path,
    fmt: str,
    *,
    fps: float,
    max_lead_times: int,
    replace: bool,
) -> list[Path]:
    """The animation (gif or mp4) and the still (png) of `sequence`, or only the still.

    Raises:
        FileExistsError: one exists and `replace` is false (`nowcast.io.publish_new`).
    """
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


def check_plot_format(fmt: str, key: str) -> None:
    """A ValueError for a picture format other than PLOT_FORMATS (`key` names the setting), or
    MP4 without ffmpeg."""
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"unknown {key}, allowed: {', '.join(PLOT_FORMATS)}. Received: {fmt!r}")
    if fmt in ANIMATION_FORMATS:
        check_animation_format(fmt)
