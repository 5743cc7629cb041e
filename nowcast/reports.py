"""What `nowcast-evaluate` writes from its totals: metrics.json's records, the tables, the text.

A method's record (`method_record`) holds its scores per lead time, their means over lead times
and the raw totals they come from; `bootstrap_record` adds the interval of the model's mean CSI
minus each baseline's, from resamples of runs of consecutive windows (`consecutive_runs`).
`write_report` writes a record to a folder as metrics.json (`as_json`: NumPy as JSON),
categorical.csv and continuous.csv, summary.txt (`summary_table`, ending in `head_to_head`) and
the CSI and HSS plots (nowcast.drawing); `scorecard_values` is what the scorecard of several
stores draws. Nothing here runs a model or reads a store.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np

from nowcast.config import MetricsConfig
from nowcast.data.windows import ALL_WINDOWS
from nowcast.drawing import plot_scores_versus_lead_time
from nowcast.metrics import (
    CATEGORICAL_SCORES,
    CONTINGENCY_FIELDS,
    CONTINUOUS_SCORES,
    ERROR_SUMS,
    FSS_SUMS,
    VerificationAccumulator,
    bootstrap_mean_difference,
)

PLOTTED_SCORES = ("csi", "hss")

BOOTSTRAP_LEVEL = 0.95

# Fewer runs of consecutive windows than this give no interval: a resample of 2-4 runs spans
# little of what another sample of weather could be, and would print a narrow interval.
MIN_BOOTSTRAP_RUNS = 5


def as_json(value):
    """NumPy arrays and scalars as lists and numbers; NaN as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, (np.ndarray, list, tuple)):
        return [as_json(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def method_record(accumulator: VerificationAccumulator) -> dict:
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


def check_bootstrap_settings(metrics_cfg: MetricsConfig) -> None:
    if metrics_cfg.bootstrap_samples < 0:
        raise ValueError(
            "metrics.bootstrap_samples must be >= 0 (0: no interval). "
            f"Received: {metrics_cfg.bootstrap_samples}"
        )


def bootstrap_record(
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


def describe_windows(split: str, store: str | Path, count: int, data: dict) -> str:
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
        f"{describe_windows(data['split'], data['store'], data['windows'], data)}, lead "
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


def write_report(folder: Path, record: dict, summary: str) -> None:
    (folder / "metrics.json").write_text(json.dumps(as_json(record), indent=1))
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
