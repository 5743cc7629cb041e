"""Two processes meeting in one run directory or one output: one refuses in one line, the
other's outputs are whole, and a run killed with SIGKILL while holding its lock resumes at once.

Real processes start at the same moment. Where a whole training would be slow, a helper
process holds the lock that a training holds (`HOLD_LOCK`)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from expect import fails_with_one_line
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from nowcast.config import config_dir, register_configs
from nowcast.data.store_set import resolve_store
from nowcast.data.synthetic import write_synthetic_store
from nowcast.evaluation import evaluate
from nowcast.io import TEMPORARY_PREFIX, publish_new
from nowcast.locks import RUN_LOCK, LockedError, output_lock, run_lock
from nowcast.plotting import plot_run
from nowcast.prediction import predict
from nowcast.training import _restore, train

BIN = Path(sys.executable).parent
HOST = socket.gethostname()
# A short run with a backup after every step (as in test_fault_tolerance.py).
TINY = (
    "debug=fast",
    "trainer.epochs=2",
    "trainer.steps_per_epoch=4",
    "trainer.backup_every_steps=1",
    "trainer.validation_steps=1",
    "trainer.image_samples=0",
)
# Holds the lock that `nowcast-train` holds on the run directory sys.argv[2] (sys.argv[1] =
# "run") or that `nowcast-evaluate` holds on the output folder sys.argv[2] ("output"), until
# it is killed.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from nowcast.locks import output_lock, run_lock

kind, path = sys.argv[1], Path(sys.argv[2])
if kind == "run":
    lock = run_lock(path)
else:
    lock = output_lock(path, command="nowcast-evaluate", alternative="-")
with lock:
    print("held", flush=True)
    time.sleep(600)
"""


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """A console script of the venv, with its output captured."""
    return subprocess.Popen(
        [str(BIN / args[0]), *args[1:]],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def at_once(*commands: tuple[str, ...], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start every command at the same moment and wait for all of them."""
    processes = [start(*command, cwd=cwd) for command in commands]
    return [finish(process) for process in processes]


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def winner_and_loser(done: list[subprocess.CompletedProcess]) -> tuple[int, str]:
    """The index of the process that succeeded, and the one error line of the other."""
    assert sorted(d.returncode for d in done) == [0, 2], [d.stderr[-2000:] for d in done]
    winner = [d.returncode for d in done].index(0)
    return winner, error_line(done[1 - winner].stderr)


def error_line(stderr: str) -> str:
    """The one `nowcast: error:` line of a refused command, its last line (a command may log
    its progress before it is refused)."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("nowcast: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def hold(kind: str, path: Path) -> subprocess.Popen:
    """A helper process that holds the lock of `path` (see HOLD_LOCK) once this returns."""
    helper = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, kind, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert helper.stdout.readline() == "held\n"
    return helper


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate()


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, f"exited before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} in 300 s"
        time.sleep(0.01)


def contents(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file, by name."""
    found = {}
    with h5py.File(path, "r") as file:
        found["/"] = dict(file.attrs)

        def visit(name, item):
            found[name] = dict(item.attrs)
            if isinstance(item, h5py.Dataset):
                found[f"{name}[]"] = item[()]

        file.visititems(visit)
    return found


def assert_same_contents(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, dict):
            assert_same_contents(got[name], value)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def compose_config(name: str, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


def no_temporary_files(folder: Path) -> bool:
    return not list(folder.rglob(f"{TEMPORARY_PREFIX}*"))


# Training.


def test_a_second_training_in_a_run_directory_is_refused_and_changes_nothing(tmp_path, tiny_store):
    run_dir = tmp_path / "run"
    command = ("nowcast-train", *TINY, f"data.path={tiny_store}", f"hydra.run.dir={run_dir}")
    first, second = (start(*command, f"trainer.seed={seed}", cwd=tmp_path) for seed in (0, 1))
    processes = [first, second]
    # The one refused stops before TensorFlow loads, while the other one starts training.
    while all(p.poll() is None for p in processes):
        time.sleep(0.01)
    loser = next(p for p in processes if p.poll() is not None)
    winner = processes[1 - processes.index(loser)]
    _, stderr = loser.communicate()
    assert loser.returncode == 2
    assert error_line(stderr) == (
        f"nowcast: error: {run_dir} is in use by nowcast-train (pid {winner.pid} on host "
        f"{HOST}); wait for it to end, or choose another hydra.run.dir"
    )
    # Hydra's record of the run is the winner's.
    overrides = run_dir / ".hydra" / "overrides.yaml"
    wait_for(overrides.exists, winner, "the run's .hydra/overrides.yaml")
    seed = 0 if winner is first else 1
    assert f"trainer.seed={seed}" in OmegaConf.load(overrides)
    # Killed, the winner leaves its lock file, but not its lock: the next process takes it.
    kill(winner)
    assert (run_dir / RUN_LOCK).exists()
    kill(hold("run", run_dir))


@pytest.fixture(scope="module")
def lone_run(tmp_path_factory, tiny_store) -> Path:
    """A run of TINY trained in one go, alone (in this process)."""
    run_dir = tmp_path_factory.mktemp("lone") / "run"
    cfg = compose_config("train", *TINY, f"data.path={tiny_store}", "trainer.verbose=0")
    cfg.paths.output_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    train(cfg)
    return run_dir


def losses(run_dir: Path) -> np.ndarray:
    return np.loadtxt(run_dir / "metrics.csv", delimiter=",", skiprows=1)


@pytest.mark.slow
def test_a_training_killed_while_another_was_refused_resumes_to_a_lone_runs_weights(
    tmp_path, tiny_store, lone_run
):
    run_dir = tmp_path / "run"
    command = ("nowcast-train", *TINY, f"data.path={tiny_store}", f"hydra.run.dir={run_dir}")
    processes = [start(*command, cwd=tmp_path) for _ in range(2)]
    while all(p.poll() is None for p in processes):
        time.sleep(0.01)
    loser = next(p for p in processes if p.poll() is not None)
    winner = processes[1 - processes.index(loser)]
    assert f"(pid {winner.pid} on host {HOST})" in error_line(loser.communicate()[1])
    # Killed mid-epoch, at its first backup, it continues at once.
    state = run_dir / "backup" / "state.json"
    wait_for(state.exists, winner, "a backup")
    kill(winner)
    (resumed,) = at_once(command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Continuing the run" in resumed.stdout + resumed.stderr
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    lone = keras.saving.load_model(lone_run / "model.keras", compile=False)
    for got, want in zip(model.get_weights(), lone.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses(run_dir), losses(lone_run), rtol=1e-5)
    assert not (run_dir / RUN_LOCK).exists() and no_temporary_files(run_dir)


def test_ctrl_c_on_a_training_is_one_line_naming_the_resume(tmp_path, tiny_store):
    """Ctrl-C printed Keras's traceback; the run's files are whole, so say how to go on."""
    run_dir = tmp_path / "run"
    long = [o for o in TINY if not o.startswith("trainer.epochs=")] + ["trainer.epochs=100"]
    training = subprocess.Popen(
        [str(BIN / "nowcast-train"), *long, f"data.path={tiny_store}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell runs background jobs (CI's, say) with SIGINT ignored, and children inherit
        # that: give the training the terminal's Ctrl-C back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for((run_dir / "backup" / "state.json").exists, training, "a backup")
    training.send_signal(signal.SIGINT)
    done = finish(training)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"nowcast: interrupted; continue from the last backup with: nowcast-train resume={run_dir}"
    )
    assert "Traceback" not in done.stderr
    assert not (run_dir / RUN_LOCK).exists() and no_temporary_files(run_dir)


def test_a_backup_removed_by_another_process_is_not_called_corrupt(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    weights = tmp_path / "backup" / "epoch0000-step000050.weights.h5"
    with pytest.raises(FileNotFoundError) as error:
        _restore(model, weights)
    assert str(error.value) == (
        f"the backup {weights} was removed while this run started (another process wrote a "
        "newer backup, or deleted it); make sure that no other process writes the run "
        "directory, then run the command again to continue from the backup there now"
    )


# Stores.


def test_two_conversions_to_one_store_one_refused_as_if_it_came_second(tmp_path, tiny_store):
    store = tmp_path / "same.h5"
    convert = ("nowcast-data", "convert", "format=store", f"input={tiny_store}")
    commands = [
        (*convert, f"output={store}"),
        (*convert, "crop.height=16", "crop.width=16", f"output={store}"),
    ]
    winner, line = winner_and_loser(at_once(*commands, cwd=tmp_path))
    # The refusal of a conversion started after the other had finished.
    assert line == f"nowcast: error: {store} exists; pass overwrite=true to replace it"
    lone = tmp_path / "lone.h5"
    (alone,) = at_once((*commands[winner][:-1], f"output={lone}"), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert_same_contents(contents(store), contents(lone))
    assert no_temporary_files(tmp_path)


def test_a_store_published_by_another_writer_meanwhile_is_kept(tmp_path, tiny_store, monkeypatch):
    import nowcast.data.store

    path = tmp_path / "synthetic.h5"
    theirs = contents(tiny_store)

    def other_process_first(temporary, target):
        target.write_bytes(tiny_store.read_bytes())
        publish_new(temporary, target)

    monkeypatch.setattr(nowcast.data.store, "publish_new", other_process_first)
    cfg = compose_config("train", "debug=fast", f"data.path={path}")
    # A run that writes the synthetic set it needs takes the one written meanwhile...
    assert resolve_store(cfg.data) == path
    assert_same_contents(contents(path), theirs)
    # ... while a command that writes a new store is refused.
    path.unlink()
    with pytest.raises(FileExistsError, match=r"synthetic.h5 exists; pass overwrite=true"):
        write_synthetic_store(path, cfg.data.synthetic)
    assert_same_contents(contents(path), theirs)
    assert no_temporary_files(tmp_path)


def no_hard_links(source, target):
    raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), source, None, target)


def test_a_new_file_is_published_only_where_there_is_none(tmp_path, monkeypatch):
    target, temporary = tmp_path / "a.txt", tmp_path / ".tmp-1-a.txt"
    for links in (True, False):  # a file system with hard links, and one without
        if not links:
            monkeypatch.setattr("os.link", no_hard_links)
        target.unlink(missing_ok=True)
        temporary.write_text("first")
        publish_new(temporary, target)
        temporary.write_text("second")
        with pytest.raises(FileExistsError) as error:
            publish_new(temporary, target)
        assert error.value.filename == str(target)
        assert target.read_text() == "first" and temporary.read_text() == "second"


# Forecasts and evaluations of a trained run.


@pytest.mark.slow
def test_two_forecasts_to_one_file_one_refused_as_if_it_came_second(
    tmp_path, tiny_run, tiny_store
):
    output = tmp_path / "forecast.h5"
    command = ("nowcast-predict", f"run={tiny_run}", f"input={tiny_store}", f"output={output}")
    _, line = winner_and_loser(at_once(command, command, cwd=tmp_path))
    assert line == (
        f"nowcast: error: {output} exists; pass overwrite=true or output=<another file>"
    )
    lone = tmp_path / "lone.h5"
    predict(compose_config("predict", *command[1:-1], f"output={lone}"))
    assert_same_contents(contents(output), contents(lone))
    assert no_temporary_files(tmp_path)


@pytest.mark.slow
def test_two_plots_of_one_window_one_refused_as_if_it_came_second(tmp_path, tiny_run):
    plots = tmp_path / "plots"
    command = (
        "nowcast-plot",
        f"run={tiny_run}",
        "format=png",
        "baselines=[persistence]",
        f"evaluation={tmp_path / 'none'}",
        f"paths.output_dir={plots}",
    )
    _, line = winner_and_loser(at_once(command, command, cwd=tmp_path))
    (picture,) = plots.iterdir()
    assert line == (
        f"nowcast: error: {picture} exists; pass overwrite=true or sample=<another window>"
    )
    lone = tmp_path / "lone"
    plot_run(compose_config("plot", *command[1:-1], f"paths.output_dir={lone}"))
    np.testing.assert_array_equal(
        np.asarray(Image.open(picture)), np.asarray(Image.open(lone / picture.name))
    )
    assert no_temporary_files(tmp_path)


@pytest.mark.slow
def test_two_evaluations_of_a_run_in_training_one_refused(tmp_path, tiny_run):
    output_dir = tmp_path / "evaluation"
    command = (
        "nowcast-evaluate",
        f"run={tiny_run}",
        "baselines=[persistence]",
        "progress=false",
        f"paths.output_dir={output_dir}",
    )
    training = hold("run", tiny_run)  # a run being trained is read as usual
    try:
        processes = [start(*command, cwd=tmp_path) for _ in range(2)]
        done = [finish(p) for p in processes]
    finally:
        kill(training)
    winner, line = winner_and_loser(done)
    # Refused while the other writes, or after it has written (if it started that late).
    assert line in (
        f"nowcast: error: {output_dir} is in use by nowcast-evaluate (pid "
        f"{processes[winner].pid} on host {HOST}); wait for it to end, or pass "
        "paths.output_dir=<another folder>",
        f"nowcast: error: {output_dir} exists; pass overwrite=true to replace it, or "
        "paths.output_dir=<another folder>",
    )
    lone = tmp_path / "lone"
    evaluate(compose_config("evaluate", *command[1:-1], f"paths.output_dir={lone}"))
    assert sorted(p.name for p in output_dir.iterdir()) == sorted(p.name for p in lone.iterdir())
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (output_dir, lone))
    assert got == want
    assert not list(tmp_path.glob(".*.lock")) and no_temporary_files(tmp_path)


def test_a_shard_being_scored_by_another_process_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"  # only its config is read before the refusal
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose_config("train", *TINY)))
    shards_dir = tmp_path / "shards"
    cfg = compose_config("evaluate", f"run={run_dir}", f"shards_dir={shards_dir}", "shard=0/2")
    other = hold("output", shards_dir / "shard-0-of-2")
    line = fails_with_one_line(lambda: evaluate(cfg), capsys)
    assert line == (
        f"nowcast: error: {shards_dir / 'shard-0-of-2'} is in use by nowcast-evaluate (pid "
        f"{other.pid} on host {HOST}); wait for it to end, or pass shards_dir=<another folder>"
    )
    kill(other)
    assert not (shards_dir / "shard-0-of-2").exists()


def test_a_lock_is_taken_again_by_its_holder_and_removed_when_released(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        holder = json.loads((tmp_path / RUN_LOCK).read_text())
        assert holder == {"pid": holder["pid"], "host": HOST, "command": "nowcast-train"}
    assert not (tmp_path / RUN_LOCK).exists()
    other = hold("output", tmp_path / "out")
    try:
        lock = output_lock(tmp_path / "out", command="nowcast-train", alternative="-")
        with pytest.raises(LockedError, match=r"out is in use by nowcast-evaluate \(pid "), lock:
            pass
    finally:
        kill(other)
