"""End to end through the installed console scripts, in subprocesses."""

import subprocess
import sys
from pathlib import Path

import h5py

BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=600
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
