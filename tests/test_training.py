import json

import keras
import numpy as np
import pytest

from nowcast.training import train


def test_fast_run_writes_a_complete_run_directory(fast_config):
    cfg = fast_config()
    result = train(cfg)
    run_dir = result.run_dir
    for name in ["config.yaml", "split.json", "model.keras", "metrics.csv"]:
        assert (run_dir / name).is_file(), name
    for name in ["best.keras", "last.keras"]:
        assert (run_dir / "checkpoints" / name).is_file(), name
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(result.history["loss"]) == cfg.trainer.epochs
    assert (
        np.isfinite(result.history["loss"]).all() and np.isfinite(result.history["val_loss"]).all()
    )

    split = json.loads((run_dir / "split.json").read_text())["splits"]
    train_times = set(split["train"]["start_times"])
    assert train_times.isdisjoint(split["test"]["start_times"])
    assert split["train"]["windows"] == len(split["train"]["start_times"]) > 0

    model = keras.models.load_model(run_dir / "model.keras")
    inputs = np.zeros((1, cfg.data.n_in, 32, 32, 1), "float32")
    forecast = model.predict(inputs, verbose=0)
    assert forecast.shape == (1, cfg.data.n_out, 32, 32, 1)
    np.testing.assert_allclose(forecast, result.model.predict(inputs, verbose=0), atol=1e-6)


def test_same_seed_gives_the_same_losses(fast_config):
    first = train(fast_config("trainer.epochs=1", "paths.output_dir=${paths.data_dir}/a")).history
    second = train(fast_config("trainer.epochs=1", "paths.output_dir=${paths.data_dir}/b")).history
    np.testing.assert_allclose(first["loss"], second["loss"], rtol=1e-5)


def test_missing_store_names_the_path_and_the_fix(fast_config, tmp_path):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match=f"data store not found: {missing}.*data.path"):
        train(fast_config("data=radar_hdf5", f"data.path={missing}"))
