"""Evaluation: score a trained run's checkpoint the way forecasters score nowcasts.

`evaluate(cfg)` is a plain function (no Hydra decorator), so tests and notebooks call it
directly; `nowcast.cli.evaluate_main` is the command-line wrapper. It reads the run written by
`nowcast.training.train` (config.yaml, split.json, checkpoints/), forecasts every window of one
split batch by batch (memory does not grow with the split), and scores the model beside the
baselines of nowcast.baselines with nowcast.metrics, in physical units: rain rate (mm/h) for
reflectivity stores, VIL levels for VIL stores (nowcast.units.scoring_for). Everything goes to
`cfg.paths.output_dir` (`<run>/evaluation` by default), written under a temporary name and
renamed when complete:

    metrics.json       every score per lead time (and threshold or scale), the means over lead
                       times, the raw contingency counts and sums (to merge or recompute), the
                       bootstrap interval of the model's mean CSI minus each baseline's (over
                       runs of consecutive windows, nowcast.reports.consecutive_runs), and
                       what was scored: run, checkpoint, store, split, thresholds, lead times,
                       and the precision the model's forward pass ran in (`precision`)
    categorical.csv    per method, lead time and threshold: counts, CSI, POD, FAR, HSS, ETS, bias
    continuous.csv     per method and lead time: MSE, MAE, B-MSE, B-MAE, FSS per scale
    summary.txt        the table printed at the end: means over lead times
    csi.png, hss.png   the score versus lead time, one panel per threshold, every method

(what each file holds, and how: nowcast.reports). The run, its windows and its baselines come
from nowcast.run.Run.

Several stores (`data.path=[...]`, or a run trained on several) are scored store by store: the
files above hold the totals pooled over them (counts added, then scored), `stores/<n>-<name>/`
each store's own, and scorecard.png every method's mean CSI against a reference method's,
store by store and pooled (nowcast.reports.scorecard_values, nowcast.drawing.plot_scorecard).

A long record can be scored in shards (nowcast.sharding): `shard=i/n` scores the i-th of n
stretches of the windows and writes only its raw totals, to
`<shards_dir>/shard-<i>-of-<n>/shard.json`;
`merge=true` sums the n shards into the outputs above (`merge_shards`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig

from nowcast.balanced import BALANCED_THRESHOLDS_MMH, BALANCED_WEIGHTS
from nowcast.checkpoints import load_run_config
from nowcast.config import MetricsConfig
from nowcast.data.pipeline import WindowDataset, WindowReader, whole_frame_batch_size
from nowcast.data.store import REFLECTIVITY
from nowcast.distribute import choose_precision, dtype_policy
from nowcast.drawing import plot_scorecard
from nowcast.io import publish_folder
from nowcast.locks import output_lock
from nowcast.memory import keep_freed_memory
from nowcast.metrics import ObservedBatch, VerificationAccumulator
from nowcast.reports import (
    as_json,
    bootstrap_record,
    check_bootstrap_settings,
    consecutive_runs,
    describe_windows,
    method_record,
    scorecard_values,
    summary_table,
    write_report,
)
from nowcast.run import RUN_HINT, Run, Windows, require
from nowcast.sharding import (
    SHARD_FILE,
    Shard,
    check_shard_options,
    check_shards,
    read_shards,
    shard_record,
    shard_totals,
    shard_windows,
)
from nowcast.units import Scoring, scoring_for, to_physical

log = logging.getLogger(__name__)

STORES_FOLDER = "stores"  # each store's outputs, when several are scored


@dataclass
class EvaluationResult:
    """Where the outputs went, what metrics.json holds (for a shard: shard.json), and the text
    printed at the end."""

    output_dir: Path
    metrics: dict
    summary: str


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


@dataclass
class _Plan:
    """What a config scores, found without the model: the run (its config and checkpoint), the
    windows, the run of consecutive windows each belongs to (`consecutive_runs`) and the store
    it lies in (with the stores' first frames in the set and their frame sizes), how they are
    scored, the methods, and where the outputs go. `header`: the part of metrics.json that says
    what was scored; `scored`: what a shard records it scored (`_scored`)."""

    run: Run
    output_dir: Path
    windows: Windows
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
    return json.loads(json.dumps(as_json(scored)))


def _folder(path: str) -> Path:
    return Path(path).expanduser().absolute()


def _output(cfg: DictConfig, shard: Shard | None) -> tuple[Path, str]:
    """Where the outputs go (`paths.output_dir`, or a shard's folder in `shards_dir`), and the
    setting that moves them."""
    if shard is None:
        return _folder(cfg.paths.output_dir), "paths.output_dir"
    return _folder(cfg.shards_dir) / shard.folder_name, "shards_dir"


def _plan(cfg: DictConfig, run: Run, shard: Shard | None) -> _Plan:
    """Check `cfg` and find what it scores of `run`; the outputs go to `paths.output_dir`, or
    for a shard to its folder in `shards_dir`.

    Raises:
        FileNotFoundError: no such run, checkpoint or store.
        FileExistsError: the output folder exists and `overwrite` is false.
        ValueError: bad settings, or a split without windows.
    """
    output_dir, elsewhere = _output(cfg, shard)
    run_cfg, checkpoint = run.config, run.checkpoint
    if output_dir.exists() and not cfg.overwrite:
        raise FileExistsError(
            f"{output_dir} exists; pass overwrite=true to replace it, or "
            f"{elsewhere}=<another folder>"
        )
    windows = run.windows(cfg.split, cfg.data)
    n_in, n_out, norm = run.n_in, run.n_out, run.norm
    check_bootstrap_settings(cfg.metrics)
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
        "run": str(run.dir),
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
        run=run,
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


def _new_accumulators(plan: _Plan, metrics_cfg: MetricsConfig) -> dict:
    scoring = plan.scoring
    return {
        name: VerificationAccumulator(
            n_lead_times=plan.run.n_out,
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
        "methods": {name: method_record(acc) for name, acc in accumulators.items()},
        "bootstrap": bootstrap_record(accumulators, metrics_cfg, plan.runs[mine]),
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
        "methods": {name: method_record(acc) for name, acc in accumulators.items()},
        "bootstrap": bootstrap_record(accumulators, metrics_cfg, plan.runs),
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
        write_report(folder, record, summary)
        for name, store in stores.items():
            (folder / name).mkdir(parents=True)
            write_report(folder / name, store, summary_table(store))
        if stores and plan.scorecard_reference is not None:
            scorecard = scorecard_values(record, plan.scorecard_reference)
            plot_scorecard(folder / "scorecard.png", **scorecard)

    publish_folder(plan.output_dir, write)
    return EvaluationResult(output_dir=plan.output_dir, metrics=record, summary=summary)


def _write_shard(
    plan: _Plan, shard: Shard, per_store: dict[int, dict], runs: np.ndarray, precision: str
) -> EvaluationResult:
    """shard.json (nowcast.sharding.shard_record) in the shard's folder."""
    record = shard_record(
        shard,
        scored=plan.scored,
        per_store=per_store,
        several_stores=len(plan.windows.stores) > 1,
        windows=runs.size,
        precision=precision,
    )
    text = json.dumps(as_json(record))
    publish_folder(plan.output_dir, lambda folder: (folder / SHARD_FILE).write_text(text))
    summary = (
        f"Shard {shard}: {runs.size} of the {plan.runs.size} windows scored, totals written to "
        f"{plan.output_dir / SHARD_FILE}.\nOnce all {shard.count} shards are written, merge "
        f"them: the same command with merge=true in place of shard={shard}."
    )
    return EvaluationResult(output_dir=plan.output_dir, metrics=record, summary=summary)


def merge_shards(cfg: DictConfig, run: Run | None = None) -> EvaluationResult:
    """Sum the shards in `cfg.shards_dir` into the outputs one process writes (see the module
    docstring) in `paths.output_dir`; `run`: the run of `cfg.run`, if it is open already.

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
    plan = _plan(cfg, run or Run.from_config(cfg), None)
    folder = _folder(cfg.shards_dir)
    records = check_shards(read_shards(folder), plan.scored, folder)
    per_store: dict[int, dict] = {}
    for record in records:
        for member, totals in shard_totals(record).items():
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
    # One process at a time writes an output folder, from the check that it does not exist to
    # its publication; a run that is training is read as usual (nowcast.locks). The lock file
    # goes beside the folder, in the run by default: a missing run is named first, and the
    # rest (its checkpoint) once the lock is held.
    load_run_config(_folder(require(cfg, "run", RUN_HINT)))
    output_dir, elsewhere = _output(cfg, shard)
    with output_lock(
        output_dir, command="nowcast-evaluate", alternative=f"pass {elsewhere}=<another folder>"
    ):
        run = Run.from_config(cfg)
        if cfg.merge:
            return merge_shards(cfg, run)
        keep_freed_memory()
        return _score(cfg, run, shard)


def _score(cfg: DictConfig, run: Run, shard: Shard | None) -> EvaluationResult:
    """Score the windows of `cfg` (of `shard`, if given) and write the outputs."""
    precision, reason = choose_precision(cfg.precision, setting="precision")
    plan = _plan(cfg, run, shard)
    windows, runs, store_of_window = plan.windows, plan.runs, plan.store_of_window
    if shard is not None:
        windows, runs, store_of_window = shard_windows(shard, windows, runs, store_of_window)
    log.info("The model's forward pass in %s: %s", precision, reason)
    baselines = run.baselines(cfg.baselines)
    models: dict[tuple[int, int], keras.Model] = {}
    per_store = {}
    for member in np.unique(store_of_window):
        mine = store_of_window == member
        size = plan.frame_sizes[member]
        if size not in models:  # a model is built for one frame size
            with dtype_policy(precision):
                models[size] = run.load_model(size)
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
    run_cfg, quantity = plan.run.config, plan.quantity
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
        describe_windows(cfg.split, store, starts.size, plan.windows.data),
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
