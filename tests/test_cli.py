"""End to end through the installed console scripts, in subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_debug_fast_from_any_directory(tmp_path, tiny_store):
    run_dir = tmp_path / "my run"
    done = run(
        "nowcast-train",
        "debug=fast",
        f"data.path={tiny_store}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Run directory: {run_dir}" in done.stdout
    assert (run_dir / "model.keras").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    # Continue the finished run for one more epoch, with the config saved in it.
    more = run("nowcast-train", f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "Continuing the run" in more.stdout + more.stderr
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 2
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_multirun_sweep_makes_one_run_per_value(tmp_path, tiny_store):
    sweep_dir = tmp_path / "sweep"
    done = run(
        "nowcast-train",
        "-m",
        "debug=fast",
        f"data.path={tiny_store}",
        "trainer.steps_per_epoch=1",
        "trainer.validation_steps=1",
        "model.head_filters=4,6",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for job, filters in [("0", 4), ("1", 6)]:
        assert OmegaConf.load(sweep_dir / job / "config.yaml").model.head_filters == filters
        assert (sweep_dir / job / "model.keras").is_file()


def test_train_config_typo_fails_before_anything_runs(tmp_path):
    done = run(
        "nowcast-train", "trainer.epochz=3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert done.returncode != 0
    assert "epochz" in done.stderr
    assert not (tmp_path / "run").exists()


def test_train_missing_store_is_one_line(tmp_path):
    done = run(
        "nowcast-train",
        "data=radar_hdf5",
        "data.path=missing.h5",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("nowcast: error: data store not found")
    assert "Traceback" not in done.stderr


def test_an_error_is_one_line_without_tensorflow_notices_and_a_traceback_with_v(tmp_path):
    # As a user's shell runs it: no TF_CPP_MIN_LOG_LEVEL (the tests set one) or NOWCAST_DEBUG.
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "NOWCAST_DEBUG")
    }
    missing = tmp_path / "no_run"
    quiet = run("nowcast-evaluate", f"run={missing}", cwd=tmp_path, env=env)
    assert quiet.returncode == 2
    assert (quiet.stdout + quiet.stderr).splitlines() == [
        f"nowcast: error: run directory not found: {missing}; "
        "pass run=<a directory written by nowcast-train>"
    ]
    # -v, which Hydra does not know, sets NOWCAST_DEBUG=1: the traceback instead of one line.
    verbose = run("nowcast-evaluate", "-v", f"run={missing}", cwd=tmp_path, env=env)
    assert verbose.returncode != 0
    assert "Traceback" in verbose.stderr
    assert f"FileNotFoundError: run directory not found: {missing}" in verbose.stderr


def test_data_synthetic_writes_a_store_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "s.h5"
    args = ("nowcast-data", "synthetic", f"output={out}", "frames=24", "height=32", "width=32")
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with h5py.File(out) as f:
        assert f["frames"].shape == (24, 32, 32)
    before = out.stat().st_mtime_ns
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 2 and "overwrite=true" in again.stderr
    assert out.stat().st_mtime_ns == before
    assert run(*args, "overwrite=true", cwd=tmp_path).returncode == 0


def test_data_unknown_command_prints_usage(tmp_path):
    done = run("nowcast-data", "convrt", cwd=tmp_path)
    assert done.returncode == 2 and "usage: nowcast-data" in done.stderr


def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path):
    """The README's shard line typed on a machine without SLURM: say so, and what to use."""
    env = {**os.environ, "PATH": str(BIN)}  # no srun anywhere on it
    done = run(
        "nowcast-evaluate", "-m", f"run={tmp_path / 'run'}", "split=all",
        "shard=0/2,1/2", "hydra/launcher=slurm", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "nowcast: error: hydra/launcher=slurm found no SLURM here (no srun on the PATH); run it "
        "on a SLURM login node, or run the jobs on this machine with hydra/launcher=joblib"
    ]


@pytest.mark.parametrize("command", ["nowcast-evaluate", "nowcast-plot"])
def test_another_store_without_a_data_option_is_one_line(tmp_path, command):
    """`data.path=` alone, as a user scores another store: Hydra has no data group to set it
    in (the run's own store is the default), which ended in an AssertionError."""
    done = run(command, f"run={tmp_path / 'run'}", "data.path=other.h5", cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("nowcast: error: data.path= sets the data group")
    assert "data=radar_hdf5" in line and "knmi" in line
    assert "Traceback" not in done.stderr
