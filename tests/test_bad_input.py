"""Bad input ends in one line naming the thing and the fix, exit status 2, no traceback, and
nothing half-written. (Other cases live beside their code: tests/test_evaluation.py for run
directories and checkpoints given to evaluate, tests/data/ for stores and conversion.)"""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from expect import fails_with_one_line
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nowcast.config import config_dir, register_configs
from nowcast.data.store import open_store, write_store
from nowcast.evaluation import evaluate
from nowcast.training import train

BIN = Path(sys.executable).parent
GRID = {"projdef": "+proj=stere", "xscale": 1000.0, "yscale": 1000.0}


def compose_train(run_dir: Path, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "debug=fast",
                "trainer.verbose=0",
                "trainer.image_samples=0",
                f"paths.output_dir={run_dir}",
                f"paths.data_dir={run_dir.parent}",
                *overrides,
            ],
        )
    GlobalHydra.instance().clear()
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_store) -> Path:
    """A one-epoch `debug=fast` run, trained once for this module."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(compose_train(run_dir, f"data.path={tiny_store}"))
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A copy of the finished run that a test may damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def run_script(*args: str, cwd: Path) -> str:
    """The one stderr line of a console script that must fail with status 2."""
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("nowcast: error: ")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "trainer.epochz=3",
            "Could not override 'trainer.epochz': Key 'epochz' not in 'TrainerConfig'",
        ),
        ("trainer.epochs=many", "Value 'many' of type 'str' could not be converted to Integer"),
        ("model=convlstm_tiny", "Could not find 'model/convlstm_tiny'; options: "),
    ],
)
def test_config_errors_are_one_line_before_anything_runs(tmp_path, override, expected):
    line = run_script("nowcast-train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert expected in line and line.endswith("nowcast-train --cfg job")
    assert not (tmp_path / "run").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = run_script("nowcast-train", f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert f"{blocker / 'run'}: Not a directory" in line and "hydra.run.dir=<dir>" in line


@pytest.mark.parametrize(
    "store, expected",
    [
        ("", "data.path is empty; set data.path=<store.h5>"),
        ("missing.h5", "data store not found"),
        ("empty.h5", "empty.h5 is not an HDF5 file"),
        ("layout.h5", "layout.h5 is not a nowcast store (no nowcast_store_version attribute)"),
    ],
)
def test_missing_empty_or_foreign_stores_are_fails_with_one_line(
    tmp_path, capsys, store, expected
):
    (tmp_path / "empty.h5").write_bytes(b"")
    with h5py.File(tmp_path / "layout.h5", "w") as file:
        file["frames"] = np.zeros((4, 8, 8), np.float32)
    path = str(tmp_path / store) if store else ""
    cfg = compose_train(tmp_path / "run", "data=radar_hdf5", f"data.path='{path}'")
    assert expected in fails_with_one_line(lambda: train(cfg), capsys)
    assert not any((tmp_path / "run").rglob("*.*"))


def test_continuing_with_another_model_is_one_line(run_copy, tiny_store, capsys):
    cfg = compose_train(
        run_copy, f"data.path={tiny_store}", "trainer.epochs=2", "model.head_filters=6"
    )
    line = fails_with_one_line(lambda: train(cfg), capsys)
    assert "holds an unfinished run with other settings (model.head_filters: 4 -> 6)" in line


def test_a_truncated_backup_is_one_line_and_kept(run_copy, tiny_store, capsys):
    weights = next((run_copy / "backup").glob("*.weights.h5"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = compose_train(run_copy, f"data.path={tiny_store}", "trainer.epochs=2")
    line = fails_with_one_line(lambda: train(cfg), capsys)
    assert f"the backup {weights} is truncated or corrupt" in line
    assert weights.exists()


def test_a_corrupt_backup_state_is_one_line(run_copy, tiny_store, capsys):
    (run_copy / "backup" / "state.json").write_text('{"epoch": 1, "ste')
    cfg = compose_train(run_copy, f"data.path={tiny_store}", "trainer.epochs=2")
    line = fails_with_one_line(lambda: train(cfg), capsys)
    assert "state.json is not a training backup state" in line


def test_a_truncated_checkpoint_given_to_evaluate_is_one_line(run_copy, tmp_path, capsys):
    checkpoint = run_copy / "checkpoints" / "best.keras"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[f"run={run_copy}", f"paths.output_dir={tmp_path / 'scores'}"],
        )
    line = fails_with_one_line(lambda: evaluate(cfg), capsys)
    assert f"{checkpoint} is not a Keras checkpoint" in line
    assert not (tmp_path / "scores").exists()


def test_nan_frames_are_no_data_and_infinite_ones_are_refused(tmp_path):
    frames = np.full((3, 4, 4), 20.0, np.float32)
    frames[0, 0, 0], frames[1, 1, 1] = np.nan, -np.inf
    times = np.arange(3) * 300
    path = write_store(tmp_path / "ok.h5", frames, times, grid=GRID, minutes_per_frame=5)
    with open_store(path) as store:
        read = store.read(0, 3)
    assert np.isnan(read[0, 0, 0]) and read[1, 1, 1] == store.undetect_value

    frames[2, 3, 3] = np.inf
    bad = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match=r"frames hold \+inf \(1 pixels, the first in frame 2\)"):
        write_store(bad, frames, times, grid=GRID, minutes_per_frame=5)
    assert list(tmp_path.iterdir()) == [path]
