"""Continuing an interrupted run: the backup written while it trains, and the config it
continues with.

`TrainingBackup` (a Keras callback, last of nowcast.training.make_callbacks) writes the model
and optimizer state, the position in the run and the other callbacks' monitoring state to the
run's backup/ folder; `TrainingState` is what it writes to state.json and what a resumed run
starts from (nowcast.training.start_state). `resume_config` is the config saved in a run, with
overrides, for `nowcast-train resume=<dir>`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from nowcast.config import TrainConfig, read_saved_config
from nowcast.io import write_text_atomically, written_atomically

STATE_FILE = "state.json"

# The attributes of AtomicModelCheckpoint, and of Keras's EarlyStopping and ReduceLROnPlateau,
# that carry their monitoring from epoch to epoch; `fit` resets Keras's when it starts. Keras
# does not document these two callbacks' attributes: pyproject.toml pins the Keras releases
# whose attributes the resume tests (tests/test_training.py) have checked.
MONITOR_STATE = ("best", "wait", "best_epoch", "cooldown_counter")


@dataclass
class TrainingState:
    """Where a run stands: what `TrainingBackup` writes and a resumed run starts from.

    `epoch` epochs are complete, and `step` steps of the next one; `weights` is the file (in the
    backup folder) with the model and optimizer state at that point.
    """

    epoch: int = 0
    step: int = 0
    weights: str | None = None
    stopped_early: bool = False
    metrics: list[float] = field(default_factory=list)
    callbacks: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> TrainingState | None:
        path = directory / STATE_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{path} is not a training backup state ({err}); delete {directory} to train "
                "the run again from the start, or choose another hydra.run.dir"
            ) from None


class TrainingBackup(keras.callbacks.Callback):
    """Backs up the training state at the end of every epoch and every `every_steps` steps.

    The state is the model and optimizer variables, the position (epoch, step), the running
    metrics of the current epoch and the monitoring state of `monitors` (the best loss so far,
    patience counters). Each backup writes a new weights file, then replaces state.json (an
    atomic rename), then deletes the previous weights file, so an interruption at any moment
    leaves a consistent state behind.

    Args:
        directory: the backup folder.
        every_steps: steps between backups within an epoch (0: only at epoch ends).
        monitors: name -> callback whose `MONITOR_STATE` attributes are carried over.
        state: the state the run starts from.

    Under MultiWorkerMirroredStrategy reading the metrics and saving are collective operations:
    every worker runs this callback, each writing to its own directory.
    """

    def __init__(
        self,
        directory: Path,
        *,
        every_steps: int,
        monitors: dict[str, keras.callbacks.Callback],
        state: TrainingState,
    ):
        super().__init__()
        self.directory = directory
        self.every_steps = every_steps
        self.monitors = monitors
        self.state = state
        self._restore_metrics = bool(state.step and state.metrics)

    def start(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        """Set the position of the next `fit` call, which may start mid-epoch."""
        self._epoch, self._first_step, self._steps_per_epoch = epoch, step, steps_per_epoch

    def on_train_begin(self, logs=None):
        # `fit` has just reset the monitors' counters: put back the ones carried over.
        for name, callback in self.monitors.items():
            for key, value in self.state.callbacks.get(name, {}).items():
                setattr(callback, key, value)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._restore_metrics:
            # The epoch was interrupted: continue its running means where they were.
            for variable, value in zip(
                self.model.metrics_variables, self.state.metrics, strict=True
            ):
                variable.assign(value)
            self._restore_metrics = False

    def on_train_batch_end(self, batch, logs=None):
        step = self._first_step + batch + 1
        # The last step of an epoch is backed up at the epoch's end, after validation.
        if self.every_steps and step % self.every_steps == 0 and step < self._steps_per_epoch:
            metrics = [float(keras.ops.convert_to_numpy(v)) for v in self.model.metrics_variables]
            self._save(TrainingState(self._epoch, step, metrics=metrics))

    def on_epoch_end(self, epoch, logs=None):
        self._first_step = 0
        stopped = bool(self.model.stop_training)
        self._save(TrainingState(epoch + 1, 0, stopped_early=stopped))

    def _save(self, state: TrainingState) -> None:
        state.callbacks = {
            name: {
                key: _plain(getattr(callback, key))
                for key in MONITOR_STATE
                if hasattr(callback, key)
            }
            for name, callback in self.monitors.items()
        }
        self.state = state
        self.directory.mkdir(parents=True, exist_ok=True)
        state.weights = f"epoch{state.epoch:04d}-step{state.step:06d}.weights.h5"
        with written_atomically(self.directory / state.weights) as temporary:
            self.model.save_weights(temporary)
        write_text_atomically(self.directory / STATE_FILE, json.dumps(asdict(state), indent=1))
        # Earlier weights, including any that an interruption left unreferenced.
        for path in self.directory.glob("*.weights.h5"):
            if path.name != state.weights:
                path.unlink(missing_ok=True)


def _plain(value):
    """A callback attribute as a JSON value (numpy scalars become Python numbers)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.item()
    return value


def resume_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """The config saved in `run_dir`, with `key=value` overrides, to continue that run.

    Raises:
        FileNotFoundError: `run_dir` has no config.yaml (it is not a nowcast run directory).
        ValueError: an override selects a config group option (`model=...`), which cannot be
            applied to a saved config, or is not a `dotted.key=value`.
    """
    run_dir = Path(run_dir).expanduser().absolute()
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(
            f"no config.yaml in {run_dir}: resume=<dir> takes the directory of a training run"
        )
    for override in overrides:
        key = override.split("=", 1)[0]
        if "." not in key or not key.replace(".", "").replace("_", "").isalnum():
            raise ValueError(
                f"with resume=<dir>, the config comes from {saved}; only key=value overrides "
                f"such as trainer.epochs=20 apply to it. Received: {override!r}"
            )
    schema = OmegaConf.structured(TrainConfig)
    overridden = OmegaConf.from_dotlist(list(overrides))
    cfg = OmegaConf.merge(schema, read_saved_config(saved), overridden)
    cfg.paths.output_dir = str(run_dir)
    split_file = run_dir / "split.json"
    if cfg.data.split.block_hours is None and split_file.is_file():
        # The block length the run chose: a later version's choice must not move its windows.
        try:
            cfg.data.split.block_hours = json.loads(split_file.read_text()).get("block_hours")
        except (json.JSONDecodeError, AttributeError):
            raise ValueError(
                f"{split_file} is not a split record: cannot tell the block length the run "
                "chose; pass it, e.g. data.split.block_hours=6, to resume"
            ) from None
    return cfg
