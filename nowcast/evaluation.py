"""Evaluation: score a trained run's checkpoint the way forecasters score nowcasts.

`evaluate(cfg)` is a plain function (no Hydra decorator), so tests and notebooks call it
directly; `nowcast.cli.evaluate_main` is the command-line wrapper. It reads the run written by
`nowcast.training.train` (config.yaml, split.json, checkpoints/), forecasts every window of one
split batch by batch (memory does not grow with the split), and scores the model beside the
baselines of nowcast.baselines with nowcast.metrics, in physical units: rain rate (mm/h) for
reflectivity stores, VIL levels for VIL stores (`scoring_for`). Everything goes to
`cfg.paths.output_dir` (`<run>/evaluation` by default), written under a temporary name and
renamed when complete:

    metrics.json       every score per lead time (and threshold or scale), the means over lead
                       times, the raw contingency counts and sums (to merge or recompute), the
                       bootstrap interval of the model's mean CSI minus each baseline's (over
                       runs of consecutive windows, `consecutive_runs`), and what was scored:
                       run, checkpoint, store, split, thresholds, lead times, and the
                       precision the model's forward pass ran in (`precision`)
    categorical.csv    per method, lead time and threshold: counts, CSI, POD, FAR, HSS, ETS, bias
    continuous.csv     per method and lead time: MSE, MAE, B-MSE, B-MAE, FSS per scale
    summary.txt        the table printed at the end: means over lead times
    csi.png, hss.png   the score versus lead time, one panel per threshold, every method

Several stores (`data.path=[...]`, or a run trained on several) are scored store by store: the
files above hold the totals pooled over them (counts added, then scored), `stores/<n>-<name>/`
each store's own, and scorecard.png every method's mean CSI against a reference method's,
store by store and pooled (`scorecard_values`, nowcast.plotting.plot_scorecard).

A long record can be scored in shards (nowcast.sharding): `shard=i/n` scores the i-th of n
stretches of the windows and writes only its raw totals, to
`<shards_dir>/shard-<i>-of-<n>/shard.json`;
`merge=true` sums the n shards into the outputs above (`merge_shards`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from nowcast.baselines import make_baseline
from nowcast.checkpoints import load_checkpoint, load_run_config, resolve_checkpoint
from nowcast.config import (
    MetricsConfig,
    NormalisationConfig,
)
from nowcast.data.pipeline import (
    WindowDataset,
    WindowReader,
    select_windows,
    valid_windows,
    whole_frame_batch_size,
)
from nowcast.data.store import REFLECTIVITY, VIL
from nowcast.data.store_set import StoreSet, resolve_stores
from nowcast.data.windows import ALL_WINDOWS, SPLITS
from nowcast.distribute import choose_precision, dtype_policy
from nowcast.locks import output_lock
from nowcast.memory import keep_freed_memory
from nowcast.metrics import (
    BALANCED_THRESHOLDS_MMH,
    BALANCED_WEIGHTS,
    CATEGORICAL_SCORES,
    CONTINGENCY_FIELDS,
    CONTINUOUS_SCORES,
    ERROR_SUMS,
    FSS_SUMS,
    ObservedBatch,
    VerificationAccumulator,
    bootstrap_mean_difference,
)
from nowcast.plotting import plot_scorecard
from nowcast.sharding import (
    SHARD_FILE,
    SHARD_FORMAT,
    Shard,
    check_shard_options,
    check_shards,
    read_shards,
)
from nowcast.units import dbz_to_rain, denormalise

log = logging.getLogger(__name__)

PLOTTED_SCORES = ("csi", "hss")
BOOTSTRAP_LEVEL = 0.95
# Fewer runs of consecutive windows than this give no interval: a resample of 2-4 runs spans
# little of what another sample of weather could be, and would print a narrow interval.
MIN_BOOTSTRAP_RUNS = 5
STORES_FOLDER = "stores"  # each store's outputs, when several are scored


@dataclass
class EvaluationResult:
    """Where the outputs went, what metrics.json holds (for a shard: shard.json), and the text
    printed at the end."""

    output_dir: Path
    metrics: dict
    summary: str


@dataclass(frozen=True)
class Scoring:
    """How forecasts of a store's quantity are scored: unit and thresholds in that unit.

    `balanced`: whether Shi et al.'s B-MSE and B-MAE (rain-rate weights) apply.
    """

    unit: str
    thresholds: list[float]
    fss_threshold: float
    balanced: bool


def scoring_for(quantity: str, metrics_cfg: MetricsConfig) -> Scoring:
    """Reflectivity is scored as rain rate (mm/h), VIL in VIL levels (SEVIR's thresholds).

    Raises:
        ValueError: another quantity, or thresholds that are not positive and increasing.
    """
    if quantity == REFLECTIVITY.name:
        scoring = Scoring(
            "mm/h", list(metrics_cfg.thresholds_mmh), metrics_cfg.fss_threshold_mmh, True
        )
    elif quantity == VIL.name:
        scoring = Scoring(
            VIL.units, list(metrics_cfg.thresholds_vil), metrics_cfg.fss_threshold_vil, False
        )
    else:
        raise ValueError(
            f"no scores are defined for stores of {quantity!r}, allowed: "
            f"{REFLECTIVITY.name}, {VIL.name}"
        )
    thresholds = scoring.thresholds
    if not thresholds or min(thresholds) <= 0 or np.any(np.diff(thresholds) <= 0):
        raise ValueError(
            f"metrics thresholds must be positive and increasing, Received: {thresholds}"
        )
    return scoring


def to_physical(values: np.ndarray, norm: NormalisationConfig, quantity: str) -> np.ndarray:
    """Model-scale values to the scored unit (`scoring_for`), float32; NaN stays NaN.

    Values are clipped to [0, 1] first, the range the observations have on that scale. For
    reflectivity, 0 (no echo) is 0 mm/h and other values go through dBZ and the run's Z-R
    relation; other quantities are de-normalised to the store's unit.
    """
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    if quantity != REFLECTIVITY.name:
        return denormalise(values, norm)
    # Z-R takes two float64 powers per pixel, the costliest step of scoring a batch: take them
    # only where there is echo, a small part of most radar frames.
    rain = np.where(np.isnan(values), np.float32(np.nan), np.float32(0.0))
    echo = values > 0.0
    rain[echo] = dbz_to_rain(denormalise(values[echo], norm), norm.zr_a, norm.zr_b)
    return rain


@dataclass
class _Windows:
    """The windows to score: which stores (those held out whole last), which start indices
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


def run_baselines(names: list[str], run_cfg: DictConfig) -> dict[str, Callable]:
    """Name -> forecaster for each baseline in `names`, set up as the run's model is: its
    number of lead times, its block-matching reach (`model.advection_max_speed`), and its
    normalisation (S-PROG works on rain rates).

    Raises:
        ValueError: an unknown name (see `make_baseline`), or a baseline that needs more input
            frames than the run's windows have (`data.n_in`).
    """
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


class _ModelAndExtrapolation(keras.Model):
    """A model's forecast and the extrapolation it corrects, as one Keras predict step."""

    def __init__(self, network: keras.Model) -> None:
        # The network casts its inputs itself, keeping the extrapolation in float32.
        super().__init__(name="model_and_extrapolation", autocast=False)
        self.network = network

    def call(self, inputs):
        return self.network.forecast_and_extrapolation(inputs)


def _forecast_jobs(
    model: keras.Model, baselines: dict[str, Callable]
) -> list[Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """What runs on each batch, side by side: functions of the inputs that give each method's
    forecast by name. A model with `advection` matches and moves the frames itself, and its
    pass gives `block_matching`'s forecast too (the same extrapolation at the run's reach),
    so the motion is not estimated twice."""

    def alone(name: str, forecast: Callable) -> Callable:
        return lambda inputs: {name: forecast(inputs)}

    baselines = dict(baselines)
    if getattr(model, "advection", False) and "block_matching" in baselines:
        del baselines["block_matching"]
        both = _ModelAndExtrapolation(model)
        names = ("model", "block_matching")
        jobs = [lambda inputs: dict(zip(names, both.predict_on_batch(inputs), strict=True))]
    else:
        jobs = [alone("model", model.predict_on_batch)]
    return jobs + [alone(name, forecast) for name, forecast in baselines.items()]


def _windows_from_split_file(split_file: Path, split: str, data_cfg: DictConfig) -> _Windows:
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
    return _Windows(stores, starts, data_cfg, f"{split_file}", record.get("holdout", 0))


def _windows_from_data_config(data_cfg: DictConfig, split: str) -> _Windows:
    """The windows of `split` when the stores are split by `data_cfg`'s settings, or every
    valid window of the stores for split=all."""
    training, holdout = resolve_stores(data_cfg)
    with StoreSet([*training, *holdout], holdout=len(holdout)) as stores:
        if split == ALL_WINDOWS:
            starts = valid_windows(stores, data_cfg)
        else:
            starts = select_windows(stores, data_cfg).starts[split]
    return _Windows([*training, *holdout], starts, data_cfg, "data config", len(holdout))


def windows_to_score(cfg: DictConfig, run_dir: Path, run_cfg: DictConfig) -> _Windows:
    """The run's own windows of `cfg.split` (split.json), or those of the store `cfg.data` names.

    With `cfg.data` set, the window lengths and normalisation still come from the run.
    split=all takes every valid window of the store (`data.min_valid_fraction` of its pixels
    valid), unsplit: for a store the run was not trained on.
    """
    if cfg.split not in (*SPLITS, ALL_WINDOWS):
        allowed = ", ".join((*SPLITS, ALL_WINDOWS))
        raise ValueError(f"unknown split, allowed: {allowed}. Received: {cfg.split!r}")
    if cfg.data is not None:
        from_run = {key: run_cfg.data[key] for key in ("n_in", "n_out", "normalisation")}
        windows = _windows_from_data_config(OmegaConf.merge(cfg.data, from_run), cfg.split)
    elif cfg.split != ALL_WINDOWS and (run_dir / "split.json").is_file():
        windows = _windows_from_split_file(run_dir / "split.json", cfg.split, run_cfg.data)
    else:
        windows = _windows_from_data_config(run_cfg.data, cfg.split)
    if windows.starts.size == 0:
        raise ValueError(
            f"the {cfg.split} split of {windows.described} has no windows; choose another split= "
            "or data.split fractions"
        )
    return windows


def _as_json(value):
    """NumPy arrays and scalars as lists and numbers; NaN as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, (np.ndarray, list, tuple)):
        return [_as_json(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _method_record(accumulator: VerificationAccumulator) -> dict:
    scores = accumulator.scores()
    with warnings.catch_warnings():
        # A score undefined at every lead time (no rain that heavy) stays NaN, silently.
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {name: np.nanmean(value, axis=0) for name, value in scores.items()}
    return {
        "scores": scores,
        "mean_over_lead_times": means,
        "contingency": {
            name: accumulator.contingency[..., k] for k, name in enumerate(CONTINGENCY_FIELDS)
        },
        "error_sums": {name: accumulator.errors[..., k] for k, name in enumerate(ERROR_SUMS)},
        "fss_sums": {name: accumulator.fss[..., k] for k, name in enumerate(FSS_SUMS)},
    }


def consecutive_runs(
    times: np.ndarray,
    starts: np.ndarray,
    *,
    window_length: int,
    minutes_per_frame: float,
    events: np.ndarray | None = None,
) -> np.ndarray:
    """The run of consecutive windows each window belongs to: what the bootstrap resamples.

    Windows share frames and weather with their neighbours, so they cannot be drawn one by
    one. Scored windows, in store order, stay in one run while the time from the last frame
    of one to the first frame of the next is at most one window's length (so a missing frame
    or a window left out for no-data does not cut a run) and they belong to one event. For a
    split, the runs are its blocks of `data.split.block_hours` (adjacent blocks of the split
    merge into one run); for split=all, the stretches of the store without a long gap.

    Args:
        times: (T,) int64 seconds of the store's frames.
        starts: (N,) start indices of the scored windows into `times`.
        window_length: frames per window (n_in + n_out).
        minutes_per_frame: time between frames.
        events: optional (T,) event id per frame; a new event starts a new run.

    Returns:
        (N,) int64 run ids, 0, 1, ... in time order, one per window of `starts` in its order.

    Examples:
        Windows of 6 frames 5 minutes apart (30 minutes long): window 12 starts 30 minutes
        after the last frame of window 1 (frame 6), so they are one run; window 25 starts 40
        minutes after the last frame of window 12, so it starts a new one.

        >>> times = np.arange(100) * 300
        >>> consecutive_runs(times, np.array([0, 1, 12, 25, 26]), window_length=6,
        ...                  minutes_per_frame=5).tolist()
        [0, 0, 0, 1, 1]
    """
    starts = np.asarray(starts, dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    ordered = starts[order]
    window_seconds = window_length * minutes_per_frame * 60
    # From the last frame of one window to the first frame of the next, in seconds.
    gaps = np.diff(times[ordered]) - (window_length - 1) * minutes_per_frame * 60
    new_run = gaps > window_seconds
    if events is not None:
        new_run |= np.diff(np.asarray(events)[ordered]) != 0
    runs = np.empty(starts.size, np.int64)
    runs[order] = np.concatenate([[0], np.cumsum(new_run)])
    return runs


def _check_bootstrap_settings(metrics_cfg: MetricsConfig) -> None:
    if metrics_cfg.bootstrap_samples < 0:
        raise ValueError(
            "metrics.bootstrap_samples must be >= 0 (0: no interval). "
            f"Received: {metrics_cfg.bootstrap_samples}"
        )


def _bootstrap_record(
    accumulators: dict, metrics_cfg: MetricsConfig, runs: np.ndarray
) -> dict | None:
    """The interval of the model's mean CSI over lead times minus each baseline's, from
    resamples of whole runs of consecutive windows (`runs`: each window's, from
    `consecutive_runs`); none with fewer than `MIN_BOOTSTRAP_RUNS` runs."""
    samples = metrics_cfg.bootstrap_samples
    if samples == 0:
        return None
    model = accumulators["model"].block_contingency
    windows_per_run = np.unique(runs, return_counts=True)[1]
    trusted = windows_per_run.size >= MIN_BOOTSTRAP_RUNS
    return {
        "score": "csi",
        "level": BOOTSTRAP_LEVEL,
        "samples": samples,
        "unit": "run of consecutive windows",
        "runs": windows_per_run.size,
        "min_runs": MIN_BOOTSTRAP_RUNS,
        "windows": int(windows_per_run.sum()),
        "windows_per_run": [int(windows_per_run.min()), int(windows_per_run.max())],
        "mean_difference_interval": {
            name: bootstrap_mean_difference(
                model, accumulator.block_contingency, samples=samples, level=BOOTSTRAP_LEVEL
            )
            for name, accumulator in accumulators.items()
            if name != "model" and trusted
        },
    }


def _fss_column(threshold: float, scale: int) -> str:
    return f"fss_ge{threshold:g}_{scale}px"


def _write_csv_tables(folder: Path, record: dict) -> None:
    lead_times, thresholds, fss = record["lead_times_min"], record["thresholds"], record["fss"]
    with open(folder / "categorical.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "lead_time_min", "threshold", *CONTINGENCY_FIELDS, *CATEGORICAL_SCORES]
        )
        for method, result in record["methods"].items():
            for t, lead in enumerate(lead_times):
                for k, threshold in enumerate(thresholds):
                    counts = [int(result["contingency"][f][t, k]) for f in CONTINGENCY_FIELDS]
                    scores = [float(result["scores"][s][t, k]) for s in CATEGORICAL_SCORES]
                    writer.writerow([method, lead, threshold, *counts, *scores])
    with open(folder / "continuous.csv", "w", newline="") as f:
        writer = csv.writer(f)
        fss_columns = [_fss_column(fss["threshold"], s) for s in fss["scales_px"]]
        writer.writerow(["method", "lead_time_min", *CONTINUOUS_SCORES, *fss_columns])
        for method, result in record["methods"].items():
            for t, lead in enumerate(lead_times):
                errors = [float(result["scores"][s][t]) for s in CONTINUOUS_SCORES]
                writer.writerow([method, lead, *errors, *map(float, result["scores"]["fss"][t])])


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
    from matplotlib.figure import Figure

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


def _describe_windows(split: str, store: str | Path, count: int, data: dict) -> str:
    """Which windows are scored, with the share of valid pixels they needed."""
    which = "every window" if split == ALL_WINDOWS else f"the {split} split"
    return (
        f"{which} of {store}: {count} windows with at least {data['min_valid_fraction']:g} of "
        f"the {data['valid_fraction_of']} valid"
    )


def summary_table(record: dict) -> str:
    """Means over lead times, one row per method: CSI, HSS and frequency bias per threshold,
    then FSS per scale and the error scores; for several stores (pooled above), each store's
    CSI."""
    methods, data, leads = record["methods"], record["data"], record["lead_times_min"]
    width = max(12, *(len(m) for m in methods)) + 2
    lines = [
        f"{_describe_windows(data['split'], data['store'], data['windows'], data)}, lead "
        f"times {leads[0]:g}-{leads[-1]:g} min. Means over lead times; thresholds in "
        f"{record['units']}.",
    ]
    if "model_precision" in record:
        lines[0] += f" The model's forward pass in {' and '.join(record['model_precision'])}."

    def block(title: str, headers: list[str], rows: dict[str, list[float]]) -> None:
        lines.append("")
        lines.append(f"{title:<{width}}" + "".join(f"{h:>12}" for h in headers))
        for method, values in rows.items():
            lines.append(f"{method:<{width}}" + "".join(f"{v:>12.3f}" for v in values))

    thresholds = [f">={t:g}" for t in record["thresholds"]]
    for score, title in (("csi", "CSI"), ("hss", "HSS"), ("bias", "bias")):
        block(title, thresholds, {m: r["mean_over_lead_times"][score] for m, r in methods.items()})
    fss = record["fss"]
    headers = [f"FSS{fss['threshold']:g} {s}px" for s in fss["scales_px"]]
    headers += ["MSE", "MAE", "B-MSE", "B-MAE"]
    rows = {
        m: [*r["mean_over_lead_times"]["fss"]]
        + [r["mean_over_lead_times"][s] for s in CONTINUOUS_SCORES]
        for m, r in methods.items()
    }
    block("", headers, rows)
    if "stores" in record:
        for store in record["stores"].values():
            held = ", held out" if store["held_out"] else ""
            block(
                f"CSI of {Path(store['store']).name} ({store['windows']} windows{held})",
                thresholds,
                store["mean_csi"],
            )
    lines += head_to_head(record)
    return "\n".join(lines)


def head_to_head(record: dict, score: str = "csi") -> list[str]:
    """Lines comparing the model's `score` with each baseline's, per threshold: at how many
    lead times the model is higher, the model's mean over lead times minus the baseline's, and
    that difference's bootstrap interval where the record has one for `score`, then what the
    interval resampled, or why there is none (too few runs of consecutive windows)."""
    methods = record["methods"]
    if "model" not in methods or len(methods) < 2:
        return []
    bootstrap = record.get("bootstrap") or {}
    intervals = bootstrap["mean_difference_interval"] if bootstrap.get("score") == score else {}
    model = np.asarray(methods["model"]["scores"][score])
    rows = {}
    for method, result in methods.items():
        if method != "model":
            other = np.asarray(result["scores"][score])
            rows[f"{method}: leads won"] = [f"{n}/{len(model)}" for n in (model > other).sum(0)]
            rows[f"{method}: mean diff"] = [f"{d:+.3f}" for d in model.mean(0) - other.mean(0)]
            if method in intervals:
                rows[f"{method}: {bootstrap['level']:.0%} interval"] = [
                    "n/a" if np.isnan(low) else f"{low:+.3f}..{high:+.3f}"
                    for low, high in np.asarray(intervals[method], dtype=float)
                ]
    width = max(map(len, rows)) + 2
    title = f"{score.upper()}, model vs"
    lines = ["", f"{title:<{width}}" + "".join(f"{f'>={t:g}':>15}" for t in record["thresholds"])]
    lines += [
        f"{name:<{width}}" + "".join(f"{v:>15}" for v in values) for name, values in rows.items()
    ]
    if intervals:
        low, high = bootstrap["windows_per_run"]
        lines += [
            f"Interval: {bootstrap['samples']} resamples of the {bootstrap['runs']} runs of "
            f"consecutive windows ({low}-{high} windows each),",
            "each drawn whole as its windows share weather; it spans the weather sampled if the "
            "runs",
            "are independent (separate days), not the randomness of training.",
        ]
    elif bootstrap and bootstrap.get("score") == score:
        runs = bootstrap["runs"]
        lines += [
            f"No interval: the {bootstrap['windows']} windows form {runs} run"
            f"{'' if runs == 1 else 's'} of consecutive windows, fewer than the "
            f"{bootstrap['min_runs']} a",
            "resample needs to be trusted; the differences above come from one sample of weather.",
        ]
    return lines


def _write_outputs(folder: Path, record: dict, summary: str) -> None:
    (folder / "metrics.json").write_text(json.dumps(_as_json(record), indent=1))
    _write_csv_tables(folder, record)
    (folder / "summary.txt").write_text(summary + "\n")
    for score in PLOTTED_SCORES:
        plot_scores_versus_lead_time(
            folder / f"{score}.png",
            score=score,
            lead_times_min=record["lead_times_min"],
            thresholds=record["thresholds"],
            unit=record["units"],
            scores_per_method={m: r["scores"][score] for m, r in record["methods"].items()},
        )


def _publish(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` on a temporary folder, then put it in place of `output_dir`."""
    pid = os.getpid()
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{pid}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{pid}")
        output_dir.rename(old)
        tmp.rename(output_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(output_dir)


@dataclass
class _Plan:
    """What a config scores, found without the model: the run's config and checkpoint, the
    windows, the run of consecutive windows each belongs to (`consecutive_runs`) and the store
    it lies in (with the stores' first frames in the set and their frame sizes), how they are
    scored, the methods, and where the outputs go. `header`: the part of metrics.json that says
    what was scored; `scored`: what a shard records it scored (`_scored`)."""

    run_cfg: DictConfig
    checkpoint: Path
    output_dir: Path
    windows: _Windows
    runs: np.ndarray
    store_of_window: np.ndarray
    offsets: np.ndarray
    frame_sizes: list[tuple[int, int]]
    quantity: str
    scoring: Scoring
    methods: list[str]
    scorecard_reference: str | None
    header: dict
    scored: dict


def _folder(path: str) -> Path:
    return Path(path).expanduser().absolute()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _scored(header: dict, methods: list[str], checkpoint: Path, starts: np.ndarray) -> dict:
    """What a shard scored, as JSON values: metrics.json's header, the methods, and digests of
    the checkpoint file and of every window's start (before sharding). A merge takes only the
    shards whose record equals its own (nowcast.sharding.check_shards)."""
    starts = np.ascontiguousarray(starts, dtype="<i8")
    scored = {
        **header,
        "methods": methods,
        "checkpoint_sha256": _sha256(checkpoint),
        "windows_sha256": hashlib.sha256(starts.tobytes()).hexdigest(),
    }
    return json.loads(json.dumps(_as_json(scored)))


def _output(cfg: DictConfig, shard: Shard | None) -> tuple[Path, str]:
    """Where the outputs go (`paths.output_dir`, or a shard's folder in `shards_dir`), and the
    setting that moves them.

    Raises:
        ValueError: no run given.
    """
    if OmegaConf.is_missing(cfg, "run"):
        raise ValueError("no run given; pass run=<a directory written by nowcast-train>")
    if shard is None:
        return _folder(cfg.paths.output_dir), "paths.output_dir"
    return _folder(cfg.shards_dir) / shard.folder_name, "shards_dir"


def _plan(cfg: DictConfig, shard: Shard | None) -> _Plan:
    """Check `cfg` and find what it scores; the outputs go to `paths.output_dir`, or for a
    shard to its folder in `shards_dir`.

    Raises:
        FileNotFoundError: no such run, checkpoint or store.
        FileExistsError: the output folder exists and `overwrite` is false.
        ValueError: bad settings, or a split without windows.
    """
    output_dir, elsewhere = _output(cfg, shard)
    run_dir = _folder(cfg.run)
    run_cfg = load_run_config(run_dir)
    checkpoint = resolve_checkpoint(run_dir, cfg.checkpoint)
    if output_dir.exists() and not cfg.overwrite:
        raise FileExistsError(
            f"{output_dir} exists; pass overwrite=true to replace it, or "
            f"{elsewhere}=<another folder>"
        )
    windows = windows_to_score(cfg, run_dir, run_cfg)
    n_in, n_out = run_cfg.data.n_in, run_cfg.data.n_out
    norm = run_cfg.data.normalisation
    _check_bootstrap_settings(cfg.metrics)
    with windows.open() as stores:
        frame_sizes, offsets = stores.shapes, stores.offsets
        minutes_per_frame, quantity = stores.minutes_per_frame, stores.quantity
        store_of_window = stores.segments[windows.starts]
        runs = consecutive_runs(
            stores.times,
            windows.starts,
            window_length=n_in + n_out,
            minutes_per_frame=minutes_per_frame,
            events=stores.events,
        )
    scoring = scoring_for(quantity, cfg.metrics)
    several = len(windows.stores) > 1
    header = {
        "run": str(run_dir),
        "checkpoint": str(checkpoint),
        "model": run_cfg.model.name,
        "data": {
            "name": windows.data.name,
            "store": windows.described,
            **(
                {"stores": [str(p) for p in windows.stores], "holdout": windows.holdout}
                if several
                else {}
            ),
            "quantity": quantity,
            "split": cfg.split,
            "split_from": windows.split_from,
            "windows": int(windows.starts.size),
            "min_valid_fraction": windows.data.min_valid_fraction,
            "valid_fraction_of": windows.data.valid_fraction_of,
            **(
                {"frame_sizes": [list(size) for size in frame_sizes]}
                if several
                else {"frame_size": list(frame_sizes[0])}
            ),
            "minutes_per_frame": minutes_per_frame,
            "n_in": n_in,
            "n_out": n_out,
        },
        "units": scoring.unit,
        "z_r": {"a": norm.zr_a, "b": norm.zr_b} if quantity == REFLECTIVITY.name else None,
        "lead_times_min": [(k + 1) * minutes_per_frame for k in range(n_out)],
        "thresholds": scoring.thresholds,
        "fss": {"threshold": scoring.fss_threshold, "scales_px": list(cfg.metrics.fss_scales)},
        "balanced_weights": {
            "thresholds": list(BALANCED_THRESHOLDS_MMH),
            "weights": list(BALANCED_WEIGHTS),
        }
        if scoring.balanced
        else None,
    }
    methods = list(dict.fromkeys(["model", *cfg.baselines]))
    reference = cfg.metrics.scorecard_reference
    if reference is None:
        baselines = methods[1:]
        reference = "optical_flow" if "optical_flow" in baselines else next(iter(baselines), None)
    elif reference not in methods:
        raise ValueError(
            f"metrics.scorecard_reference={reference!r} is not scored; choose one of "
            f"{', '.join(methods)}, or add it to baselines=[...]"
        )
    return _Plan(
        run_cfg=run_cfg,
        checkpoint=checkpoint,
        output_dir=output_dir,
        windows=windows,
        runs=runs,
        store_of_window=store_of_window,
        offsets=offsets,
        frame_sizes=frame_sizes,
        quantity=quantity,
        scoring=scoring,
        methods=methods,
        scorecard_reference=reference,
        header=header,
        # Before the model loads: the digest is of the checkpoint scored.
        scored=_scored(header, methods, checkpoint, windows.starts),
    )


def _shard_windows(
    shard: Shard, windows: _Windows, runs: np.ndarray, store_of_window: np.ndarray
) -> tuple[_Windows, np.ndarray, np.ndarray]:
    """The windows `shard` scores, their run ids, counted over all windows as a merge counts
    them, and their stores.

    Raises:
        ValueError: fewer windows than shards (a shard would get none).
    """
    if runs.size < shard.count:
        raise ValueError(
            f"shard={shard}: there are {runs.size} windows to score, fewer than the "
            f"{shard.count} shards; score them in shard=i/{runs.size} at most"
        )
    order = np.argsort(windows.starts, kind="stable")
    takes = np.zeros(runs.size, bool)
    takes[order[shard.takes(runs.size)]] = True
    log.info("Shard %s: %d of the %d windows", shard, takes.sum(), runs.size)
    return replace(windows, starts=windows.starts[takes]), runs[takes], store_of_window[takes]


def _new_accumulators(plan: _Plan, metrics_cfg: MetricsConfig) -> dict:
    scoring = plan.scoring
    return {
        name: VerificationAccumulator(
            n_lead_times=plan.run_cfg.data.n_out,
            thresholds=scoring.thresholds,
            fss_threshold=scoring.fss_threshold,
            fss_scales=metrics_cfg.fss_scales,
            balanced_thresholds=BALANCED_THRESHOLDS_MMH if scoring.balanced else None,
        )
        for name in plan.methods
    }


def _pooled(per_store: dict[int, dict]) -> dict:
    """Each method's totals summed over the stores: contingency counts pooled, not scores
    averaged."""
    pooled = {}
    for accumulators in per_store.values():
        for name, accumulator in accumulators.items():
            if name not in pooled:
                pooled[name] = VerificationAccumulator.from_record(accumulator.to_record())
            else:
                pooled[name].merge(accumulator)
    return pooled


def _store_record(plan: _Plan, member: int, accumulators: dict, metrics_cfg, precisions) -> dict:
    """metrics.json of one store of several: the header narrowed to that store."""
    mine = plan.store_of_window == member
    path = plan.windows.stores[member]
    data = {k: v for k, v in plan.header["data"].items() if k not in ("stores", "frame_sizes")}
    data.update(
        store=str(path),
        windows=int(mine.sum()),
        frame_size=list(plan.frame_sizes[member]),
        held_out=member >= len(plan.windows.stores) - plan.windows.holdout,
    )
    return {
        **plan.header,
        "data": data,
        "model_precision": sorted(set(precisions)),
        "methods": {name: _method_record(acc) for name, acc in accumulators.items()},
        "bootstrap": _bootstrap_record(accumulators, metrics_cfg, plan.runs[mine]),
    }


def _store_folder(member: int, path: Path) -> str:
    """`stores/<n>-<file stem>`: numbered, as two stores may share a name."""
    return f"{STORES_FOLDER}/{member}-{path.stem}"


def _write_evaluation(
    plan: _Plan, per_store: dict[int, dict], metrics_cfg: MetricsConfig, precisions: list[str]
) -> EvaluationResult:
    """metrics.json, the tables, summary.txt and the plots from the totals of every window;
    `precisions`: the dtype policies the model's forward pass ran in (one, unless merged
    shards ran in different ones). With several stores these are the totals pooled over the
    stores, each store's outputs go to `stores/<n>-<name>/`, and scorecard.png sets the
    methods' mean CSI against the reference method's, store by store and pooled."""
    accumulators = _pooled(per_store)
    record = {
        **plan.header,
        "model_precision": sorted(set(precisions)),
        "methods": {name: _method_record(acc) for name, acc in accumulators.items()},
        "bootstrap": _bootstrap_record(accumulators, metrics_cfg, plan.runs),
    }
    stores = {}
    if len(plan.windows.stores) > 1:
        stores = {
            _store_folder(member, plan.windows.stores[member]): _store_record(
                plan, member, per_store[member], metrics_cfg, precisions
            )
            for member in sorted(per_store)
        }
        record["stores"] = {
            folder: {
                "store": store["data"]["store"],
                "windows": store["data"]["windows"],
                "held_out": store["data"]["held_out"],
                "mean_csi": {
                    name: method["mean_over_lead_times"]["csi"]
                    for name, method in store["methods"].items()
                },
            }
            for folder, store in stores.items()
        }
    summary = summary_table(record)

    def write(folder: Path) -> None:
        _write_outputs(folder, record, summary)
        for name, store in stores.items():
            (folder / name).mkdir(parents=True)
            _write_outputs(folder / name, store, summary_table(store))
        if stores and plan.scorecard_reference is not None:
            scorecard = scorecard_values(record, plan.scorecard_reference)
            plot_scorecard(folder / "scorecard.png", **scorecard)

    _publish(plan.output_dir, write)
    return EvaluationResult(output_dir=plan.output_dir, metrics=record, summary=summary)


def scorecard_values(record: dict, reference: str) -> dict:
    """What `plotting.plot_scorecard` draws from a pooled metrics.json: each method's mean CSI
    over lead times minus `reference`'s (a scored method), per store and pooled, per
    threshold."""
    methods = record["methods"]
    columns = {
        f"{folder.split('-', 1)[1]}{' (held out)' if store['held_out'] else ''}": store["mean_csi"]
        for folder, store in record["stores"].items()
    }
    columns["pooled"] = {
        name: method["mean_over_lead_times"]["csi"] for name, method in methods.items()
    }
    shown = [name for name in methods if name != reference]
    differences = np.array(
        [
            [np.asarray(csi[name], float) - np.asarray(csi[reference], float) for name in shown]
            for csi in columns.values()
        ]
    )  # (events, methods, thresholds)
    return {
        "differences": differences,
        "events": list(columns),
        "methods": shown,
        "thresholds": [f">={t:g} {record['units']}" for t in record["thresholds"]],
        "reference": reference,
    }


def _write_shard(
    plan: _Plan, shard: Shard, per_store: dict[int, dict], runs: np.ndarray, precision: str
) -> EvaluationResult:
    """shard.json: what was scored, which shard, and each method's totals, per-run counts
    among them (`VerificationAccumulator.to_record`); of several stores, per store."""
    record = {
        "format": SHARD_FORMAT,
        "shard": {"index": shard.index, "count": shard.count, "windows": runs.size},
        "scored": plan.scored,
        "model_precision": precision,
    }
    totals = {
        str(member): {name: acc.to_record() for name, acc in accumulators.items()}
        for member, accumulators in per_store.items()
    }
    if len(plan.windows.stores) > 1:
        record["stores"] = totals
    else:  # as shards of one store have always been written
        record["accumulators"] = totals["0"]
    text = json.dumps(_as_json(record))
    _publish(plan.output_dir, lambda folder: (folder / SHARD_FILE).write_text(text))
    summary = (
        f"Shard {shard}: {runs.size} of the {plan.runs.size} windows scored, totals written to "
        f"{plan.output_dir / SHARD_FILE}.\nOnce all {shard.count} shards are written, merge "
        f"them: the same command with merge=true in place of shard={shard}."
    )
    return EvaluationResult(output_dir=plan.output_dir, metrics=record, summary=summary)


def _shard_stores(record: dict) -> dict[str, dict]:
    """A shard's totals per store (by its place in the list); a shard of one store holds them
    under `accumulators`."""
    return record["stores"] if "stores" in record else {"0": record["accumulators"]}


def merge_shards(cfg: DictConfig) -> EvaluationResult:
    """Sum the shards in `cfg.shards_dir` into the outputs one process writes (see the module
    docstring) in `paths.output_dir`.

    The merge works out what its own settings score, without the model (run, checkpoint and
    its content, stores, split, windows, thresholds, baselines), and takes the shards only if
    each scored exactly that and all n are there once. Counts, the per-run counts and so the
    bootstrap interval equal one process's; float sums (errors, FSS) may differ in the last
    bits, being summed in another order. `metrics.bootstrap_samples` is the merge's own.

    Raises:
        FileNotFoundError: no such run, checkpoint or store, or no shards.
        FileExistsError: the output folder exists and `overwrite` is false.
        ValueError: a shard that does not belong with the others or with these settings, a
            shard found twice, or a missing shard.
    """
    plan = _plan(cfg, None)
    folder = _folder(cfg.shards_dir)
    records = check_shards(read_shards(folder), plan.scored, folder)
    per_store: dict[int, dict] = {}
    for record in records:
        for member, totals in _shard_stores(record).items():
            merged = per_store.setdefault(int(member), {})
            for method in plan.methods:
                accumulator = VerificationAccumulator.from_record(totals[method])
                if method in merged:
                    merged[method].merge(accumulator)
                else:
                    merged[method] = accumulator
    log.info("Merged the %d shards in %s", len(records), folder)
    # Shards are scored alike in all that decides what is counted; their precision may differ
    # (auto on unlike machines), and is reported. Shards written before it was recorded ran
    # in float32.
    precisions = [record.get("model_precision", "float32") for record in records]
    return _write_evaluation(plan, per_store, cfg.metrics, precisions)


def evaluate(cfg: DictConfig) -> EvaluationResult:
    """Score a run's checkpoint and the baselines on one split; see the module docstring.

    With `shard=i/n`, only the i-th of n equal stretches of the windows, in store order, is
    scored, and its raw totals written to `<shards_dir>/shard-<i>-of-<n>/shard.json`; with
    `merge=true`, nothing is scored and the shards are merged (`merge_shards`).

    Args:
        cfg: a composed `evaluate` config (nowcast.config.EvaluateConfig).

    Returns:
        The output folder, the metrics.json content (NumPy arrays; for a shard, shard.json's)
        and the summary table.

    Raises:
        FileNotFoundError: no such run, checkpoint or store.
        FileExistsError: the output folder exists and `overwrite` is false.
        LockedError: another process is writing the output folder.
        ValueError: a checkpoint that does not match the run's model, frames the model cannot
            take, or bad settings.
    """
    shard = check_shard_options(cfg.shard, cfg.merge)
    output_dir, elsewhere = _output(cfg, shard)
    # One process at a time writes an output folder, from the check that it does not exist to
    # its publication; a run that is training is read as usual (nowcast.locks). The lock file
    # goes beside the folder, in the run by default: a missing run is named first.
    load_run_config(_folder(cfg.run))
    with output_lock(
        output_dir, command="nowcast-evaluate", alternative=f"pass {elsewhere}=<another folder>"
    ):
        if cfg.merge:
            return merge_shards(cfg)
        keep_freed_memory()
        return _score(cfg, shard)


def _score(cfg: DictConfig, shard: Shard | None) -> EvaluationResult:
    """Score the windows of `cfg` (of `shard`, if given) and write the outputs."""
    precision, reason = choose_precision(cfg.precision, setting="precision")
    plan = _plan(cfg, shard)
    run_cfg, checkpoint, windows, runs = plan.run_cfg, plan.checkpoint, plan.windows, plan.runs
    store_of_window = plan.store_of_window
    if shard is not None:
        windows, runs, store_of_window = _shard_windows(shard, windows, runs, store_of_window)
    log.info("The model's forward pass in %s: %s", precision, reason)
    baselines = run_baselines(cfg.baselines, run_cfg)
    models: dict[tuple[int, int], keras.Model] = {}
    per_store = {}
    for member in np.unique(store_of_window):
        mine = store_of_window == member
        size = plan.frame_sizes[member]
        if size not in models:  # a model is built for one frame size
            with dtype_policy(precision):
                models[size] = load_checkpoint(run_cfg, checkpoint, (*size, 1))
        per_store[int(member)] = _score_store(
            cfg,
            plan,
            _forecast_jobs(models[size], baselines),
            store=windows.stores[member],
            starts=windows.starts[mine] - plan.offsets[member],
            runs=runs[mine],
        )
    if shard is not None:
        return _write_shard(plan, shard, per_store, runs, precision)
    return _write_evaluation(plan, per_store, cfg.metrics, [precision])


def _score_store(
    cfg: DictConfig, plan: _Plan, jobs: list[Callable], *, store: Path, starts, runs
) -> dict:
    """Each method's totals over the windows at `starts` of one store (`runs`: their runs)."""
    run_cfg, quantity = plan.run_cfg, plan.quantity
    norm = run_cfg.data.normalisation
    accumulators = _new_accumulators(plan, cfg.metrics)
    # NumPy batches read ahead by threads, under any backend: the forecasters take NumPy.
    reader = WindowReader(
        store, starts, n_in=run_cfg.data.n_in, n_out=run_cfg.data.n_out, norm=norm, seed=0
    )
    height, width = reader.frame_shape
    batch_size = cfg.batch_size or whole_frame_batch_size(run_cfg.data.batch_size, height * width)
    dataset = WindowDataset(reader, batch_size=batch_size)
    log.info(
        "Scoring %s, %d at a time",
        _describe_windows(cfg.split, store, starts.size, plan.windows.data),
        batch_size,
    )
    progress = keras.utils.Progbar(
        starts.size, verbose=1 if cfg.progress else 0, unit_name="window"
    )
    scored = 0
    # The forecasters of a batch run side by side, and each is scored as soon as it is done:
    # TensorFlow, NumPy, SciPy and OpenCV release the GIL in their heavy loops, so the
    # baselines take the cores the model leaves idle. Each accumulator still sees its batches
    # in order, so the sums are those of one method after the other.
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for inputs, targets in dataset:
            pending = [pool.submit(job, inputs) for job in jobs]
            # What the scores need of the observation, computed once for all the methods.
            observation = ObservedBatch(to_physical(targets, norm, quantity))
            batch_runs = runs[scored : scored + len(inputs)]
            for done in as_completed(pending):
                for name, forecast in done.result().items():
                    accumulators[name].update(
                        forecast=to_physical(forecast, norm, quantity),
                        observation=observation,
                        blocks=batch_runs,
                    )
            scored += len(inputs)
            progress.add(len(inputs))
    return accumulators
