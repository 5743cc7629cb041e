"""Training: compose data, model, loss and optimizer from a config and run Keras `fit`.

`train(cfg)` is a plain function (no Hydra decorator), so tests and notebooks call it directly;
`nowcast.cli.train_main` is the command-line wrapper. Everything a run writes goes under
`cfg.paths.output_dir`:

    config.yaml             the resolved config (architecture, data, normalisation)
    split.json              the window start times of each split
    checkpoints/best.keras  lowest validation loss so far
    checkpoints/last.keras  end of the latest epoch
    backup/                 state.json + weights: where to continue an interrupted run
    model.keras             the model at the end of training
    metrics.csv             per-epoch losses and learning rate
    tensorboard/            losses, learning rate, and forecast images of a few windows

Resuming: calling `train` again on a run directory whose backup says it is unfinished continues
from the backup (mid-epoch if it was taken mid-epoch): the weights, the optimizer state, the
position in the window order, the running epoch means and the monitoring state of the plateau
schedule, early stopping and best checkpoint. The training windows are read in an order fixed by
the seed alone (`window_order`), so the continued run reads exactly the windows that the
uninterrupted run would have, and ends with the same weights: bit for bit on CPU with the default
settings (tests/test_training.py). Where kernels reduce in a varying order (GPUs), set
TF_DETERMINISTIC_OPS=1 to keep that guarantee. With `data.augment` each window's flip is drawn
from the seed and its place in that order, so a resumed run, or one on more replicas, flips
every window as the uninterrupted one-device run does.

Fine-tuning: `init` names a run directory (its best checkpoint) or a .keras file whose weights
a new run starts from (`initial_checkpoint`); the run has its own optimizer, schedule and
windows. A resumed run continues from its backup and does not read `init` again.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from nowcast.callbacks import (
    AtomicModelCheckpoint,
    ForecastImages,
    LearningRateToLogs,
    NonFiniteLossError,
    StopOnNonFiniteLoss,
)
from nowcast.checkpoints import architecture_differences
from nowcast.config import TrainConfig, read_saved_config
from nowcast.data.pipeline import (
    WindowReader,
    WindowSelection,
    concatenate_batches,
    input_batches,
    select_windows,
    whole_frame_batch_size,
)
from nowcast.data.store_set import StoreSet, resolve_stores
from nowcast.distribute import (
    check_global_batch,
    choose_precision,
    distribute_windows,
    dtype_policy,
    is_chief,
    make_strategy,
    num_replicas,
    resolve_jit_compile,
)
from nowcast.io import (
    remove_temporary_files,
    write_text_atomically,
    written_atomically,
)
from nowcast.locks import run_lock
from nowcast.losses import PixelLoss, make_loss
from nowcast.model import build_model, frame_multiple
from nowcast.resume import TrainingBackup, TrainingState
from nowcast.run import Run

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine", "step", "plateau")
# What must not change when a run is continued: the windows and their order, the network,
# the loss, and the optimizer variables stored in the backup.
RUN_DEFINING_KEYS = (
    "data",
    "model",
    "loss",
    "optimizer.name",
    "optimizer.schedule",
    "trainer.seed",
    "trainer.steps_per_epoch",
    "init",
)


@dataclass
class TrainResult:
    """`history`: metric name -> one value per epoch of the whole run (earlier sessions' epochs
    included when it was resumed)."""

    history: dict[str, list[float]]
    run_dir: Path
    model: keras.Model


def write_split(
    path: Path, stores: StoreSet, splits: dict[str, np.ndarray], block_hours: float | None
) -> None:
    """Record which windows went to which split, by the UTC time of their first frame, and for
    a run on several stores by the store (its place in `stores`) they lie in."""

    def iso(seconds: int) -> str:
        return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    several = len(stores.members) > 1
    record = {
        "store": str(stores.paths[0]),
        **(
            {"stores": [str(p) for p in stores.paths], "holdout": stores.holdout}
            if several
            else {}
        ),
        "block_hours": block_hours,
        "splits": {
            name: {
                "windows": len(starts),
                "start_times": [iso(stores.times[s]) for s in starts],
                **({"store_index": stores.segments[starts].tolist()} if several else {}),
            }
            for name, starts in splits.items()
        },
    }
    write_text_atomically(path, json.dumps(record, indent=1))


def window_order(n_windows: int, *, seed: int, count: int) -> np.ndarray:
    """Indices of the first `count` training windows in the order the run reads them.

    Pass after pass over the `n_windows` training windows, each pass in a new random order
    drawn from `seed`. The order depends on nothing else, so a resumed run finds its place by
    counting, and a longer run begins like a shorter one.

    Returns:
        (count,) int64 indices into the training windows.
    """
    rng = np.random.default_rng(seed)
    passes = -(-count // n_windows)
    return np.concatenate([rng.permutation(n_windows) for _ in range(passes)])[:count]


def evenly_spaced(starts: np.ndarray, count: int) -> np.ndarray:
    """`count` of `starts` (all if there are no more), spread evenly and in order."""
    if count >= len(starts):
        return starts
    return starts[np.linspace(0, len(starts) - 1, count).round().astype(int)]


def check_patch_size(
    patch_size: int | None, model_cfg: DictConfig, frame_shape: tuple[int, int]
) -> None:
    """A ValueError naming `data.patch_size` if the model cannot train on such patches.

    It trains on patches and validates on whole frames, so it must take any frame size that
    its downsample strides divide (nowcast.model.frame_multiple).
    """
    if patch_size is None:
        return
    multiple = frame_multiple(model_cfg)
    if multiple is None:
        raise ValueError(
            f"data.patch_size={patch_size} needs a model that takes any frame size, but "
            f"model.peephole={model_cfg.peephole} and model.recurrent={model_cfg.recurrent} "
            "take only the size they were built for; unset data.patch_size"
        )
    if patch_size % multiple or not multiple <= patch_size <= min(frame_shape):
        raise ValueError(
            f"data.patch_size={patch_size} must be a multiple of the model's downsample "
            f"strides ({multiple}) no larger than the {frame_shape[0]} x {frame_shape[1]} frames"
        )


def make_optimizer(opt_cfg: DictConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """Adam or AdamW with the configured learning-rate schedule (see OptimizerConfig).

    `plateau` starts from a constant rate; the ReduceLROnPlateau callback of
    `make_callbacks` lowers it.
    """
    if opt_cfg.schedule not in SCHEDULES:
        raise ValueError(
            f"unknown optimizer.schedule, allowed: {', '.join(SCHEDULES)}. "
            f"Received: schedule={opt_cfg.schedule!r}"
        )
    if opt_cfg.warmup_steps and opt_cfg.schedule != "cosine":
        raise ValueError(
            "optimizer.warmup_steps is only used by the cosine schedule; set "
            f"optimizer.warmup_steps=0 for schedule={opt_cfg.schedule}. "
            f"Received: warmup_steps={opt_cfg.warmup_steps}"
        )
    learning_rate = opt_cfg.learning_rate
    if opt_cfg.schedule == "cosine":
        warmup = min(opt_cfg.warmup_steps, total_steps - 1)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else opt_cfg.learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            warmup_target=opt_cfg.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    elif opt_cfg.schedule == "step":
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            opt_cfg.learning_rate, opt_cfg.decay_steps, opt_cfg.decay_rate, staircase=True
        )
    optimizers = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}
    if opt_cfg.name not in optimizers:
        raise ValueError(
            f"unknown optimizer.name, allowed: {', '.join(optimizers)}. "
            f"Received: name={opt_cfg.name!r}"
        )
    kwargs = {"weight_decay": opt_cfg.weight_decay} if opt_cfg.name == "adamw" else {}
    return optimizers[opt_cfg.name](
        learning_rate=learning_rate,
        beta_1=opt_cfg.beta_1,
        beta_2=opt_cfg.beta_2,
        global_clipnorm=opt_cfg.global_clipnorm,
        **kwargs,
    )


def make_callbacks(
    run_dir: Path,
    cfg: DictConfig,
    *,
    state: TrainingState,
    images: tuple[np.ndarray, np.ndarray] | None,
    extra: Sequence[keras.callbacks.Callback] = (),
) -> tuple[list[keras.callbacks.Callback], TrainingBackup]:
    """The run's callbacks, writing under `run_dir`, in the order they must run; and the backup.

    Args:
        run_dir: where checkpoints, logs and backups go.
        cfg: the run's config.
        state: where the run starts (the backup carries its monitoring state over).
        images: (inputs, targets) of the windows shown in TensorBoard, or None.
        extra: more callbacks, run right after the non-finite guard.
    """
    trainer_cfg, opt_cfg = cfg.trainer, cfg.optimizer
    monitors: dict[str, keras.callbacks.Callback] = {}
    if opt_cfg.schedule == "plateau":
        monitors["plateau"] = keras.callbacks.ReduceLROnPlateau(
            factor=opt_cfg.plateau_factor,
            patience=opt_cfg.plateau_patience,
            min_lr=opt_cfg.min_learning_rate,
            verbose=trainer_cfg.verbose,
        )
    if trainer_cfg.early_stopping_patience:
        monitors["early_stopping"] = keras.callbacks.EarlyStopping(
            patience=trainer_cfg.early_stopping_patience, verbose=trainer_cfg.verbose
        )
    # The guard runs first, so that nothing is saved once a loss is not finite.
    callbacks = [StopOnNonFiniteLoss(), *extra, LearningRateToLogs(), *monitors.values()]
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    monitors["best_checkpoint"] = AtomicModelCheckpoint(
        checkpoints / "best.keras", save_best_only=True
    )
    callbacks += [
        AtomicModelCheckpoint(checkpoints / "last.keras"),
        monitors["best_checkpoint"],
        keras.callbacks.CSVLogger(str(run_dir / "metrics.csv"), append=True),
    ]
    # Both write TensorBoard event files with tf.summary; other backends run without TensorFlow.
    if keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))
        if images is not None:
            callbacks.append(ForecastImages(run_dir / "tensorboard" / "forecasts", *images))
    backup = TrainingBackup(
        run_dir / "backup",
        every_steps=trainer_cfg.backup_every_steps,
        monitors=monitors,
        state=state,
    )
    # The backup runs last: it records the other callbacks' state after the epoch's update.
    return [*callbacks, backup], backup


def _leaves(cfg: DictConfig, key: str) -> dict[str, object]:
    """Dotted key -> resolved value of every leaf under `key` (or of `key` itself)."""
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, DictConfig):
        return {key: value}
    flat = {}
    for name in value:
        flat.update(_leaves(cfg, f"{key}.{name}"))
    return flat


def start_state(run_dir: Path, cfg: DictConfig) -> tuple[TrainingState, DictConfig | None]:
    """Where training starts in `run_dir`: from scratch, or from the backup of an unfinished run.

    Returns:
        The state to start from, and the run's saved config when it is continued.

    Raises:
        FileExistsError: `run_dir` holds a finished run.
        ValueError: `run_dir` holds an unfinished run with other settings (RUN_DEFINING_KEYS).
    """
    state = TrainingState.load(run_dir / "backup")
    if state is None:
        if (run_dir / "model.keras").exists():
            raise FileExistsError(
                f"{run_dir} already holds a trained model; choose another hydra.run.dir"
            )
        return TrainingState(), None
    finished = state.stopped_early or state.epoch >= cfg.trainer.epochs
    # A run interrupted after its last backup but before model.keras was written only needs
    # that file: it continues with no epochs left.
    if finished and (run_dir / "model.keras").exists():
        why = "stopped early" if state.stopped_early else f"trained its {state.epoch} epochs"
        raise FileExistsError(
            f"the run in {run_dir} has {why}; choose another hydra.run.dir"
            + ("" if state.stopped_early else ", or raise trainer.epochs to train it further")
        )
    saved = OmegaConf.merge(
        OmegaConf.structured(TrainConfig), read_saved_config(run_dir / "config.yaml")
    )
    before, now = {}, {}
    for key in RUN_DEFINING_KEYS:
        before.update(_leaves(saved, key))
        now.update(_leaves(cfg, key))
    changed = [
        f"{key}: {before.get(key)} -> {now.get(key)}"
        for key in sorted(before.keys() | now.keys())
        if before.get(key) != now.get(key)
    ]
    if changed:
        raise ValueError(
            f"{run_dir} holds an unfinished run with other settings ({'; '.join(changed)}); "
            "continue it with `nowcast-train resume=<dir>` or choose another hydra.run.dir"
        )
    log.info("Continuing the run in %s from epoch %d, step %d", run_dir, state.epoch, state.step)
    return state, saved


def _read_metrics(path: Path, epochs: int) -> dict[str, list[float]]:
    """The rows of metrics.csv for the first `epochs` epochs, as name -> values."""
    if not path.is_file():
        return {}
    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if int(row["epoch"]) < epochs]
    names = [name for name in (rows[0] if rows else {}) if name != "epoch"]
    return {name: [float(row[name]) for row in rows] for name in names}


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the rows of the first `epochs` epochs, atomically.

    metrics.csv is a log that Keras' CSVLogger appends a row to at every epoch end. An
    interrupted run may have logged epochs after its backup (they are trained again) and, if it
    was killed mid-write, a torn last row; both are dropped before the run continues.
    """
    if not path.is_file():
        return
    with path.open(newline="") as file:
        lines = list(csv.reader(file))
    if not lines:
        path.unlink()
        return
    kept = lines[:1] + [
        row
        for row in lines[1:]
        if len(row) == len(lines[0]) and row[0].isdigit() and int(row[0]) < epochs
    ]
    with written_atomically(path) as temporary, temporary.open("w", newline="") as file:
        csv.writer(file).writerows(kept)


