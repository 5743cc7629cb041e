"""Training killed with SIGKILL at random moments, also while a checkpoint is being written,
continues to the weights of an uninterrupted run, and every file on disk stays readable."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from nowcast.io import TEMPORARY_PREFIX
from nowcast.resume import TrainingState
from nowcast.training import train

# Two epochs of four steps with a backup after every step: a save every fraction of a second.
TINY = (
    "debug=fast",
    "trainer.epochs=2",
    "trainer.steps_per_epoch=4",
    "trainer.backup_every_steps=1",
    "trainer.validation_steps=1",
    "trainer.image_samples=0",
    "trainer.verbose=0",
)
# `nowcast-train`, with every rename into place held back by `sys.argv[1]` seconds, so that a
# test can see the temporary file of a checkpoint being written and kill the run right then.
SLOW_RENAMES = """
import sys, time
import nowcast.io

publish, delay = nowcast.io.publish, float(sys.argv[1])

def slow_publish(temporary, path):
    time.sleep(delay)
    publish(temporary, path)

nowcast.io.publish = slow_publish
sys.argv = ["nowcast-train", *sys.argv[2:]]
from nowcast.cli import train_main
train_main()
"""
RENAME_DELAY_S = 0.2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_store):
    """The final model and metrics of the run trained in one go (in this process)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nowcast.config import config_dir, register_configs

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"data.path={tiny_store}"])
    GlobalHydra.instance().clear()
    cfg.paths.output_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    train(cfg)
    return run_dir


def start(run_dir: Path, store: Path, rename_delay_s: float) -> subprocess.Popen:
    args = [*TINY, f"data.path={store}", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_RENAMES, str(rename_delay_s), *args],
        cwd=run_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def temporary_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(f"{TEMPORARY_PREFIX}*") if p.is_file()]


def backup_time(run_dir: Path) -> int | None:
    state = run_dir / "backup" / "state.json"
    return state.stat().st_mtime_ns if state.exists() else None


def kill(run_dir: Path, store: Path, moment: str, delay_s: float) -> str:
    """Start the run and SIGKILL it `delay_s` after its first backup (so mid-epoch), or, for
    `moment` "write", at the first temporary file seen after that; what happened, for the
    failure messages."""
    previous_backup = backup_time(run_dir)
    process = start(run_dir, store, RENAME_DELAY_S)
    deadline = time.monotonic() + 300
    while backup_time(run_dir) == previous_backup:
        if process.poll() is not None or time.monotonic() > deadline:
            return f"{moment}: exited before its first backup (status {process.poll()})"
        time.sleep(0.01)
    time.sleep(delay_s)
    if moment == "write":
        while not temporary_files(run_dir):
            if process.poll() is not None or time.monotonic() > deadline:
                return f"write: exited with status {process.poll()} before a write was seen"
            time.sleep(0.005)
    writing = [p.name for p in temporary_files(run_dir)]
    if process.poll() is not None:
        return f"{moment} +{delay_s:.2f}s: finished before the kill"
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return f"{moment} +{delay_s:.2f}s: killed while writing {writing or 'nothing'}"


def assert_every_file_loads(run_dir: Path) -> None:
    """Every checkpoint, the backup and the run's records under their real names are whole."""
    for path in sorted(run_dir.glob("checkpoints/*.keras")) + sorted(run_dir.glob("*.keras")):
        if not path.name.startswith(TEMPORARY_PREFIX):
            keras.saving.load_model(path, compile=False)
    state = TrainingState.load(run_dir / "backup")
    if state is not None:
        with h5py.File(run_dir / "backup" / state.weights) as weights:
            weights.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else 0)
    if (run_dir / "config.yaml").exists():
        OmegaConf.load(run_dir / "config.yaml")
    if (run_dir / "split.json").exists():
        json.loads((run_dir / "split.json").read_text())


def losses(run_dir: Path) -> dict[str, list[float]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    return {name: [float(row[name]) for row in rows] for name in ("loss", "val_loss")}


def kill_and_resume(run_dir: Path, store: Path, moments: list[str], seed: int) -> list[str]:
    """Start the run, kill it at each of `moments`, restart it, then let it finish."""
    rng = np.random.default_rng(seed)
    happened = []
    for moment in moments:
        delay = float(rng.uniform(0.0, 1.5 if moment == "epoch" else 0.5))
        happened.append(kill(run_dir, store, moment, delay))
        assert_every_file_loads(run_dir)
    process = start(run_dir, store, 0.0)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"{happened}\n{output[-3000:]}"
    return happened


def assert_same_run(run_dir: Path, expected_dir: Path, happened: list[str]) -> None:
    assert_every_file_loads(run_dir)
    assert not temporary_files(run_dir), happened
    final = keras.saving.load_model(run_dir / "model.keras", compile=False)
    expected = keras.saving.load_model(expected_dir / "model.keras", compile=False)
    for got, want in zip(final.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(happened))
    got_losses, want_losses = losses(run_dir), losses(expected_dir)
    for name, values in want_losses.items():
        np.testing.assert_allclose(got_losses[name], values, rtol=1e-5, err_msg=str(happened))


def test_killed_while_writing_a_checkpoint_resumes_to_the_same_weights(
    tmp_path, tiny_store, uninterrupted
):
    run_dir = tmp_path / "run"
    happened = kill_and_resume(run_dir, tiny_store, ["write"], seed=0)
    assert "killed while writing [" in happened[0], happened
    assert_same_run(run_dir, uninterrupted, happened)


@pytest.mark.slow
def test_killed_again_and_again_resumes_to_the_same_weights(tmp_path, tiny_store, uninterrupted):
    run_dir = tmp_path / "run"
    moments = ["epoch", "write", "epoch", "write", "epoch"]
    happened = kill_and_resume(run_dir, tiny_store, moments, seed=1)
    assert_same_run(run_dir, uninterrupted, happened)
