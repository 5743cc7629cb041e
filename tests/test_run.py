"""A trained run as the commands ask for it (nowcast.run.Run)."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from nowcast.run import RUN_HINT, Run, forecast_window


def test_a_run_answers_what_each_command_asks(tiny_run):
    run = Run.open(tiny_run, "last")
    assert run.dir == tiny_run and run.checkpoint == tiny_run / "checkpoints" / "last.keras"
    assert (run.n_in, run.n_out) == (3, 3) and run.norm == run.config.data.normalisation
    windows = run.windows("test")
    assert windows.split_from == str(tiny_run / "split.json") and windows.starts.size > 0
    grid = run.grid()
    assert (grid.grid["ysize"], grid.grid["xsize"]) == (32, 32) and grid.store == windows.stores[0]
    with windows.open() as stores:
        start = int(windows.starts[0])
        frames = stores.read(start, start + run.n_in)  # (n_in, H, W) dBZ
    inputs = np.zeros_like(frames, dtype=np.float32)
    forecasts = forecast_window(run.load_model((32, 32)), inputs, run.baselines(["persistence"]))
    assert {name: f.shape for name, f in forecasts.items()} == {
        "model": (3, 32, 32),
        "persistence": (3, 32, 32),
    }


def test_a_command_without_run_is_told_what_to_pass():
    cfg = OmegaConf.create({"run": "???", "checkpoint": "best"})
    with pytest.raises(ValueError, match=f"^no run given; {RUN_HINT}$"):
        Run.from_config(cfg)


def test_a_missing_checkpoint_lists_the_runs_own(tiny_run):
    with pytest.raises(FileNotFoundError, match=r"the run's checkpoints: best.keras, last.keras"):
        Run.open(tiny_run, str(tiny_run / "other.keras"))


def test_matching_is_switched_for_a_command_without_touching_the_run(tiny_run):
    """evaluate/plot/predict `probability_matching=false|true` scores a run either way: matched,
    the forecast holds the extrapolation's values, in the network's order."""
    run = Run.open(tiny_run, "best")
    trained_with = run.config.model.probability_matching
    unmatched, matched = run.matched(False), run.matched(True)
    assert matched.config.model.probability_matching and run.matched(None) is run
    assert not unmatched.config.model.probability_matching
    assert run.config.model.probability_matching == trained_with  # the run's own config
    frames = np.random.default_rng(0).random((1, 3, 32, 32, 1), dtype=np.float32)
    forecast, moved = matched.load_model((32, 32)).forecast_and_extrapolation(frames)
    np.testing.assert_array_equal(
        np.sort(np.asarray(forecast).reshape(3, -1)), np.sort(np.asarray(moved).reshape(3, -1))
    )
    raw, _ = unmatched.load_model((32, 32)).forecast_and_extrapolation(frames)
    assert not np.array_equal(
        np.sort(np.asarray(raw).ravel()), np.sort(np.asarray(forecast).ravel())
    )
    run.config.model.advection = False
    with pytest.raises(ValueError, match="^probability_matching=true needs a model that extra"):
        run.matched(True)
