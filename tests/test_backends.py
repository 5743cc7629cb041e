"""The JAX backend: no TensorFlow at import, the same input windows, portable checkpoints.

The JAX tests run in subprocesses with `import tensorflow` blocked, so a stray import fails them
even though TensorFlow is installed here; they skip where JAX is not installed (`.[jax]`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from nowcast.config import NormalisationConfig
from nowcast.data.pipeline import WindowDataset, WindowReader, make_dataset
from nowcast.model import build_model

NORM = NormalisationConfig(dbz_min=0.0, dbz_max=70.0)
TINY_MODEL = {
    "name": "encoder_forecaster",
    "stages": [{"filters": 4, "kernel_size": 3, "downsample_filters": 4, "downsample_kernel": 3,
                "downsample_stride": 2}],
    "head_filters": 4,
    "advection": True,  # its block matching and resampling must agree across backends too
}  # fmt: skip
FRAME = (16, 16, 1)
N_IN = N_OUT = 2

# Makes `import tensorflow` fail in the subprocess, as on a machine without it.
BLOCK_TENSORFLOW = """
import importlib.abc, sys

class BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, BlockTensorFlow())
"""


def run_under_jax(script: str, tmp_path: Path, devices: int = 1) -> subprocess.CompletedProcess:
    pytest.importorskip("jax")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    code = BLOCK_TENSORFLOW + textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# ----- the two input paths ----------------------------------------------------------------------


@pytest.mark.parametrize("augment", [False, True])
def test_both_input_paths_yield_the_same_batches(tiny_store, augment):
    starts = np.array([40, 3, 17, 99, 8, 61, 25])
    weights = np.linspace(0.25, 1.0, starts.size).astype(np.float32)
    reader = WindowReader(
        tiny_store, starts, n_in=3, n_out=2, norm=NORM, seed=5, weights=weights, augment=augment
    )
    kwargs = dict(batch_size=3, positions=np.arange(30, 37))
    tf_batches = list(make_dataset(reader, shuffle=False, **kwargs).as_numpy_iterator())
    py_batches = list(WindowDataset(reader, workers=2, queue_size=2, **kwargs))
    assert [len(b) for b in py_batches] == [3, 3, 3]  # inputs, targets, weights
    assert len(tf_batches) == len(py_batches) == 3
    for tf_batch, py_batch in zip(tf_batches, py_batches, strict=True):
        for tf_part, py_part in zip(tf_batch, py_batch, strict=True):
            np.testing.assert_array_equal(tf_part, py_part)


def test_window_dataset_continues_its_order_across_epochs_of_fit(tiny_store):
    """fit(steps_per_epoch=...) must read batch after batch, not restart at each epoch."""
    starts = np.arange(0, 120, 10)
    reader = WindowReader(tiny_store, starts, n_in=1, n_out=1, norm=NORM, seed=0)
    dataset = WindowDataset(reader, batch_size=2)
    read = []
    original = dataset._read_batch
    dataset._read_batch = lambda index: read.append(index) or original(index)
    model = keras.Sequential([keras.Input((1, 32, 32, 1)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(dataset, epochs=3, steps_per_epoch=2, shuffle=False, verbose=0)
    assert sorted(set(read)) == list(range(6))
    assert read.count(0) <= 2  # Keras may read the first batch once more to learn its shapes


# ----- TensorFlow stays out under JAX -----------------------------------------------------------


@pytest.mark.slow  # about a minute: JAX compiles the training and evaluation steps
def test_train_and_evaluate_under_jax_without_tensorflow(tiny_store, tmp_path):
    """A tiny run on two (host) devices, data parallel, then its evaluation."""
    run_dir = tmp_path / "run"
    result = run_under_jax(
        f"""
        import sys
        from nowcast import cli, evaluation, pictures, plotting, prediction, training  # noqa: F401

        sys.argv = ["nowcast-train", "debug=fast", "data.path={tiny_store}", "data.batch_size=2",
                    "trainer.jit_compile=auto", "trainer.verbose=0", "hydra.run.dir={run_dir}"]
        cli.train_main()
        sys.argv = ["nowcast-evaluate", "run={run_dir}", "baselines=[persistence]",
                    "progress=false", "hydra.run.dir={tmp_path / "evaluation"}"]
        cli.evaluate_main()
        print("tensorflow imported:", "tensorflow" in sys.modules)
        """,
        tmp_path,
        devices=2,
    )
    assert "tensorflow imported: False" in result.stdout
    assert "2 replica(s) with DataParallel" in result.stdout + result.stderr
    assert (run_dir / "model.keras").is_file()
    assert (run_dir / "evaluation" / "metrics.json").is_file()


# ----- checkpoints move between backends --------------------------------------------------------


def test_checkpoints_load_under_the_other_backend_with_the_same_forecasts(tmp_path):
    """Saved under TensorFlow (this process) -> loaded under JAX, and the reverse; the JAX side
    imports every command's modules and builds the model without TensorFlow."""
    assert keras.backend.backend() == "tensorflow"
    inputs = np.random.default_rng(0).uniform(0, 1, (2, N_IN, *FRAME)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    keras.utils.set_random_seed(1)
    model = build_model(TINY_MODEL, n_out=N_OUT, input_shape=FRAME)
    model.save(tmp_path / "from_tf.keras")
    np.save(tmp_path / "from_tf.npy", keras.ops.convert_to_numpy(model(inputs)))

    run_under_jax(
        f"""
        import sys
        import keras, numpy as np
        from nowcast import cli, evaluation, pictures, plotting, prediction, training  # noqa: F401
        from nowcast.model import build_model  # registers the model's layers for loading

        inputs = np.load("inputs.npy")
        loaded = keras.saving.load_model("from_tf.keras")
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(loaded(inputs)), np.load("from_tf.npy"), atol=1e-5
        )
        keras.utils.set_random_seed(2)
        model = build_model({TINY_MODEL!r}, n_out={N_OUT}, input_shape={FRAME!r})
        model.save("from_jax.keras")
        np.save("from_jax.npy", keras.ops.convert_to_numpy(model(inputs)))
        assert "tensorflow" not in sys.modules, "a nowcast module imported tensorflow"
        """,
        tmp_path,
    )
    loaded = keras.saving.load_model(tmp_path / "from_jax.keras")
    forecast = keras.ops.convert_to_numpy(loaded(inputs))
    np.testing.assert_allclose(forecast, np.load(tmp_path / "from_jax.npy"), atol=1e-5)
    assert not np.allclose(forecast, np.load(tmp_path / "from_tf.npy"))  # two different models
