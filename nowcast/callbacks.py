"""Keras callbacks of a training run: the non-finite loss guard, learning-rate logging,
forecast images for TensorBoard, and the backup that lets an interrupted run continue.

`nowcast.training.make_callbacks` puts them in order: the guard first (nothing is saved after
a non-finite loss), the backup last (it records the other callbacks' state after they have
updated it for the epoch).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from nowcast.io import write_text_atomically, written_atomically

STATE_FILE = "state.json"
# The attributes of AtomicModelCheckpoint, and of Keras's EarlyStopping and ReduceLROnPlateau,
# that carry their monitoring from epoch to epoch; `fit` resets Keras's when it starts. Keras
# does not document these two callbacks' attributes: pyproject.toml pins the Keras releases
# whose attributes the resume tests (tests/test_training.py) have checked.
MONITOR_STATE = ("best", "wait", "best_epoch", "cooldown_counter")


class NonFiniteLossError(RuntimeError):
    """The training or validation loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops the run at the first non-finite loss, before any callback can save the bad state.

    Unlike `keras.callbacks.TerminateOnNaN`, which lets the epoch end (and so the checkpoint
    and backup callbacks save NaN weights), this raises `NonFiniteLossError` at once.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, ("loss",), f"epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, ("loss", "val_loss"), f"the end of epoch {epoch + 1}")

    @staticmethod
    def _check(logs, names, where: str) -> None:
        for name in names:
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteLossError(f"the {name} became {float(value)} at {where}")


class LearningRateToLogs(keras.callbacks.Callback):
    """Adds the learning rate at the end of each epoch to the epoch's logs (metrics.csv)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            rate = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


class ForecastImages(keras.callbacks.Callback):
    """Writes observed and forecast frames of a few fixed windows to TensorBoard every epoch.

    One grey-scale image per window: the observed frames on top, the forecast below, at up to
    `max_lead_times` lead times spread over the forecast, on the model's [0, 1] scale (no-data
    shown as 0). TensorBoard shows them under "forecasts" with a slider over the epochs.

    Args:
        log_dir: where the event file goes.
        inputs: (N, n_in, H, W, 1) input frames.
        targets: (N, n_out, H, W, 1) observed frames, NaN where no data.
        max_lead_times: most lead times shown per window.
    """

    def __init__(self, log_dir: Path, inputs: np.ndarray, targets: np.ndarray, max_lead_times=6):
        super().__init__()
        self.log_dir = str(log_dir)
        self.inputs = inputs
        n_out = targets.shape[1]
        self.lead_times = np.unique(np.linspace(0, n_out - 1, min(n_out, max_lead_times)).round())
        self.observed = self._strip(targets)
        self._writer = None

    def _strip(self, frames: np.ndarray) -> np.ndarray:
        """(N, T, H, W, 1) -> (N, H, len(lead_times) * (W + 1), 1), with 1-px white gaps."""
        frames = np.nan_to_num(np.asarray(frames, np.float32), nan=0.0).clip(0.0, 1.0)
        frames = frames[:, self.lead_times.astype(int)]
        frames = np.pad(frames, [(0, 0), (0, 0), (0, 0), (0, 1), (0, 0)], constant_values=1.0)
        n, t, h, w, c = frames.shape
        return frames.transpose(0, 2, 1, 3, 4).reshape(n, h, t * w, c)

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        forecast = keras.ops.convert_to_numpy(self.model(self.inputs, training=False))
        gap = np.ones_like(self.observed[:, :1])
        # (N, 2H + 1, width, 1): observed above, forecast below.
        images = np.concatenate([self.observed, gap, self._strip(forecast)], axis=1)
        with self._writer.as_default():
            tf.summary.image(
                "forecasts",
                images,
                step=epoch + 1,
                max_outputs=len(images),
                description="top: observed, bottom: forecast; lead times "
                + ", ".join(str(int(t) + 1) for t in self.lead_times),
            )
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the model (a .keras file) at the end of every epoch, or with `save_best_only` at
    the end of each epoch whose validation loss is the lowest so far.

    The file is written under a temporary name and renamed into place, so a crash while saving
    leaves the previous checkpoint, never a truncated one. Built on the public callback hooks
    alone: Keras's ModelCheckpoint saves through private methods.

    Attributes:
        best: the lowest validation loss so far, or None before the first; `TrainingBackup`
            carries it over to a resumed run.
    """

    def __init__(self, filepath: str | Path, *, save_best_only: bool = False):
        super().__init__()
        self.filepath = Path(filepath)
        self.save_best_only = save_best_only
        self.best: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            current = (logs or {}).get("val_loss")
            if current is None:
                warnings.warn(
                    f"no val_loss to keep the best model by; {self.filepath} is not written",
                    stacklevel=2,
                )
                return
            if self.best is not None and not current < self.best:
                return
            self.best = float(current)
        self.filepath.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(self.filepath) as temporary:
            self.model.save(temporary)


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
