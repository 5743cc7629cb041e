"""A trained run, as the commands that read one (`nowcast-evaluate`, `nowcast-plot`,
`nowcast-predict`) and fine-tuning (`nowcast-train init=<run>`) ask for it.

`Run.open` (or `Run.from_config`, from a command's `run=` and `checkpoint=`) finds the run's
config and checkpoint (nowcast.checkpoints); the run then answers what each command needs of
it: its window lengths and normalisation, the model built for a frame size (`load_model`), the
windows to score or draw (`windows`: its own split, or those of another store), the baselines
set up as its model is (`baselines`), and the grid and time step its model was trained on
(`grid`). `forecast_window` runs the model and the baselines on one window.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from nowcast.baselines import make_baseline
from nowcast.checkpoints import load_checkpoint, load_run_config, resolve_checkpoint
from nowcast.config import NormalisationConfig
from nowcast.data.pipeline import select_windows, valid_windows
from nowcast.data.store import open_store
from nowcast.data.store_set import StoreSet, configured_paths, resolve_stores
from nowcast.data.windows import ALL_WINDOWS, SPLITS
from nowcast.model import frame_multiple

RUN_HINT = "pass run=<a directory written by nowcast-train>"


def require(cfg: DictConfig, key: str, hint: str) -> Any:
    """`cfg[key]`, or a ValueError naming the key and ending in `hint` when it is `???`."""
    if OmegaConf.is_missing(cfg, key):
        raise ValueError(f"no {key} given; {hint}")
    return cfg[key]


@dataclass
class Windows:
    """The windows to score or draw: which stores (those held out whole last), which start indices
    into them read as one sequence (nowcast.data.store_set.StoreSet), and how they were
    chosen."""

    stores: list[Path]
    starts: np.ndarray
    data: DictConfig
    split_from: str
    holdout: int = 0

    def open(self) -> StoreSet:
        return StoreSet(self.stores, holdout=self.holdout)

    @property
    def described(self) -> str:
        """The stores, for messages and metrics.json."""
        return ", ".join(str(path) for path in self.stores)


def _windows_from_split_file(split_file: Path, split: str, data_cfg: DictConfig) -> Windows:
    """The windows training assigned to `split`, found again in the stores by start time."""
    record = json.loads(split_file.read_text())
    stores = [Path(path) for path in record.get("stores", [record["store"]])]
    for store_path in stores:
        if not store_path.is_file():
            raise FileNotFoundError(
                f"a store the run was trained on is missing: {store_path}; put it back, or "
                "score another store with data=<option> data.path=<store.h5>"
            )
    chosen = record["splits"][split]
    start_times = [t.removesuffix("Z") for t in chosen["start_times"]]
    seconds = np.array(start_times, dtype="datetime64[s]").astype(np.int64)
    store_index = np.asarray(chosen.get("store_index", np.zeros(seconds.size)), dtype=np.int64)
    with StoreSet(stores, holdout=record.get("holdout", 0)) as store_set:
        starts = np.zeros(seconds.size, np.int64)
        found = np.zeros(seconds.size, bool)
        for member, store in enumerate(store_set.members):
            mine = store_index == member
            local = np.searchsorted(store.times, seconds[mine])
            inside = local < len(store.times)
            inside[inside] = store.times[local[inside]] == seconds[mine][inside]
            starts[mine], found[mine] = local + store_set.offsets[member], inside
    if not found.all():
        raise ValueError(
            f"{', '.join(map(str, stores))} no longer hold {int((~found).sum())} of the {split} "
            f"windows listed in {split_file}: a store changed since training; pass "
            "data=<option> data.path=<store.h5> to split it anew"
        )
    return Windows(stores, starts, data_cfg, f"{split_file}", record.get("holdout", 0))


def _windows_from_data_config(data_cfg: DictConfig, split: str) -> Windows:
    """The windows of `split` when the stores are split by `data_cfg`'s settings, or every
    valid window of the stores for split=all."""
    training, holdout = resolve_stores(data_cfg)
    with StoreSet([*training, *holdout], holdout=len(holdout)) as stores:
        if split == ALL_WINDOWS:
            starts = valid_windows(stores, data_cfg)
        else:
            starts = select_windows(stores, data_cfg).starts[split]
    return Windows([*training, *holdout], starts, data_cfg, "data config", len(holdout))


@dataclass(frozen=True)
class ModelGrid:
    """The grid and time step a run's model was trained on: those of its training store.

    Attributes:
        store: the store they come from.
        grid: its grid description, xsize and ysize included.
        quantity: its quantity (DBZH or VIL).
        minutes_per_frame: its time step.
        zr: the Z-R relation (a, b) its frames were made with.
        frame_multiple: the model also takes frames of the store's pixel size on other grids,
            if their sides are multiples of this; None: only frames on the store's grid.
    """

    store: Path
    grid: dict[str, Any]
    quantity: str
    minutes_per_frame: float
    zr: tuple[float, float]
    frame_multiple: int | None


@dataclass(frozen=True)
class Run:
    """A run directory written by `nowcast-train`, its config and the checkpoint chosen.

    Attributes:
        dir: the run directory, absolute.
        config: the `data` and `model` groups it was trained with (`load_run_config`).
        checkpoint: the checkpoint file (`resolve_checkpoint`).
    """

    dir: Path
    config: DictConfig
    checkpoint: Path

    @classmethod
    def open(cls, path: str | Path, checkpoint: str = "best") -> Run:
        """The run at `path` with its `checkpoint` (best, last, or a .keras file).

        Raises:
            FileNotFoundError: no run directory, config.yaml or checkpoint there.
            ValueError: a config.yaml that does not fit today's schemas.
        """
        run_dir = Path(path).expanduser().absolute()
        config = load_run_config(run_dir)
        return cls(run_dir, config, resolve_checkpoint(run_dir, checkpoint))

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Run:
        """The run of a command's `run=` and `checkpoint=` settings.

        Raises:
            ValueError: no `run=` given.
            FileNotFoundError: see `open`.
        """
        run = cls.open(require(cfg, "run", RUN_HINT), cfg.checkpoint)
        return run.matched(cfg.probability_matching)

    def matched(self, probability_matching: bool | None) -> Run:
        """This run with its model's probability matching switched on or off (None: as
        trained); the step has no weights, so the checkpoint fits either way.

        Raises:
            ValueError: matching asked of a model without `model.advection`.
        """
        if probability_matching is None:
            return self
        if probability_matching and not self.config.model.advection:
            raise ValueError(
                f"probability_matching=true needs a model that extrapolates, and {self.dir} "
                "was trained without model.advection; leave probability_matching unset"
            )
        config = self.config.copy()
        config.model.probability_matching = probability_matching
        return Run(self.dir, config, self.checkpoint)

    @property
    def n_in(self) -> int:
        return self.config.data.n_in

    @property
    def n_out(self) -> int:
        return self.config.data.n_out

    @property
    def norm(self) -> NormalisationConfig:
        return self.config.data.normalisation

    def load_model(self, frame_shape: tuple[int, int]) -> keras.Model:
        """The run's model built for frames of (height, width), with the checkpoint's weights
        (`load_checkpoint`)."""
        return load_checkpoint(self.config, self.checkpoint, (*frame_shape, 1))

    def windows(self, split: str, data: DictConfig | None = None) -> Windows:
        """The run's own windows of `split` (split.json), or those of the store `data` names.

        With `data` set, the window lengths and normalisation still come from the run.
        split=all takes every valid window of the store (`data.min_valid_fraction` of its pixels
        valid), unsplit: for a store the run was not trained on.
        """
        run_dir, run_cfg = self.dir, self.config
        if split not in (*SPLITS, ALL_WINDOWS):
            allowed = ", ".join((*SPLITS, ALL_WINDOWS))
            raise ValueError(f"unknown split, allowed: {allowed}. Received: {split!r}")
        if data is not None:
            from_run = {key: run_cfg.data[key] for key in ("n_in", "n_out", "normalisation")}
            windows = _windows_from_data_config(OmegaConf.merge(data, from_run), split)
        elif split != ALL_WINDOWS and (run_dir / "split.json").is_file():
            windows = _windows_from_split_file(run_dir / "split.json", split, run_cfg.data)
        else:
            windows = _windows_from_data_config(run_cfg.data, split)
        if windows.starts.size == 0:
            raise ValueError(
                f"the {split} split of {windows.described} has no windows; choose another split= "
                "or data.split fractions"
            )
        if data is not None:
            self._check_time_step(windows)
        return windows

    def _trained_store(self) -> Path:
        """The (first) store the run trained on, as split.json or else its config names it."""
        if (self.dir / "split.json").is_file():
            return Path(json.loads((self.dir / "split.json").read_text())["store"])
        return Path(configured_paths(self.config.data)[0][0]).expanduser().absolute()

    def _check_time_step(self, windows: Windows) -> None:
        """Refuse stores of another time step than the run's: its lead times are frames, so a
        10-minute archive scored by a 5-minute model would be scored at leads it never made.

        The run's time step comes from the store it trained on; where that is gone, the
        stores are scored unchecked.
        """
        trained_on = self._trained_store()
        if not trained_on.is_file():
            return
        with open_store(trained_on) as store:
            expected = store.minutes_per_frame
        with windows.open() as stores:
            for member in stores.members:
                if member.minutes_per_frame != expected:
                    raise ValueError(
                        f"{member.path} has a time step of {member.minutes_per_frame:g} min, but "
                        f"the run was trained on {expected:g}-minute frames ({trained_on}): its "
                        "lead times are frames, so it would be scored at leads it never "
                        "forecast; score stores of the run's time step, or train a run on this one"
                    )

    def baselines(self, names: list[str]) -> dict[str, Callable]:
        """Name -> forecaster for each baseline in `names`, set up as the run's model is: its
        number of lead times, its block-matching reach (`model.advection_max_speed`), and its
        normalisation (S-PROG works on rain rates).

        Raises:
            ValueError: an unknown name (see `make_baseline`), or a baseline that needs more input
                frames than the run's windows have (`data.n_in`).
        """
        run_cfg = self.config
        n_out, reach = run_cfg.data.n_out, run_cfg.model.advection_max_speed
        norm = run_cfg.data.normalisation
        baselines = {
            name: make_baseline(name, n_out=n_out, max_speed=reach, norm=norm) for name in names
        }
        for name, baseline in baselines.items():
            if baseline.min_frames > run_cfg.data.n_in:
                raise ValueError(
                    f"the {name} baseline needs at least {baseline.min_frames} input frames, the "
                    f"run has data.n_in={run_cfg.data.n_in}; leave it out of baselines=[...]"
                )
        return baselines

    def grid(self, reference_store: str | None = None) -> ModelGrid:
        """The grid of `reference_store`, or of the store the run was trained on, and the frame
        sizes the run's model takes.

        Raises:
            FileNotFoundError: that store is missing.
        """
        run_cfg = self.config
        if reference_store is not None:
            path = Path(reference_store).expanduser().absolute()
        else:
            path = self._trained_store()
        if not path.is_file():
            raise FileNotFoundError(
                f"the store the run was trained on is missing: {path}; nowcast-predict takes the "
                "model's grid and time step from it: put it back, or pass "
                "reference_store=<a store on the same grid>"
            )
        with open_store(path) as store:
            _, height, width = store.shape
            return ModelGrid(
                store=path,
                grid={"ysize": height, "xsize": width, **store.grid},
                quantity=store.quantity,
                minutes_per_frame=store.minutes_per_frame,
                zr=store.zr or (run_cfg.data.normalisation.zr_a, run_cfg.data.normalisation.zr_b),
                frame_multiple=frame_multiple(run_cfg.model),
            )


def forecast_window(
    model: keras.Model, inputs: np.ndarray, baselines: dict[str, Callable]
) -> dict[str, np.ndarray]:
    """Method -> (n_out, H, W) forecast on the model's scale, from (n_in, H, W) inputs, by the
    model and by each baseline (name -> forecaster, as `Run.baselines` builds them).

    Inputs are on the model's scale with no data as 0, as the input pipeline gives them.
    """
    batch = inputs[None, ..., None]  # (1, n_in, H, W, 1)
    forecasts = {"model": keras.ops.convert_to_numpy(model.predict_on_batch(batch))[0, ..., 0]}
    for name, baseline in baselines.items():
        forecasts[name] = baseline(batch)[0, ..., 0]
    return forecasts
