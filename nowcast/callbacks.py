"""Keras callbacks of a training run: the non-finite loss guard, learning-rate logging,
forecast images for TensorBoard, and checkpoints written atomically. The backup that lets an
interrupted run continue is in nowcast.resume.

`nowcast.training.make_callbacks` puts them in order: the guard first (nothing is saved after
a non-finite loss), the backup last (it records the other callbacks' state after they have
updated it for the epoch).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import keras
import numpy as np

from nowcast.io import written_atomically


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
