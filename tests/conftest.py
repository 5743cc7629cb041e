"""Shared fixtures: configs composed through Hydra's compose API, and one tiny synthetic store."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nowcast.config import SyntheticConfig, config_dir, register_configs

TINY_SYNTHETIC = SyntheticConfig(frames=288, height=32, width=32, seed=0)
CPU_DEVICES = 2


def pytest_configure(config):
    """Split the CPU into two logical devices before TensorFlow starts, so MirroredStrategy
    can be tested in-process; single-device code keeps using the first. Turn TF32 off, so that
    float32 matrix products and convolutions on an Ampere-or-newer GPU keep float32's
    precision and the 1e-5 reference and golden tests hold there as on a CPU. Each backend is
    imported only when it is the active one."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * CPU_DEVICES
        )
        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")


def gpu_count() -> int:
    """GPUs the active Keras backend sees."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "jax":
        import jax

        return sum(device.platform == "gpu" for device in jax.devices())
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked `gpu` where the active backend finds no GPU."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if gpu_tests and gpu_count() == 0:
        skip = pytest.mark.skip(reason="needs a GPU; none found")
        for item in gpu_tests:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A day of 32x32 synthetic frames, written once per test session."""
    from nowcast.data.synthetic import write_synthetic_store

    return write_synthetic_store(tmp_path_factory.mktemp("data") / "tiny.h5", TINY_SYNTHETIC)


@pytest.fixture
def compose_config(tmp_path):
    """Compose `configs/train.yaml` with every output redirected under tmp_path."""
    register_configs()

    def _compose(*overrides: str):
        paths = [f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[*paths, *overrides])
        OmegaConf.resolve(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def evaluate_config(tmp_path):
    """Compose `configs/evaluate.yaml`, writing under tmp_path, without a progress bar."""
    register_configs()

    def _compose(*overrides: str):
        defaults = [
            f"paths.output_dir={tmp_path / 'evaluation'}",
            f"paths.data_dir={tmp_path / 'data'}",
            "progress=false",
        ]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("evaluate", overrides=[*defaults, *overrides])

    return _compose


@pytest.fixture
def fast_config(compose_config, tiny_store):
    """`debug=fast` on the session's tiny store."""

    def _compose(*overrides: str):
        return compose_config("debug=fast", f"data.path={tiny_store}", *overrides)

    return _compose


@pytest.fixture(scope="module")
def trained_runs() -> dict:
    """Runs trained for the current test module, so each module trains a run once."""
    return {}


@pytest.fixture
def tiny_run(fast_config, tmp_path_factory, trained_runs) -> Path:
    """A `debug=fast` run on the session's tiny store, trained once per test module."""
    if "run" not in trained_runs:
        from nowcast.training import train

        output_dir = tmp_path_factory.mktemp("tiny_run")
        cfg = fast_config(f"paths.output_dir={output_dir}", "trainer.verbose=0")
        trained_runs["run"] = train(cfg).run_dir
    return trained_runs["run"]
