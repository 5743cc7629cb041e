"""Training: compose data, model, loss and optimizer from a config and run Keras `fit`.

`train(cfg)` is a plain function (no Hydra decorator), so tests and notebooks call it directly;
`nowcast.cli.train_main` is the command-line wrapper. Everything a run writes goes under
`cfg.paths.output_dir`:

    config.yaml             the resolved config (architecture, data, normalisation)
    split.json              the window start times of each split
    checkpoints/best.keras  lowest validation loss so far
    checkpoints/last.keras  end of the latest epoch
    backup/                 Keras BackupAndRestore state, to resume an interrupted run
    model.keras             the model at the end of training
    metrics.csv             per-epoch losses
    tensorboard/            TensorBoard event files
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from nowcast.data.pipeline import make_dataset, window_valid_fraction
from nowcast.data.store import Store, open_store
from nowcast.data.synthetic import write_synthetic_store
from nowcast.data.windows import make_windows, split_windows
from nowcast.losses import make_loss
from nowcast.model import build_model

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    history: dict[str, list[float]]
    run_dir: Path
    model: keras.Model


def resolve_store(data_cfg: DictConfig) -> Path:
    """The data store's path; the synthetic set is written there first if it is missing.

    Raises:
        FileNotFoundError: a store other than the synthetic one does not exist.
    """
    path = Path(data_cfg.path).expanduser().absolute()
    if path.exists():
        return path
    if data_cfg.name != "synthetic":
        raise FileNotFoundError(
            f"data store not found: {path}; convert your radar files with `nowcast-data convert` "
            "or set data.path=<store.h5>"
        )
    log.info("Writing the synthetic radar-echo set to %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_synthetic_store(path, data_cfg.synthetic)


def split_store(store: Store, data_cfg: DictConfig) -> dict[str, np.ndarray]:
    """Window start indices per split, leaving out windows that are mostly no-data."""
    window_length = data_cfg.n_in + data_cfg.n_out
    starts = make_windows(
        store.times,
        n_in=data_cfg.n_in,
        n_out=data_cfg.n_out,
        stride=data_cfg.stride,
        minutes_per_frame=store.minutes_per_frame,
        events=store.events,
    )
    valid = window_valid_fraction(store, starts, window_length)
    starts = starts[valid >= data_cfg.min_valid_fraction]
    splits = split_windows(
        store.times,
        starts,
        window_length=window_length,
        block_hours=data_cfg.split.block_hours,
        val_fraction=data_cfg.split.val_fraction,
        test_fraction=data_cfg.split.test_fraction,
    )
    for name, split_starts in splits.items():
        if name != "test" and len(split_starts) < data_cfg.batch_size:
            raise ValueError(
                f"the {name} split of {store.path} has {len(split_starts)} windows, fewer than "
                f"one batch (data.batch_size={data_cfg.batch_size}); use a longer store, "
                "smaller data.split.block_hours or a smaller batch"
            )
    return splits


def write_split(path: Path, store: Store, splits: dict[str, np.ndarray]) -> None:
    """Record which windows went to which split, by the UTC time of their first frame."""

    def iso(seconds: int) -> str:
        return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    record = {
        "store": str(store.path),
        "splits": {
            name: {"windows": len(starts), "start_times": [iso(store.times[s]) for s in starts]}
            for name, starts in splits.items()
        },
    }
    path.write_text(json.dumps(record, indent=1))


def make_optimizer(opt_cfg: DictConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """Adam or AdamW with a constant or cosine learning rate and optional linear warm-up."""
    if opt_cfg.schedule == "constant":
        learning_rate = opt_cfg.learning_rate
    elif opt_cfg.schedule == "cosine":
        warmup = min(opt_cfg.warmup_steps, total_steps - 1)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else opt_cfg.learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            warmup_target=opt_cfg.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    else:
        raise ValueError(
            f"unknown optimizer.schedule, allowed: constant, cosine. "
            f"Received: schedule={opt_cfg.schedule!r}"
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


def make_callbacks(run_dir: Path, trainer_cfg: DictConfig) -> list[keras.callbacks.Callback]:
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint(str(checkpoints / "last.keras")),
        keras.callbacks.ModelCheckpoint(str(checkpoints / "best.keras"), save_best_only=True),
        keras.callbacks.CSVLogger(str(run_dir / "metrics.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard")),
    ]
    if trainer_cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                patience=trainer_cfg.early_stopping_patience, restore_best_weights=True
            )
        )
    return callbacks


def train(cfg: DictConfig) -> TrainResult:
    """Train the configured model on the configured store; see the module docstring for outputs."""
    data_cfg, trainer_cfg = cfg.data, cfg.trainer
    run_dir = Path(cfg.paths.output_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(trainer_cfg.seed)
    keras.mixed_precision.set_global_policy(trainer_cfg.precision)

    store_path = resolve_store(data_cfg)
    with open_store(store_path) as store:
        splits = split_store(store, data_cfg)
        write_split(run_dir / "split.json", store, splits)
        height, width = store.shape[1:]
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("Windows per split: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    def dataset(split: str, training: bool):
        return make_dataset(
            store_path,
            splits[split],
            n_in=data_cfg.n_in,
            n_out=data_cfg.n_out,
            batch_size=data_cfg.batch_size,
            norm=data_cfg.normalisation,
            shuffle=training,
            seed=trainer_cfg.seed,
            shuffle_buffer=data_cfg.shuffle_buffer,
            repeat=training,
            drop_remainder=training,
        )

    steps_per_epoch = trainer_cfg.steps_per_epoch or len(splits["train"]) // data_cfg.batch_size
    validation = dataset("val", training=False)
    if trainer_cfg.validation_steps:
        # The same first batches every epoch, so validation losses compare across epochs.
        validation = validation.take(trainer_cfg.validation_steps)
    model = build_model(cfg.model, n_out=data_cfg.n_out, input_shape=(height, width, 1))
    model.summary(print_fn=log.info)
    model.compile(
        optimizer=make_optimizer(cfg.optimizer, steps_per_epoch * trainer_cfg.epochs),
        loss=make_loss(cfg.loss, data_cfg.normalisation),
        jit_compile=trainer_cfg.jit_compile,
    )
    history = model.fit(
        dataset("train", training=True),
        validation_data=validation,
        epochs=trainer_cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # the dataset shuffles itself, with the run's seed
        callbacks=make_callbacks(run_dir, trainer_cfg),
        verbose=trainer_cfg.verbose,
    )
    model.save(run_dir / "model.keras")
    return TrainResult(history=history.history, run_dir=run_dir, model=model)
