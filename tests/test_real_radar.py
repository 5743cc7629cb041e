"""The real-radar path a user follows (README, "Your own radar data"): convert KNMI composites,
fine-tune a run on the first hours, score every window of the rest. Tiny files in KNMI's real
layout (tests/data/radar_files.py), with a radar disc covering a third of the grid."""

from datetime import datetime, timedelta

import numpy as np
import pytest
from data.radar_files import write_knmi
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nowcast.config import ConvertCommandConfig, config_dir, register_configs
from nowcast.data.convert import convert
from nowcast.evaluation import evaluate
from nowcast.training import train

ROWS, COLUMNS = 48, 40
START = datetime(2010, 8, 26)


def _knmi_day(folder, first: int, count: int) -> None:
    """5-minute files of a rain band moving a pixel a frame inside a disc of radar coverage."""
    rows, columns = np.mgrid[:ROWS, :COLUMNS]
    covered = (rows - ROWS / 2) ** 2 + (columns - COLUMNS / 2) ** 2 < 14**2
    folder.mkdir()
    for k in range(first, first + count):
        rain_mmh = 8.0 * np.exp(-(((columns - 5 - k % 30) / 4.0) ** 2))
        pixels = np.where(covered, np.round(rain_mmh / 12 * 100), 65535).astype(np.uint16)
        end = START + timedelta(minutes=5 * (k + 1))
        write_knmi(folder / f"RAD_NL25_RAP_5min_{end:%Y%m%d%H%M}.h5", pixels, end)


def _convert(source, output) -> None:
    cfg = OmegaConf.structured(ConvertCommandConfig)
    cfg.format, cfg.input, cfg.output = "knmi", str(source), str(output)
    convert(cfg)


def _compose(name: str, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _fine_tune(tiny_run, run_dir, *overrides: str):
    """Train from the tiny run's weights on 16-pixel patches, the last hour for validation."""
    cfg = _compose(
        "train",
        "debug=fast",
        *overrides,
        f"init={tiny_run}",
        "data.patch_size=16",
        "data.split.block_hours=1",
        "data.split.val_fraction=0.2",
        "data.split.test_fraction=0",
        f"paths.output_dir={run_dir}",
        "trainer.verbose=0",
    )
    OmegaConf.resolve(cfg)
    return train(cfg)


@pytest.fixture(scope="module")
def knmi_stores(tmp_path_factory):
    """Three hours to fine-tune on and one to score, converted like the README says."""
    root = tmp_path_factory.mktemp("knmi")
    for name, first, count in (("train", 0, 36), ("test", 36, 12)):
        _knmi_day(root / name, first, count)
        _convert(root / name, root / f"{name}.h5")
    return root


def test_fine_tune_on_the_first_hours_and_score_every_window_of_the_rest(
    knmi_stores, tiny_run, tmp_path
):
    run_dir = tmp_path / "fine_tuned"
    result = _fine_tune(
        tiny_run,
        run_dir,
        "data=knmi",
        f"data.path={knmi_stores / 'train.h5'}",
        "data.batch_size=8",
    )
    splits = OmegaConf.load(run_dir / "split.json").splits
    # The last hour: 12 frames hold 7 windows of 3 + 3, fewer than a batch, and scored.
    assert splits.val.windows == 7 and len(result.history["val_loss"]) == 1
    assert np.isfinite(result.history["val_loss"]).all()

    scored = evaluate(
        _compose(
            "evaluate",
            f"run={run_dir}",
            "split=all",
            "data=knmi",
            f"data.path={knmi_stores / 'test.h5'}",
            f"paths.output_dir={tmp_path / 'evaluation'}",
            "progress=false",
            "baselines=[persistence]",
        )
    )
    data = scored.metrics["data"]
    # Every window of the hour: the radars see a third of the grid, all of their coverage.
    assert (data["windows"], data["split"], data["valid_fraction_of"]) == (7, "all", "coverage")
    assert data["frame_size"] == [ROWS, COLUMNS]
    persistence = scored.metrics["methods"]["persistence"]["scores"]["csi"]
    assert 0 < persistence[0][0] < 1  # rain moved through the coverage, so scores are real


def test_real_radar_recipe_trains_on_a_list_and_keeps_the_extrapolations_rain_amounts(
    knmi_stores, tiny_run, tmp_path
):
    """experiment=real_radar with an event held out whole, as scripts/leave_one_event_out.py
    runs it: every window of the held-out store is scored, none of it trained, and with
    probability matching the network forecasts as much rain as the extrapolation it corrects,
    at every threshold and lead time (hits + false alarms)."""
    run_dir = tmp_path / "real_radar"
    held_out = knmi_stores / "test.h5"
    _fine_tune(
        tiny_run,
        run_dir,
        "experiment=real_radar",
        f"data.path=[{knmi_stores / 'train.h5'},{held_out}]",
        f"data.holdout=[{held_out}]",
    )
    assert OmegaConf.load(run_dir / "split.json").splits.test.windows == 7

    scored = evaluate(
        _compose(
            "evaluate",
            f"run={run_dir}",
            "split=test",
            f"paths.output_dir={tmp_path / 'evaluation'}",
            "progress=false",
            "baselines=[block_matching]",
        )
    )
    assert scored.metrics["data"]["windows"] == 7
    methods = scored.metrics["methods"]
    forecast = {
        name: np.add(
            methods[name]["contingency"]["hits"], methods[name]["contingency"]["false_alarms"]
        )
        for name in ("model", "block_matching")
    }
    assert forecast["model"][:, 3].min() > 0  # the 5 mm/h band is forecast at every lead time
    # The matching is over the whole frame, the scores over the radars' coverage: the two
    # place a few pixels of rain differently outside it (trained without matching, this
    # network forecast 4 % of the extrapolation's 5 mm/h area).
    np.testing.assert_allclose(forecast["model"], forecast["block_matching"], rtol=0.02)