def train(cfg: DictConfig, callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Train the configured model on the configured store; see the module docstring.

    Under MultiWorkerMirroredStrategy every worker runs this with the same config; the chief
    writes the run directory, the other workers write the same files to a temporary directory
    (saving is a collective operation there, so every worker must save), which is removed.

    Args:
        cfg: a composed `train` config.
        callbacks: more Keras callbacks, run after the non-finite guard and before the
            run's own.

    Raises:
        LockedError: another process holds the run directory.
        NonFiniteLossError: the loss became NaN or infinite; the checkpoints and the backup
            are those of the last good state.
    """
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow does any other work.
    strategy = make_strategy(cfg.trainer.strategy)
    run_dir = Path(cfg.paths.output_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # The run directory is the chief's alone from here on, before anything in it is read
        # or written (nowcast.locks).
        if is_chief(strategy):
            stack.enter_context(run_lock(run_dir))
        state, saved_cfg = start_state(run_dir, cfg)
        policy, reason = choose_precision(cfg.trainer.precision)
        log.info("Precision %s: %s", policy, reason)
        stack.enter_context(dtype_policy(policy))
        if strategy is not None:
            stack.enter_context(strategy.scope())
        write_dir = run_dir
        if not is_chief(strategy):
            write_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        model, history = _fit(cfg, write_dir, state, saved_cfg, strategy, callbacks)
    # Earlier sessions' epochs of a resumed run, from the chief's log.
    earlier = _read_metrics(run_dir / "metrics.csv", state.epoch)
    for name, values in history.items():
        earlier.setdefault(name, [])[state.epoch :] = values
    return TrainResult(history=earlier, run_dir=run_dir, model=model)


def _fit(
    cfg: DictConfig,
    run_dir: Path,
    state: TrainingState,
    saved_cfg: DictConfig | None,
    strategy,
    extra_callbacks: Sequence[keras.callbacks.Callback],
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train from `state`, writing under `run_dir`; returns the model and this session's epochs.

    `strategy`: from `make_strategy` (None: Keras's default). The steps below run in this order:
    the seed is set before the first window is read, and the datasets are made before the
    model is built, so that the random numbers each step draws stay the same.
    """
    data_cfg, trainer_cfg = cfg.data, cfg.trainer
    loss = make_loss(cfg.loss, data_cfg.normalisation)  # a bad setting fails before any work
    # A resumed run continues from its backup, not from `init`.
    initial = initial_checkpoint(cfg) if cfg.init is not None and not state.weights else None
    remove_leftovers(run_dir)
    keras.utils.set_random_seed(trainer_cfg.seed)
    check_global_batch(data_cfg.batch_size, num_replicas(strategy))
    windows = split_windows(cfg, run_dir)
    record_run(cfg, run_dir, state)
    log.info(
        "Windows per split: %s", ", ".join(f"{k} {len(v)}" for k, v in windows.starts.items())
    )
    batch = data_cfg.batch_size
    steps_per_epoch = trainer_cfg.steps_per_epoch or len(windows.starts["train"]) // batch
    total_steps = steps_per_epoch * trainer_cfg.epochs
    batches = RunBatches(cfg, windows, strategy, total_steps)
    validation = batches.validation()
    images = batches.images()
    model = build_compiled_model(
        cfg, windows.shapes[0], total_steps=total_steps, loss=loss, initial=initial
    )
    log.info(
        "XLA %s, %d replica(s) with %s",
        "on" if model.jit_compile else "off",
        num_replicas(strategy),
        type(strategy).__name__ if strategy is not None else "the default strategy",
    )
    if state.weights:
        restore_backup(model, cfg, state, saved_cfg)
    callbacks, backup = make_callbacks(
        run_dir, cfg, state=state, images=images, extra=extra_callbacks
    )
    history = fit_segments(
        model,
        cfg,
        batches,
        validation,
        state=state,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        backup=backup,
    )
    with written_atomically(run_dir / "model.keras") as temporary:
        model.save(temporary)
    return model, history


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files that interrupted writes left in the run directory."""
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "backup"):
        for leftover in remove_temporary_files(folder):
            log.info("Removed %s, left by an interrupted write", leftover)


@dataclass
class RunWindows:
    """The windows a run trains and validates on.

    Attributes:
        store_paths: the stores, read as one sequence (nowcast.data.store_set.StoreSet), those
            held out whole last.
        shapes: (height, width) of each store's frames.
        selection: the windows of each split (`starts`) and the training windows' weights.
        val_store: (N_val,) the store of each validation window.
    """

    store_paths: list[Path]
    shapes: list[tuple[int, int]]
    selection: WindowSelection
    val_store: np.ndarray

    @property
    def starts(self) -> dict[str, np.ndarray]:
        return self.selection.starts


def split_windows(cfg: DictConfig, run_dir: Path) -> RunWindows:
    """Check the stores against the settings, split their windows and write split.json.

    Raises:
        ValueError: stores on grids of different sizes without `data.patch_size`, or a patch
            size the model cannot take.
    """
    data_cfg = cfg.data
    training_paths, holdout_paths = resolve_stores(data_cfg)
    store_paths = [*training_paths, *holdout_paths]
    with StoreSet(store_paths, holdout=len(holdout_paths)) as stores:
        shapes = stores.shapes
        if stores.frame_shape is None and data_cfg.patch_size is None:
            raise ValueError(
                f"the stores of data.path come on grids of different sizes "
                f"({', '.join(f'{h} x {w}' for h, w in shapes)}); train on patches of them: "
                "set data.patch_size=<pixels>, e.g. 128"
            )
        for shape in shapes:
            check_patch_size(data_cfg.patch_size, cfg.model, shape)
        selection = select_windows(stores, data_cfg)
        splits = selection.starts
        write_split(run_dir / "split.json", stores, splits, selection.block_hours)
        val_store = stores.segments[splits["val"]]
    return RunWindows(store_paths, shapes, selection, val_store)


def record_run(cfg: DictConfig, run_dir: Path, state: TrainingState) -> None:
    """Write config.yaml, and cut metrics.csv to the epochs that `state` has completed."""
    write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    _truncate_metrics(run_dir / "metrics.csv", state.epoch)


class RunBatches:
    """The batches of a run's windows: training (from any step on), validation, and the few
    windows shown in TensorBoard.

    Args:
        cfg: the run's config.
        windows: its windows (`split_windows`).
        strategy: the distribution strategy (`make_strategy`), or None.
        total_steps: the training steps of the whole run.
    """

    def __init__(
        self,
        cfg: DictConfig,
        windows: RunWindows,
        strategy,
        total_steps: int,
    ) -> None:
        self.cfg, self.windows, self.strategy = cfg, windows, strategy
        batch = cfg.data.batch_size
        # (steps, batch) indices into the training windows, in the order they are trained on.
        order = window_order(
            len(windows.starts["train"]), seed=cfg.trainer.seed, count=total_steps * batch
        )
        self.order = order.reshape(total_steps, batch)

    def of(
        self,
        starts: np.ndarray,
        batch_size: int,
        *,
        weights: np.ndarray | None = None,
        training: bool = False,
        positions: np.ndarray | None = None,
    ):
        """Batches of the windows at `starts`, in the given order: training windows come in
        `window_order`."""
        data_cfg = self.cfg.data
        reader = WindowReader(
            self.windows.store_paths,
            starts,
            n_in=data_cfg.n_in,
            n_out=data_cfg.n_out,
            norm=data_cfg.normalisation,
            seed=self.cfg.trainer.seed,
            weights=weights,
            augment=data_cfg.augment and training,
            patch_size=data_cfg.patch_size if training else None,
            min_patch_valid=data_cfg.min_valid_fraction,
        )
        return input_batches(
            reader, batch_size=batch_size, drop_remainder=training, positions=positions
        )

    def training(self, first_step: int):
        """The training batches from step `first_step` of the run on, spread over the
        strategy's replicas."""
        batch = self.cfg.data.batch_size
        splits = self.windows.starts

        def read(indices: np.ndarray, batch_size: int, positions: np.ndarray):
            weights = self.windows.selection.train_weights
            weights = None if weights is None else weights[indices]
            return self.of(
                splits["train"][indices],
                batch_size,
                weights=weights,
                training=True,
                positions=positions,
            )

        return distribute_windows(self.strategy, self.order[first_step:], read, first_step * batch)

    def validation(self):
        """The validation batches, the same every epoch."""
        batch = self.cfg.data.batch_size
        splits, val_store = self.windows.starts, self.windows.val_store
        # With validation_steps, the same windows every epoch, so losses compare across epochs,
        # spread evenly over the split: the first ones would be a few hours of one day's
        # weather.
        validation_count = (self.cfg.trainer.validation_steps or len(splits["val"])) * batch
        chosen = np.isin(splits["val"], evenly_spaced(splits["val"], validation_count))
        # Whole frames of stores on different grids cannot share a batch: one stretch per
        # store, in batches cut to the frame size (8 whole radar composites took 31 GB).
        replicas = num_replicas(self.strategy)
        shapes = self.windows.shapes
        return concatenate_batches(
            [
                self.of(
                    splits["val"][chosen & (val_store == member)],
                    replicas
                    * whole_frame_batch_size(batch // replicas, math.prod(shapes[member])),
                )
                for member in np.unique(val_store[chosen])
            ]
        )

    def images(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(inputs, targets) of the first `trainer.image_samples` validation windows of the
        first store, for TensorBoard; None without them or without TensorFlow."""
        count = self.cfg.trainer.image_samples
        if not count or keras.backend.backend() != "tensorflow":
            return None
        splits, val_store = self.windows.starts, self.windows.val_store
        first_store = splits["val"][val_store == val_store[0]]
        samples = first_store[:count]
        inputs, targets = next(iter(self.of(samples, len(samples))))
        return keras.ops.convert_to_numpy(inputs), keras.ops.convert_to_numpy(targets)


def build_compiled_model(
    cfg: DictConfig,
    frame_shape: tuple[int, int],
    *,
    total_steps: int,
    loss: PixelLoss,
    initial: Path | None,
) -> keras.Model:
    """The configured model for frames of (height, width), from the weights of `initial` if
    given (fine-tuning), compiled with the run's optimizer and loss."""
    model = build_model(cfg.model, n_out=cfg.data.n_out, input_shape=(*frame_shape, 1))
    if initial is not None:
        load_initial_weights(model, initial, cfg.init)
        log.info("Starting from the weights of %s", initial)
    model.summary(print_fn=log.info)
    model.compile(
        optimizer=make_optimizer(cfg.optimizer, total_steps),
        loss=loss,
        jit_compile=resolve_jit_compile(cfg.trainer.jit_compile),
    )
    return model


def restore_backup(
    model: keras.Model, cfg: DictConfig, state: TrainingState, saved_cfg: DictConfig
) -> None:
    """Load the backup of `state` into the compiled model, to continue the run (`saved_cfg`:
    the config it was started with)."""
    _restore(model, Path(cfg.paths.output_dir).absolute() / "backup" / state.weights)
    model.stop_training = state.stopped_early
    rate = cfg.optimizer.learning_rate
    if (
        cfg.optimizer.schedule in ("constant", "plateau")
        and saved_cfg.optimizer.learning_rate != rate
    ):
        # The backup holds the rate as an optimizer variable; a rate set anew wins.
        model.optimizer.learning_rate = rate


def fit_segments(
    model: keras.Model,
    cfg: DictConfig,
    batches: RunBatches,
    validation,
    *,
    state: TrainingState,
    steps_per_epoch: int,
    callbacks: list[keras.callbacks.Callback],
    backup: TrainingBackup,
) -> dict[str, list[float]]:
    """Keras `fit` from `state` to `trainer.epochs`: an interrupted epoch first, on its own,
    then the remaining epochs. Returns this session's epochs, metric name -> values.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the message says where the
            backup stands and how to continue.
    """
    trainer_cfg = cfg.trainer
    history: dict[str, list[float]] = {}
    segments = [(state.epoch, state.epoch + 1, state.step)] if state.step else []
    segments.append((state.epoch + bool(state.step), trainer_cfg.epochs, 0))
    try:
        for first_epoch, end_epoch, step in segments:
            if first_epoch >= end_epoch or getattr(model, "stop_training", False):
                continue
            backup.start(first_epoch, step, steps_per_epoch)
            fitted = model.fit(
                batches.training(first_epoch * steps_per_epoch + step),
                validation_data=validation,
                initial_epoch=first_epoch,
                epochs=end_epoch,
                steps_per_epoch=steps_per_epoch - step,
                shuffle=False,  # the windows come in `window_order`
                callbacks=callbacks,
                verbose=trainer_cfg.verbose,
            )
            for name, values in fitted.history.items():
                history.setdefault(name, []).extend(float(v) for v in values)
    except NonFiniteLossError as err:
        saved = backup.state
        raise NonFiniteLossError(
            f"training stopped: {err}. The checkpoints and the backup (after {saved.epoch} "
            f"epochs and {saved.step} steps) in {cfg.paths.output_dir} hold the last good state; "
            "continue from it with a lower rate: "
            "nowcast-train resume=<dir> optimizer.learning_rate=<lower>"
        ) from None
    return history


def initial_checkpoint(cfg: DictConfig) -> Path:
    """The checkpoint whose weights a new run starts from (`cfg.init`, fine-tuning), checked
    against the run before anything is written.

    `cfg.init` is a run directory (its checkpoints/best.keras) or a .keras file. The checkpoint
    must hold this run's architecture (the number of lead times may differ: the one weight
    that depends on it is fitted as it loads, `fit_lead_times`), and a run directory must have
    been trained on the same normalisation.

    Raises:
        FileNotFoundError: nothing at `cfg.init`, or a run directory without a best checkpoint.
        ValueError: not a Keras checkpoint, or another architecture or normalisation.
    """
    source = Path(cfg.init).expanduser().absolute()
    if not source.exists():
        raise FileNotFoundError(
            f"init={cfg.init} does not exist; pass init=<a run directory or a .keras file>"
        )
    checkpoint = source
    if source.is_dir():
        run = Run.open(source, "best")
        checkpoint = run.checkpoint
        trained_on = OmegaConf.to_container(run.norm)
        this_run = OmegaConf.to_container(cfg.data.normalisation)
        if trained_on != this_run:
            raise ValueError(
                f"init={cfg.init} was trained on data.normalisation {trained_on}, this run has "
                f"{this_run}; set data.normalisation to the run's"
            )
    # Neither the forecast length nor probability matching changes a weight.
    differences = architecture_differences(
        checkpoint, cfg.model, n_out=cfg.data.n_out, ignore=("n_out", "probability_matching")
    )
    if differences:
        raise ValueError(
            f"init={cfg.init} holds another architecture than this run's model "
            f"({'; '.join(differences)}); pass the model options it was trained with"
        )
    return checkpoint


def load_initial_weights(model: keras.Model, checkpoint: Path, init: str) -> None:
    """Load the weights of `checkpoint` (from `initial_checkpoint`) into the built model.

    Raises:
        ValueError: weights that do not fit (a peephole model trained on frames of another
            size), naming `init=`.
    """
    try:
        model.load_weights(checkpoint)
    except (ValueError, OSError, KeyError) as err:
        first_line = next((line for line in str(err).splitlines() if line.strip()), "")
        raise ValueError(
            f"the weights of init={init} do not fit this run's model ({first_line}); a "
            "peephole model takes only the frame size it was trained on"
        ) from None


def _restore(model: keras.Model, weights: Path) -> None:
    """Load the backup's model and optimizer variables into the compiled model."""
    model.optimizer.build(model.trainable_variables)
    try:
        with h5py.File(weights, "r"):
            pass
    except OSError as err:
        if not weights.exists():
            raise FileNotFoundError(
                f"the backup {weights} was removed while this run started (another process "
                "wrote a newer backup, or deleted it); make sure that no other process writes "
                "the run directory, then run the command again to continue from the backup "
                "there now"
            ) from None
        raise ValueError(
            f"the backup {weights} is truncated or corrupt ({err}); delete the run's backup "
            "folder to train it again from the start, or choose another hydra.run.dir"
        ) from None
    try:
        model.load_weights(weights)
    except (ValueError, OSError) as err:
        first_line = next((line for line in str(err).splitlines() if line.strip()), "")
        raise ValueError(
            f"the backup {weights} does not fit this model and optimizer ({first_line}); "
            "continue the run with the settings it was started with"
        ) from None
