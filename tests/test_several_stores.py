"""A run on several stores of different grids: training, its split, and one scorecard."""

import json

import numpy as np
import pytest

from nowcast.config import SyntheticConfig
from nowcast.data.synthetic import write_synthetic_store
from nowcast.evaluation import evaluate
from nowcast.metrics import CONTINGENCY_FIELDS
from nowcast.training import train


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """Three synthetic 'events' of 8, 7 and 6 hours on grids of three sizes."""
    folder = tmp_path_factory.mktemp("events")
    sizes = {"a": (96, 32, 32), "b": (84, 48, 40), "c": (72, 40, 48)}
    return {
        name: write_synthetic_store(
            folder / f"{name}.h5",
            SyntheticConfig(frames=frames, height=height, width=width, seed=seed),
        )
        for seed, (name, (frames, height, width)) in enumerate(sizes.items())
    }


@pytest.fixture(scope="module")
def several_run(events, tmp_path_factory):
    """A debug=fast run on patches of a and b, with c held out whole."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from nowcast.config import config_dir, register_configs

    register_configs()
    output = tmp_path_factory.mktemp("several_run")
    stores = f"[{events['a']},{events['b']},{events['c']}]"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "debug=fast",
                f"data.path={stores}",
                f"data.holdout=[{events['c']}]",
                "data.patch_size=16",
                "data.split.block_hours=null",
                "data.split.test_fraction=0",
                "trainer.validation_steps=null",
                "trainer.verbose=0",
                f"paths.output_dir={output}",
                f"paths.data_dir={output}",
            ],
        )
    GlobalHydra.instance().clear()
    OmegaConf.resolve(cfg)
    return train(cfg).run_dir


def test_training_draws_patches_of_every_store_and_holds_one_out(several_run, events):
    split = json.loads((several_run / "split.json").read_text())
    assert split["stores"] == [str(events[name]) for name in "abc"]
    assert split["holdout"] == 1 and split["block_hours"] > 0
    stores_of = {name: set(s["store_index"]) for name, s in split["splits"].items()}
    assert stores_of["train"] == {0, 1}
    assert stores_of["val"] <= {0, 1} and stores_of["test"] == {2}
    # c is held out whole: every one of its windows of 3 + 3 frames is scored.
    assert split["splits"]["test"]["windows"] == 72 - 5


def test_evaluate_follows_the_runs_stores_and_pools_their_counts(
    several_run, events, evaluate_config
):
    result = evaluate(
        evaluate_config(f"run={several_run}", "split=val", "baselines=[persistence]")
    )
    record = result.metrics
    assert record["data"]["stores"] == [str(events[name]) for name in "abc"]
    folders = list(record["stores"])
    assert all(folder.startswith("stores/") for folder in folders)
    per_store = [
        json.loads((result.output_dir / folder / "metrics.json").read_text()) for folder in folders
    ]
    assert sum(store["data"]["windows"] for store in per_store) == record["data"]["windows"]
    for method in ("model", "persistence"):
        for field in CONTINGENCY_FIELDS:
            pooled = np.asarray(record["methods"][method]["contingency"][field])
            summed = sum(np.asarray(s["methods"][method]["contingency"][field]) for s in per_store)
            np.testing.assert_array_equal(pooled, summed)


def test_one_scorecard_over_every_window_of_several_stores(several_run, events, evaluate_config):
    paths = f"[{events['a']},{events['b']},{events['c']}]"
    cfg = evaluate_config(
        f"run={several_run}",
        "data=radar_hdf5",
        f"data.path={paths}",
        "data.stride=4",  # every fourth window
        "split=all",
        "baselines=[persistence,block_matching]",
        "metrics.scorecard_reference=persistence",
    )
    result = evaluate(cfg)
    record, folder = result.metrics, result.output_dir
    assert record["data"]["frame_sizes"] == [[32, 32], [48, 40], [40, 48]]
    assert record["data"]["windows"] == 23 + 20 + 17  # starts 0, 4, ... up to T - 6
    assert (folder / "scorecard.png").stat().st_size > 0
    for index, name in enumerate("abc"):
        store_folder = folder / "stores" / f"{index}-{name}"
        for output in ("metrics.json", "categorical.csv", "summary.txt", "csi.png"):
            assert (store_folder / output).is_file(), (name, output)
    assert "CSI of b.h5 (20 windows)" in result.summary
    csi = record["stores"]["stores/1-b"]["mean_csi"]
    expected = json.loads((folder / "stores/1-b/metrics.json").read_text())
    np.testing.assert_allclose(
        csi["model"], expected["methods"]["model"]["mean_over_lead_times"]["csi"]
    )
    bad = evaluate_config(
        f"run={several_run}", "data=radar_hdf5", f"data.path={paths}", "split=all",
        "baselines=[persistence]", "metrics.scorecard_reference=optical_flow",
        f"paths.output_dir={folder.parent / 'bad'}",
    )  # fmt: skip
    with pytest.raises(ValueError, match="scorecard_reference='optical_flow' is not scored"):
        evaluate(bad)
    assert not (folder.parent / "bad").exists()


def test_shards_of_several_stores_merge_into_what_one_process_writes(
    several_run, events, evaluate_config, tmp_path
):
    options = (
        f"run={several_run}",
        "data=radar_hdf5",
        f"data.path=[{events['a']},{events['b']}]",
        "data.stride=6",  # every sixth window: 16 of a, 14 of b
        "split=all",
        "baselines=[persistence]",
    )
    shards = tmp_path / "shards"
    one = evaluate(evaluate_config(*options, f"paths.output_dir={tmp_path / 'one'}")).metrics
    for index in range(2):
        evaluate(evaluate_config(*options, f"shard={index}/2", f"shards_dir={shards}"))
    merged = evaluate(
        evaluate_config(*options, "merge=true", f"shards_dir={shards}",
                        f"paths.output_dir={tmp_path / 'merged'}")
    ).metrics  # fmt: skip
    # Two shards of 30 windows: the first ends inside a, the second holds the rest of a and b.
    assert list(merged["stores"]) == list(one["stores"]) == ["stores/0-a", "stores/1-b"]
    for method in ("model", "persistence"):
        for field in CONTINGENCY_FIELDS:
            np.testing.assert_array_equal(
                merged["methods"][method]["contingency"][field],
                one["methods"][method]["contingency"][field],
            )
    for folder in one["stores"]:
        np.testing.assert_allclose(
            merged["stores"][folder]["mean_csi"]["model"],
            one["stores"][folder]["mean_csi"]["model"],
        )
